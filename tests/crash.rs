//! Crash and restore: jobs with checkpoints run as child processes, killed with SIGKILL at
//! random moments and at named points of a checkpoint (after staging the sink parts, after
//! writing the state, after the manifest, in the middle of publishing), then restarted
//! until they finish. The published output (results, late events, alerts) must equal an
//! uninterrupted run's, row for row. Corrupted checkpoints must be detected and skipped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow::util::display::array_value_to_string;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use tempfile::TempDir;

mod support;
use support::s3_endpoint;

const CHECKPOINT: &str = r#"
[checkpoint]
dir = 'DIR/chk'
every_events = 20000
"#;

/// Tumbling minutes over a Parquet file with small row groups, allowed lateness (so rows
/// carry revisions) and a late-event sink.
const TUMBLE: &str = r#"
[source]
kind = "parquet"
path = 'INPUT'
[time]
column = "ts"
max_out_of_orderness = "2s"
allowed_lateness = "3s"
[window]
kind = "tumble"
size = "1m"
[key]
columns = ["article_id"]
[[aggregate]]
name = "views"
fn = "count"
[[aggregate]]
name = "scroll"
fn = "sum"
column = "scroll_depth"
[[aggregate]]
name = "last_scroll"
fn = "last"
column = "scroll_depth"
[sink]
path = 'DIR/out'
[late]
path = 'DIR/late'
"#;

/// Hop windows from a two-partition generator, with distinct counts and moments.
const HOP: &str = r#"
[source]
kind = "generator"
dataset = "clickstream"
events = 300000
keys = 5000
seed = 11
partitions = 2
[time]
column = "ts"
max_out_of_orderness = "5s"
[window]
kind = "hop"
size = "2m"
slide = "30s"
[key]
columns = ["article_id"]
[[aggregate]]
name = "readers"
fn = "approx_count_distinct"
column = "user_id"
[[aggregate]]
name = "scroll_sd"
fn = "stddev_samp"
column = "scroll_depth"
[sink]
kind = "csv"
path = 'DIR/out'
[late]
path = 'DIR/late'
"#;

/// Session windows per reader, with allowed lateness.
const SESSION: &str = r#"
[source]
kind = "generator"
dataset = "clickstream"
events = 300000
keys = 3000
seed = 5
[time]
column = "ts"
max_out_of_orderness = "3s"
allowed_lateness = "2s"
[window]
kind = "session"
gap = "20s"
[key]
columns = ["user_id"]
[[aggregate]]
name = "views"
fn = "count"
[[aggregate]]
name = "deepest"
fn = "max"
column = "scroll_depth"
[sink]
path = 'DIR/out'
[late]
path = 'DIR/late'
"#;

/// IoT seconds (the generator's sensors report 500 times a second each) with anomaly
/// alerts against a rolling baseline.
const ANOMALY: &str = r#"
[source]
kind = "generator"
dataset = "iot"
events = 300000
keys = 20
seed = 3
[time]
column = "ts"
max_out_of_orderness = "5s"
[window]
kind = "tumble"
size = "1s"
[key]
columns = ["sensor_id"]
[[aggregate]]
name = "avg_temp"
fn = "avg"
column = "temperature"
[[aggregate]]
name = "readings"
fn = "count"
[anomaly]
value = "avg_temp"
baseline_windows = 20
threshold = 3.0
min_history = 5
count = "readings"
min_count = 10
[anomaly.sink]
path = 'DIR/alerts'
[sink]
path = 'DIR/out'
"#;

/// The sink directories of a job.
fn outputs(job: &str) -> Vec<&'static str> {
    ["out", "late", "alerts"]
        .into_iter()
        .filter(|o| job.contains(&format!("'DIR/{o}'")))
        .collect()
}

/// `panes` with small batches: many batch boundaries, checkpoints and chances to crash.
/// Once a test started the object store, every `panes` finds it through the environment.
fn panes() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
    cmd.env("RUST_LOG", "info");
    support::with_s3(&mut cmd);
    cmd
}

/// Arguments of every `panes run`: a generator deals batches to partitions, so every run
/// of a job must cut batches alike.
const BATCH: [&str; 2] = ["--batch-rows", "4000"];

