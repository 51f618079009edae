//! Every backend against the reference, on seeded random segments over a few panes: nulls,
//! NaN, infinities and integer extremes, thin panes, hot keys, segment sizes that divide
//! the GPU's workgroup size and sizes that don't. The same test body runs per backend;
//! rows must equal the reference's exactly (floats bit for bit, NaN as NaN).
//!
//! The GPU runs for real (Mesa's lavapipe in CI): a missing adapter fails the test.

use panes_kernels::{
    AggFn, AggSpec, Backend, Column, CpuBackend, Domain, Events, GpuBackend, GpuOptions, Keys,
    OutColumn, ReferenceBackend, SparsePanes, Values, WindowRows, fold_block,
};

use arrow::record_batch::RecordBatch;

/// A tiny seeded generator for test data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn spec(func: AggFn, column: usize, domain: Domain) -> AggSpec {
    AggSpec {
        func,
        column,
        domain,
    }
}

/// Every function over an integer and a float column (`approx_count_distinct` only when
/// `distinct` is set: on the GPU its sketch costs 4 KiB a key and pane, too much for tests
/// over tens of thousands of keys on a software adapter).
fn all_aggs(distinct: bool) -> Vec<AggSpec> {
    let mut aggs = vec![spec(AggFn::CountRows, 0, Domain::I64)];
    for (column, domain) in [(0, Domain::I64), (1, Domain::F64)] {
        for (_, func) in AggFn::ALL.iter().skip(1) {
            if distinct || *func != AggFn::ApproxCountDistinct {
                aggs.push(spec(*func, column, domain));
            }
        }
    }
    aggs
}

/// Count plus sum/min/max/avg of one float column: one state row a key on the CPU.
fn fused_aggs() -> Vec<AggSpec> {
    let mut aggs = vec![spec(AggFn::CountRows, 0, Domain::I64)];
    aggs.extend(
        [AggFn::Sum, AggFn::Min, AggFn::Max, AggFn::Avg, AggFn::Count]
            .map(|f| spec(f, 1, Domain::F64)),
    );
    aggs
}

fn aggs_for(seed: u64, distinct: bool) -> Vec<AggSpec> {
    match seed % 4 {
        3 => fused_aggs(),
        // One of sum/min/max of the float column: in an array of its own, not in the rows.
        1 => vec![
            spec(AggFn::CountRows, 0, Domain::I64),
            spec(
                [AggFn::Sum, AggFn::Min, AggFn::Max][(seed / 4 % 3) as usize],
                1,
                Domain::F64,
            ),
            spec(AggFn::Max, 0, Domain::I64),
        ],
        _ => all_aggs(distinct),
    }
}

/// Builds the backends under test for a job's aggregates.
type Make = dyn Fn(&[AggSpec]) -> Vec<Box<dyn Backend>>;

/// The seeds whose aggregates include `approx_count_distinct`.
#[derive(Clone, Copy)]
enum Sketches {
    Every,
    /// Not the seeds with thousands of keys: on the GPU each key of each pane holds a
    /// 4 KiB sketch, which a software adapter fills, merges and reads back slowly.
    FewKeys,
    No,
}

