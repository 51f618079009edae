//! The built-in benchmark suite of `panes bench`: tumbling and hop windows over generated
//! clickstream data, in memory (batches decoded up front), per key count and backend.

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use panes_datasets::GenConfig;
use panes_engine::Result;
use panes_engine::job::{Job, JobFile, ParquetSpec, Sink, Source};
use panes_engine::pipeline::{Output, Pipeline};
use panes_engine::run::{BackendKind, RunOptions, run_job};
use panes_engine::sinks::open_sink;
use panes_kernels::{AggFn, Backend, GpuBackend, GpuOptions};

use crate::harness::{Rows, Spread};

/// One case of the suite.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Case {
    /// `tumble(1m)`, `hop(15m,1m)`, a workload (`nexmark q5`, …).
    pub window: String,
    /// Distinct keys (articles).
    pub keys: u64,
    /// Backend name.
    pub backend: String,
    /// Events processed.
    pub events: u64,
    /// Threads (shards) that aggregated.
    pub threads: usize,
    /// Median events per second relative to the same case at the sweep's first thread
    /// count.
    pub speedup: f64,
    /// Seconds per repeat: the window operator on input already decoded in memory, or
    /// with `end_to_end` the whole job as `panes run` runs it (Parquet in, Parquet out):
    /// every sample, median, min and quartiles.
    pub seconds: Spread,
    /// Timed end to end through files (`--end-to-end`).
    #[serde(default)]
    pub end_to_end: bool,
    /// Events per second at the median.
    pub events_per_sec: f64,
    /// Bytes of decoded input (its Arrow buffers) per second at the median.
    pub bytes_per_sec: f64,
    /// Result rows emitted.
    pub rows_out: u64,
    /// Rows per input batch.
    pub batch_rows: usize,
    /// Whether this backend returned the rows the case's first backend and thread count
    /// did, on a sample of `check_events` events (`None`: not checked).
    pub agrees: Option<bool>,
    /// How it differs, when it does not agree.
    pub disagreement: Option<String>,
    /// A hash of the sample's sorted rows (floats to 9 digits).
    pub rows_hash: Option<String>,
    /// GPU only: the update kernels alone (sort and fold of a batch already on the
    /// device), in events per second.
    pub kernel_events_per_sec: Option<f64>,
    /// GPU only: how the kernels were timed ("gpu timestamps" or "wall clock").
    pub kernel_timer: Option<String>,
    /// GPU only: the adapter, its API and driver.
    pub adapter: Option<String>,
    /// With `--profile`, GPU only: seconds per stage (`host:` by the host's clock,
    /// `device:` by GPU timestamps).
    pub profile: Option<Vec<Stage>>,
}

/// One stage of a profile.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    /// The stage, `host: …` or `device: …`.
    pub stage: String,
    /// Seconds spent in it over the whole case.
    pub seconds: f64,
}

/// The GPU's update kernels alone, on the device: count, sum, min and max of one float
/// column over `keys` uniformly random keys, one pane, a batch of up to 1M events already
/// uploaded. Returns (events/s, timer, adapter).
pub fn gpu_kernels(keys: u64, events: u64) -> Result<(f64, String, String)> {
    use panes_kernels::{AggSpec, Backend, Column, Domain, Events, GpuBackend, GpuOptions, Values};
    let n = events.clamp(1, 1 << 20) as usize;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let key_ids: Vec<u32> = (0..n).map(|_| (next() % keys.max(1)) as u32).collect();
    let values: Vec<f64> = (0..n).map(|_| (next() % 1000) as f64 / 10.0).collect();
    let (panes, ts) = (vec![0i64; n], vec![0i64; n]);
    let f = |func| AggSpec {
        func,
        column: 0,
        domain: Domain::F64,
    };
    let aggs = [AggFn::CountRows, AggFn::Sum, AggFn::Min, AggFn::Max].map(f);
    let mut gpu = GpuBackend::new(&aggs, GpuOptions::default())?;
    let columns = [Column {
        values: Values::F64(&values),
        valid: None,
    }];
    let events = Events {
        keys: &key_ids,
        panes: &panes,
        ts: &ts,
        columns: &columns,
    };
    let (seconds, timestamps) = gpu.time_resident(&events, 5)?;
    let timer = if timestamps {
        "gpu timestamps"
    } else {
        "wall clock"
    };
    let rate = n as f64 / seconds.max(1e-12);
    debug_assert_eq!(gpu.name(), "gpu");
    Ok((rate, timer.into(), gpu.adapter().into()))
}

