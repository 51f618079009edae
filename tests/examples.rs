//! The example jobs run on small generated datasets and give the right answers: Nexmark q5
//! and q7 against brute force over the same generated events, trending by its invariants.
//! (The IoT anomaly example is checked against its ground truth in `tests/anomaly.rs`.)

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchReader};
use arrow::compute::concat_batches;
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use panes::engine::Job;
use panes::engine::job::Source;
use panes::engine::run::{BackendKind, RunOptions, run_job};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Runs `examples/NAME.toml` on `events` events with no late ones, writing into `dir`;
/// returns the job and its output.
fn run_example(name: &str, events: u64, dir: &Path) -> (Job, RecordBatch) {
    let path = format!("examples/{name}.toml");
    let text = std::fs::read_to_string(&path).expect("the example");
    let line = text
        .lines()
        .find(|l| l.starts_with("events = "))
        .expect("the example sets events");
    let text = text
        .replace(line, &format!("events = {events}\nlate_share = 0.0"))
        .replace("out/", &format!("{}/", dir.display()));
    let job = Job::from_toml(&text, &path).expect("a valid job");
    let opts = RunOptions {
        backend: BackendKind::Cpu,
        ..RunOptions::default()
    };
    let summary = run_job(&job, opts).expect("the example runs");
    assert_eq!(summary.stats.late_events, 0, "{name}");
    let out = dir.join(format!("{name}.parquet"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).expect("output"))
        .expect("Parquet")
        .build()
        .expect("a reader");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("a batch")).collect();
    (job, concat_batches(&schema, &batches).expect("one schema"))
}

fn ints(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let col = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no {name}"));
    match col.as_primitive_opt::<Int64Type>() {
        Some(a) => a.iter().collect(),
        None => col
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .collect(),
    }
}

/// The generated events of a job: (ts, auction_id, price) of every bid.
fn bids(job: &Job) -> Vec<(i64, i64, i64)> {
    let Source::Generator(g) = job.source() else {
        panic!("examples read the generator");
    };
    let mut out = Vec::new();
    for b in panes::datasets::generate(g.dataset, &g.config).expect("valid config") {
        let (ts, auction, price) = (ints(&b, "ts"), ints(&b, "auction_id"), ints(&b, "price"));
        for i in 0..b.num_rows() {
            if let (Some(t), Some(a), Some(p)) = (ts[i], auction[i], price[i]) {
                out.push((t, a, p));
            }
        }
    }
    out
}

#[test]
fn nexmark_q5_finds_the_hottest_auction_of_each_window() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (job, out) = run_example("nexmark_q5", 300_000, dir.path());
    // Brute force: bids per (window start, auction); windows of 10 s every 2 s.
    let mut counts: HashMap<(i64, i64), i64> = HashMap::new();
    for (t, a, _) in bids(&job) {
        let last = t.div_euclid(2_000) * 2_000;
        for start in (0..5).map(|i| last - i * 2_000) {
            *counts.entry((start, a)).or_default() += 1;
        }
    }
    let mut best: HashMap<i64, i64> = HashMap::new();
    for (&(w, _), &n) in &counts {
        let e = best.entry(w).or_default();
        *e = (*e).max(n);
    }
    let (starts, auctions, got) = (
        ints(&out, "window_start"),
        ints(&out, "auction_id"),
        ints(&out, "bids"),
    );
    assert_eq!(out.num_rows(), best.len(), "one row per window");
    for i in 0..out.num_rows() {
        let (w, a, n) = (starts[i].unwrap(), auctions[i].unwrap(), got[i].unwrap());
        assert_eq!(n, best[&w], "window {w}: the hottest auction's bids");
        assert_eq!(
            counts[&(w, a)],
            n,
            "window {w}: auction {a} has that many bids"
        );
    }
    assert!(ints(&out, "rownum").iter().all(|r| *r == Some(1)));
}

#[test]
fn nexmark_q7_finds_the_highest_bid_of_each_window() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (job, out) = run_example("nexmark_q7", 300_000, dir.path());
    let mut want: HashMap<i64, (i64, i64)> = HashMap::new();
    for (t, _, p) in bids(&job) {
        let e = want
            .entry(t.div_euclid(10_000) * 10_000)
            .or_insert((i64::MIN, 0));
        *e = (e.0.max(p), e.1 + 1);
    }
    let (starts, max, n) = (
        ints(&out, "window_start"),
        ints(&out, "max_price"),
        ints(&out, "bids"),
    );
    assert_eq!(out.num_rows(), want.len());
    for i in 0..out.num_rows() {
        let w = starts[i].unwrap();
        assert_eq!((max[i].unwrap(), n[i].unwrap()), want[&w], "window {w}");
    }
}

#[test]
fn trending_keeps_ten_articles_per_window_in_rank_order() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_, out) = run_example("trending", 200_000, dir.path());
    let (starts, views, readers, ranks) = (
        ints(&out, "window_start"),
        ints(&out, "views"),
        ints(&out, "readers"),
        ints(&out, "rn"),
    );
    assert!(out.num_rows() >= 10);
    let mut per_window: HashMap<i64, Vec<usize>> = HashMap::new();
    for i in 0..out.num_rows() {
        per_window.entry(starts[i].unwrap()).or_default().push(i);
    }
    for (w, rows) in per_window {
        assert!(rows.len() <= 10, "window {w}");
        for (r, pair) in rows.windows(2).enumerate() {
            assert!(views[pair[0]] >= views[pair[1]], "window {w}: views fall");
            assert_eq!(ranks[pair[0]], Some(r as i64 + 1));
        }
        for &i in &rows {
            let (v, u) = (views[i].unwrap(), readers[i].unwrap());
            // Unique readers: at least one, at most one per view (exact below 256).
            assert!(
                u >= 1 && (u <= v || v > 256),
                "window {w}: {u} readers, {v} views"
            );
        }
    }
    assert!(out.column_by_name("readers").unwrap().null_count() == 0);
}

#[test]
fn nexmark_q11_counts_each_bidders_sessions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (job, out) = run_example("nexmark_q11", 300_000, dir.path());
    let Source::Generator(g) = job.source() else {
        panic!("examples read the generator");
    };
    // Brute force: each bidder's bid times, sorted, split where 10 s pass without a bid.
    let mut times: HashMap<i64, Vec<i64>> = HashMap::new();
    for b in panes::datasets::generate(g.dataset, &g.config).expect("valid config") {
        let (ts, bidder) = (ints(&b, "ts"), ints(&b, "bidder"));
        for i in 0..b.num_rows() {
            if let (Some(t), Some(who)) = (ts[i], bidder[i]) {
                times.entry(who).or_default().push(t);
            }
        }
    }
    let mut want = Vec::new();
    for (who, mut ts) in times {
        ts.sort_unstable();
        let mut first = 0;
        for i in 1..=ts.len() {
            if i == ts.len() || ts[i] - ts[i - 1] >= 10_000 {
                let n = (i - first) as i64;
                want.push((who, ts[first], ts[i - 1] + 10_000, n));
                first = i;
            }
        }
    }
    want.sort_unstable();
    let (who, start, end, bids) = (
        ints(&out, "bidder"),
        ints(&out, "window_start"),
        ints(&out, "window_end"),
        ints(&out, "bids"),
    );
    let mut got: Vec<(i64, i64, i64, i64)> = (0..out.num_rows())
        .filter_map(|i| Some((who[i]?, start[i]?, end[i]?, bids[i]?)))
        .collect();
    got.sort_unstable();
    assert!(want.len() > 1000, "enough sessions: {}", want.len());
    assert_eq!(got, want);
}
