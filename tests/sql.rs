//! The SQL front end: every example job has a `.sql` twin that compiles into the same job
//! and gives the same rows on every backend; `panes sql` runs and explains scripts and
//! names what it cannot run with its line and column.

use std::path::Path;
use std::process::Command;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use panes::engine::Job;
use panes::engine::job::{JobFile, SinkConfig};
use panes::engine::run::{BackendKind, RunOptions, run_job};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const EXAMPLES: [&str; 6] = [
    "trending",
    "fraud_velocity",
    "iot_anomaly",
    "nexmark_q5",
    "nexmark_q7",
    "nexmark_q11",
];

#[test]
fn every_sql_example_compiles_into_its_job_files_job() {
    for name in EXAMPLES {
        let sql = std::fs::read_to_string(format!("examples/{name}.sql")).expect("the script");
        let from_sql = Job::from_sql(&sql, name).unwrap_or_else(|e| panic!("{e}"));
        let from_toml = Job::from_file(Path::new(&format!("examples/{name}.toml"))).expect("job");
        assert_eq!(from_sql, from_toml, "{name}");
    }
}

/// `job` on `events` events, with every output redirected into `dir`.
fn shrink(mut job: JobFile, events: u64, dir: &Path) -> Job {
    job.source.events = Some(events);
    let into = |s: &mut SinkConfig| {
        let file = Path::new(s.path.as_deref().expect("a file sink"))
            .file_name()
            .expect("a file name")
            .to_owned();
        s.path = Some(dir.join(file).display().to_string());
    };
    into(&mut job.sink);
    job.late.as_mut().map(into);
    job.anomaly.as_mut().map(|a| into(&mut a.sink));
    Job::from_config(job, "test").expect("a valid job")
}

/// Every row of the Parquet file, as text, sorted.
fn rows(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("Parquet")
        .build()
        .expect("a reader");
    let mut out = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.expect("a batch");
        let options = FormatOptions::default();
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("a formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

#[test]
fn sql_examples_give_their_twins_rows_on_every_backend() {
    for name in EXAMPLES {
        let sql = std::fs::read_to_string(format!("examples/{name}.sql")).expect("the script");
        let toml = std::fs::read_to_string(format!("examples/{name}.toml")).expect("the job");
        let events = if name == "iot_anomaly" {
            400_000
        } else {
            60_000
        };
        for backend in [BackendKind::Cpu, BackendKind::Reference, BackendKind::Gpu] {
            let mut outputs = Vec::new();
            for twin in ["sql", "toml"] {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let file = match twin {
                    "sql" => {
                        panes::engine::sql::compile(&sql, name)
                            .expect("compiles")
                            .job
                    }
                    _ => toml::from_str(&toml).expect("a job file"),
                };
                let job = shrink(file, events, dir.path());
                let opts = RunOptions {
                    backend,
                    threads: 2,
                    ..RunOptions::default()
                };
                run_job(&job, opts).unwrap_or_else(|e| panic!("{name} ({twin}, {backend:?}): {e}"));
                let mut all = Vec::new();
                for sink in std::iter::once(job.sink()).chain(job.anomaly().map(|a| &a.sink)) {
                    all.push(rows(sink.path().expect("a file sink")));
                }
                outputs.push(all);
            }
            assert!(!outputs[0][0].is_empty(), "{name}: no rows");
            assert_eq!(outputs[0], outputs[1], "{name} on {backend:?}");
        }
    }
}

fn panes(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_panes"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("panes runs")
}

#[test]
fn panes_sql_runs_a_script_and_explains_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let script =
        "CREATE TABLE bids (ts TIMESTAMP(3), auction_id BIGINT, bidder BIGINT, price BIGINT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
WITH ('connector' = 'panes-generator', 'dataset' = 'nexmark', 'events' = '50000', 'seed' = '3');
CREATE TABLE out WITH ('connector' = 'filesystem', 'path' = 'out.csv', 'format' = 'csv');
INSERT INTO out
SELECT auction_id, window_start, window_end, COUNT(price) AS bids, MAX(price) AS top
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))
WHERE price IS NOT NULL AND price > 100
GROUP BY window_start, window_end, auction_id
HAVING COUNT(price) >= 2";
    let out = panes(&["sql", "-e", script], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("out.csv")).expect("the output");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("auction_id,window_start,window_end,bids,top")
    );
    let mut n = 0;
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let bids: i64 = cells[3].parse().expect("a count");
        let top: i64 = cells[4].parse().expect("a price");
        // HAVING and WHERE: only windows with two bids above 100.
        assert!(bids >= 2 && top > 100, "{line}");
        n += 1;
    }
    assert!(n > 10, "only {n} rows");

    let explain = panes(
        &[
            "sql",
            "-e",
            &script.replace("INSERT INTO", "EXPLAIN INSERT INTO"),
        ],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success(),
        "{}",
        String::from_utf8_lossy(&explain.stderr)
    );
    assert!(
        text.contains("[filter]") && text.contains("windows = \"bids >= 2\""),
        "{text}"
    );
    let job: JobFile = toml::from_str(&text).expect("EXPLAIN prints a job file");
    assert_eq!(job.window.kind, "tumble");
}

