//! Golden jobs: each folder of `tests/golden/` holds a job file, its input, and the output
//! worked out by hand (`expected.csv`, and `expected_late.csv` for the late events). Every
//! job runs on every backend at several batch sizes and must give the same rows (row order
//! within the file may differ with batching, so rows are compared sorted). Each job also
//! runs with a checkpoint after every event, and restarts from each of them as if it had
//! crashed there: the published output must be the same rows. They run from a service's
//! own source into its own sinks too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use panes::engine::Job;
use panes::engine::job::{Checkpoint, Sink, Trigger};
use panes::engine::run::{BackendKind, Connectors, RunOptions, run_job};
use panes::engine::sinks::{Callback, Sink as OwnSink};
use panes::engine::sources::{Position, Source, SourceBatch};

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
                let job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
                let late = job.late().map(|_| Sink::Csv(out.path().join("late.csv")));
                let job = (job.with_sinks(Sink::Csv(out.path().join("out.csv")), late))
                    .expect("CSV sinks");
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
        let job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
        let late = job.late().map(|_| Sink::Csv(out.path().join("late")));
        let chk = out.path().join("chk");
        let job = (job.with_sinks(Sink::Csv(out.path().join("out")), late))
            .and_then(|job| {
                job.with_checkpoint(Some(Checkpoint {
                    dir: chk.clone(),
                    trigger: Trigger::Events(1),
                    keep: usize::MAX,
                }))
            })
            .expect("CSV sinks and checkpoints");
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

/// A service's own source: the case's input, read with Arrow's CSV reader and handed out
/// `rows` rows at a time, its position the number of batches handed out.
struct OwnSource {
    batches: Vec<RecordBatch>,
    next: usize,
    /// Rows handed out, for the test to see that the run read this source.
    read: Arc<AtomicU64>,
}

impl OwnSource {
    fn new(case: &Path, rows: usize, read: Arc<AtomicU64>) -> OwnSource {
        let path = case.join("input.csv");
        let open = || std::fs::File::open(&path).expect("the case's input");
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format.infer_schema(open(), None).expect("a CSV schema");
        let reader = arrow::csv::ReaderBuilder::new(Arc::new(schema))
            .with_header(true)
            .with_batch_size(rows)
            .build(open())
            .expect("a CSV reader");
        let batches = reader.collect::<Result<Vec<_>, _>>().expect("CSV batches");
        OwnSource {
            batches,
            next: 0,
            read,
        }
    }
}

impl Source for OwnSource {
    fn schema(&self) -> SchemaRef {
        self.batches[0].schema()
    }
    fn partitions(&self) -> usize {
        1
    }
    fn total_rows(&self) -> Option<u64> {
        None
    }
    fn next_batch(&mut self) -> panes::engine::Result<Option<SourceBatch>> {
        let Some(batch) = self.batches.get(self.next).cloned() else {
            return Ok(None);
        };
        self.next += 1;
        self.read
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(Some(SourceBatch {
            partition: 0,
            batch,
            origin: "own source".into(),
            first_row: 0,
            after: Position::Custom {
                at: self.next.to_string(),
            },
            malformed: Vec::new(),
        }))
    }
    fn seek(&mut self, to: &Position) -> panes::engine::Result<()> {
        let Position::Custom { at } = to else {
            panic!("a position of another source: {to:?}")
        };
        self.next = at.parse().expect("a batch count");
        Ok(())
    }
}

/// Batches as CSV lines: the header, then the rows sorted.
fn csv_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut w = arrow::csv::Writer::new(Vec::new());
    for b in batches {
        w.write(b).expect("CSV");
    }
    let text = String::from_utf8(w.into_inner()).expect("UTF-8");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Each batch repeats the header: keep the first.
    let header = lines[0].clone();
    lines.retain(|l| *l != header);
    lines.sort();
    std::iter::once(header).chain(lines).collect()
}

type Collected = Arc<Mutex<Vec<RecordBatch>>>;

fn collecting(name: &str) -> (Box<dyn OwnSink>, Collected) {
    let got: Collected = Arc::default();
    let into = got.clone();
    let sink = Callback::new(name, move |b: &RecordBatch| {
        into.lock().map_err(|e| e.to_string())?.push(b.clone());
        Ok(())
    });
    (Box::new(sink), got)
}