/// Runs `seeds` random streams through the reference and the backends `make` builds.
fn check_against_reference(seeds: std::ops::Range<u64>, sketches: Sketches, make: &Make) {
    for seed in seeds {
        let mut rng = Lcg(seed);
        let n = match seed % 6 {
            0 => 256 * (1 + rng.next() % 4) as usize,
            _ => 1 + (rng.next() % 3000) as usize,
        };
        // Every fifth seed: many keys and thin panes, so windows merge panes sparsely.
        let thin = seed % 5 == 4;
        let n_keys = if thin {
            2000 + rng.next() % 3000
        } else {
            1 + rng.next() % 300
        };
        // Every seventh seed: a longer stream over about 40 panes, for hop windows.
        let long = seed % 7 == 3;
        // Every third seed: half the events on 16 hot keys.
        let hot = seed % 3 == 2;
        let keys: Vec<u32> = (0..n)
            .map(|_| match hot && rng.next() % 2 == 0 {
                true => (rng.next() % 16) as u32,
                false => (rng.next() % n_keys) as u32,
            })
            .collect();
        // Every sixth seed from 1: long runs of one pane, with a straggler of an earlier
        // pane now and then.
        let runs = seed % 6 == 1;
        let panes: Vec<i64> = (0..n)
            .map(|i| match (thin, long, runs) {
                (true, ..) => (rng.next() % 6) as i64,
                (false, true, _) => (i * 40 / n) as i64 + (rng.next() % 3) as i64,
                (false, false, true) => (i / 500) as i64 - (rng.next() % 200 == 0) as i64,
                (false, false, false) => (i / 500) as i64 + (rng.next() % 3) as i64,
            })
            .collect();
        let ts: Vec<i64> = (0..n).map(|_| (rng.next() % 50) as i64).collect();
        let ints: Vec<i64> = (0..n)
            .map(|_| match rng.next() % 20 {
                0 => i64::MAX,
                1 => i64::MIN,
                _ => rng.next() as i64 - (1 << 30),
            })
            .collect();
        let floats: Vec<f64> = (0..n)
            .map(|_| match rng.next() % 30 {
                0 => f64::NAN,
                1 => 1e300,
                2 => -f64::INFINITY,
                3 => 5e-324,
                4 => -0.0,
                _ => (rng.next() as f64) / 7.0 - 1e8,
            })
            .collect();
        let iv: Vec<bool> = (0..n).map(|_| rng.next() % 5 != 0).collect();
        let fv: Vec<bool> = (0..n).map(|_| rng.next() % 7 != 0).collect();
        let float_valid = (seed % 2 == 0 || seed % 8 == 7).then_some(&fv[..]);
        let distinct = match sketches {
            Sketches::Every => true,
            Sketches::FewKeys => !thin,
            Sketches::No => false,
        };
        let aggs = aggs_for(seed, distinct);
        let reference = ReferenceBackend::new(aggs.clone());
        let mut backends = make(&aggs);
        // Sends events `start..end` to every backend, in panes `panes`.
        let send = |backends: &mut Vec<Box<dyn Backend>>, panes: &[i64], start: usize| {
            let end = start + panes.len();
            let ev = Events {
                keys: &keys[start..end],
                panes,
                ts: &ts[start..end],
                columns: &[
                    Column {
                        values: Values::I64(&ints[start..end]),
                        valid: Some(&iv[start..end]),
                    },
                    Column {
                        values: Values::F64(&floats[start..end]),
                        // Some seeds meet their first null mid-stream: the non-null
                        // count stops being the row count within a pane.
                        valid: float_valid
                            .filter(|_| seed % 8 != 7 || start > n / 2)
                            .map(|v| &v[start..end]),
                    },
                ],
            };
            for b in backends.iter_mut() {
                b.update(&ev)
                    .unwrap_or_else(|e| panic!("seed {seed}: {}: {e}", b.name()));
            }
        };
        backends.insert(0, Box::new(reference));
        // Blocks of 1 to 4 panes for the windows below.
        let block = 1 + (seed % 4) as i64;
        backends.iter_mut().for_each(|b| b.set_fold_block(block));
        let mut start = 0;
        while start < n {
            let end = match seed % 6 {
                0 => start + 256,
                _ => start + 1 + (rng.next() % 700) as usize,
            }
            .min(n);
            send(&mut backends, &panes[start..end], start);
            start = end;
        }
        let mut reference = backends.remove(0);
        let max_pane = panes.iter().max().copied().unwrap_or(0);
        for window in [0..1, 0..3, 1..max_pane + 1, max_pane..max_pane + 1] {
            let want = reference.combine(window.clone(), Keys::All).unwrap();
            let only: Vec<u32> = want.keys.iter().copied().step_by(3).collect();
            let want_only = reference
                .combine(window.clone(), Keys::Only(&only))
                .unwrap();
            for b in backends.iter_mut() {
                let got = b.combine(window.clone(), Keys::All).unwrap();
                assert_same(&want, &got, seed, b.as_ref());
                let got = b.combine(window.clone(), Keys::Only(&only)).unwrap();
                assert_same(&want_only, &got, seed, b.as_ref());
                assert_slices_same(&want, b.as_mut(), window.clone(), n_keys, seed);
            }
        }
        // A session that ended empties its key's panes.
        reference.clear_key(1..3, keys[0]).unwrap();
        let want = reference.combine(0..4, Keys::All).unwrap();
        for b in backends.iter_mut() {
            b.clear_key(1..3, keys[0]).unwrap();
            assert_same(
                &want,
                &b.combine(0..4, Keys::All).unwrap(),
                seed,
                b.as_ref(),
            );
        }
        reference.evict_before(2);
        let want = reference.combine(0..4, Keys::All).unwrap();
        for b in backends.iter_mut() {
            b.evict_before(2);
            assert_same(
                &want,
                &b.combine(0..4, Keys::All).unwrap(),
                seed,
                b.as_ref(),
            );
        }
        if !long {
            continue;
        }
        // Hop windows of 8 to 20 panes sliding one pane at a time, so that they share
        // folded blocks of panes; between windows, late events reach a pane of the last
        // window, and panes that no window needs any more are evicted.
        backends.insert(0, reference);
        let size = 8 + (rng.next() % 13) as i64;
        let block = fold_block(size);
        backends.iter_mut().for_each(|b| b.set_fold_block(block));
        for last in 2..max_pane + size {
            let window = last + 1 - size..last + 1;
            let want = backends[0].combine(window.clone(), Keys::All).unwrap();
            let only: Vec<u32> = want.keys.iter().copied().step_by(2).collect();
            let want_only = backends[0]
                .combine(window.clone(), Keys::Only(&only))
                .unwrap();
            for b in backends[1..].iter_mut() {
                let got = b.combine(window.clone(), Keys::All).unwrap();
                assert_same(&want, &got, seed, b.as_ref());
                let got = b.combine(window.clone(), Keys::Only(&only)).unwrap();
                assert_same(&want_only, &got, seed, b.as_ref());
                if last % 3 == 0 {
                    assert_slices_same(&want, b.as_mut(), window.clone(), n_keys, seed);
                }
            }
            if rng.next() % 3 == 0 {
                let late = 1 + (rng.next() % 50) as usize;
                let at = (rng.next() as usize) % (n - late.min(n) + 1);
                let pane = window.start.max(2) + (rng.next() % size as u64) as i64;
                send(&mut backends, &vec![pane; late.min(n - at)], at);
            }
            backends
                .iter_mut()
                .for_each(|b| b.evict_before(window.start - 1));
        }
    }
}