/// A clickstream Parquet file in row groups of 25 000 rows, written once.
fn input() -> &'static Path {
    static INPUT: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = INPUT.get_or_init(|| {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("clicks.parquet");
        let config = panes::datasets::GenConfig {
            events: 300_000,
            keys: 4000,
            seed: 9,
            late_share: 0.01,
            ..Default::default()
        };
        let dataset = panes::datasets::Dataset::Clickstream;
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(25_000))
            .build();
        let file = File::create(&path).expect("input file");
        let schema = panes::datasets::schema(dataset);
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
        for batch in panes::datasets::generate(dataset, &config).expect("generator") {
            w.write(&batch).expect("write");
        }
        w.close().expect("close");
        (dir, path)
    });
    path
}

/// [`job_in`] with its checkpoints in the object store (under a prefix named after the
/// directory); returns (dir, job file, checkpoint URL).
fn job_in_store(template: &str) -> (TempDir, PathBuf, String) {
    let (dir, job) = job_in(template);
    let local = format!("dir = '{}/chk'", dir.path().display());
    let name = (dir.path().file_name())
        .and_then(|n| n.to_str())
        .expect("a name");
    let url = format!("s3://panes/tests/{name}");
    let text = std::fs::read_to_string(&job).expect("job file");
    assert!(text.contains(&local));
    std::fs::write(&job, text.replace(&local, &format!("dir = '{url}'"))).expect("job file");
    (dir, job, url)
}

/// Writes `template` with checkpoints into a fresh directory; returns (dir, job file).
fn job_in(template: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("temp dir");
    let text = format!("{template}{CHECKPOINT}")
        .replace("INPUT", &input().display().to_string())
        .replace("DIR", &dir.path().display().to_string());
    let path = dir.path().join("job.toml");
    std::fs::write(&path, text).expect("job file");
    (dir, path)
}

/// Every row of the published parts of sink directory `dir`, in part order, as text.
fn published(dir: &Path) -> Vec<String> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    parts.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.starts_with("part-")
    });
    parts.sort();
    let mut rows = Vec::new();
    for part in parts {
        if part.extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(&part).expect("csv part");
            rows.extend(text.lines().skip(1).map(str::to_string));
            continue;
        }
        let file = File::open(&part).expect("part");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        for batch in reader {
            let batch = batch.expect("batch");
            for r in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).expect("cell"))
                    .collect();
                rows.push(cells.join("|"));
            }
        }
    }
    rows
}

