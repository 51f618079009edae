//! State spill under a memory budget: a hop job over 5M distinct keys, run in memory and
//! with a budget far below its state, must publish the same rows; the spilled run's peak
//! resident memory (VmHWM from /proc, as `panes run` reports it) must stay within the
//! budget plus the stated overhead, and far below the in-memory run's.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tempfile::TempDir;

const KEYS: i64 = 5_000_000;
const EVENTS: i64 = 12_000_000;
/// Events per minute of event time: each one-minute pane holds about 900 000 keys.
const PER_MINUTE: i64 = 1_000_000;
const MIB: u64 = 1 << 20;

const JOB: &str = r#"
[source]
kind = "parquet"
path = 'DIR/input.parquet'
[time]
column = "ts"
max_out_of_orderness = "1s"
[window]
kind = "hop"
size = "10m"
slide = "1m"
[key]
columns = ["key"]
[[aggregate]]
name = "n"
fn = "count"
[[aggregate]]
name = "total"
fn = "sum"
column = "value"
[sink]
path = 'DIR/OUT.parquet'
"#;

/// Keys spread over all 5M ids (a multiplicative hash of the row number), time rising.
fn write_input(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let file = File::create(path).expect("input");
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).expect("writer");
    let step = 1 << 20;
    for start in (0..EVENTS).step_by(step) {
        let rows = start..(start + step as i64).min(EVENTS);
        let ts = rows
            .clone()
            .map(|i| 1_700_000_000_000 + i * 60_000 / PER_MINUTE);
        let key = rows.clone().map(|i| (i * 2_654_435_761) % KEYS);
        let value = rows.map(|i| (i % 1000) as f64 * 0.5);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(ts)),
                Arc::new(Int64Array::from_iter_values(key)),
                Arc::new(Float64Array::from_iter_values(value)),
            ],
        )
        .expect("batch");
        w.write(&batch).expect("write");
    }
    w.close().expect("close");
}

/// Runs the job writing to `out`; returns panes' summary.
fn run(dir: &Path, out: &str, args: &[&str]) -> String {
    let job = dir.join(format!("{out}.toml"));
    let text = JOB
        .replace("DIR", &dir.display().to_string())
        .replace("OUT", out);
    std::fs::write(&job, text).expect("job");
    let output = Command::new(env!("CARGO_BIN_EXE_panes"))
        .arg("run")
        .arg(&job)
        .args(["--backend", "cpu"])
        .args(args)
        .output()
        .expect("panes runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// A "name  12.3 MiB" figure of a run summary, in bytes.
fn mib(summary: &str, name: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in {summary}"));
    let value: f64 = line[name.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    (value * MIB as f64) as u64
}

fn same_rows(a: &Path, b: &Path) {
    let open = |p: &Path| {
        ParquetRecordBatchReaderBuilder::try_new(File::open(p).expect("output"))
            .and_then(|b| b.with_batch_size(1 << 16).build())
            .expect("parquet")
    };
    let (mut rows, mut x, mut y) = (0, open(a), open(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => break,
            (Some(p), Some(q)) => {
                let (p, q) = (p.expect("batch"), q.expect("batch"));
                assert_eq!(p, q, "rows {rows}.. differ");
                rows += p.num_rows();
            }
            _ => panic!("the outputs differ in length after {rows} rows"),
        }
    }
    assert!(
        rows > 10_000_000,
        "the job emits every key of every window: {rows}"
    );
}

#[test]
fn a_hop_job_over_5m_keys_spills_within_its_budget_and_matches_the_in_memory_run() {
    let dir = TempDir::new().expect("temp dir");
    write_input(&dir.path().join("input.parquet"));

    let in_memory = run(dir.path(), "memory", &[]);
    let budget = 512 * MIB;
    let spilled = run(
        dir.path(),
        "spilled",
        &["--memory-budget", "512MiB", "--batch-rows", "16384"],
    );
    same_rows(
        &dir.path().join("memory.parquet"),
        &dir.path().join("spilled.parquet"),
    );
    let panes: u64 = spilled
        .lines()
        .find_map(|l| l.strip_prefix("spilled"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("nothing spilled: {spilled}"));
    assert!(panes >= 5, "{spilled}");

    let (state_full, rss_full) = (
        mib(&in_memory, "peak state"),
        mib(&in_memory, "peak memory"),
    );
    let (state, rss) = (mib(&spilled, "peak state"), mib(&spilled, "peak memory"));
    eprintln!(
        "in memory: state {} MiB, RSS {} MiB; budget {} MiB: state {} MiB, RSS {} MiB",
        state_full / MIB,
        rss_full / MIB,
        budget / MIB,
        state / MIB,
        rss / MIB
    );
    assert!(
        state_full > 2 * budget,
        "the state ({state_full} B) is far above the budget"
    );
    // Between spills (after each batch) a new pane opens for all keys: the stated margin.
    assert!(
        state < budget + budget / 4,
        "peak state {} MiB with a budget of {} MiB",
        state / MIB,
        budget / MIB
    );
    // What the state saves shows in the resident memory (VmHWM), at least half of it.
    assert!(
        rss + (state_full - state) / 2 < rss_full,
        "peak RSS {} MiB spilled vs {} MiB in memory",
        rss / MIB,
        rss_full / MIB
    );
    // The stated overhead over the budget does not grow with the panes held: one new pane
    // and one pane read back (dense over all 5M key ids, about 128 MiB each, plus the
    // Arrow batch it is read from), one window's result rows, and the process itself.
    let overhead = 600 * MIB;
    assert!(
        rss < budget + overhead,
        "peak RSS {} MiB exceeds the budget of {} MiB plus {} MiB",
        rss / MIB,
        budget / MIB,
        overhead / MIB
    );
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("panes-spill-"))
        .count();
    assert_eq!(leftovers, 0, "spill files are removed at the end");
}
