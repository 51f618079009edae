//! Running a job end to end: source → window operator → sinks, with a summary.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use panes_kernels::{AggSpec, Backend, CpuBackend, GpuBackend, GpuOptions, ReferenceBackend};

use crate::connect::sink::{
    STAGED, open_parts, open_sink_encoding, parts_dir, parts_key, staged_copy,
};
use crate::connect::{
    Malformed, Position, Sink, SinkThread, Source, SourceBatch, dead_letter_batch,
    dead_letter_schema, open_source,
};
use crate::error::{Error, Result};
use crate::job::{Job, KafkaSpec, Source as SourceSpec, Trigger};
use crate::operator::Stats;
use crate::pipeline::{Output, Pipeline};
use crate::state::checkpoint::{self, CheckpointWriter, Commit, Manifest, Restore};

/// Batches the source may read ahead of the operator.
const READ_AHEAD: usize = 2;

/// Malformed records logged when the job has no `[dead_letter]` to keep them.
const MALFORMED_LOGGED: u64 = 10;

/// Which data plane aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The scalar oracle.
    Reference,
    /// Columnar CPU kernels with rayon.
    Cpu,
    /// WGSL kernels on a GPU through wgpu; an error when there is no adapter.
    Gpu,
    /// The GPU when a hardware adapter exists, else `cpu` (with a log line saying why).
    Auto,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reference" => Ok(BackendKind::Reference),
            "cpu" => Ok(BackendKind::Cpu),
            "gpu" => Ok(BackendKind::Gpu),
            "auto" => Ok(BackendKind::Auto),
            other => Err(format!(
                "unknown backend {other:?}; use auto, gpu, cpu or reference"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Reference => "reference",
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
            BackendKind::Auto => "auto",
        })
    }
}

impl BackendKind {
    /// Builds one backend per shard for `threads` threads: `threads` single-threaded
    /// backends of the CPU kinds, one GPU backend (one device) whatever `threads` is.
    pub fn build_shards(self, aggs: &[AggSpec], threads: usize) -> Result<Vec<Box<dyn Backend>>> {
        let first = self.build(aggs, 1)?;
        let kind = match first.name() {
            "reference" => BackendKind::Reference,
            "cpu" => BackendKind::Cpu,
            _ => return Ok(vec![first]),
        };
        let mut shards = vec![first];
        for _ in 1..threads.max(1) {
            shards.push(kind.build(aggs, 1)?);
        }
        Ok(shards)
    }

    /// Builds the backend for these aggregates with `threads` worker threads (CPU).
    pub fn build(self, aggs: &[AggSpec], threads: usize) -> Result<Box<dyn Backend>> {
        Ok(match self {
            BackendKind::Reference => Box::new(ReferenceBackend::new(aggs.to_vec())),
            BackendKind::Cpu => Box::new(CpuBackend::new(aggs, threads)),
            BackendKind::Gpu => Box::new(GpuBackend::new(aggs, GpuOptions::default())?),
            BackendKind::Auto => {
                tracing::warn!("backend auto: using cpu: {AUTO_STAYS_ON_CPU}");
                Box::new(CpuBackend::new(aggs, threads))
            }
        })
    }
}

/// Why `auto` runs on `cpu`: the `gpu` backend is not faster than `cpu` yet (issue 16
/// measured it 15× slower end to end on an H200), whatever GPU the machine has. `auto`
/// takes the GPU once it beats `cpu` on the machine it runs on; until then it does not
/// look for one, since opening a GPU driver only to name it costs tens of milliseconds
/// (and a core's worth of work) on every run.
const AUTO_STAYS_ON_CPU: &str = "the gpu backend is slower than cpu end to end (on an NVIDIA \
    H200, 2.5 M events/s against cpu's 37 M: BENCHMARKS.md §4); --backend gpu runs it on a GPU";

/// Where a job with checkpoints starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The newest complete checkpoint, if any (the default).
    #[default]
    Newest,
    /// This checkpoint directory.
    Checkpoint(PathBuf),
    /// The beginning: existing checkpoints and output parts are removed.
    Fresh,
}

/// What [`RunOptions::progress`] calls after each batch.
pub type ProgressFn = Box<dyn FnMut(&Progress)>;