/// A window combined in three slices of the key ids (cut at a third and at the middle of
/// `n_keys`, which need not fall on a partition's keys) gives the rows of `want` in those
/// slices.
fn assert_slices_same(
    want: &WindowRows,
    b: &mut dyn Backend,
    window: std::ops::Range<i64>,
    n_keys: u64,
    seed: u64,
) {
    let cuts = [0, (n_keys / 3) as u32, (n_keys / 2) as u32 + 1, u32::MAX];
    for slice in cuts.windows(2) {
        let (start, end) = (slice[0], slice[1]);
        let rows: Vec<usize> = (want.keys.iter().enumerate())
            .filter(|&(_, k)| (start..end).contains(k))
            .map(|(r, _)| r)
            .collect();
        let got = b
            .combine(window.clone(), Keys::Range { start, end })
            .unwrap();
        assert_same(&want.take(&rows), &got, seed, b);
    }
}

fn assert_same(want: &WindowRows, got: &WindowRows, seed: u64, backend: &dyn Backend) {
    let at = format!("seed {seed}, backend {}", backend.name());
    let exact = backend.exact_floats();
    assert_eq!(want.keys, got.keys, "{at}: keys differ");
    for (i, (w, g)) in want.columns.iter().zip(&got.columns).enumerate() {
        match (w, g) {
            (OutColumn::I64 { .. }, OutColumn::I64 { .. }) => {
                assert_eq!(w, g, "{at}: column {i}")
            }
            (
                OutColumn::F64 {
                    values: wv,
                    valid: wok,
                },
                OutColumn::F64 {
                    values: gv,
                    valid: gok,
                },
            ) => {
                assert_eq!(wok, gok, "{at}: validity of column {i}");
                for (r, (&a, &b)) in wv.iter().zip(gv).enumerate() {
                    let same = floats_agree(a, b, exact) || !wok[r];
                    assert!(same, "{at}: column {i} row {r}: {a:e} vs {b:e}");
                }
            }
            _ => panic!("{at}: column {i} has different types"),
        }
    }
}

/// Equal, or both NaN; or, where the backend's floats are not exact, within the bound that
/// [`Backend::exact_floats`] states.
fn floats_agree(a: f64, b: f64, exact: bool) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (!exact && (a - b).abs() <= 1e-9 * a.abs().max(b.abs()))
}

/// A storage binding small enough to split state over several (4 KiB), or (where a row
/// holds distinct-count sketches, 4 KiB each) over a few.
fn small_binding(aggs: &[AggSpec]) -> u64 {
    match aggs.iter().any(|a| a.func == AggFn::ApproxCountDistinct) {
        true => 1 << 20,
        false => 4096,
    }
}

fn gpu(aggs: &[AggSpec], opts: GpuOptions) -> Box<dyn Backend> {
    match GpuBackend::new(aggs, opts) {
        Ok(g) => Box::new(g),
        Err(e) => panic!("the GPU tests need an adapter (lavapipe in CI): {e}"),
    }
}

#[test]
fn cpu_equals_reference_on_random_segments() {
    check_against_reference(0..120, Sketches::Every, &|aggs| {
        vec![
            Box::new(CpuBackend::new(aggs, 1)),
            Box::new(CpuBackend::new(aggs, 4)),
            // Panes that turn sparse after a pane that saw few keys, and dense again once
            // they see many.
            Box::new(CpuBackend::new(aggs, 2).with_sparse_panes(SparsePanes::Auto { min_keys: 0 })),
        ]
    });
}

/// Sparse panes (a slot per key seen) everywhere, whatever the pane sees, with 1 and 4 key
/// partitions; and state moving between sparse and dense panes through export and import.
#[test]
fn cpu_with_sparse_panes_equals_reference_on_random_segments() {
    fn sparse(aggs: &[AggSpec], parts: usize) -> CpuBackend {
        CpuBackend::new(aggs, parts).with_sparse_panes(SparsePanes::Always)
    }
    check_against_reference(0..120, Sketches::Every, &|aggs| {
        let (a, b) = (aggs.to_vec(), aggs.to_vec());
        vec![
            Box::new(sparse(aggs, 1)),
            Box::new(sparse(aggs, 4)),
            Box::new(RoundTrip {
                inner: Box::new(sparse(aggs, 2)),
                fresh: Box::new(move || Box::new(CpuBackend::new(&a, 1))),
                fold_block: 1,
                exact: true,
            }),
            Box::new(RoundTrip {
                inner: Box::new(CpuBackend::new(aggs, 1)),
                fresh: Box::new(move || Box::new(sparse(&b, 1 + b.len() % 2 * 3))),
                fold_block: 1,
                exact: true,
            }),
        ]
    });
}