/// The window shapes of the suite: name and (size, slide) in ms; the hop windows sweep
/// the panes a window covers (4, 15 and 60; a tumbling window is one).
pub const WINDOWS: [(&str, i64, i64); 4] = [
    ("tumble(1m)", 60_000, 60_000),
    ("hop(4m,1m)", 240_000, 60_000),
    ("hop(15m,1m)", 900_000, 60_000),
    ("hop(60m,1m)", 3_600_000, 60_000),
];

/// Which part of the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The window shapes (tumble, hop at 4, 15 and 60 panes a window, cumulate) over
    /// clickstream data, at every key count and batch size.
    Windows,
    /// The Nexmark queries (q5, q7, q11) and their SQL twins.
    Nexmark,
    /// The IoT anomaly job and its SQL twin.
    Iot,
    /// Everything, the trending and fraud velocity jobs included.
    All,
}

impl Part {
    /// Whether case `name` belongs to this part.
    pub fn has(self, name: &str) -> bool {
        match self {
            Part::Windows => name == CUMULATE || WINDOWS.iter().any(|w| w.0 == name),
            Part::Nexmark => name.starts_with("nexmark"),
            Part::Iot => name.starts_with("iot"),
            Part::All => true,
        }
    }
}

/// The name of the suite's cumulate case (see [`cumulate_job`]).
pub const CUMULATE: &str = "cumulate(15m,1m)";

/// The names of every case of the suite, in the order it runs them.
pub fn case_names() -> Vec<&'static str> {
    WINDOWS
        .iter()
        .map(|w| w.0)
        .chain([CUMULATE])
        .chain(WORKLOADS.iter().map(|w| w.0))
        .collect()
}

/// The workloads of the suite: the example jobs, with their own key counts, and (named
/// `… sql`) their Flink SQL twins, which must run as fast.
pub const WORKLOADS: [(&str, &str); 12] = [
    ("trending", include_str!("../examples/trending.toml")),
    ("trending sql", include_str!("../examples/trending.sql")),
    ("iot anomaly", include_str!("../examples/iot_anomaly.toml")),
    (
        "iot anomaly sql",
        include_str!("../examples/iot_anomaly.sql"),
    ),
    ("nexmark q5", include_str!("../examples/nexmark_q5.toml")),
    ("nexmark q5 sql", include_str!("../examples/nexmark_q5.sql")),
    ("nexmark q7", include_str!("../examples/nexmark_q7.toml")),
    ("nexmark q7 sql", include_str!("../examples/nexmark_q7.sql")),
    ("nexmark q11", include_str!("../examples/nexmark_q11.toml")),
    (
        "nexmark q11 sql",
        include_str!("../examples/nexmark_q11.sql"),
    ),
    (
        "fraud velocity",
        include_str!("../examples/fraud_velocity.toml"),
    ),
    (
        "fraud velocity sql",
        include_str!("../examples/fraud_velocity.sql"),
    ),
];

/// Workload `text` (an example job file, or its SQL twin when `name` ends in ` sql`) with
/// `events` events.
pub fn workload(name: &str, text: &str, events: u64) -> Result<Job> {
    let mut file: JobFile = match name.ends_with(" sql") {
        true => panes_engine::sql::compile(text, name)?.job,
        false => toml::from_str(text).map_err(|e| panes_engine::Error::Job {
            file: name.into(),
            message: e.to_string(),
        })?,
    };
    file.source.events = Some(events);
    Job::from_config(file, name)
}

