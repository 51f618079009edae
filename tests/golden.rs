//! Golden jobs: each folder of `tests/golden/` holds a job file, its input, and the output
//! worked out by hand (`expected.csv`, and `expected_late.csv` for the late events). Every
//! job runs on every backend at several batch sizes and must give the same rows (row order
//! within the file may differ with batching, so rows are compared sorted).

use std::path::Path;

use panes::engine::Job;
use panes::engine::job::Sink;
use panes::engine::run::{BackendKind, RunOptions, run_job};

fn sorted_lines(path: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1..].sort();
    lines
}

#[test]
fn golden_jobs_give_the_expected_rows_on_every_backend_and_batching() {
    let mut cases = 0;
    for dir in std::fs::read_dir("tests/golden").expect("tests/golden exists") {
        let dir = dir.expect("a folder").path();
        for backend in [BackendKind::Reference, BackendKind::Cpu] {
            for batch_rows in [1, 3, 65536] {
                let out = tempfile::tempdir().expect("temp dir");
                let mut job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
                job.sink = Sink::Csv(out.path().join("out.csv"));
                job.late = job.late.map(|_| Sink::Csv(out.path().join("late.csv")));
                let opts = RunOptions {
                    backend,
                    batch_rows,
                    ..RunOptions::default()
                };
                run_job(&job, opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                let ctx = format!("{} on {backend} in batches of {batch_rows}", dir.display());
                assert_eq!(
                    sorted_lines(&out.path().join("out.csv")),
                    sorted_lines(&dir.join("expected.csv")),
                    "{ctx}"
                );
                let expected_late = dir.join("expected_late.csv");
                if expected_late.exists() {
                    assert_eq!(
                        sorted_lines(&out.path().join("late.csv")),
                        sorted_lines(&expected_late),
                        "{ctx}: late"
                    );
                }
            }
        }
        cases += 1;
    }
    assert!(cases >= 2, "golden cases are missing");
}
