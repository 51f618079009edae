//! Criterion benchmarks of the CPU aggregation kernel and the window operator, on one
//! thread, with batches already decoded in memory (`Throughput::Elements` = events).
//!
//! - `kernel/*`: `CpuBackend::update` alone, count/sum/min/max of one f64 column into one
//!   pane, over 10k / 100k / 1M uniformly drawn keys, beside `hand_loop_baseline`, a plain
//!   loop over four dense arrays: the scatter-update floor of this machine.
//! - `operator/*`: the whole window operator (event time, watermarks, key interning, panes,
//!   firing, result batches) on generated clickstream data, tumbling 1m versus hop 15m/1m,
//!   as `panes bench` drives it (`Pipeline::push` and `poll_ready`); `operator/pipeline`
//!   is the tumbling job built with `Pipeline::builder()` and polled with `poll` after
//!   every batch.
//! - `memory/*`: the yardstick: reading, copying, and gathering every other row (as a split
//!   between 2 shards does) of 256 MiB of i64, on 1 and on 2 threads (`Throughput::Bytes`
//!   counts the bytes read and written).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use panes::bench::{input, job, run};
use panes::engine::pipeline::Pipeline;
use panes::engine::run::BackendKind;
use panes::kernels::{AggFn, AggSpec, Backend, Column, CpuBackend, Domain, Events, Values};

const BATCH: usize = 64 * 1024;

fn kernel(c: &mut Criterion) {
    // As `panes` does (see its docs): every window's result columns on fresh pages would
    // be measured as page faults.
    panes::keep_freed_memory();
    let aggs: Vec<AggSpec> = [AggFn::CountRows, AggFn::Sum, AggFn::Min, AggFn::Max]
        .into_iter()
        .map(|func| AggSpec {
            func,
            column: 0,
            domain: Domain::F64,
        })
        .collect();
    let mut g = c.benchmark_group("kernel");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n_keys in [10_000u32, 100_000, 1_000_000] {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let keys: Vec<u32> = (0..BATCH)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % u64::from(n_keys)) as u32
            })
            .collect();
        let values: Vec<f64> = (0..BATCH).map(|i| (i % 1000) as f64 * 0.001).collect();
        let panes = vec![0i64; BATCH];
        let ts = vec![0i64; BATCH];
        let columns = [Column {
            values: Values::F64(&values),
            valid: None,
        }];
        let events = Events {
            keys: &keys,
            panes: &panes,
            ts: &ts,
            columns: &columns,
        };
        let mut backend = CpuBackend::new(&aggs, 1);
        backend
            .update(&events)
            .expect("the cpu backend cannot fail"); // size the state once
        g.bench_with_input(
            BenchmarkId::new("count_sum_min_max", n_keys),
            &events,
            |b, ev| b.iter(|| backend.update(ev).expect("the cpu backend cannot fail")),
        );
        // The yardstick: a plain loop updating four dense per-key arrays (no null or NaN
        // rules, no panes): what this machine does at best for this access pattern.
        let (mut cnt, mut sum) = (vec![0u64; n_keys as usize], vec![0f64; n_keys as usize]);
        let (mut min, mut max) = (
            vec![f64::INFINITY; n_keys as usize],
            vec![f64::NEG_INFINITY; n_keys as usize],
        );
        g.bench_function(BenchmarkId::new("hand_loop_baseline", n_keys), |b| {
            b.iter(|| {
                for (&k, &x) in keys.iter().zip(&values) {
                    let k = k as usize;
                    cnt[k] += 1;
                    sum[k] += x;
                    min[k] = min[k].min(x);
                    max[k] = max[k].max(x);
                }
            })
        });
        std::hint::black_box((&cnt, &sum, &min, &max));
        if n_keys == 100_000 {
            // Each state column alone, to see which pass costs what.
            for func in [
                AggFn::CountRows,
                AggFn::Count,
                AggFn::Sum,
                AggFn::Min,
                AggFn::Max,
            ] {
                let one = [AggSpec {
                    func,
                    column: 0,
                    domain: Domain::F64,
                }];
                let mut backend = CpuBackend::new(&one, 1);
                backend
                    .update(&events)
                    .expect("the cpu backend cannot fail");
                let id = BenchmarkId::new(format!("{func:?}"), n_keys);
                g.bench_with_input(id, &events, |b, ev| {
                    b.iter(|| backend.update(ev).expect("the cpu backend cannot fail"))
                });
            }
        }
    }
    g.finish();
}