#[test]
fn panes_sql_names_the_line_and_column_of_what_it_cannot_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cases = [
        (
            "SELECT a FROM t1\nJOIN t2 ON t1.a = t2.a",
            "<sql>:2:",
            "join is not supported",
        ),
        ("SELECT * FROM t WHERE", "<sql>:1:", "Expected"),
        (
            "CREATE TABLE t (ts TIMESTAMP(3), WATERMARK FOR ts AS ts * 2)\n  WITH ('connector' = 'filesystem', 'path' = 'x');\nSELECT window_start, window_end, COUNT(*) AS n\n  FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end",
            "<sql>:1:34",
            "bounded out-of-orderness",
        ),
    ];
    for (script, position, message) in cases {
        let out = panes(&["sql", "-e", script], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script}");
        assert!(
            err.contains(position) && err.contains(message),
            "{script}: {err}"
        );
    }
}

/// The fraud velocity rule (`examples/fraud_velocity.sql`) against the generator's ground
/// truth: an alert is right when its card made burst payments in its window; a burst is
/// found when an alert of its card overlaps it.
#[test]
fn the_fraud_velocity_rule_finds_the_bursts_of_the_transactions_dataset() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use panes::engine::job::Source;
    use std::collections::HashMap;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let sql = std::fs::read_to_string("examples/fraud_velocity.sql").expect("the script");
    let file = panes::engine::sql::compile(&sql, "fraud_velocity")
        .expect("compiles")
        .job;
    let job = shrink(
        file.clone(),
        file.source.events.expect("events"),
        dir.path(),
    );
    run_job(&job, RunOptions::default()).expect("the rule runs");

    let Source::Generator(g) = job.source() else {
        panic!("the example reads the generator");
    };
    // Burst payments per card, in time order.
    let mut bursts: HashMap<i64, Vec<i64>> = HashMap::new();
    for b in panes::datasets::generate(g.dataset, &g.config).expect("valid config") {
        let ts = b
            .column_by_name("ts")
            .expect("ts")
            .as_primitive::<TimestampMillisecondType>();
        let card = b
            .column_by_name("card_id")
            .expect("card")
            .as_primitive::<Int64Type>();
        let burst = b.column_by_name("burst").expect("burst").as_boolean();
        for i in (0..b.num_rows()).filter(|&i| burst.value(i)) {
            bursts.entry(card.value(i)).or_default().push(ts.value(i));
        }
    }
    let file = std::fs::File::open(job.sink().path().expect("a file")).expect("the alerts");
    let mut alerts: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("Parquet")
        .build()
        .expect("reader")
    {
        let b = b.expect("a batch");
        let card = b
            .column_by_name("card_id")
            .expect("card")
            .as_primitive::<Int64Type>();
        let from = b
            .column_by_name("window_start")
            .expect("start")
            .as_primitive::<TimestampMillisecondType>();
        let to = b
            .column_by_name("window_end")
            .expect("end")
            .as_primitive::<TimestampMillisecondType>();
        for i in 0..b.num_rows() {
            alerts
                .entry(card.value(i))
                .or_default()
                .push((from.value(i), to.value(i)));
        }
    }
    let rows: usize = alerts.values().map(Vec::len).sum();
    let right: usize = alerts
        .iter()
        .map(|(card, windows)| {
            let times = bursts.get(card).map_or(&[][..], Vec::as_slice);
            windows
                .iter()
                .filter(|(from, to)| times.iter().any(|t| from <= t && t < to))
                .count()
        })
        .sum();
    // A card's burst payments, split where a minute passes without one.
    let (mut found, mut all) = (0, 0);
    for (card, times) in &mut bursts {
        times.sort_unstable();
        let mut start = 0;
        for i in 1..=times.len() {
            if i == times.len() || times[i] - times[i - 1] > 60_000 {
                let (first, last) = (times[start], times[i - 1]);
                // A burst the end of the stream cut short has fewer than 10 payments.
                if i - start >= 10 {
                    all += 1;
                    let hit = alerts
                        .get(card)
                        .is_some_and(|w| w.iter().any(|&(from, to)| from <= last && first < to));
                    found += usize::from(hit);
                }
                start = i;
            }
        }
    }
    let precision = right as f64 / rows as f64;
    let recall = found as f64 / all as f64;
    println!(
        "fraud velocity: {rows} alert rows, precision {precision:.4}, {all} bursts, recall {recall:.4}"
    );
    assert!(all > 100 && rows > 500, "{all} bursts, {rows} alerts");
    assert!(precision >= 0.9, "precision {precision}");
    assert!(recall >= 0.9, "recall {recall}");
}