/// A backend that, before each combine, exports all its panes and carries on in a fresh
/// backend built from them: checkpoint and restore (or spill and read back) at every step.
struct RoundTrip {
    inner: Box<dyn Backend>,
    fresh: Box<dyn Fn() -> Box<dyn Backend> + Send>,
    fold_block: i64,
    /// Whether every backend the state went through so far had exact floats.
    exact: bool,
}

impl Backend for RoundTrip {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn exact_floats(&self) -> bool {
        self.exact && self.inner.exact_floats()
    }
    fn set_fold_block(&mut self, block: i64) {
        self.fold_block = block;
        self.inner.set_fold_block(block);
    }
    fn update(&mut self, events: &Events<'_>) -> panes_kernels::Result<()> {
        self.inner.update(events)
    }
    fn combine(
        &mut self,
        panes: std::ops::Range<i64>,
        keys: Keys<'_>,
    ) -> panes_kernels::Result<WindowRows> {
        let mut restored = (self.fresh)();
        restored.set_fold_block(self.fold_block);
        for pane in self.inner.panes() {
            if let Some(state) = self.inner.export_pane(pane)? {
                restored.import_pane(pane, &state)?;
            }
        }
        self.exact &= self.inner.exact_floats();
        self.inner = restored;
        self.inner.combine(panes, keys)
    }
    fn evict_before(&mut self, pane: i64) {
        self.inner.evict_before(pane)
    }
    fn clear_key(&mut self, panes: std::ops::Range<i64>, key: u32) -> panes_kernels::Result<()> {
        self.inner.clear_key(panes, key)
    }
    fn state_bytes(&self) -> usize {
        self.inner.state_bytes()
    }
    fn panes(&self) -> Vec<i64> {
        self.inner.panes()
    }
    fn export_pane(&mut self, pane: i64) -> panes_kernels::Result<Option<RecordBatch>> {
        self.inner.export_pane(pane)
    }
    fn import_pane(&mut self, pane: i64, state: &RecordBatch) -> panes_kernels::Result<()> {
        self.inner.import_pane(pane, state)
    }
    fn drop_pane(&mut self, pane: i64) {
        self.inner.drop_pane(pane)
    }
}

/// A backend that aggregates the events of even and of odd event times on two backends of
/// its own, and at each combine merges both halves' panes into a fresh one: partial states
/// of a pane from two shards, as a job without keys has on several threads. (Equal event
/// times stay in one half, so first and last break ties as one backend would.)
struct Halves {
    halves: [Box<dyn Backend>; 2],
    fresh: Box<dyn Fn() -> Box<dyn Backend> + Send>,
    fold_block: i64,
}

impl Backend for Halves {
    fn name(&self) -> &'static str {
        self.halves[0].name()
    }
    fn exact_floats(&self) -> bool {
        false
    }
    fn set_fold_block(&mut self, block: i64) {
        self.fold_block = block;
    }
    fn update(&mut self, ev: &Events<'_>) -> panes_kernels::Result<()> {
        for (h, half) in self.halves.iter_mut().enumerate() {
            let rows: Vec<usize> = (0..ev.keys.len())
                .filter(|&i| ev.ts[i].rem_euclid(2) as usize == h)
                .collect();
            let pick = |v: &[i64]| rows.iter().map(|&i| v[i]).collect::<Vec<_>>();
            let (panes, ts) = (pick(ev.panes), pick(ev.ts));
            let keys: Vec<u32> = rows.iter().map(|&i| ev.keys[i]).collect();
            let ints: Vec<Vec<i64>> = (ev.columns.iter())
                .map(|c| match c.values {
                    Values::I64(v) => pick(v),
                    Values::F64(_) => Vec::new(),
                })
                .collect();
            let floats: Vec<Vec<f64>> = (ev.columns.iter())
                .map(|c| match c.values {
                    Values::F64(v) => rows.iter().map(|&i| v[i]).collect(),
                    Values::I64(_) => Vec::new(),
                })
                .collect();
            let valid: Vec<Option<Vec<bool>>> = (ev.columns.iter())
                .map(|c| c.valid.map(|v| rows.iter().map(|&i| v[i]).collect()))
                .collect();
            let columns: Vec<Column<'_>> = (ev.columns.iter().enumerate())
                .map(|(c, col)| Column {
                    values: match col.values {
                        Values::I64(_) => Values::I64(&ints[c]),
                        Values::F64(_) => Values::F64(&floats[c]),
                    },
                    valid: valid[c].as_deref(),
                })
                .collect();
            half.update(&Events {
                keys: &keys,
                panes: &panes,
                ts: &ts,
                columns: &columns,
            })?;
        }
        Ok(())
    }
    fn combine(
        &mut self,
        panes: std::ops::Range<i64>,
        keys: Keys<'_>,
    ) -> panes_kernels::Result<WindowRows> {
        let mut merged = (self.fresh)();
        merged.set_fold_block(self.fold_block);
        for half in &mut self.halves {
            for pane in half.panes() {
                if let Some(state) = half.export_pane(pane)? {
                    merged.merge_pane(pane, &state)?;
                }
            }
        }
        merged.combine(panes, keys)
    }
    fn evict_before(&mut self, pane: i64) {
        self.halves.iter_mut().for_each(|h| h.evict_before(pane))
    }
    fn clear_key(&mut self, panes: std::ops::Range<i64>, key: u32) -> panes_kernels::Result<()> {
        (self.halves.iter_mut()).try_for_each(|h| h.clear_key(panes.clone(), key))
    }
    fn state_bytes(&self) -> usize {
        self.halves.iter().map(|h| h.state_bytes()).sum()
    }
    fn panes(&self) -> Vec<i64> {
        unreachable!("not asked of a test backend")
    }
    fn export_pane(&mut self, _: i64) -> panes_kernels::Result<Option<RecordBatch>> {
        unreachable!("not asked of a test backend")
    }
    fn import_pane(&mut self, _: i64, _: &RecordBatch) -> panes_kernels::Result<()> {
        unreachable!("not asked of a test backend")
    }
    fn drop_pane(&mut self, _: i64) {
        unreachable!("not asked of a test backend")
    }
}