fn operator(c: &mut Criterion) {
    panes::keep_freed_memory();
    let events = 20_000_000;
    let mut g = c.benchmark_group("operator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    let batches = input(&job(60_000, 60_000, events, 100_000), BATCH).expect("generated input");
    for (name, size, slide) in panes::bench::WINDOWS {
        let j = job(size, slide, events, 100_000);
        g.bench_function(BenchmarkId::new(name, "100k keys"), |b| {
            b.iter(|| run(&j, &batches, BackendKind::Cpu, 1, false).expect("bench run"))
        });
    }
    // The tumbling job on 2 and on 16 shards: how much splitting each batch among shards
    // costs (on a machine with fewer cores, 16 shards share them).
    let tumble = job(60_000, 60_000, events, 100_000);
    for shards in [2, 16] {
        g.bench_function(
            BenchmarkId::new(format!("tumble, {shards} shards"), "100k keys"),
            |b| {
                b.iter(|| {
                    run(&tumble, &batches, BackendKind::Cpu, shards, false).expect("bench run")
                })
            },
        );
    }
    // The tumbling job of `job(60_000, 60_000, …)`, built through the API.
    let schema = batches[0].schema();
    g.bench_function(BenchmarkId::new("pipeline", "100k keys"), |b| {
        b.iter(|| {
            let mut p = Pipeline::builder()
                .event_time("ts", Duration::from_secs(5))
                .tumble(Duration::from_secs(60))
                .key(&["article_id"])
                .aggregate("views", AggFn::CountRows, None)
                .aggregate("scroll_sum", AggFn::Sum, Some("scroll_depth"))
                .aggregate("scroll_min", AggFn::Min, Some("scroll_depth"))
                .aggregate("scroll_max", AggFn::Max, Some("scroll_depth"))
                .threads(1)
                .build(schema.clone())
                .expect("a valid pipeline");
            for batch in &batches {
                p.push(0, batch).expect("a batch of the schema");
                std::hint::black_box(p.poll().expect("outputs"));
            }
            std::hint::black_box(p.finish().expect("the last windows"))
        })
    });
    g.finish();
}

/// Memory bandwidth on 1 and 2 threads: what a kernel that streams its input can reach.
fn memory(c: &mut Criterion) {
    const N: usize = 32 << 20;
    let src: Vec<i64> = (0..N as i64).collect();
    let mut dst = vec![0i64; N];
    let mut g = c.benchmark_group("memory");
    g.sample_size(10);
    // Each thread works on its own half (or all of it, alone).
    fn halves<'a>(
        src: &'a [i64],
        dst: &'a mut [i64],
        threads: usize,
        f: impl Fn(&[i64], &mut [i64]) + Sync,
    ) {
        let n = src.len().div_ceil(threads);
        std::thread::scope(|s| {
            for (src, dst) in src.chunks(n).zip(dst.chunks_mut(n)) {
                let f = &f;
                s.spawn(move || f(src, dst));
            }
        });
    }
    let bytes = (N * 8) as u64;
    for threads in [1, 2] {
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::new("read", threads), |b| {
            b.iter(|| {
                halves(&src, &mut dst, threads, |src, _| {
                    std::hint::black_box(src.iter().fold(0i64, |a, &x| a.wrapping_add(x)));
                })
            })
        });
        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_function(BenchmarkId::new("copy", threads), |b| {
            b.iter(|| halves(&src, &mut dst, threads, |src, dst| dst.copy_from_slice(src)))
        });
        // Even rows to the front half, odd rows to the back: a 2-shard split's gather.
        g.bench_function(BenchmarkId::new("split in 2", threads), |b| {
            b.iter(|| {
                halves(&src, &mut dst, threads, |src, dst| {
                    let (even, odd) = dst.split_at_mut(src.len().div_ceil(2));
                    for (d, x) in even.iter_mut().zip(src.iter().step_by(2)) {
                        *d = *x;
                    }
                    for (d, x) in odd.iter_mut().zip(src.iter().skip(1).step_by(2)) {
                        *d = *x;
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernel, operator, memory);
criterion_main!(benches);