/// A pipeline built from SQL text: `WHERE` drops events after they moved the watermark,
/// `HAVING` drops window rows.
#[test]
fn a_pipeline_from_sql_filters_events_and_windows() {
    use arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use panes::engine::pipeline::{Output, Pipeline};
    use std::sync::Arc;

    let sql = "CREATE TABLE t (ts TIMESTAMP(3), k BIGINT, v BIGINT, WATERMARK FOR ts AS ts)
          WITH ('connector' = 'filesystem', 'path' = 'unused');
        SELECT window_time, k, COUNT(*) AS n, SUM(v) AS total,
               CAST(SUM(v) AS DOUBLE) / COUNT(*) AS mean, SUM(v * v) AS squares,
               MAX(CASE WHEN v > 6 THEN v ELSE 0 END) AS big
        FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '10' SECOND))
        WHERE v > 0
        GROUP BY window_start, window_end, k
        HAVING COUNT(*) >= 2 AND MAX(v) > 6";
    let job = Job::from_sql(sql, "pipeline.sql").expect("compiles");
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    // Aggregates of expressions: SUM(v * v) over the kept 5 and 7, MAX of a CASE.
    for backend in [BackendKind::Cpu, BackendKind::Reference] {
        let mut p = Pipeline::from_job(&job, schema.clone(), 1, backend, 2).expect("builds");
        let batch = |rows: &[(i64, i64, i64)]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.0),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )
            .expect("a batch")
        };
        // Key 1: three events, one of them filtered out; key 2: one event left after WHERE,
        // so HAVING drops its row.
        p.push(
            0,
            &batch(&[
                (1_000, 1, 5),
                (2_000, 1, -3),
                (3_000, 1, 7),
                (4_000, 2, 1),
                (5_000, 2, 0),
            ]),
        )
        .expect("push");
        // An event that WHERE drops still closes the window [0, 10 s).
        p.push(0, &batch(&[(30_000, 3, -1)])).expect("push");
        let mut rows = Vec::new();
        for out in p.poll().expect("poll") {
            if let Output::Rows(b) = out {
                let k = b
                    .column_by_name("k")
                    .expect("k")
                    .as_primitive::<Int64Type>();
                let n = b
                    .column_by_name("n")
                    .expect("n")
                    .as_primitive::<Int64Type>();
                let total = b
                    .column_by_name("total")
                    .expect("total")
                    .as_primitive::<Int64Type>();
                let int = |name: &str| {
                    b.column_by_name(name)
                        .expect(name)
                        .as_primitive::<Int64Type>()
                        .clone()
                };
                let (squares, big) = (int("squares"), int("big"));
                for i in 0..b.num_rows() {
                    rows.push((
                        k.value(i),
                        n.value(i),
                        total.value(i),
                        squares.value(i),
                        big.value(i),
                    ));
                }
            }
        }
        assert_eq!(rows, [(1, 2, 12, 74, 7)], "{backend}");
    }
}