fn run(job: &Path, args: &[&str]) -> Output {
    let out = panes()
        .arg("run")
        .arg(job)
        .args(BATCH)
        .args(args)
        .output()
        .expect("panes runs");
    assert!(
        out.status.success(),
        "panes run {} {args:?} failed: {}",
        job.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The published output of an uninterrupted run of `template`, per sink, and how long
/// the run took.
fn uninterrupted(template: &str, args: &[&str]) -> (Vec<Vec<String>>, Duration) {
    let (dir, job) = job_in(template);
    let started = Instant::now();
    run(&job, args);
    let took = started.elapsed();
    let rows: Vec<Vec<String>> = outputs(template)
        .iter()
        .map(|o| published(&dir.path().join(o)))
        .collect();
    assert!(rows[0].len() > 100, "the job produces results");
    (rows, took)
}

const FAILPOINTS: [&str; 4] = ["staged", "state", "manifest", "publish"];

/// Runs `template` under crashes for `seeds`: the first attempt of even seeds dies at a
/// failpoint; every other attempt is killed after a random delay, until one finishes.
/// Returns how many attempts were killed.
fn crash_until_done(template: &str, seeds: std::ops::Range<u64>) -> usize {
    crash_until_done_on(template, seeds, &[])
}

/// [`crash_until_done`] with more `panes run` arguments.
fn crash_until_done_on(template: &str, seeds: std::ops::Range<u64>, args: &[&str]) -> usize {
    let (want, took) = uninterrupted(template, args);
    let mut killed = 0;
    for seed in seeds {
        let mut rng = panes_datasets::rng::Rng::new(seed);
        let (dir, job) = job_in(template);
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 60, "seed {seed}: the job never finished");
            let mut cmd = panes();
            cmd.arg("run")
                .arg(&job)
                .args(BATCH)
                .args(args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"));
            let failpoint = attempts == 1 && seed % 2 == 0;
            if failpoint {
                let name = FAILPOINTS[(seed / 2 % 4) as usize];
                cmd.env("PANES_FAILPOINT", format!("{name}:{}", 1 + seed % 3));
            }
            let mut child = cmd.spawn().expect("spawn panes");
            // The first attempt dies within the first half of the reference run's time, so
            // it is killed even when it runs faster than the reference did (tests run in
            // parallel, and the reference was timed while all of them were starting).
            let span = if attempts == 1 { took / 2 } else { took };
            let delay = span.as_micros() as u64 * rng.below(1000) / 1000;
            let deadline = Instant::now() + Duration::from_micros(delay);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    break Some(status);
                }
                if !failpoint && Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            match status {
                Some(s) if s.success() => {
                    assert!(!failpoint, "seed {seed}: the failpoint never fired");
                    break;
                }
                Some(s) => {
                    let stderr = std::fs::read_to_string(dir.path().join("stderr"));
                    assert!(
                        failpoint,
                        "seed {seed}: the job failed on its own: {s}\n{}",
                        stderr.unwrap_or_default()
                    );
                    killed += 1;
                }
                None => {
                    child.kill().expect("SIGKILL");
                    child.wait().expect("reap");
                    killed += 1;
                }
            }
        }
        for (o, want) in outputs(template).iter().zip(want.iter()) {
            let got = published(&dir.path().join(o));
            assert_eq!(got.len(), want.len(), "seed {seed}: rows of {o}");
            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "seed {seed}: {o} row {i} differs after {attempts} attempts:\n got {}\nwant {}",
                    got[i], want[i]
                );
            }
            let staged = std::fs::read_dir(dir.path().join(o))
                .expect("sink dir")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".staged"))
                })
                .count();
            assert_eq!(staged, 0, "seed {seed}: staged parts left in {o}");
        }
        // Killed runs leave their spill files; the run that finished removed them.
        let spill_dirs = std::fs::read_dir(dir.path().join("spill")).map_or(0, |d| d.count());
        assert_eq!(spill_dirs, 0, "seed {seed}: spill files left behind");
    }
    eprintln!("{killed} attempts killed");
    killed
}

#[test]
fn tumble_output_survives_crashes_exactly_once() {
    assert!(crash_until_done(TUMBLE, 0..8) >= 6);
}

#[test]
fn hop_output_survives_crashes_exactly_once() {
    assert!(crash_until_done(HOP, 100..106) >= 4);
}

/// A job whose closed panes all spill (a tiny budget).
fn spilling(template: &str) -> String {
    format!("{template}\n[state]\nmemory_budget = \"64KiB\"\nspill_dir = 'DIR/spill'\n")
}

/// Hop and session windows with spilled state: checkpoints copy spilled panes, the
/// spilled key dictionary and spilled sessions, restores read them back (and spill again),
/// and the output is the same as in memory.
#[test]
fn spilled_state_survives_crashes_exactly_once() {
    for template in [HOP, SESSION] {
        let (want, _) = uninterrupted(template, &[]);
        assert_eq!(uninterrupted(&spilling(template), &[]).0, want);
        let (_dir, job) = job_in(&spilling(template));
        let summary = String::from_utf8_lossy(&run(&job, &[]).stderr).into_owned();
        assert!(summary.contains("keys on disk"), "{summary}");
        if template == SESSION {
            assert!(summary.contains("sessions spilled"), "{summary}");
        }
        assert!(crash_until_done(&spilling(template), 400..404) >= 2);
    }
}

#[test]
fn session_output_survives_crashes_exactly_once() {
    assert!(crash_until_done(SESSION, 200..206) >= 4);
}