/// The cumulate case: cumulate(15m, 1m) windows over the same job as [`WINDOWS`].
pub fn cumulate_job(events: u64, keys: u64) -> Job {
    clickstream_job(
        "kind = \"cumulate\"\nsize = \"15m\"\nstep = \"1m\"",
        events,
        keys,
    )
}

/// A clickstream job: per article, count, sum/min/max of scroll depth.
pub fn job(size: i64, slide: i64, events: u64, keys: u64) -> Job {
    let window = match size == slide {
        true => format!("kind = \"tumble\"\nsize = \"{size}ms\""),
        false => format!("kind = \"hop\"\nsize = \"{size}ms\"\nslide = \"{slide}ms\""),
    };
    clickstream_job(&window, events, keys)
}

/// The suite's job with `window` (the lines of its `[window]`).
fn clickstream_job(window: &str, events: u64, keys: u64) -> Job {
    let text = format!(
        r#"
[source]
kind = "generator"
dataset = "clickstream"
events = {events}
keys = {keys}
[time]
column = "ts"
max_out_of_orderness = "5s"
[window]
{window}
[key]
columns = ["article_id"]
[[aggregate]]
name = "views"
fn = "count"
[[aggregate]]
name = "scroll_sum"
fn = "sum"
column = "scroll_depth"
[[aggregate]]
name = "scroll_min"
fn = "min"
column = "scroll_depth"
[[aggregate]]
name = "scroll_max"
fn = "max"
column = "scroll_depth"
[sink]
kind = "jsonl"
"#
    );
    Job::from_toml(&text, "bench").expect("the suite's jobs are valid")
}

/// Generates the input of a case, decoded, in batches of `batch_rows`.
pub fn input(job: &Job, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    let Source::Generator(g) = job.source() else {
        return Err(panes_engine::Error::Internal(
            "bench jobs read a generator".into(),
        ));
    };
    let config = GenConfig {
        batch_rows,
        ..g.config.clone()
    };
    let batches = panes_datasets::generate(g.dataset, &config)
        .map_err(|e| panes_engine::Error::input("generator", e))?;
    Ok(batches.collect())
}

/// Runs one job over in-memory batches and measures the operator alone; with `profile`,
/// the GPU backend times its stages too (and returns them).
pub fn run(
    job: &Job,
    batches: &[RecordBatch],
    backend: BackendKind,
    threads: usize,
    profile: bool,
) -> Result<(f64, u64, Vec<Stage>)> {
    let (seconds, rows_out, stages, _) =
        run_keeping(job, batches, (backend, threads, profile), false)?;
    Ok((seconds, rows_out, stages))
}

/// [`run`], returning the window rows too when `keep` says so.
fn run_keeping(
    job: &Job,
    batches: &[RecordBatch],
    (backend, threads, profile): (BackendKind, usize, bool),
    keep: bool,
) -> Result<(f64, u64, Vec<Stage>, Vec<RecordBatch>)> {
    let Source::Generator(g) = job.source() else {
        return Err(panes_engine::Error::Internal(
            "bench jobs read a generator".into(),
        ));
    };
    let schema = panes_datasets::schema(g.dataset);
    let start = Instant::now();
    let mut pipeline = Pipeline::with_backends(job, schema, 1, |aggs| match backend {
        BackendKind::Gpu if profile => {
            let opts = GpuOptions {
                profile: true,
                ..GpuOptions::default()
            };
            Ok(vec![
                Box::new(GpuBackend::new(aggs, opts)?) as Box<dyn Backend>
            ])
        }
        _ => backend.build_shards(aggs, threads),
    })?;
    let mut rows = Vec::new();
    let mut keep_rows = |outputs: Vec<Output>| {
        for output in outputs {
            if let (true, Output::Rows(batch)) = (keep, output) {
                rows.push(batch);
            }
        }
    };
    for b in batches {
        pipeline.push(0, b)?;
        keep_rows(pipeline.poll_ready());
    }
    keep_rows(pipeline.finish()?);
    let seconds = start.elapsed().as_secs_f64();
    let stages = pipeline.profile().into_iter();
    let stages = stages.map(|(stage, seconds)| Stage {
        stage: stage.into(),
        seconds,
    });
    Ok((seconds, pipeline.stats().rows_out, stages.collect(), rows))
}