/// Partial states of a pane from two backends merge into the state of one that saw all its
/// events: on the cpu backend (dense and sparse, 1 and 4 key partitions) and the reference.
#[test]
fn partial_pane_states_merge_into_one() {
    check_against_reference(0..60, Sketches::Every, &|aggs| {
        let halves = |make: &dyn Fn() -> Box<dyn Backend>| [make(), make()];
        let (a, b, c) = (aggs.to_vec(), aggs.to_vec(), aggs.to_vec());
        let sparse = move || -> Box<dyn Backend> {
            Box::new(CpuBackend::new(&b, 1).with_sparse_panes(SparsePanes::Always))
        };
        vec![
            Box::new(Halves {
                halves: halves(&|| Box::new(CpuBackend::new(aggs, 4))),
                fresh: Box::new(move || Box::new(CpuBackend::new(&a, 1))),
                fold_block: 1,
            }) as Box<dyn Backend>,
            Box::new(Halves {
                halves: halves(&sparse),
                fresh: Box::new(sparse.clone()),
                fold_block: 1,
            }),
            Box::new(Halves {
                halves: halves(&|| Box::new(ReferenceBackend::new(aggs.to_vec()))),
                fresh: Box::new(move || Box::new(ReferenceBackend::new(c.clone()))),
                fold_block: 1,
            }),
        ]
    });
}

#[test]
fn exported_panes_restore_exactly() {
    check_against_reference(0..60, Sketches::Every, &|aggs| {
        let (a, b) = (aggs.to_vec(), aggs.to_vec());
        vec![
            // State written by 4 key partitions, read back into 1, and the other way.
            Box::new(RoundTrip {
                inner: Box::new(CpuBackend::new(aggs, 4)),
                fresh: Box::new(move || Box::new(CpuBackend::new(&a, 1 + a.len() % 2 * 3))),
                fold_block: 1,
                exact: true,
            }),
            Box::new(RoundTrip {
                inner: Box::new(ReferenceBackend::new(aggs.to_vec())),
                fresh: Box::new(move || Box::new(ReferenceBackend::new(b.clone()))),
                fold_block: 1,
                exact: true,
            }),
        ]
    });
}

#[test]
fn gpu_exported_panes_restore_exactly() {
    check_against_reference(0..6, Sketches::FewKeys, &|aggs| {
        let a = aggs.to_vec();
        vec![Box::new(RoundTrip {
            inner: gpu(aggs, GpuOptions::default()),
            fresh: Box::new(move || gpu(&a, GpuOptions::default())),
            fold_block: 1,
            exact: true,
        })]
    });
}

#[test]
fn state_that_does_not_fit_is_an_error() {
    let aggs = all_aggs(true);
    let mut cpu = CpuBackend::new(&aggs, 1);
    let ev = Events {
        keys: &[3],
        panes: &[0],
        ts: &[5],
        columns: &[
            Column {
                values: Values::I64(&[7]),
                valid: None,
            },
            Column {
                values: Values::F64(&[1.5]),
                valid: None,
            },
        ],
    };
    cpu.update(&ev).unwrap();
    let state = cpu.export_pane(0).unwrap().expect("pane 0 has state");
    let mut other = CpuBackend::new(&fused_aggs(), 1);
    let err = other.import_pane(0, &state).unwrap_err().to_string();
    assert!(err.contains("pane state does not match"), "{err}");
    let mut reference = ReferenceBackend::new(aggs);
    let err = reference.import_pane(0, &state).unwrap_err().to_string();
    assert!(err.contains("column \"ts\" is missing"), "{err}");
    assert!(cpu.export_pane(1).unwrap().is_none());
}

#[test]
fn gpu_equals_reference_on_random_segments() {
    check_against_reference(0..48, Sketches::FewKeys, &|aggs| {
        vec![gpu(aggs, GpuOptions::default())]
    });
}

/// Folding in pieces of 1 to 9 events, so that most runs span several pieces, with the
/// state split over several bindings.
#[test]
fn gpu_in_pieces_equals_reference_on_random_segments() {
    let turn = std::sync::atomic::AtomicU32::new(0);
    check_against_reference(200..236, Sketches::FewKeys, &move |aggs| {
        let piece = 1 + turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 9;
        vec![gpu(
            aggs,
            GpuOptions {
                piece_events: Some(piece),
                max_binding_bytes: small_binding(aggs),
                poison: true,
                ..GpuOptions::default()
            },
        )]
    });
}