/// How to run a job.
pub struct RunOptions {
    /// The data plane.
    pub backend: BackendKind,
    /// Rows per source micro-batch.
    pub batch_rows: usize,
    /// Threads that aggregate: shards of the keys, each on a thread of its own (the cpu
    /// and reference backends; the gpu backend runs one shard).
    pub threads: usize,
    /// Where a job with checkpoints starts.
    pub start: StartFrom,
    /// Memory budget of the state in bytes (overrides the job's).
    pub memory_budget: Option<u64>,
    /// Called after each batch with where the run is.
    pub progress: Option<ProgressFn>,
    /// Set it to stop the job (the CLI does on SIGINT and SIGTERM): the source stops
    /// between two batches. With `[checkpoint]`, a last checkpoint keeps the open windows
    /// for the next run, which resumes there; without, the windows fire as at the end of
    /// the input.
    pub stop: Option<Arc<AtomicBool>>,
    /// A service's own source and sinks, in place of those the job file names.
    pub connectors: Connectors,
    /// Kafka scale-out: this process's member name in the group (static membership,
    /// Kafka's `group.instance.id`), unique among the group's processes. A process
    /// restarted under the same name takes its partitions back at once, without a
    /// rebalance; a process without one that dies holds its partitions until the group
    /// expires its session.
    pub member: Option<String>,
}

/// A service's own source and sinks for [`run_job`]: each one given replaces the job
/// file's (its `[source]`, `[sink]`, `[late]`, `[anomaly.sink]`, `[dead_letter]`), and
/// everything else (time, windows, checkpoints, the memory budget) runs as the job says.
/// A late or dead-letter sink keeps late events or malformed records even when the job
/// has no section for them.
#[derive(Default)]
pub struct Connectors {
    /// Where events come from.
    pub source: Option<Box<dyn Source>>,
    /// Where window rows go.
    pub sink: Option<Box<dyn Sink>>,
    /// Where late events go.
    pub late: Option<Box<dyn Sink>>,
    /// Where anomaly alerts go (the job needs `[anomaly]`).
    pub alerts: Option<Box<dyn Sink>>,
    /// Where records that do not decode go.
    pub dead_letter: Option<Box<dyn Sink>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backend: BackendKind::Auto,
            batch_rows: 64 * 1024,
            threads: default_threads(),
            start: StartFrom::Newest,
            memory_budget: None,
            progress: None,
            stop: None,
            connectors: Connectors::default(),
            member: None,
        }
    }
}

/// Where a run is, after a batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Events read.
    pub events: u64,
    /// Events the source holds, when it knows (files; not a topic that runs on).
    pub total: Option<u64>,
    /// The job's watermark (ms since the epoch), `i64::MIN` before the first.
    pub watermark: i64,
    /// Late events so far (as of the batch before).
    pub late: u64,
    /// Window result rows emitted so far (as of the batch before).
    pub rows_out: u64,
    /// Anomaly alerts so far (as of the batch before).
    pub alerts: u64,
    /// Checkpoints completed by this run.
    pub checkpoints: u64,
}

/// The most shards a run takes. Each shard is a thread with its own state, and every batch
/// is split among all of them, so thousands of shards on a machine's few cores would crawl
/// for minutes where one thread takes a second.
pub const MAX_THREADS: usize = 1024;