#[test]
fn anomaly_alerts_survive_crashes_exactly_once() {
    let (want, _) = uninterrupted(ANOMALY, &[]);
    assert!(!want[1].is_empty(), "the anomaly job raises alerts");
    assert!(crash_until_done(ANOMALY, 300..306) >= 4);
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

fn checkpoints(job_dir: &Path) -> String {
    let out = panes()
        .arg("checkpoints")
        .arg(job_dir.join("chk"))
        .output()
        .expect("panes checkpoints");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn corrupt_checkpoints_are_detected_and_skipped() {
    let (want, _) = uninterrupted(TUMBLE, &[]);
    let (dir, job) = job_in(TUMBLE);
    // Dies after writing checkpoint 5's manifest, before pruning: 2 to 5 are there.
    let status = panes()
        .arg("run")
        .arg(&job)
        .args(BATCH)
        .env("PANES_FAILPOINT", "manifest:5")
        .stderr(Stdio::null())
        .status()
        .expect("panes runs");
    assert!(!status.success());
    let chk = |id: u64| dir.path().join(format!("chk/chk-{id:06}"));
    let listing = checkpoints(dir.path());
    assert_eq!(listing.matches(" complete").count(), 4, "{listing}");

    flip_byte(&chk(5).join("panes.arrow"));
    let keys = chk(4).join("keys.arrow");
    let len = std::fs::metadata(&keys).expect("keys").len();
    File::options()
        .write(true)
        .open(&keys)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let listing = checkpoints(dir.path());
    assert!(
        listing.contains("panes.arrow fails its checksum"),
        "{listing}"
    );
    assert!(listing.contains("keys.arrow has"), "{listing}");

    // Naming a corrupt checkpoint is an error that says what is wrong.
    let out = panes()
        .arg("run")
        .arg(&job)
        .args(BATCH)
        .arg("--from-checkpoint")
        .arg(chk(5))
        .output()
        .expect("panes runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("fails its checksum"), "{stderr}");

    // Without a manifest, checkpoint 3 is incomplete too: the restart resumes from 2,
    // reports what it skipped, and still publishes the same.
    std::fs::remove_file(chk(3).join("MANIFEST.json")).expect("remove manifest");
    assert!(checkpoints(dir.path()).contains("incomplete: no manifest"));
    let out = run(&job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for id in [5, 4, 3] {
        assert!(
            stderr.contains(&format!("skipping checkpoint {id}")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("restored from    checkpoint 2"), "{stderr}");
    for (o, want) in outputs(TUMBLE).iter().zip(want.iter()) {
        assert_eq!(&published(&dir.path().join(o)), want, "{o}");
    }
}

#[test]
fn a_restart_resumes_from_the_newest_checkpoint_and_a_changed_job_is_refused() {
    let (want, _) = uninterrupted(HOP, &[]);
    let (dir, job) = job_in(HOP);
    let status = panes()
        .arg("run")
        .arg(&job)
        .args(BATCH)
        .env("PANES_FAILPOINT", "state:4")
        .stderr(Stdio::null())
        .status()
        .expect("panes runs");
    assert!(!status.success());
    // Checkpoint 4 has no manifest: the newest complete one is 3.
    let changed = std::fs::read_to_string(&job)
        .expect("job")
        .replace("size = \"2m\"", "size = \"3m\"");
    let other = dir.path().join("other.toml");
    std::fs::write(&other, changed).expect("job");
    let out = panes()
        .arg("run")
        .arg(&other)
        .args(BATCH)
        .output()
        .expect("panes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("taken by a different job"), "{stderr}");
    assert!(stderr.contains("--fresh"), "{stderr}");

    let out = run(&job, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restored from    checkpoint 3"), "{stderr}");
    assert_eq!(published(&dir.path().join("out")), want[0]);
    // Run again: the job is finished, nothing changes.
    let out = run(&job, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
    assert_eq!(published(&dir.path().join("out")), want[0]);
    // --fresh starts over and publishes the same.
    run(&job, &["--fresh"]);
    assert_eq!(published(&dir.path().join("out")), want[0]);
}

/// Runs `job` with `args` until it is killed (SIGKILL) at `failpoint`, or to its end
/// without one; anything else (a failure of its own) fails the test.
fn run_to_failpoint(job: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = panes();
    cmd.arg("run").arg(job).args(BATCH).args(args);
    if let Some(f) = failpoint {
        cmd.env("PANES_FAILPOINT", f);
    }
    let out = cmd.output().expect("panes runs");
    use std::os::unix::process::ExitStatusExt;
    let (ok, killed) = (out.status.success(), out.status.signal() == Some(9));
    assert!(
        if failpoint.is_some() { killed } else { ok },
        "{args:?}, failpoint {failpoint:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A checkpoint does not depend on the thread count: a job killed (SIGKILL at a
/// checkpoint's failpoint) at 4 threads resumes at 3, is killed again, resumes at 8 (two
/// decoders and two encoders), is killed again, and finishes at 1.
/// Its published rows are those of an uninterrupted single-thread run (as a set: shards
/// emit their rows one shard after another). A job without keys (whose shards hold partial
/// state of one group) too, with aggregates that are exact in any order.
#[test]
fn checkpoints_taken_at_4_threads_resume_at_3_and_1() {
    let sorted = |mut rows: Vec<String>| {
        rows.sort();
        rows
    };
    let keyless = TUMBLE
        .replace("[key]\ncolumns = [\"article_id\"]\n", "")
        .replace("fn = \"sum\"", "fn = \"max\"")
        .replace("size = \"1m\"", "size = \"100ms\"");
    assert!(!keyless.contains("[key]"));
    for (template, seed) in [
        (HOP, 0u64),
        (SESSION, 1),
        (TUMBLE, 2),
        (ANOMALY, 3),
        (&keyless, 4),
    ] {
        let (want, _) = uninterrupted(template, &["--threads", "1"]);
        let (dir, job) = job_in(template);
        let first = 1 + seed % 3;
        for (threads, failpoint) in [
            (
                "4",
                Some(format!("{}:{first}", FAILPOINTS[seed as usize % 4])),
            ),
            ("3", Some(format!("manifest:{}", first + 1))),
            // Eight shards decode two row groups at once and encode parts on two threads.
            ("8", Some(format!("manifest:{}", first + 2))),
            ("1", None),
        ] {
            run_to_failpoint(&job, &["--threads", threads], failpoint.as_deref());
        }
        for (o, want) in outputs(template).iter().zip(want) {
            let got = published(&dir.path().join(o));
            assert!(!want.is_empty() || *o != "out");
            assert_eq!(sorted(got), sorted(want), "{template}: {o}");
        }
    }
}

/// The GPU backend (lavapipe in CI) checkpoints its device state and restores it: the
/// published output equals the uninterrupted cpu run's, bit for bit.
#[test]
fn gpu_output_survives_crashes_exactly_once() {
    let gpu = ["--backend", "gpu"];
    // One shard, as the gpu backend runs: rows in the same order.
    let serial = ["--threads", "1"];
    assert_eq!(
        uninterrupted(TUMBLE, &gpu).0,
        uninterrupted(TUMBLE, &serial).0
    );
    assert!(crash_until_done_on(TUMBLE, 500..503, &gpu) >= 2);
}

/// A job whose GPU is gone resumes on the CPU from its last checkpoint, and back: killed
/// at a checkpoint on `gpu`, killed again on `cpu` at 2 threads, finished on `gpu`. The
/// published rows are those of an uninterrupted cpu run (as a set: shards emit theirs one
/// after another). Both jobs: tumbling windows with lateness, and hop windows with
/// distinct counts (sketches move between the backends) and moments.
#[test]
fn checkpoints_move_between_gpu_and_cpu() {
    let sorted = |mut rows: Vec<String>| {
        rows.sort();
        rows
    };
    for template in [TUMBLE, HOP] {
        let (want, _) = uninterrupted(template, &["--threads", "1"]);
        let (dir, job) = job_in(template);
        for (backend, threads, failpoint) in [
            ("gpu", "1", Some("manifest:2")),
            ("cpu", "2", Some("publish:3")),
            ("gpu", "1", None),
        ] {
            let args = ["--backend", backend, "--threads", threads];
            let out = run_to_failpoint(&job, &args, failpoint);
            if failpoint.is_none() {
                let said = String::from_utf8_lossy(&out.stderr);
                assert!(said.contains("restored from"), "{said}");
            }
        }
        for (o, want) in outputs(template).iter().zip(want) {
            let got = published(&dir.path().join(o));
            assert_eq!(sorted(got), sorted(want), "{o}");
        }
    }
}

/// Checkpoints in an S3-protocol object store (moto's server on loopback): a job killed at
/// each named point of a checkpoint, resumed from the store each time, publishes the rows
/// of an uninterrupted run; `panes checkpoints URL` lists them there, nothing is on local
/// disk; and a store that cannot be reached is an error naming it.
#[test]
fn checkpoints_in_an_object_store_survive_crashes_exactly_once() {
    s3_endpoint();
    let sorted = |mut rows: Vec<String>| {
        rows.sort();
        rows
    };
    let args = ["--threads", "2"];
    let (want, _) = uninterrupted(TUMBLE, &args);
    let (dir, job, url) = job_in_store(TUMBLE);
    for failpoint in ["staged:1", "state:2", "manifest:3", "publish:4"] {
        run_to_failpoint(&job, &args, Some(failpoint));
    }
    run_to_failpoint(&job, &args, None);
    assert!(
        !dir.path().join("chk").exists(),
        "no checkpoint on local disk"
    );
    for (o, want) in outputs(TUMBLE).iter().zip(want) {
        let got = published(&dir.path().join(o));
        assert_eq!(sorted(got), sorted(want), "{o}");
    }
    let listed = panes()
        .args(["checkpoints", &url])
        .output()
        .expect("panes runs");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("complete, job finished"),
        "{text}"
    );
    let out = panes()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .arg("run")
        .arg(&job)
        .arg("--fresh")
        .output()
        .expect("panes runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&url) && !err.contains("panicked"), "{err}");
}

/// A TCP relay to the object store that the test can cut: once `limit` bytes went from
/// the job to the store, every connection is closed and new ones are refused, as if the
/// store went away (in the middle of whatever request was under way); `limit` back at
/// `u64::MAX` makes it come back, with every object it had.
struct Relay {
    port: u16,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    fn start(to: &str) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let upstream = to.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let sent = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let (s, l) = (sent.clone(), limit.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let up = |s: &AtomicU64, l: &AtomicU64| s.load(SeqCst) < l.load(SeqCst);
                if !up(&s, &l) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                // One thread a direction; either one closes both sockets when the store
                // goes away or its side ends.
                for (from, to, count) in [(&client, &server, true), (&server, &client, false)] {
                    let (mut from, mut to) = (
                        from.try_clone().expect("a socket"),
                        to.try_clone().expect("a socket"),
                    );
                    let (s, l) = (s.clone(), l.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if count {
                                s.fetch_add(n as u64, SeqCst);
                            }
                            if !up(&s, &l) || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, sent, limit }
    }
}

/// An object store that goes away in the middle of a run (its connections cut after
/// a share of the bytes an uninterrupted run sends it, mid-request): the job stops with
/// an error naming the store, having published only rows of committed checkpoints; once
/// the store is back, the job resumes from its newest complete checkpoint and the
/// published output is exactly an uninterrupted run's.
#[test]
fn an_object_store_that_goes_away_mid_run_loses_and_repeats_nothing() {
    use std::sync::atomic::Ordering::SeqCst;
    let relay = Relay::start(s3_endpoint());
    let via_relay = |cmd: &mut Command| {
        cmd.env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", relay.port),
        );
    };
    let run_job = |job: &Path| {
        let mut cmd = panes();
        via_relay(&mut cmd);
        cmd.arg("run")
            .arg(job)
            .args(BATCH)
            .output()
            .expect("panes runs")
    };
    // An uninterrupted run through the relay: its rows, and the bytes it sends.
    let (dir, job, _) = job_in_store(TUMBLE);
    let out = run_job(&job);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<Vec<String>> = (outputs(TUMBLE).iter())
        .map(|o| sorted(published(&dir.path().join(o))))
        .collect();
    let total = relay.sent.load(SeqCst);
    for share in [3, 6] {
        let (dir, job, url) = job_in_store(TUMBLE);
        relay
            .limit
            .store(relay.sent.load(SeqCst) + total * share / 10, SeqCst);
        let out = run_job(&job);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the job went on without its store: {err}"
        );
        assert!(err.contains(&url) && !err.contains("panicked"), "{err}");
        // What was published came from committed checkpoints: no row twice, none made up.
        for (o, want) in outputs(TUMBLE).iter().zip(&want) {
            let got = sorted(published(&dir.path().join(o)));
            let mut left = want.clone();
            for row in &got {
                let at = left.binary_search(row);
                let at = at.unwrap_or_else(|_| panic!("{o}: {row} published before the cut"));
                left.remove(at);
            }
        }
        relay.limit.store(u64::MAX, SeqCst);
        let out = run_job(&job);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("restored from    checkpoint"), "{log}");
        for (o, want) in outputs(TUMBLE).iter().zip(&want) {
            assert_eq!(
                &sorted(published(&dir.path().join(o))),
                want,
                "{o}, cut at {share}/10"
            );
        }
    }
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}