/// Whether one backend and thread count agreed with the case's first, on a sample.
#[derive(Clone, Debug)]
struct Verdict {
    disagreement: Option<String>,
    hash: String,
}

/// Runs `job` (on a sample of the case's events) on every (backend, threads) of `runs`
/// and compares each one's rows with the first's. `PANES_BENCH_CORRUPT=BACKEND` drops a
/// row of that backend's output: the harness's own test makes a backend disagree with it
/// (and `BACKEND@THREADS`, a thread count with the sweep's first: see [`measure`]).
fn agreement(job: &Job, runs: &[(BackendKind, usize)]) -> Result<Vec<Verdict>> {
    // Small batches: more batch boundaries for the backends to get right.
    let batches = input(job, 16 * 1024)?;
    let corrupt = std::env::var("PANES_BENCH_CORRUPT").unwrap_or_default();
    let mut first: Option<Rows> = None;
    let mut verdicts = Vec::new();
    for &(backend, threads) in runs {
        let (_, _, _, mut out) = run_keeping(job, &batches, (backend, threads, false), true)?;
        if corrupt == backend.to_string() {
            out.retain(|b| b.num_rows() > 0);
            if let Some(last) = out.pop() {
                out.push(last.slice(0, last.num_rows() - 1));
            }
        }
        let rows = Rows::of(&out);
        let hash = rows.hash();
        let disagreement = match &first {
            None => None,
            Some(f) => f.differs(&rows).map(|d| {
                let (b0, t0) = runs[0];
                format!("{backend} on {threads} threads against {b0} on {t0}: {d}")
            }),
        };
        first.get_or_insert(rows);
        verdicts.push(Verdict { disagreement, hash });
    }
    Ok(verdicts)
}

/// What a suite runs: events per case, backends, key counts, thread counts, which cases.
pub struct Suite<'a> {
    /// Events per case.
    pub events: u64,
    /// Events for the reference backend, which keeps every event.
    pub reference_events: u64,
    /// Key counts.
    pub keys: &'a [u64],
    /// Backends.
    pub backends: &'a [BackendKind],
    /// Thread counts to run each case at: a sweep.
    pub threads: &'a [usize],
    /// Only the cases whose name starts with one of these, when it names any.
    pub only: &'a [String],
    /// Only the cases of this part.
    pub part: Part,
    /// Batch sizes (rows) to run each case at.
    pub batch_rows: &'a [usize],
    /// Time the GPU backend's stages.
    pub profile: bool,
    /// Repeats per case (after one warm-up run, when more than one)...
    pub repeats: usize,
    /// ...unless a case's runs took this many seconds first (it runs at least once).
    pub max_time: f64,
    /// Time each case as `panes run` runs it: its input written once to a Parquet file,
    /// then read, windowed and written to Parquet by [`run_job`] in every repeat.
    pub end_to_end: bool,
}