/// The baseline path: no optional feature at all, and limits shrunk so that batches are
/// split, state spans several bindings and dispatches need a second dimension. (Without
/// distinct counts, whose 4 KiB sketches would make it a binding a key: the sketch on the
/// baseline path is tested on its own.)
#[test]
fn gpu_without_features_and_with_tiny_limits_equals_reference() {
    check_against_reference(100..124, Sketches::No, &|aggs| {
        vec![gpu(
            aggs,
            GpuOptions {
                features: wgpu::Features::empty(),
                max_batch_events: 128,
                max_binding_bytes: 4096,
                max_groups: 2,
                poison: true,
                ..GpuOptions::default()
            },
        )]
    });
}

#[test]
fn integer_sums_wrap_and_empty_windows_have_no_rows() {
    let aggs = vec![spec(AggFn::Sum, 0, Domain::I64)];
    let backends: Vec<Box<dyn Backend>> = vec![
        Box::new(ReferenceBackend::new(aggs.clone())),
        Box::new(CpuBackend::new(&aggs, 1)),
        gpu(&aggs, GpuOptions::default()),
    ];
    for mut b in backends {
        assert!(b.combine(0..10, Keys::All).unwrap().keys.is_empty());
        let x = [i64::MAX, 2];
        b.update(&Events {
            keys: &[0, 0],
            panes: &[0, 0],
            ts: &[0, 0],
            columns: &[Column {
                values: Values::I64(&x),
                valid: None,
            }],
        })
        .unwrap();
        let rows = b.combine(0..1, Keys::All).unwrap();
        let want = OutColumn::I64 {
            values: vec![i64::MIN + 1],
            valid: vec![true],
        };
        assert_eq!(rows.columns[0], want, "{}", b.name());
        assert!(b.state_bytes() > 0, "{}", b.name());
    }
}

/// `approx_count_distinct` on the GPU keeps the CPU's sketch: per key and pane, counts of
/// distinct values around the switch from exact hashes to registers (256), panes whose
/// union crosses it only when a window merges them, registers merged with hashes and with
/// registers, a hot key, nulls, and floats where 0 and -0 and every NaN are one value. The
/// GPU folds whole runs and pieces, and its panes move to the CPU and back; every row equals
/// the reference's.
#[test]
fn approx_count_distinct_on_the_gpu_is_the_cpu_sketch() {
    let aggs = vec![
        spec(AggFn::CountRows, 0, Domain::I64),
        spec(AggFn::ApproxCountDistinct, 0, Domain::I64),
        spec(AggFn::ApproxCountDistinct, 1, Domain::F64),
    ];
    // Distinct values of each key in each pane; key 7 is hot.
    let per_pane = [0u64, 1, 5, 130, 200, 256, 257, 3_000];
    let mut rng = Lcg(11);
    let (mut keys, mut panes, mut ints, mut floats, mut valid) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for pane in 0..4i64 {
        for (key, &d) in per_pane.iter().enumerate() {
            let events = if key == 7 { 40_000 } else { 3 * d.max(1) };
            for i in 0..events {
                // Panes of a key share half their values: unions grow by half a pane.
                let v = (i % d.max(1) + pane as u64 * d / 2) as i64;
                keys.push(key as u32);
                panes.push(pane);
                ints.push(v * 1_000_003 - 7);
                floats.push(match v % 9 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f64::NAN,
                    3 => -f64::NAN,
                    _ => v as f64 / 3.0,
                });
                valid.push(d > 0);
            }
        }
    }
    // Shuffled, so that keys' runs interleave and batches cut them anywhere.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.next() as usize % (i + 1));
    }
    let keys: Vec<u32> = order.iter().map(|&i| keys[i]).collect();
    let panes: Vec<i64> = order.iter().map(|&i| panes[i]).collect();
    let ints: Vec<i64> = order.iter().map(|&i| ints[i]).collect();
    let floats: Vec<f64> = order.iter().map(|&i| floats[i]).collect();
    let valid: Vec<bool> = order.iter().map(|&i| valid[i]).collect();
    let ts = vec![0i64; keys.len()];
    let mut backends: Vec<Box<dyn Backend>> = vec![
        Box::new(ReferenceBackend::new(aggs.clone())),
        Box::new(CpuBackend::new(&aggs, 1)),
        gpu(&aggs, GpuOptions::default()),
        gpu(
            &aggs,
            GpuOptions {
                piece_events: Some(64),
                features: wgpu::Features::empty(),
                poison: true,
                ..GpuOptions::default()
            },
        ),
    ];
    let mut start = 0;
    while start < keys.len() {
        let end = (start + 1 + rng.next() as usize % 20_000).min(keys.len());
        let columns = [
            Column {
                values: Values::I64(&ints[start..end]),
                valid: Some(&valid[start..end]),
            },
            Column {
                values: Values::F64(&floats[start..end]),
                valid: None,
            },
        ];
        let ev = Events {
            keys: &keys[start..end],
            panes: &panes[start..end],
            ts: &ts[start..end],
            columns: &columns,
        };
        for b in backends.iter_mut() {
            b.update(&ev).unwrap();
        }
        start = end;
    }
    // Every pane of the GPUs moves to a CPU backend and back.
    for g in 2..4 {
        let mut cpu = CpuBackend::new(&aggs, 2);
        for pane in backends[g].panes() {
            let state = backends[g]
                .export_pane(pane)
                .unwrap()
                .expect("a pane with rows");
            cpu.import_pane(pane, &state).unwrap();
            let back = cpu.export_pane(pane).unwrap().expect("a pane with rows");
            backends[g].import_pane(pane, &back).unwrap();
        }
    }
    for window in [0..1, 0..2, 1..3, 0..4] {
        let want = backends[0].combine(window.clone(), Keys::All).unwrap();
        let OutColumn::I64 { values, .. } = &want.columns[1] else {
            panic!("approx_count_distinct is Int64");
        };
        // Exact up to 256 distinct values (0 for nulls): a window holds the values from
        // its first pane's offset to its last pane's offset plus a pane's.
        for (r, &d) in per_pane.iter().enumerate() {
            let d = d as i64;
            let exact = (window.end - 1) * d / 2 - window.start * d / 2 + d;
            if exact <= 256 {
                assert_eq!(values[r], exact, "key {r}, window {window:?}");
            } else {
                let error = (values[r] - exact).abs() as f64 / exact as f64;
                assert!(error < 0.05, "key {r}, window {window:?}: {}", values[r]);
            }
        }
        for b in &mut backends[1..] {
            let got = b.combine(window.clone(), Keys::All).unwrap();
            assert_same(&want, &got, window.end as u64, b.as_ref());
        }
    }
}

