//! Golden jobs: each folder of `tests/golden/` holds a job file, its input, and the output
//! worked out by hand (`expected.csv`, and `expected_late.csv` for the late events). Every
//! job runs on every backend at several batch sizes and must give the same rows (row order
//! within the file may differ with batching, so rows are compared sorted). Each job also
//! runs with a checkpoint after every event, and restarts from each of them as if it had
//! crashed there: the published output must be the same rows.

use std::path::Path;

use panes::engine::Job;
use panes::engine::job::{Checkpoint, Sink, Trigger};
use panes::engine::run::{BackendKind, RunOptions, run_job};

fn sorted_lines(path: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1..].sort();
    lines
}

/// Checks the rows `got("out")` (and `got("late")`, where the case has late events) against
/// the case's expected files.
fn assert_expected(case: &Path, got: impl Fn(&str) -> Vec<String>, ctx: &str) {
    assert_eq!(
        got("out"),
        sorted_lines(&case.join("expected.csv")),
        "{ctx}"
    );
    let expected_late = case.join("expected_late.csv");
    if expected_late.exists() {
        assert_eq!(got("late"), sorted_lines(&expected_late), "{ctx}: late");
    }
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
                let got = |name: &str| sorted_lines(&out.path().join(format!("{name}.csv")));
                assert_expected(&dir, got, &ctx);
            }
        }
        cases += 1;
    }
    assert!(cases >= 2, "golden cases are missing");
}

/// The rows of a directory of CSV part files: the header once, then every part's rows.
fn sorted_parts(dir: &Path) -> Vec<String> {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    parts.sort();
    let (mut header, mut rows) = (None, Vec::new());
    for part in parts {
        let lines = sorted_lines(&part);
        header.get_or_insert(lines[0].clone());
        rows.extend(lines[1..].iter().cloned());
    }
    rows.sort();
    header.into_iter().chain(rows).collect()
}

#[test]
fn golden_jobs_restored_from_every_checkpoint_give_the_expected_rows() {
    for dir in std::fs::read_dir("tests/golden").expect("tests/golden exists") {
        let dir = dir.expect("a folder").path();
        let out = tempfile::tempdir().expect("temp dir");
        let mut job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
        job.sink = Sink::Csv(out.path().join("out"));
        job.late = job.late.map(|_| Sink::Csv(out.path().join("late")));
        let chk = out.path().join("chk");
        job.checkpoint = Some(Checkpoint {
            dir: chk.clone(),
            trigger: Trigger::Events(1),
            keep: usize::MAX,
        });
        let run = || {
            let opts = RunOptions {
                backend: BackendKind::Cpu,
                batch_rows: 1,
                ..RunOptions::default()
            };
            run_job(&job, opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        };
        let taken = run().checkpoints;
        assert!(
            taken > 5,
            "{}: a checkpoint after every event, {taken} taken",
            dir.display()
        );
        // As if the job had crashed right after checkpoint k: later checkpoints are gone,
        // their parts are still published; the restart must end with the same rows.
        for k in (1..taken).rev() {
            for later in k + 1..=taken {
                let d = chk.join(format!("chk-{later:06}"));
                std::fs::remove_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
            }
            let summary = run();
            let ctx = format!("{} restored from checkpoint {k}", dir.display());
            assert_eq!(summary.restored_from, Some(k), "{ctx}");
            assert_expected(&dir, |name| sorted_parts(&out.path().join(name)), &ctx);
        }
    }
}