/// Runs the suite: every window × key count × backend, then the example workloads, each
/// at every thread count (a sweep). Before a case is timed, every backend and thread count
/// runs it on a sample of `reference_events` events, and each one's rows are checked
/// against the first's ([`Case::agrees`]).
pub fn suite(suite: &Suite<'_>, mut on_case: impl FnMut(&Case)) -> Result<Vec<Case>> {
    let Suite {
        events,
        reference_events,
        keys,
        backends,
        threads,
        only,
        part,
        batch_rows,
        profile,
        repeats,
        max_time,
        end_to_end,
    } = *suite;
    let wanted = |name: &str| {
        part.has(name) && (only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str())))
    };
    let events_for = |backend: BackendKind| match backend {
        BackendKind::Reference => events.min(reference_events),
        _ => events,
    };
    let sample = events.min(reference_events);
    let runs_of = |backends: &[BackendKind]| -> Vec<(BackendKind, usize)> {
        let each = |&b: &BackendKind| threads.iter().map(move |&t| (b, t));
        backends.iter().flat_map(each).collect()
    };
    let repeats = (repeats.max(1), max_time, end_to_end);
    let mut cases = Vec::new();
    let mut emit = |case: Case| {
        on_case(&case);
        cases.push(case);
    };
    type Shape = (&'static str, Box<dyn Fn(u64) -> Job>);
    for &k in keys {
        let shapes: Vec<Shape> = WINDOWS
            .iter()
            .map(|&(name, size, slide)| {
                let make: Box<dyn Fn(u64) -> Job> = Box::new(move |n| job(size, slide, n, k));
                (name, make)
            })
            .chain([(
                CUMULATE,
                Box::new(move |n| cumulate_job(n, k)) as Box<dyn Fn(u64) -> Job>,
            )])
            .filter(|(name, _)| wanted(name))
            .collect();
        if shapes.is_empty() {
            continue;
        }
        let runs = runs_of(backends);
        let verdicts = (shapes.iter())
            .map(|(_, make)| agreement(&make(sample), &runs))
            .collect::<Result<Vec<_>>>()?;
        for &rows in batch_rows {
            for backend in backends {
                let n = events_for(*backend);
                let batches = input(&job(60_000, 60_000, n, k), rows)?;
                let kernels = match backend {
                    BackendKind::Gpu => Some(gpu_kernels(k, n)?),
                    _ => None,
                };
                for ((name, make), verdicts) in shapes.iter().zip(&verdicts) {
                    let job = make(n);
                    let mut base = None;
                    for &t in threads {
                        let at = runs.iter().position(|r| *r == (*backend, t));
                        let mut case = measure(
                            name,
                            &job,
                            &batches,
                            (*backend, t, profile),
                            (kernels.clone(), at.map(|i| verdicts[i].clone())),
                            &mut base,
                            repeats,
                        )?;
                        case.batch_rows = rows;
                        emit(case);
                    }
                }
            }
        }
    }
    let on_cpu: Vec<BackendKind> = (backends.iter().copied())
        .filter(|b| *b != BackendKind::Gpu)
        .collect();
    for (name, text) in WORKLOADS.into_iter().filter(|(name, _)| wanted(name)) {
        let runs = runs_of(&on_cpu);
        let verdicts = agreement(&workload(name, text, sample)?, &runs)?;
        for &rows in batch_rows {
            for backend in &on_cpu {
                let job = workload(name, text, events_for(*backend))?;
                let batches = input(&job, rows)?;
                let mut base = None;
                for &t in threads {
                    let at = runs.iter().position(|r| *r == (*backend, t));
                    let verdict = at.map(|i| verdicts[i].clone());
                    let run = (*backend, t, false);
                    let mut case = measure(
                        name,
                        &job,
                        &batches,
                        run,
                        (None, verdict),
                        &mut base,
                        repeats,
                    )?;
                    case.batch_rows = rows;
                    emit(case);
                }
            }
        }
    }
    Ok(cases)
}

