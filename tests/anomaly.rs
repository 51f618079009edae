//! The IoT anomaly example finds the anomalies injected into the iot dataset: recall and
//! precision of its alerts against the generator's ground truth, both at least 0.9.

use std::collections::BTreeSet;
use std::fs::File;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use panes::engine::Job;
use panes::engine::job::Source;
use panes::engine::run::{BackendKind, RunOptions, run_job};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// (sensor, window start) cells of a Parquet file with `sensor_id` and `window_start`.
fn cells(path: &std::path::Path) -> BTreeSet<(i64, i64)> {
    let file = File::open(path).expect("the alerts file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("Parquet")
        .build()
        .expect("a reader");
    let mut out = BTreeSet::new();
    for b in reader {
        let b = b.expect("a batch");
        let s = b.column_by_name("sensor_id").expect("sensor_id");
        let w = b.column_by_name("window_start").expect("window_start");
        let (s, w) = (
            s.as_primitive::<Int64Type>(),
            w.as_primitive::<TimestampMillisecondType>(),
        );
        out.extend(s.values().iter().copied().zip(w.values().iter().copied()));
    }
    out
}

#[test]
fn the_iot_example_finds_the_injected_anomalies() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = std::fs::read_to_string("examples/iot_anomaly.toml").expect("the example");
    let text = text.replace("out/", &format!("{}/", dir.path().display()));
    let job = Job::from_toml(&text, "examples/iot_anomaly.toml").expect("a valid job");
    let opts = RunOptions {
        backend: BackendKind::Cpu,
        ..RunOptions::default()
    };
    let summary = run_job(&job, opts).expect("the job runs");
    let alerts = cells(&dir.path().join("alerts.parquet"));
    assert_eq!(summary.stats.alerts, alerts.len() as u64);

    let Source::Generator(g) = job.source() else {
        panic!("the example reads the generator");
    };
    let labels = panes::datasets::iot::anomaly_labels(&g.config);
    let s = labels.column(0).as_primitive::<Int64Type>().values();
    let w = labels.column(1).as_primitive::<TimestampMillisecondType>();
    let shift = labels
        .column(3)
        .as_primitive::<arrow::datatypes::Float64Type>();
    let truth: BTreeSet<(i64, i64)> = s.iter().copied().zip(w.values().iter().copied()).collect();
    assert!(
        shift.values().iter().all(|x| x.abs() >= 4.0),
        "shifts of 4 sd or more"
    );

    // A sensor can alert once it has `min_history` windows (the first one, before the first
    // labelled minute, is partial).
    let history = job.anomaly().expect("an anomaly job").min_history as i64;
    let first = *w.values().iter().min().expect("labels");
    let alertable: BTreeSet<(i64, i64)> = truth
        .iter()
        .copied()
        .filter(|&(_, start)| start >= first + (history - 1) * 60_000)
        .collect();
    let found = alertable.intersection(&alerts).count() as f64;
    let recall = found / alertable.len() as f64;
    let precision = alerts.intersection(&truth).count() as f64 / alerts.len() as f64;
    println!(
        "{} injected, {} alertable, {} alerts: recall {recall:.3}, precision {precision:.3}",
        truth.len(),
        alertable.len(),
        alerts.len()
    );
    assert!(alertable.len() >= 50, "too few anomalies to measure");
    assert!(recall >= 0.9, "recall {recall}");
    assert!(precision >= 0.9, "precision {precision}");
}