#[test]
fn golden_jobs_run_from_a_services_own_source_into_callback_sinks() {
    for dir in std::fs::read_dir("tests/golden").expect("tests/golden exists") {
        let dir = dir.expect("a folder").path();
        let job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
        let ((sink, rows), (late, late_rows)) = (collecting("rows"), collecting("late"));
        let read = Arc::new(AtomicU64::new(0));
        let opts = RunOptions {
            backend: BackendKind::Cpu,
            connectors: Connectors {
                source: Some(Box::new(OwnSource::new(&dir, 2, read.clone()))),
                sink: Some(sink),
                late: Some(late),
                ..Connectors::default()
            },
            ..RunOptions::default()
        };
        let summary = run_job(&job, opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(summary.stats.events_in > 0, "{}", dir.display());
        assert_eq!(read.load(Ordering::Relaxed), summary.stats.events_in);
        let got = |name: &str| {
            let batches = if name == "out" { &rows } else { &late_rows };
            csv_lines(&batches.lock().expect("rows"))
        };
        assert_expected(&dir, got, &format!("{} from its own source", dir.display()));
    }
}

/// What a staging sink did, in order: `stage id -> names` and `publish names`.
type Calls = Arc<Mutex<Vec<String>>>;

/// A sink of a service's own that takes part in checkpoints: it stages what was written
/// since the last checkpoint under a name, and checks when asked to publish that the
/// checkpoint listing it is durable (its manifest exists).
struct Staging {
    checkpoints: PathBuf,
    pending: usize,
    calls: Calls,
}

impl OwnSink for Staging {
    fn id(&self) -> String {
        "staging".into()
    }
    fn write(&mut self, batch: &RecordBatch) -> panes::engine::Result<()> {
        self.pending += batch.num_rows();
        Ok(())
    }
    fn stage(&mut self, checkpoint: u64) -> panes::engine::Result<Vec<String>> {
        let staged: Vec<String> = (self.pending > 0)
            .then(|| format!("{checkpoint}:{}", self.pending))
            .into_iter()
            .collect();
        self.pending = 0;
        let mut calls = self.calls.lock().expect("calls");
        calls.push(format!("stage {checkpoint} -> {staged:?}"));
        Ok(staged)
    }
    fn publish(&mut self, staged: &[String]) -> panes::engine::Result<()> {
        for name in staged {
            let id: u64 = name
                .split(':')
                .next()
                .and_then(|i| i.parse().ok())
                .expect("an id");
            let manifest = self
                .checkpoints
                .join(format!("chk-{id:06}"))
                .join("MANIFEST.json");
            assert!(
                manifest.exists(),
                "{name} published before its checkpoint is durable"
            );
        }
        self.calls
            .lock()
            .expect("calls")
            .push(format!("publish {staged:?}"));
        Ok(())
    }
}

#[test]
fn a_services_own_sink_takes_part_in_the_checkpoints_two_phase_commit() {
    let dir = Path::new("tests/golden/hop_revisions");
    let out = tempfile::tempdir().expect("temp dir");
    let job = Job::from_file(&dir.join("job.toml")).expect("valid golden job");
    let chk = out.path().join("chk");
    let job = (job.with_checkpoint(Some(Checkpoint {
        dir: chk.clone(),
        trigger: Trigger::Events(2),
        keep: usize::MAX,
    })))
    .expect("checkpoints");
    let run = |calls: &Calls| {
        let sink = Staging {
            checkpoints: chk.clone(),
            pending: 0,
            calls: calls.clone(),
        };
        let opts = RunOptions {
            backend: BackendKind::Cpu,
            batch_rows: 1,
            connectors: Connectors {
                sink: Some(Box::new(sink)),
                ..Connectors::default()
            },
            ..RunOptions::default()
        };
        run_job(&job, opts).expect("the job runs")
    };
    let calls = Calls::default();
    let taken = run(&calls).checkpoints;
    let calls = calls.lock().expect("calls").clone();
    assert!(taken >= 3, "checkpoints every 2 events: {taken}");
    // Every checkpoint stages, then publishes what it staged, in checkpoint order.
    assert_eq!(calls.len() as u64, 2 * taken, "{calls:#?}");
    let mut rows = 0;
    for (i, pair) in calls.chunks(2).enumerate() {
        let id = i + 1;
        let (stage, publish) = (&pair[0], &pair[1]);
        let names = stage
            .strip_prefix(&format!("stage {id} -> "))
            .unwrap_or_else(|| panic!("{stage}"));
        assert_eq!(publish, &format!("publish {names}"));
        rows += names
            .split(['"'])
            .filter_map(|n| n.split_once(':').and_then(|(_, r)| r.parse::<usize>().ok()))
            .sum::<usize>();
    }
    let expected = sorted_lines(&dir.join("expected.csv")).len() - 1;
    assert_eq!(rows, expected, "every row staged once: {calls:#?}");

    // As if the job had crashed after checkpoint 2 published nothing yet: the restart
    // publishes what checkpoint 2 listed before anything else.
    for later in 3..=taken {
        std::fs::remove_dir_all(chk.join(format!("chk-{later:06}"))).expect("remove");
    }
    let again = Calls::default();
    let summary = run(&again);
    assert_eq!(summary.restored_from, Some(2));
    let again = again.lock().expect("calls").clone();
    let listed = calls[3].clone();
    assert_eq!(
        again[0], listed,
        "the restart publishes checkpoint 2's list first"
    );
    assert!(again[1].starts_with("stage 3 -> "), "{again:#?}");
}

#[test]
fn an_alerts_sink_for_a_job_without_anomaly_detection_is_an_error() {
    let job = Job::from_file(Path::new("tests/golden/tumble_late/job.toml")).expect("a job");
    let (alerts, _) = collecting("alerts");
    let opts = RunOptions {
        connectors: Connectors {
            alerts: Some(alerts),
            ..Connectors::default()
        },
        ..RunOptions::default()
    };
    let err = run_job(&job, opts).expect_err("no [anomaly]");
    assert!(
        err.to_string().contains("the job has no [anomaly] section"),
        "{err}"
    );
}