/// Runs one case on (backend, threads, profile) `repeats.0` times (after a warm-up run
/// when more than once), or until `repeats.1` seconds have passed, and describes it;
/// `kernels` are the GPU's kernel-only figures, `verdict` the agreement check's, `base`
/// the median events per second and the rows of the sweep's first run of this case (set
/// by that run): a thread count whose rows are more or fewer disagrees, whatever the
/// sample gave.
fn measure(
    name: &str,
    job: &Job,
    batches: &[RecordBatch],
    (backend, threads, profile): (BackendKind, usize, bool),
    (kernels, verdict): (Option<(f64, String, String)>, Option<Verdict>),
    base: &mut Option<(f64, u64)>,
    (repeats, max_time, end_to_end): (usize, f64, bool),
) -> Result<Case> {
    let files = end_to_end.then(|| Files::write(batches)).transpose()?;
    let once = |profile| match &files {
        Some(files) => files.run(job, backend, threads),
        None => run(job, batches, backend, threads, profile),
    };
    let started = Instant::now();
    if repeats > 1 {
        once(false)?;
    }
    let mut samples = Vec::new();
    let (seconds, rows_out, stages) = loop {
        let (seconds, rows_out, stages) = once(profile)?;
        samples.push(seconds);
        if samples.len() >= repeats || started.elapsed().as_secs_f64() >= max_time {
            break (Spread::of(samples), rows_out, stages);
        }
    };
    // The harness's own test: `PANES_BENCH_CORRUPT=BACKEND@THREADS` adds a row there.
    let corrupt = std::env::var("PANES_BENCH_CORRUPT");
    let rows_out = rows_out + u64::from(corrupt.is_ok_and(|c| c == format!("{backend}@{threads}")));
    let events = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    let bytes = batches
        .iter()
        .map(|b| b.get_array_memory_size() as u64)
        .sum::<u64>();
    let events_per_sec = events as f64 / seconds.median.max(1e-9);
    let (base, base_rows) = *base.get_or_insert((events_per_sec, rows_out));
    let disagreement = verdict
        .as_ref()
        .and_then(|v| v.disagreement.clone())
        .or_else(|| {
            (rows_out != base_rows).then(|| {
                format!("{rows_out} rows on {threads} threads, {base_rows} on the sweep's first")
            })
        });
    let (kernel_events_per_sec, kernel_timer, adapter) = match kernels {
        Some((rate, timer, adapter)) => (Some(rate), Some(timer), Some(adapter)),
        None => (None, None, None),
    };
    Ok(Case {
        window: name.into(),
        keys: generator_keys(job),
        backend: backend.to_string(),
        events,
        threads,
        speedup: events_per_sec / base,
        end_to_end,
        bytes_per_sec: bytes as f64 / seconds.median.max(1e-9),
        seconds,
        events_per_sec,
        rows_out,
        batch_rows: batches.first().map_or(0, RecordBatch::num_rows),
        agrees: (verdict.is_some() || disagreement.is_some()).then_some(disagreement.is_none()),
        disagreement,
        rows_hash: verdict.map(|v| v.hash),
        kernel_events_per_sec,
        kernel_timer,
        adapter,
        profile: (!stages.is_empty()).then_some(stages),
    })
}

/// A case's input as a Parquet file, for timing it end to end; removed when dropped.
struct Files {
    dir: std::path::PathBuf,
    batch_rows: usize,
}

impl Files {
    fn write(batches: &[RecordBatch]) -> Result<Files> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("panes-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| panes_engine::Error::io("creating directory", &dir, e))?;
        let files = Files {
            dir,
            batch_rows: batches.first().map_or(64 * 1024, RecordBatch::num_rows),
        };
        let schema = batches
            .first()
            .map(RecordBatch::schema)
            .ok_or_else(|| panes_engine::Error::Internal("a bench case without input".into()))?;
        let mut sink = open_sink(&Sink::Parquet(files.dir.join("in.parquet")), &schema)?;
        for b in batches {
            sink.write(b)?;
        }
        sink.finish()?;
        Ok(files)
    }

    /// `job` over the file, into a Parquet file, as `panes run` runs it.
    fn run(
        &self,
        job: &Job,
        backend: BackendKind,
        threads: usize,
    ) -> Result<(f64, u64, Vec<Stage>)> {
        let job = (job.clone())
            .with_source(Source::Parquet(ParquetSpec {
                path: self.dir.join("in.parquet").display().to_string(),
                per_file: false,
            }))?
            .with_sinks(Sink::Parquet(self.dir.join("out.parquet")), None)?;
        let opts = RunOptions {
            backend,
            batch_rows: self.batch_rows,
            threads,
            ..RunOptions::default()
        };
        let summary = run_job(&job, opts)?;
        Ok((
            summary.elapsed.as_secs_f64(),
            summary.stats.rows_out,
            Vec::new(),
        ))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn generator_keys(job: &Job) -> u64 {
    match job.source() {
        Source::Generator(g) => g.config.keys,
        _ => 0,
    }
}