/// Every core of the machine (as the OS grants them to this process), at most
/// [`MAX_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The backend that ran (for the GPU, with its adapter).
    pub backend: String,
    /// Counters.
    pub stats: Stats,
    /// Wall time.
    pub elapsed: Duration,
    /// Late events that no `[late]` sink kept.
    pub late_not_kept: u64,
    /// Source records that did not decode (CSV) in this run.
    pub malformed: u64,
    /// Checkpoints taken by this run.
    pub checkpoints: u64,
    /// The checkpoint this run resumed from.
    pub restored_from: Option<u64>,
    /// Panes spilled to disk under the memory budget, and their bytes.
    pub spilled: (u64, u64),
    /// Keys of the key dictionary on disk, and all its keys.
    pub keys_spilled: (usize, usize),
    /// Open sessions spilled to disk (each time one was).
    pub sessions_spilled: u64,
    /// Peak resident memory of the process (Linux: `VmHWM` of `/proc/self/status`).
    pub peak_rss: Option<u64>,
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux only).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Summary {
    /// Events per second of wall time.
    pub fn events_per_sec(&self) -> f64 {
        self.stats.events_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(f, "backend          {}", self.backend)?;
        writeln!(f, "events in        {}", s.events_in)?;
        writeln!(f, "window rows out  {}", s.rows_out)?;
        writeln!(f, "late events      {}", s.late_events)?;
        if self.malformed > 0 {
            writeln!(f, "malformed input  {}", self.malformed)?;
        }
        if s.alerts > 0 {
            writeln!(f, "anomaly alerts   {}", s.alerts)?;
        }
        if let Some(id) = self.restored_from {
            writeln!(f, "restored from    checkpoint {id}")?;
        }
        if self.spilled.0 > 0 {
            writeln!(
                f,
                "spilled          {} panes, {:.1} MiB",
                self.spilled.0,
                self.spilled.1 as f64 / (1 << 20) as f64
            )?;
        }
        if self.keys_spilled.0 > 0 {
            writeln!(
                f,
                "keys on disk     {} of {}",
                self.keys_spilled.0, self.keys_spilled.1
            )?;
        }
        if self.sessions_spilled > 0 {
            writeln!(f, "sessions spilled {}", self.sessions_spilled)?;
        }
        if self.checkpoints > 0 {
            writeln!(f, "checkpoints      {}", self.checkpoints)?;
        }
        writeln!(f, "elapsed          {:.3} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "events/s         {:.0}", self.events_per_sec())?;
        write!(
            f,
            "peak state       {:.1} MiB",
            s.peak_state_bytes as f64 / (1 << 20) as f64
        )?;
        match self.peak_rss {
            Some(rss) => write!(
                f,
                "\npeak memory      {:.1} MiB",
                rss as f64 / (1 << 20) as f64
            ),
            None => Ok(()),
        }
    }
}

/// The columns a job reads: time, keys, aggregate inputs and what `[filter] events`
/// reads, each once.
fn needed_columns(job: &Job) -> Vec<String> {
    let mut cols = each_read(job);
    let mut seen = std::collections::HashSet::new();
    cols.retain(|c| seen.insert(c.clone()));
    cols
}

/// The key column a job may read dictionary-encoded: its one key column, when the job
/// reads it for nothing else (aggregates and filters see it unencoded).
fn dictionary_keys(job: &Job) -> Vec<String> {
    let reads = each_read(job);
    match &job.keys[..] {
        [key] if reads.iter().filter(|c| *c == key).count() == 1 => vec![key.clone()],
        _ => Vec::new(),
    }
}

/// The columns of [`needed_columns`], once for each time the job reads them.
fn each_read(job: &Job) -> Vec<String> {
    let mut cols = vec![job.time_column.clone()];
    cols.extend(job.keys.iter().cloned());
    cols.extend(job.aggregates.iter().filter_map(|a| a.column.clone()));
    cols.extend(
        job.aggregates
            .iter()
            .flat_map(|a| a.expr.iter().flat_map(|e| e.columns())),
    );
    cols.extend(job.filter_events.iter().flat_map(|f| f.columns()));
    cols
}

/// A fingerprint of what decides a job's state and output, so that a checkpoint is never
/// restored into a different job.
pub(crate) fn fingerprint(job: &Job) -> String {
    let decisive = format!(
        "{:?}",
        (
            &job.source,
            &job.time_column,
            job.max_out_of_orderness,
            job.allowed_lateness,
            &job.window,
            &job.keys,
            &job.aggregates,
            (&job.sink, &job.late),
            (&job.top_k, &job.anomaly),
            [&job.filter_events, &job.filter_windows].map(|f| f.as_ref().map(|f| f.text())),
        )
    );
    format!("{:08x}", crc32fast::hash(decisive.as_bytes()))
}

/// The checkpoint a job starts from, after checking that it belongs to this job.
fn starting_point(job: &Job, start: &StartFrom) -> Result<Option<Restore>> {
    let Some(c) = &job.checkpoint else {
        return match start {
            StartFrom::Checkpoint(p) => Err(Error::Checkpoint {
                path: p.clone(),
                message: "the job has no [checkpoint] section".into(),
            }),
            _ => Ok(None),
        };
    };
    let restore = match start {
        StartFrom::Fresh => {
            checkpoint::remove_all(&c.dir)?;
            None
        }
        StartFrom::Newest => Restore::newest(&c.dir)?,
        StartFrom::Checkpoint(p) => Some(Restore::at(p)?),
    };
    if let Some(r) = &restore
        && r.manifest.job != fingerprint(job)
    {
        return Err(Error::Checkpoint {
            path: r.dir.clone(),
            message: "it was taken by a different job (its source, time, window, keys, \
                      aggregates or sinks changed); run with --fresh to start over"
                .into(),
        });
    }
    Ok(restore)
}

/// The job's outputs: results, and late events and alerts when the job keeps them, written
/// on a thread of their own.
struct Outputs {
    sinks: SinkThread,
    late: Option<usize>,
    alerts: Option<usize>,
    dead_letter: Option<usize>,
    /// Malformed records seen, kept or not.
    malformed: u64,
    /// Under a memory budget: result rows out when memory was last given back.
    trimmed_at: Option<u64>,
}

impl Outputs {
    /// Opens the sinks: the service's own where it gave them (publishing what a restored
    /// checkpoint staged for them), else the job's: single files, or part files after
    /// checkpoint `committed` when the job takes checkpoints. Parquet files have their
    /// columns encoded by `encoders` threads.
    fn open(
        job: &Job,
        pipeline: &Pipeline,
        restore: Option<&Restore>,
        own: [Option<Box<dyn Sink>>; 4],
        encoders: usize,
    ) -> Result<Outputs> {
        let committed = restore.map_or(0, |r| r.manifest.id);
        let staged = |id: &Path| {
            restore
                .and_then(|r| r.manifest.sinks.iter().find(|c| c.dir == id))
                .map_or(&[][..], |c| &c.parts[..])
        };
        let open = |own: Option<Box<dyn Sink>>, spec: Option<&crate::job::Sink>, schema| {
            let sink = match (own, spec, &job.checkpoint) {
                (Some(mut sink), _, _) => {
                    if restore.is_some() {
                        sink.publish(staged(Path::new(&sink.id())))?;
                    }
                    sink
                }
                (None, None, _) => return Ok(None),
                (None, Some(spec), None) => open_sink_encoding(spec, schema, encoders)?,
                (None, Some(spec), Some(c)) => {
                    let (dir, key) = (parts_dir(spec, &c.dir), parts_key(spec, &c.dir));
                    let (Some(dir), Some(key)) = (dir, key) else {
                        return Err(Error::Internal("a part-file sink without a path".into()));
                    };
                    let staged = staged(Path::new(&key));
                    if let Some(r) = restore {
                        fetch_staged(r, &dir, staged)?;
                    }
                    open_parts(spec, schema, (committed, staged), dir, &c.dir, encoders)?
                }
            };
            Ok::<_, Error>(Some(sink))
        };
        let [sink, late, alerts, dead_letter] = own;
        let mut sinks = Vec::new();
        let mut add = |own, spec, schema| -> Result<Option<usize>> {
            let Some(sink) = open(own, spec, schema)? else {
                return Ok(None);
            };
            sinks.push(sink);
            Ok(Some(sinks.len() - 1))
        };
        add(sink, Some(&job.sink), pipeline.output_schema())?;
        let late = add(late, job.late.as_ref(), pipeline.late_schema())?;
        let alerts = add(
            alerts,
            job.anomaly.as_ref().map(|a| &a.sink),
            pipeline.alert_schema(),
        )?;
        let dead_letter = add(dead_letter, job.dead_letter.as_ref(), &dead_letter_schema())?;
        Ok(Outputs {
            sinks: SinkThread::spawn(sinks)?,
            late,
            alerts,
            dead_letter,
            malformed: 0,
            trimmed_at: None,
        })
    }

    /// Writes records that did not decode to `[dead_letter]`, or logs the first ones.
    fn dead_letters(&mut self, records: &[Malformed]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self.dead_letter {
            Some(i) => self.sinks.write(i, dead_letter_batch(records))?,
            None => {
                for r in records
                    .iter()
                    .take(MALFORMED_LOGGED.saturating_sub(self.malformed) as usize)
                {
                    tracing::warn!(
                        "{} at {}: {}; skipped: {:?}",
                        r.origin,
                        r.position,
                        r.reason,
                        r.raw
                    );
                }
            }
        }
        self.malformed += records.len() as u64;
        Ok(())
    }

    /// Under a memory budget, gives the memory freed since the last window's rows back to
    /// the system once a window's worth of rows went out: the allocator's arenas would
    /// otherwise keep what the shards' threads freed (result slices, panes read back), and
    /// the process would hold well over its budget (BENCHMARKS.md §11).
    fn give_back_freed_memory(&mut self, pipeline: &Pipeline) {
        let Some(at) = self.trimmed_at.as_mut() else {
            return;
        };
        let rows = pipeline.stats().rows_out;
        if rows < *at + crate::connect::writer::SLICE as u64 {
            return;
        }
        *at = rows;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[allow(unsafe_code)]
        // SAFETY: `malloc_trim` only hands free memory back; it is safe at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Writes what the pipeline produced: with `wait`, after the batch in flight too.
    fn drain(&mut self, pipeline: &mut Pipeline, wait: bool) -> Result<()> {
        self.give_back_freed_memory(pipeline);
        let outputs = match wait {
            true => pipeline.poll()?,
            false => pipeline.poll_ready(),
        };
        for output in outputs {
            let (to, batch) = match output {
                Output::Rows(batch) => (Some(0), batch),
                Output::Late(batch) => (self.late, batch),
                Output::Alerts(batch) => (self.alerts, batch),
            };
            if let Some(i) = to {
                self.sinks.write(i, batch)?;
            }
        }
        Ok(())
    }
}

/// Copies the staged parts `parts` in `dir` that a checkpoint in an object store keeps
/// (a Kafka sink's rows) and this machine lacks (the job ran elsewhere) into `dir`.
fn fetch_staged(restore: &Restore, dir: &Path, parts: &[String]) -> Result<()> {
    for part in parts {
        let local = dir.join(format!("{STAGED}{part}"));
        if local.exists() {
            continue;
        }
        if let Some(bytes) = restore.get_remote(&staged_copy(dir, part))? {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
            std::fs::write(&local, bytes).map_err(|e| Error::io("writing", &local, e))?;
        }
    }
    Ok(())
}

/// Takes checkpoint `id`: stages the sinks' parts, writes the state and the manifest, then
/// publishes the parts (the two phases of the commit).
fn take_checkpoint(
    job: &Job,
    id: u64,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
    position: &Position,
    finished: bool,
) -> Result<()> {
    let Some(c) = &job.checkpoint else {
        return Ok(());
    };
    let started = Instant::now();
    // The rows of every batch before `position` go into this checkpoint's parts.
    outputs.drain(pipeline, true)?;
    let sinks = outputs.sinks.call(move |sinks| {
        let mut commits = Vec::new();
        for sink in sinks {
            let parts = sink.stage(id)?;
            commits.push(Commit {
                dir: PathBuf::from(sink.id()),
                parts,
            });
        }
        Ok(commits)
    })?;
    failpoint("staged", id);
    let mut writer = CheckpointWriter::begin(&c.dir, id)?;
    if writer.is_remote() {
        // A Kafka sink's staged rows are on this machine: the checkpoint keeps a copy.
        let kafka = (job.all_sinks())
            .filter(|s| matches!(s, crate::job::Sink::Kafka { .. }))
            .filter_map(|s| Some((parts_dir(s, &c.dir)?, parts_key(s, &c.dir)?)));
        for (dir, key) in kafka {
            for commit in sinks.iter().filter(|commit| commit.dir == Path::new(&key)) {
                for part in &commit.parts {
                    let staged = dir.join(format!("{STAGED}{part}"));
                    let bytes =
                        std::fs::read(&staged).map_err(|e| Error::io("reading", &staged, e))?;
                    writer.put_remote(&staged_copy(&dir, part), bytes)?;
                }
            }
        }
    }
    let operator = pipeline.operator_mut().snapshot(&mut writer)?;
    failpoint("state", id);
    writer.commit(Manifest {
        id,
        created_ms: checkpoint::now_ms(),
        job: fingerprint(job),
        backend: pipeline.operator().backend_name().to_string(),
        watermark: pipeline.watermark(),
        position: position.clone(),
        finished,
        operator,
        sinks: sinks.clone(),
        files: Vec::new(),
    })?;
    failpoint("manifest", id);
    outputs.sinks.call(move |all| {
        for (i, (sink, commit)) in all.iter_mut().zip(&sinks).enumerate() {
            sink.publish(&commit.parts)?;
            if i == 0 {
                failpoint("publish", id);
            }
        }
        Ok(())
    })?;
    checkpoint::prune(&c.dir, c.keep)?;
    tracing::info!(
        "checkpoint {id} at {position} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Crash tests kill the job at a named point of checkpoint `id`: `PANES_FAILPOINT=state:3`
/// sends SIGKILL to this process after checkpoint 3 wrote its state, before its manifest.
fn failpoint(name: &str, id: u64) {
    failpoint_named(&format!("{name}:{id}"));
}

/// Kills the process when `PANES_FAILPOINT` is `point` (crash tests).
pub(crate) fn failpoint_named(point: &str) {
    let Ok(at) = std::env::var("PANES_FAILPOINT") else {
        return;
    };
    if at == point {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Runs a job to the end of its (bounded) input.
///
/// Results and late events are written to the job's sinks; the files appear only when the
/// run succeeds. The late-event output keeps every source column, so with a `[late]` sink
/// the source reads all columns, without one only those the job needs.
///
/// With `[checkpoint]`, the job resumes from a checkpoint (see [`StartFrom`]), takes
/// checkpoints as it goes and a last one at the end, and its sinks are part files
/// committed by checkpoints: exactly once, whatever crashes in between.
///
/// A Kafka job with `scale_out` joins its consumer group and runs each partition it is
/// given as a job of its own (see the README's scale-out section).
pub fn run_job(job: &Job, opts: RunOptions) -> Result<Summary> {
    #[cfg(feature = "kafka")]
    if matches!(&job.source, SourceSpec::Kafka(k) if k.scale_out) {
        return crate::scale_out::run(job, opts);
    }
    run_one(job, opts)
}

/// Runs a job in this process: all of its input, or one Kafka partition's under
/// scale-out.
pub(crate) fn run_one(job: &Job, mut opts: RunOptions) -> Result<Summary> {
    let start = Instant::now();
    let restore = starting_point(job, &opts.start)?;
    let verified = start.elapsed();
    let budget = opts.memory_budget.or(job.memory_budget);
    let backend = opts.backend;
    let Connectors {
        source,
        sink,
        late,
        alerts,
        dead_letter,
    } = std::mem::take(&mut opts.connectors);
    if alerts.is_some() && job.anomaly.is_none() {
        return Err(Error::Job {
            file: "run options".into(),
            message: "an alerts sink was given, but the job has no [anomaly] section".into(),
        });
    }
    let keep_late = job.late.is_some() || late.is_some();
    let source_name = match &source {
        Some(_) => "the service's source".to_string(),
        None => job.source.to_string(),
    };
    // Late events keep every column as it came.
    let (columns, dictionary) = match keep_late {
        true => (None, Vec::new()),
        false => (Some(needed_columns(job)), dictionary_keys(job)),
    };
    let decoders = crate::connect::io_threads(opts.threads);
    let mut source = match source {
        Some(source) => source,
        None => open_source(
            &job.source,
            &job.time_column,
            columns.as_deref(),
            &dictionary,
            opts.batch_rows,
            decoders,
        )?,
    };
    let schema = source.schema();
    let threads = opts.threads;
    let mut pipeline = Pipeline::with_backends(job, schema, source.partitions(), |aggs| {
        backend.build_shards(aggs, threads)
    })?;
    let (shards, cores) = (pipeline.shards(), default_threads());
    if shards > cores {
        tracing::warn!(
            "{shards} shards on {cores} cores: they share cores, which is slower than \
             --threads {cores} (the output does not change)"
        );
    }
    if let Some(budget) = budget {
        let dir = job.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
        crate::state::spill::remove_stale(&dir);
        // A partition's job under scale-out spills beside the others of its process.
        let mut name = format!("panes-spill-{}", std::process::id());
        if let SourceSpec::Kafka(KafkaSpec {
            partition: Some((t, p)),
            ..
        }) = &job.source
        {
            name = format!("{name}-{t}-{p}");
        }
        pipeline.memory_budget(budget, dir.join(name));
    }
    let mut position = Position::Start;
    if let Some(r) = &restore {
        // The cpu and gpu backends write one format of pane state; the reference keeps
        // its events.
        let portable = |b: &str| matches!(b, "cpu" | "gpu");
        let (from, to) = (
            r.manifest.backend.as_str(),
            pipeline.operator().backend_name(),
        );
        if from != to && !(portable(from) && portable(to)) {
            return Err(Error::Checkpoint {
                path: r.dir.clone(),
                message: format!(
                    "it holds state of the {from} backend; resume with --backend {from}"
                ),
            });
        }
        let restoring = Instant::now();
        pipeline.operator_mut().restore(r)?;
        let restored = restoring.elapsed();
        source.seek(&r.manifest.position)?;
        position = r.manifest.position.clone();
        tracing::info!(
            "resuming from checkpoint {} at {position}: checked in {:.1} ms, state restored \
             in {:.1} ms, source positioned in {:.1} ms",
            r.manifest.id,
            verified.as_secs_f64() * 1e3,
            restored.as_secs_f64() * 1e3,
            (restoring.elapsed() - restored).as_secs_f64() * 1e3,
        );
    }
    let mut outputs = Outputs::open(
        job,
        &pipeline,
        restore.as_ref(),
        [sink, late, alerts, dead_letter],
        crate::connect::io_threads(threads),
    )?;
    if budget.is_some() {
        outputs.trimmed_at = Some(0);
    }
    // Result rows go to the sink thread as windows fire, a slice of the keys at a time.
    if let Some(rows) = outputs.sinks.sender(0) {
        pipeline.stream_rows(move |batch| rows.send(batch))?;
    }
    let restored_from = restore.as_ref().map(|r| r.manifest.id);
    let summary = |pipeline: &Pipeline, checkpoints, malformed| {
        let stats = pipeline.stats();
        let op = pipeline.operator();
        let late_not_kept = if !keep_late { stats.late_events } else { 0 };
        Summary {
            backend: pipeline.backend(),
            stats,
            elapsed: start.elapsed(),
            late_not_kept,
            malformed,
            checkpoints,
            restored_from,
            spilled: op.spilled(),
            keys_spilled: op.keys_spilled(),
            sessions_spilled: op.sessions_spilled(),
            peak_rss: peak_rss(),
        }
    };
    if restore.as_ref().is_some_and(|r| r.manifest.finished) {
        tracing::warn!(
            "the job already finished at checkpoint {}; its output is published. Run with \
             --fresh to run it again",
            restored_from.unwrap_or(0)
        );
        return Ok(summary(&pipeline, 0, 0));
    }
    let mut next_id = restored_from.unwrap_or(0) + 1;
    let mut checkpoints_taken = 0u64;
    let mut events_read = pipeline.stats().events_in;
    let mut last_checkpoint = (Instant::now(), events_read);
    let total = source.total_rows();
    // The source reads and decodes the next batches on a thread of its own while this
    // one aggregates: a pipeline, which is what a second core is best used for.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Option<SourceBatch>>>(READ_AHEAD);
    // Completed checkpoints' positions, for the source (see `Source::checkpointed`).
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Position>();
    let stop = opts.stop.clone().unwrap_or_default();
    let stopping = stop.clone();
    let mut source = std::thread::scope(|scope| -> Result<Box<dyn Source>> {
        let reader = std::thread::Builder::new().name("panes-reader".into());
        let reader = reader
            .spawn_scoped(scope, move || {
                loop {
                    for at in done_rx.try_iter() {
                        source.checkpointed(&at);
                    }
                    let next = match stopping.load(Ordering::Relaxed) {
                        true => Ok(None),
                        false => source.next_batch(),
                    };
                    let more = matches!(next, Ok(Some(_)));
                    // A closed channel means the job stopped early: stop reading.
                    if tx.send(next).is_err() || !more {
                        break;
                    }
                }
                source
            })
            .map_err(|e| Error::Internal(format!("starting the reader thread: {e}")))?;
        // `rx` is consumed here, so an early error return closes the channel.
        for next in rx {
            let Some(b) = next? else { break };
            match b.batch.num_rows() {
                // Nothing arrived (a quiet Kafka topic) or nothing decoded: processing
                // time still advances, for idle partitions.
                0 => pipeline.tick(Instant::now())?,
                _ => pipeline.push_from(
                    b.partition,
                    &b.batch,
                    &b.origin,
                    b.first_row,
                    Instant::now(),
                )?,
            }
            outputs.drain(&mut pipeline, false)?;
            outputs.dead_letters(&b.malformed)?;
            position = b.after;
            // Counted here: the shards' counters lag a batch behind (see `sync`).
            events_read += b.batch.num_rows() as u64;
            if let Some(c) = &job.checkpoint {
                let due = match c.trigger {
                    Trigger::Interval(d) => last_checkpoint.0.elapsed() >= d,
                    Trigger::Events(n) => events_read - last_checkpoint.1 >= n,
                };
                if due {
                    take_checkpoint(job, next_id, &mut pipeline, &mut outputs, &position, false)?;
                    let _ = done_tx.send(position.clone());
                    next_id += 1;
                    checkpoints_taken += 1;
                    last_checkpoint = (Instant::now(), events_read);
                }
            }
            if let Some(progress) = opts.progress.as_mut() {
                let stats = pipeline.stats();
                progress(&Progress {
                    events: events_read,
                    total,
                    watermark: pipeline.watermark(),
                    late: stats.late_events,
                    rows_out: stats.rows_out,
                    alerts: stats.alerts,
                    checkpoints: checkpoints_taken,
                });
            }
        }
        // The reader ended (its source is exhausted or stopped): it gives the source back.
        reader
            .join()
            .map_err(|_| Error::Internal("the source's thread panicked".into()))
    })?;
    outputs.drain(&mut pipeline, true)?;
    let first_id = restored_from.unwrap_or(0) + 1;
    if stop.load(Ordering::Relaxed) && job.checkpoint.is_some() {
        // Stopped: the open windows wait in a last checkpoint for the next run.
        take_checkpoint(job, next_id, &mut pipeline, &mut outputs, &position, false)?;
        source.checkpointed(&position);
        outputs.sinks.stop()?;
        tracing::warn!(
            "stopped at {position}: checkpoint {next_id} holds the open windows; run the job \
             again to go on"
        );
        return Ok(summary(
            &pipeline,
            next_id + 1 - first_id,
            outputs.malformed,
        ));
    }
    // A partition of a topic may be empty; a job's whole input may not.
    let one_partition = matches!(&job.source, SourceSpec::Kafka(k) if k.partition.is_some());
    if pipeline.stats().events_in == 0 && !one_partition {
        return Err(Error::input(source_name, "the source holds no events"));
    }
    while !pipeline.finish_step()? {
        outputs.drain(&mut pipeline, false)?;
    }
    outputs.drain(&mut pipeline, true)?;
    if job.checkpoint.is_some() {
        take_checkpoint(job, next_id, &mut pipeline, &mut outputs, &position, true)?;
        source.checkpointed(&position);
        next_id += 1;
        // Every part is published; the sinks hold nothing more.
        outputs.sinks.stop()?;
    } else {
        for s in outputs.sinks.stop()? {
            s.finish()?;
        }
    }
    let summary = summary(&pipeline, next_id - first_id, outputs.malformed);
    if summary.late_not_kept > 0 {
        tracing::warn!(
            "{} late events were counted but not kept: add a [late] section to keep them",
            summary.late_not_kept
        );
    }
    if summary.malformed > 0 && outputs.dead_letter.is_none() {
        tracing::warn!(
            "{} malformed records were skipped, the first {MALFORMED_LOGGED} logged: add a \
             [dead_letter] section to keep them",
            summary.malformed
        );
    }
    Ok(summary)
}