/// HyperLogLog: the relative error stays within its bound over many seeds, and merged
/// pane sketches equal one sketch over all values.
#[test]
fn approx_count_distinct_is_accurate_and_merges_exactly() {
    use panes_kernels::agg::Distinct;
    let mut errors = Vec::new();
    for seed in 0..40u64 {
        let mut rng = Lcg(seed + 1);
        let n = [100usize, 1_000, 10_000, 100_000][seed as usize % 4] + rng.next() as usize % 997;
        let (mut whole, mut panes) = (Distinct::default(), vec![Distinct::default(); 5]);
        let base = rng.next() as i64 * 1_000_003;
        for i in 0..n as i64 {
            // Every value twice, in different panes: duplicates must not count.
            for _ in 0..2 {
                let x = base + i * 7919;
                whole.push_i64(x);
                panes[rng.next() as usize % 5].push_i64(x);
            }
        }
        let mut merged = Distinct::default();
        panes.iter().for_each(|p| merged.merge(p));
        assert_eq!(merged.estimate(), whole.estimate(), "seed {seed}");
        errors.push((whole.estimate() as f64 - n as f64).abs() / n as f64);
    }
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    let max = errors.iter().copied().fold(0.0, f64::max);
    println!("relative error: mean {mean:.4}, max {max:.4}");
    // 2^12 registers: standard error 1.04 / 64 = 1.6%.
    assert!(mean < 0.02, "mean relative error {mean}");
    assert!(max < 0.05, "largest relative error {max}");
    let mut floats = Distinct::default();
    for x in [0.0, -0.0, f64::NAN, -f64::NAN, 1.5] {
        floats.push_f64(x);
    }
    assert_eq!(
        floats.estimate(),
        3,
        "0 and -0 are one value, and so are NaNs"
    );
}

/// Skew as clickstreams have it: in long segments over a few panes, one key holds 27% of
/// the events, the next two 11% and 6%, the rest spread thin; the last segment is one key
/// alone. Each backend's rows equal the reference's. (The GPU folds a key's events in
/// one invocation, tens of thousands of them here; Mesa's lavapipe cut such loops short
/// and lost 55% of a hot key's count in a hop window.)
#[test]
fn very_hot_keys_in_long_segments_add_up() {
    // Every function (soft f64 in the GPU's loops) on shorter segments: still far longer
    // runs than one fold round.
    for (aggs, segment_len) in [(fused_aggs(), 65_536), (all_aggs(false), 8_192)] {
        hot_keys_add_up(&aggs, segment_len, GpuOptions::default());
    }
}

/// The same on the GPU folding in pieces (a hardware GPU's default): a hot key's run is
/// shared among hundreds of invocations and merged back in order; whole runs walked by
/// one invocation each, in rounds, give the same counts, and sums within the bound.
#[test]
fn very_hot_keys_add_up_when_folded_in_pieces() {
    for piece in [64, 1000] {
        let opts = GpuOptions {
            piece_events: Some(piece),
            ..GpuOptions::default()
        };
        hot_keys_add_up(&fused_aggs(), 65_536, opts.clone());
        hot_keys_add_up(&all_aggs(false), 8_192, opts);
    }
    let walk = GpuOptions {
        piece_events: Some(0),
        ..GpuOptions::default()
    };
    hot_keys_add_up(&fused_aggs(), 8_192, walk);
}

