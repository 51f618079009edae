//! `benches/peers/run.sh` on small data: DuckDB, Polars and Apache Flink run panes'
//! tumbling-window query on the same events and return its rows; a peer made to return other
//! rows fails the run.

use std::process::Command;

fn peers(out: &std::path::Path, corrupt: Option<&str>, flink: bool) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg("benches/peers/run.sh")
        .env("EVENTS", "200000")
        .env("KEYS", "2000")
        .env("RUNS", "1")
        .env("THREADS", "2")
        .env("PANES", env!("CARGO_BIN_EXE_panes"))
        .env("OUT", out)
        .env("FLINK", if flink { "1" } else { "0" });
    if let Some(engine) = corrupt {
        cmd.env("PEERS_CORRUPT", engine);
    }
    cmd.output().expect("bash runs the script")
}

#[test]
fn duckdb_polars_and_flink_return_panes_rows_and_a_peer_that_does_not_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = peers(dir.path(), None, true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("peers.json")).unwrap())
            .expect("peers.json");
    for engine in ["panes", "duckdb", "polars", "flink"] {
        assert_eq!(report[engine]["agrees"], true, "{engine}: {report}");
        assert!(
            report[engine]["median_seconds"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    assert!(
        report["duckdb"]["rows"].as_u64().unwrap() > 1000,
        "{report}"
    );

    assert_eq!(
        report["flink"]["rows"], report["duckdb"]["rows"],
        "{report}"
    );

    // The check itself (Flink left out: it is the same check, and a slow start).
    let out = peers(dir.path(), Some("polars"), false);
    assert!(!out.status.success(), "a disagreement fails the run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("polars returned other rows"), "{err}");
}