/// Five segments of `len` or twice as many events, over two or three panes each.
fn hot_keys_add_up(aggs: &[AggSpec], len: usize, opts: GpuOptions) {
    let mut backends: Vec<Box<dyn Backend>> = vec![
        Box::new(ReferenceBackend::new(aggs.to_vec())),
        Box::new(CpuBackend::new(aggs, 1)),
        gpu(aggs, opts),
    ];
    let mut rng = Lcg(7);
    for segment in 0..5 {
        let n = len * (1 + segment % 2);
        let keys: Vec<u32> = (0..n)
            .map(|_| match rng.next() % 100 {
                _ if segment == 4 => 0,
                0..27 => 0,
                27..38 => 1,
                38..44 => 2,
                _ => 3 + (rng.next() % 18_000) as u32,
            })
            .collect();
        let panes: Vec<i64> = (0..n)
            .map(|i| (segment * 2 + i * 2 / n) as i64 - (rng.next() % 10 == 0) as i64)
            .collect();
        let ts: Vec<i64> = panes.iter().map(|&p| p * 60_000).collect();
        let ints: Vec<i64> = (0..n).map(|_| (rng.next() % 1000) as i64).collect();
        let floats: Vec<f64> = (0..n)
            .map(|_| (rng.next() % 10_000) as f64 / 100.0)
            .collect();
        let columns = [
            Column {
                values: Values::I64(&ints),
                valid: None,
            },
            Column {
                values: Values::F64(&floats),
                valid: None,
            },
        ];
        let ev = Events {
            keys: &keys,
            panes: &panes,
            ts: &ts,
            columns: &columns,
        };
        for b in backends.iter_mut() {
            b.update(&ev).unwrap();
        }
    }
    let want = backends[0].combine(-1..11, Keys::All).unwrap();
    assert!(want.keys.len() > 5_000);
    for b in backends.iter_mut().skip(1) {
        let got = b.combine(-1..11, Keys::All).unwrap();
        assert_same(&want, &got, len as u64, b.as_ref());
    }
}

#[test]
fn counting_rows_alone_runs_on_the_gpu() {
    let aggs = [spec(AggFn::CountRows, 0, Domain::I64)];
    let mut g = gpu(&aggs, GpuOptions::default());
    let keys = [0, 1, 1, 2, 1];
    g.update(&Events {
        keys: &keys,
        panes: &[0; 5],
        ts: &[0; 5],
        columns: &[],
    })
    .unwrap();
    let rows = g.combine(0..1, Keys::All).unwrap();
    assert_eq!(rows.keys, [0, 1, 2]);
    let want = OutColumn::I64 {
        values: vec![1, 3, 1],
        valid: vec![true; 3],
    };
    assert_eq!(rows.columns[0], want);
}

/// A service runs job after job: 500 backends created and dropped in one process share
/// one device (drivers run out of devices: on an H200 no adapter was found after some
/// dozens), and every tenth one still computes.
#[test]
fn five_hundred_gpu_backends_in_one_process() {
    let aggs = [spec(AggFn::Sum, 0, Domain::I64)];
    for i in 0..500i64 {
        let mut g = gpu(&aggs, GpuOptions::default());
        if i % 10 == 0 {
            g.update(&Events {
                keys: &[0, 0],
                panes: &[0, 0],
                ts: &[0, 0],
                columns: &[Column {
                    values: Values::I64(&[i, 1]),
                    valid: None,
                }],
            })
            .unwrap();
            let rows = g.combine(0..1, Keys::All).unwrap();
            let want = OutColumn::I64 {
                values: vec![i + 1],
                valid: vec![true],
            };
            assert_eq!(rows.columns[0], want, "backend {i}");
        }
    }
}

/// The default options take the device's own f64 where the adapter has it (lavapipe
/// does, so the tests above run the native path; the tiny-limits test runs the software
/// one), and say which in the backend's description.
#[test]
fn the_gpu_uses_native_f64_where_the_adapter_has_it() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("the GPU tests need an adapter (lavapipe in CI)");
    let has = adapter.features().contains(panes_kernels::gpu::NATIVE_F64);
    let aggs = [spec(AggFn::Sum, 1, Domain::F64)];
    let native = gpu(&aggs, GpuOptions::default()).describe();
    assert!(
        native.ends_with(if has { "native f64" } else { "software f64" }),
        "{native}"
    );
    let options = GpuOptions {
        features: wgpu::Features::empty(),
        ..GpuOptions::default()
    };
    let soft = gpu(&aggs, options).describe();
    assert!(soft.ends_with("software f64"), "{soft}");
}

/// A checkpoint moves between backends: before each combine every pane is exported and
/// imported into a fresh backend, by turns the CPU (in 2 key partitions) and the GPU, and
/// the rows still equal the reference's.
#[test]
fn pane_state_moves_between_cpu_and_gpu() {
    check_against_reference(0..36, Sketches::FewKeys, &|aggs| {
        let a = aggs.to_vec();
        let turn = std::sync::atomic::AtomicUsize::new(0);
        vec![Box::new(RoundTrip {
            inner: gpu(aggs, GpuOptions::default()),
            fresh: Box::new(move || {
                match turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 {
                    0 => Box::new(CpuBackend::new(&a, 2)),
                    _ => gpu(&a, GpuOptions::default()),
                }
            }),
            fold_block: 1,
            exact: true,
        })]
    });
}
