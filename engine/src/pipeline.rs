//! panes as a library: a window pipeline built in code, fed Arrow batches by the service
//! that embeds it, and polled for window rows, late events and anomaly alerts.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampMillisecondArray};
//! use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
//! use panes_engine::pipeline::{Output, Pipeline};
//! use panes_kernels::AggFn;
//!
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
//!     Field::new("article", DataType::Int64, false),
//!     Field::new("depth", DataType::Float64, true),
//! ]));
//! let mut pipeline = Pipeline::builder()
//!     .event_time("ts", Duration::from_secs(5))
//!     .hop(Duration::from_secs(60), Duration::from_secs(10))
//!     .key(&["article"])
//!     .aggregate("views", AggFn::CountRows, None)
//!     .aggregate("depth", AggFn::Avg, Some("depth"))
//!     .build(schema.clone())?;
//! let batch = RecordBatch::try_new(schema, vec![
//!     Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000, 75_000])),
//!     Arc::new(Int64Array::from(vec![7, 7, 9])),
//!     Arc::new(Float64Array::from(vec![0.5, 1.0, 0.25])),
//! ])?;
//! pipeline.push(0, &batch)?;
//! let mut rows = 0;
//! for output in pipeline.finish()? {
//!     if let Output::Rows(batch) = output {
//!         rows += batch.num_rows();
//!     }
//! }
//! assert_eq!(rows, 12); // articles 7 and 9 in the 6 windows that hold their events
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The builder fills in the types a job file is read into ([`crate::job::JobFile`]) and
//! validates them the same way, so its errors read like a job file's (`job file
//! <pipeline>: …`). [`Pipeline::spawn`]
//! drives a pipeline from a tokio channel of batches.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use panes_kernels::{AggFn, AggSpec, Backend};

use crate::error::{Error, Result};
use crate::job::{
    AggregateConfig, FilterConfig, Job, JobFile, KeyConfig, SinkConfig, SourceConfig, StateConfig,
    TimeConfig, TopKConfig, WindowConfig,
};
use crate::operator::{Stats, WindowOperator};
use crate::run::{BackendKind, default_threads};
pub use crate::state::checkpoint::Snapshot;

/// What a pipeline gives back.
#[derive(Clone, Debug)]
pub enum Output {
    /// Window results: key columns, window bounds, aggregates (with `rank` for top-k and
    /// `revision` with allowed lateness).
    Rows(RecordBatch),
    /// Events too late for every window they fall in, with the watermark they met.
    Late(RecordBatch),
    /// Anomaly alerts.
    Alerts(RecordBatch),
}

/// Builds a [`Pipeline`]. Every setting has the job file's default; the event-time
/// column, a window and one aggregate are required.
#[derive(Clone, Debug)]
pub struct PipelineBuilder {
    time: Option<(String, Duration)>,
    allowed_lateness: Duration,
    idle_timeout: Option<Duration>,
    window: Option<WindowConfig>,
    keys: Vec<String>,
    aggregates: Vec<(String, AggFn, Option<String>)>,
    top_k: Option<(String, usize)>,
    partitions: usize,
    backend: BackendKind,
    threads: usize,
}

/// A duration as the job file writes it.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A `[window]` of `kind` with `size` and the other lengths `set` gives.
fn window(kind: &str, size: Option<Duration>, set: impl FnOnce(&mut WindowConfig)) -> WindowConfig {
    let mut w = WindowConfig {
        kind: kind.into(),
        size: size.map(millis).unwrap_or_default(),
        slide: None,
        step: None,
        gap: None,
        offset: None,
    };
    set(&mut w);
    w
}

impl PipelineBuilder {
    /// The event-time column and its bounded out-of-orderness.
    pub fn event_time(mut self, column: &str, max_out_of_orderness: Duration) -> Self {
        self.time = Some((column.to_string(), max_out_of_orderness));
        self
    }

    /// How long a window keeps its state after it fired (default none): later events
    /// re-fire it with a higher `revision`.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }

    /// How long a partition may send nothing before it stops holding the watermark back
    /// (default 30 s; see [`Pipeline::tick`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Tumbling windows of `size`.
    pub fn tumble(mut self, size: Duration) -> Self {
        self.window = Some(window("tumble", Some(size), |_| {}));
        self
    }

    /// Hop (sliding) windows of `size`, one every `slide`.
    pub fn hop(mut self, size: Duration, slide: Duration) -> Self {
        self.window = Some(window("hop", Some(size), |w| w.slide = Some(millis(slide))));
        self
    }

    /// Cumulate windows: every `size`, windows that grow by `step`.
    pub fn cumulate(mut self, step: Duration, size: Duration) -> Self {
        self.window = Some(window("cumulate", Some(size), |w| {
            w.step = Some(millis(step))
        }));
        self
    }

    /// Session windows per key, closed by a `gap` without events.
    pub fn session(mut self, gap: Duration) -> Self {
        self.window = Some(window("session", None, |w| w.gap = Some(millis(gap))));
        self
    }

    /// The key columns (default: none, one global group).
    pub fn key(mut self, columns: &[&str]) -> Self {
        self.keys = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// An aggregate named `name`: `func` over `column` (`None` for `CountRows`).
    pub fn aggregate(mut self, name: &str, func: AggFn, column: Option<&str>) -> Self {
        self.aggregates
            .push((name.to_string(), func, column.map(str::to_string)));
        self
    }

    /// Only the `k` rows of each window with the largest value of aggregate `by`.
    pub fn top_k(mut self, by: &str, k: usize) -> Self {
        self.top_k = Some((by.to_string(), k));
        self
    }

    /// Source partitions, each with its own watermark (default 1).
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions;
        self
    }

    /// The data plane (default `cpu`).
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Threads, each owning a shard of the keys (default every core).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The job this builder describes, in the types a job file reads into.
    fn job_file(&self) -> Result<JobFile> {
        let missing = |what: &str| Error::Job {
            file: "<pipeline>".into(),
            message: format!("{what} is missing"),
        };
        let (column, bound) = self.time.as_ref().ok_or_else(|| missing("event_time"))?;
        let window = self.window.clone().ok_or_else(|| missing("a window"))?;
        let aggregate = (self.aggregates.iter())
            .map(|(name, func, column)| AggregateConfig {
                name: name.clone(),
                func: match func {
                    AggFn::Count => "count",
                    f => AggFn::ALL.iter().find(|a| a.1 == *f).map_or("?", |a| a.0),
                }
                .into(),
                column: column.clone(),
                expr: None,
            })
            .collect();
        Ok(JobFile {
            source: SourceConfig {
                kind: "parquet".into(),
                path: Some("pushed batches".into()),
                ..SourceConfig::default()
            },
            time: TimeConfig {
                column: column.clone(),
                max_out_of_orderness: millis(*bound),
                allowed_lateness: millis(self.allowed_lateness),
                idle_timeout: millis(self.idle_timeout.unwrap_or(Duration::from_secs(30))),
            },
            window,
            key: KeyConfig {
                columns: self.keys.clone(),
            },
            aggregate,
            sink: SinkConfig {
                kind: "jsonl".into(),
                path: None,
                bootstrap: None,
                topic: None,
            },
            late: None,
            dead_letter: None,
            top_k: (self.top_k.clone()).map(|(by, k)| TopKConfig { by, k }),
            anomaly: None,
            checkpoint: None,
            state: StateConfig::default(),
            filter: FilterConfig::default(),
            output: None,
        })
    }

    /// The pipeline over batches of `schema`: the job is validated, and every column it
    /// names resolved, before any batch.
    pub fn build(self, schema: SchemaRef) -> Result<Pipeline> {
        let job = Job::from_config(self.job_file()?, "<pipeline>")?;
        Pipeline::from_job(&job, schema, self.partitions, self.backend, self.threads)
    }
}

/// What [`Pipeline::spawn`] runs on: where its batches come from and how it paces itself.
#[derive(Debug)]
pub struct Driver {
    /// Batches, each with its source partition. When every sender is dropped, the input
    /// has ended and the pipeline finishes.
    pub input: tokio::sync::mpsc::Receiver<(usize, RecordBatch)>,
    /// How often processing time ticks while no batch arrives (idleness).
    pub tick: Duration,
    /// Outputs in flight at most: a consumer that falls behind slows the pipeline down.
    pub capacity: usize,
}

/// A window pipeline: push batches, tick processing time, poll outputs. See the module docs.
pub struct Pipeline {
    op: WindowOperator,
    schema: SchemaRef,
    /// Which job its snapshots belong to.
    fingerprint: String,
    /// Rows pushed so far (positions in errors).
    pushed: u64,
    finished: bool,
    /// Outputs a spawned pipeline could not deliver (its receiver was gone): the next
    /// poll returns them first.
    pending: Vec<Output>,
}

impl Pipeline {
    /// A builder with the job file's defaults.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder {
            time: None,
            allowed_lateness: Duration::ZERO,
            idle_timeout: None,
            window: None,
            keys: Vec::new(),
            aggregates: Vec::new(),
            top_k: None,
            partitions: 1,
            backend: BackendKind::Cpu,
            threads: default_threads(),
        }
    }

    /// A pipeline running a job that a job file (or SQL) describes, over batches of
    /// `schema` from `partitions` source partitions, on `threads` shards of `backend`. The
    /// job's source and sinks are not used: batches come from [`Pipeline::push`], results
    /// go to [`Pipeline::poll`].
    pub fn from_job(
        job: &Job,
        schema: SchemaRef,
        partitions: usize,
        backend: BackendKind,
        threads: usize,
    ) -> Result<Pipeline> {
        let threads = threads.max(1);
        Pipeline::with_backends(job, schema, partitions, |aggs| {
            backend.build_shards(aggs, threads)
        })
    }

    /// [`Pipeline::from_job`] on the backends that `backends` builds for the job's
    /// aggregates, one per shard: a backend with options of its own (a profiled GPU), or
    /// one of a service's own making.
    pub fn with_backends(
        job: &Job,
        schema: SchemaRef,
        partitions: usize,
        backends: impl Fn(&[AggSpec]) -> Result<Vec<Box<dyn Backend>>>,
    ) -> Result<Pipeline> {
        let op = WindowOperator::new(job, &schema, partitions.max(1), backends)?;
        Ok(Pipeline {
            fingerprint: crate::run::fingerprint(job),
            op,
            schema,
            pushed: 0,
            finished: false,
            pending: Vec::new(),
        })
    }

    /// What it has done so far: events in, late events, windows fired, rows out.
    pub fn stats(&self) -> Stats {
        self.op.stats()
    }

    /// Seconds spent in each stage of its backend, when the backend profiles (a GPU
    /// backend with `profile` set); empty otherwise.
    pub fn profile(&self) -> Vec<(&'static str, f64)> {
        self.op.profile()
    }

    /// Pushes a batch from source partition `partition`, arriving now. A batch whose
    /// schema is not the pipeline's, or a partition out of range, is an error.
    pub fn push(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        self.push_at(partition, batch, Instant::now())
    }

    /// [`Pipeline::push`] of a batch that arrived at processing time `now`.
    pub fn push_at(&mut self, partition: usize, batch: &RecordBatch, now: Instant) -> Result<()> {
        let origin = format!(
            "pushed batch at row {} of partition {partition}",
            self.pushed
        );
        self.push_from(partition, batch, &origin, self.pushed, now)
    }

    /// [`Pipeline::push_at`] of a batch read from `origin` (a file, a topic partition)
    /// whose first row is row `first_row` there: errors about its rows name both.
    pub fn push_from(
        &mut self,
        partition: usize,
        batch: &RecordBatch,
        origin: &str,
        first_row: u64,
        now: Instant,
    ) -> Result<()> {
        let (want, got) = (self.schema.fields(), batch.schema_ref().fields());
        if let Some(i) = (0..want.len().max(got.len())).find(|&i| {
            want.get(i).map(|f| (f.name(), f.data_type()))
                != got.get(i).map(|f| (f.name(), f.data_type()))
        }) {
            let describe = |f: Option<&std::sync::Arc<arrow::datatypes::Field>>| {
                f.map_or("nothing".to_string(), |f| {
                    format!("{:?} ({})", f.name(), f.data_type())
                })
            };
            return Err(Error::input(
                origin,
                format!(
                    "column {i} is {}, the pipeline's schema has {}",
                    describe(got.get(i)),
                    describe(want.get(i))
                ),
            ));
        }
        self.op
            .process_batch_at(partition, batch, origin, first_row, now)?;
        self.pushed += batch.num_rows() as u64;
        Ok(())
    }

    /// Keeps the state within `bytes`: past it, closed panes, then keys, then open
    /// sessions spill to files under `spill_dir` (as `[state] memory_budget` does). Set
    /// it before the first batch.
    pub fn memory_budget(&mut self, bytes: u64, spill_dir: PathBuf) {
        self.op.set_memory_budget(bytes, spill_dir);
    }

    /// Window rows go to `rows` as windows fire, instead of waiting for
    /// [`Pipeline::poll`]: a window of millions of keys then never sits whole in memory
    /// (its rows come a slice of the keys at a time). Jobs with top-k, and jobs without
    /// keys on several threads, still give their rows to `poll` (they merge across
    /// threads).
    pub fn stream_rows(
        &mut self,
        rows: impl FnMut(RecordBatch) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.op.stream_output(Box::new(rows))
    }

    /// Schema of [`Output::Rows`].
    pub fn output_schema(&self) -> &SchemaRef {
        self.op.output_schema()
    }

    /// Schema of [`Output::Late`]: the input's columns and the watermark each event met.
    pub fn late_schema(&self) -> &SchemaRef {
        self.op.late_schema()
    }

    /// Schema of [`Output::Alerts`].
    pub fn alert_schema(&self) -> &SchemaRef {
        self.op.alert_schema()
    }

    /// The job's watermark, in milliseconds since the epoch (`i64::MIN` before the first
    /// event).
    pub fn watermark(&self) -> i64 {
        self.op.watermark()
    }

    /// The backend it runs on, with its number of threads (as a run summary shows it).
    pub fn backend(&self) -> String {
        self.op.backend()
    }

    /// How many shards the operator runs, each on a thread of its own when more than one
    /// (a GPU backend, or a job without keys that needs one place, runs one).
    pub fn shards(&self) -> usize {
        self.op.shards()
    }

    /// The operator underneath, for what only `panes run` does: checkpoints in files
    /// (an embedder keeps a [`Snapshot`] where it likes) and spill counters.
    pub(crate) fn operator(&self) -> &WindowOperator {
        &self.op
    }

    /// [`Pipeline::operator`], to write or restore a checkpoint.
    pub(crate) fn operator_mut(&mut self) -> &mut WindowOperator {
        &mut self.op
    }

    /// The end of input a window at a time: fires the next window that has not fired and
    /// returns false, or finishes and returns true. Polling between steps keeps one
    /// window's rows in memory, not all the windows the end of input fires.
    pub(crate) fn finish_step(&mut self) -> Result<bool> {
        let done = self.op.finish_step()?;
        self.finished |= done;
        Ok(done)
    }

    /// Processing time passes without a batch: partitions quiet for the idle timeout stop
    /// holding the watermark back, and the windows the others completed fire.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        self.op.tick(now)
    }

    /// Source partition `partition` has ended (a file read to its end, a shard of a
    /// queue closed): it no longer holds the watermark back, and the windows the other
    /// partitions completed fire. An unknown partition is an error.
    pub fn finish_partition(&mut self, partition: usize) -> Result<()> {
        self.op.finish_partition(partition)
    }

    /// The outputs produced so far: window rows, then late events, then alerts.
    pub fn poll(&mut self) -> Result<Vec<Output>> {
        self.op.sync()?;
        Ok(self.poll_ready())
    }

    /// [`Pipeline::poll`] without waiting: on several threads the shards process a pushed
    /// batch while `push` returns (the caller prepares the next one meanwhile), and this
    /// returns only what batches before it produced; the rest comes with a later call.
    /// The way to keep every thread busy: push, then `poll_ready`, batch after batch.
    pub fn poll_ready(&mut self) -> Vec<Output> {
        let rows = self.op.take_output().into_iter().map(Output::Rows);
        let late = self.op.take_late().into_iter().map(Output::Late);
        let alerts = self.op.take_alerts().into_iter().map(Output::Alerts);
        let mut outputs = std::mem::take(&mut self.pending);
        outputs.extend(rows.chain(late).chain(alerts));
        outputs
    }

    /// The end of input: every window fires; returns the last outputs. No batch may follow.
    pub fn finish(&mut self) -> Result<Vec<Output>> {
        if !self.finished {
            self.finished = true;
            self.op.finish()?;
        }
        self.poll()
    }

    /// The pipeline's state in memory. Poll first: outputs are not part of it.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snapshot = self.op.snapshot_in_memory()?;
        snapshot.job = self.fingerprint.clone();
        Ok(snapshot)
    }

    /// Runs the pipeline inside a tokio runtime, on one of its blocking threads (the CPU
    /// kernels, or a GPU's waits, never hold up the runtime's workers): batches from
    /// `driver.input` are pushed as they arrive, processing time ticks every `driver.tick`
    /// while none does, and outputs go to the returned receiver, at most
    /// `driver.capacity` in flight. Wrap the receivers in `tokio_stream`'s
    /// `ReceiverStream` for streams.
    ///
    /// When the input ends, every window fires and the task ends. When the output
    /// receiver is dropped, the task stops between two batches, and the outputs it could
    /// not deliver wait for the next [`Pipeline::poll`]. Either way the join handle gives
    /// the pipeline back, in a consistent state to [`Pipeline::snapshot`].
    /// An error is sent as the last output, and the pipeline is still given back.
    pub fn spawn(
        mut self,
        driver: Driver,
    ) -> (
        tokio::sync::mpsc::Receiver<Result<Output>>,
        tokio::task::JoinHandle<Pipeline>,
    ) {
        let Driver {
            mut input,
            tick,
            capacity,
        } = driver;
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            // Sends outputs; false when the receiver is gone, with what it could not take
            // kept for the next poll: nothing produced is lost.
            let send = |pipeline: &mut Pipeline, outputs: Result<Vec<Output>>| match outputs {
                Ok(outputs) => {
                    let mut outputs = outputs.into_iter();
                    while let Some(o) = outputs.next() {
                        if let Err(unsent) = tx.blocking_send(Ok(o)) {
                            pipeline.pending = unsent.0.into_iter().chain(outputs).collect();
                            return false;
                        }
                    }
                    true
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    false
                }
            };
            loop {
                let next = handle.block_on(tokio::time::timeout(tick, input.recv()));
                let step = match next {
                    Ok(Some((partition, batch))) => self.push(partition, &batch),
                    Ok(None) => {
                        let last = self.finish();
                        send(&mut self, last);
                        return self;
                    }
                    Err(_elapsed) => self.tick(Instant::now()),
                };
                let outputs = step.and_then(|()| self.poll());
                if !send(&mut self, outputs) {
                    return self;
                }
            }
        });
        (rx, task)
    }

    /// Restores a snapshot of a pipeline of the same job (at any thread count) into this
    /// fresh one; a snapshot of another job is an error.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if snapshot.job != self.fingerprint {
            return Err(Error::Checkpoint {
                path: "<snapshot in memory>".into(),
                message: "it belongs to another job (window, keys, aggregates or time differ)"
                    .into(),
            });
        }
        self.op.restore(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("k", DataType::Int64, false),
        ]))
    }

    fn batch(ts: Vec<i64>, keys: Vec<i64>) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(Int64Array::from(keys)),
            ],
        )
        .expect("batch")
    }

    fn builder() -> PipelineBuilder {
        Pipeline::builder()
            .event_time("ts", Duration::from_secs(1))
            .tumble(Duration::from_secs(10))
            .key(&["k"])
            .aggregate("n", AggFn::CountRows, None)
            .threads(2)
    }

    fn rows(outputs: Vec<Output>) -> Vec<String> {
        let mut rows: Vec<String> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Rows(b) => Some(b),
                _ => None,
            })
            .flat_map(|b| {
                (0..b.num_rows()).map(move |r| {
                    let cells: Vec<String> = b
                        .columns()
                        .iter()
                        .map(|c| arrow::util::display::array_value_to_string(c, r).expect("cell"))
                        .collect();
                    cells.join("|")
                })
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_finished_partition_no_longer_holds_the_watermark_back() {
        let mut pipeline = builder().partitions(2).build(schema()).expect("pipeline");
        // Partition 0 is at 25 s; partition 1 has seen nothing and holds everything back.
        pipeline
            .push(0, &batch(vec![1_000, 12_000, 25_000], vec![1, 1, 2]))
            .expect("push");
        assert!(rows(pipeline.poll().expect("poll")).is_empty());
        pipeline.finish_partition(1).expect("partition 1 ends");
        // Watermark 24 s: windows [0, 10) and [10, 20) fire, [20, 30) is open.
        assert_eq!(
            rows(pipeline.poll().expect("poll")),
            [
                "1|1970-01-01T00:00:00|1970-01-01T00:00:10|1",
                "1|1970-01-01T00:00:10|1970-01-01T00:00:20|1"
            ]
        );
        let err = pipeline.finish_partition(2).expect_err("no partition 2");
        assert!(err.to_string().contains("the source has 2"), "{err}");
    }

    #[test]
    fn bad_calls_are_errors_that_say_what_is_wrong() {
        let err = Pipeline::builder()
            .build(schema())
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("event_time is missing"), "{err}");
        let err = builder()
            .aggregate("m", AggFn::Sum, Some("nope"))
            .build(schema())
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("\"nope\" does not exist"), "{err}");

        let mut p = builder().build(schema()).unwrap();
        let other = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("k", DataType::Utf8, false),
        ]));
        let wrong = RecordBatch::try_new(
            other,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1])),
                Arc::new(arrow::array::StringArray::from(vec!["a"])),
            ],
        )
        .unwrap();
        let err = p.push(0, &wrong).unwrap_err().to_string();
        assert!(err.contains("column 1 is \"k\" (Utf8)"), "{err}");
        let err = p.push(3, &batch(vec![1], vec![1])).unwrap_err().to_string();
        assert!(err.contains("partition 3 does not exist"), "{err}");
        p.push(0, &batch(vec![1_000, 2_000], vec![1, 2])).unwrap();
        assert_eq!(rows(p.finish().unwrap()).len(), 2);
        let err = p.push(0, &batch(vec![1], vec![1])).unwrap_err().to_string();
        assert!(err.contains("after the end of input"), "{err}");

        let snapshot = builder().build(schema()).unwrap().snapshot().unwrap();
        let mut hop = builder()
            .hop(Duration::from_secs(10), Duration::from_secs(5))
            .build(schema())
            .unwrap();
        let err = hop.restore(&snapshot).unwrap_err().to_string();
        assert!(err.contains("another job"), "{err}");
    }

    /// Driven by tokio: batches through a channel give the rows of pushing them by hand;
    /// dropping the output receiver stops the task, which gives the pipeline back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spawned_pipeline_gives_the_rows_of_one_driven_by_hand() {
        let batches: Vec<RecordBatch> = (0..8)
            .map(|b| {
                let ts = (0..40).map(|i| b * 4_000 + i * 100).collect();
                batch(ts, (0..40).map(|i| (i + b) % 3).collect())
            })
            .collect();
        let mut by_hand = builder().build(schema()).unwrap();
        let mut want = Vec::new();
        for b in &batches {
            by_hand.push(0, b).unwrap();
            want.extend(by_hand.poll().unwrap());
        }
        want.extend(by_hand.finish().unwrap());

        let (tx, input) = tokio::sync::mpsc::channel(2);
        let driver = Driver {
            input,
            tick: Duration::from_millis(5),
            capacity: 1,
        };
        let (mut outputs, task) = builder().build(schema()).unwrap().spawn(driver);
        let feed = tokio::spawn(async move {
            for b in batches {
                tx.send((0, b)).await.expect("the pipeline takes batches");
            }
        });
        let mut got = Vec::new();
        while let Some(output) = outputs.recv().await {
            got.push(output.expect("no error"));
        }
        feed.await.unwrap();
        task.await.unwrap();
        let want = rows(want);
        assert!(want.len() > 8);
        assert_eq!(rows(got), want);

        // A consumer that goes away stops the pipeline; it comes back to snapshot.
        let (tx, input) = tokio::sync::mpsc::channel(1);
        let driver = Driver {
            input,
            tick: Duration::from_millis(5),
            capacity: 1,
        };
        let (outputs, task) = builder().build(schema()).unwrap().spawn(driver);
        drop(outputs);
        tx.send((0, batch(vec![1_000, 30_000], vec![1, 2])))
            .await
            .unwrap();
        let _ = tx.send((0, batch(vec![60_000], vec![1]))).await;
        drop(tx);
        let mut back = task.await.unwrap();
        // The first window (0-10 s) fired on that batch and could not be delivered: the
        // pipeline keeps it for the next poll.
        let kept = rows(back.poll().unwrap());
        assert!(kept.iter().any(|r| r.starts_with("1|")), "{kept:?}");
        assert!(back.snapshot().is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(200))]
        /// Whatever a builder is given (columns that do not exist, zero or odd durations,
        /// names that repeat, partitions out of range), building and driving a pipeline
        /// gives errors, never a panic.
        #[test]
        fn random_builders_and_calls_never_panic(
            time in 0usize..8,
            bound in 0u64..20_000,
            window in 0usize..4,
            a in 0u64..40,
            b in 0u64..40,
            keys in proptest::collection::vec(0usize..8, 0..3),
            aggs in proptest::collection::vec((0usize..13, 0usize..8), 1..4),
            top in proptest::option::weighted(0.2, (0usize..4, 0usize..5)),
            lateness in 0u64..120_000,
            partitions in 0usize..3,
            threads in 1usize..4,
            pushes in proptest::collection::vec((0usize..3, proptest::collection::vec(-100_000i64..400_000, 0..50)), 0..4),
        ) {
            // Mostly valid settings, now and then a column that does not exist, a zero
            // duration or a repeated name.
            let column = |i: usize| ["ts", "ts", "ts", "ts", "k", "k", "k", "nope"][i];
            let secs = |n: u64| Duration::from_millis(n * 1_000);
            let mut builder = Pipeline::builder()
                .event_time(["ts", "ts", "ts", "ts", "ts", "ts", "k", "nope"][time], Duration::from_millis(bound))
                .allowed_lateness(Duration::from_millis(lateness.saturating_sub(60_000)))
                .partitions(partitions)
                .threads(threads)
                .key(&keys.iter().map(|&k| ["k", "k", "k", "k", "k", "k", "ts", "nope"][k]).collect::<Vec<_>>());
            builder = match window {
                0 => builder.tumble(secs(a)),
                1 => builder.hop(secs(a * (b % 5 + 1)), secs(a)),
                2 => builder.cumulate(secs(a), secs(a * (b % 5 + 1))),
                _ => builder.session(secs(a)),
            };
            for (i, &(f, c)) in aggs.iter().enumerate() {
                let func = AggFn::ALL[f].1;
                let input = (func != AggFn::CountRows).then(|| column(c));
                builder = builder.aggregate(&format!("a{}", i % 3), func, input);
            }
            if let Some((by, k)) = top {
                builder = builder.top_k(&format!("a{by}"), k);
            }
            if let Ok(mut p) = builder.build(schema()) {
                for (partition, ts) in pushes {
                    let keys = ts.iter().map(|t| t % 7).collect();
                    let _ = p.push(partition, &batch(ts, keys));
                    let _ = p.poll();
                    let _ = p.tick(Instant::now() + Duration::from_secs(60));
                }
                let _ = p.snapshot();
                let _ = p.finish();
                let _ = p.push(0, &batch(vec![1], vec![1]));
            }
        }
    }

    /// A snapshot taken between pushes, restored into a fresh pipeline at one thread,
    /// continues to the rows of an uninterrupted run.
    #[test]
    fn a_snapshot_restores_into_a_new_pipeline_and_continues() {
        let batches: Vec<RecordBatch> = (0..6)
            .map(|b| {
                let ts = (0..50).map(|i| b * 5_000 + i * 100).collect();
                let keys = (0..50).map(|i| (i * 7 + b) % 5).collect();
                batch(ts, keys)
            })
            .collect();
        let mut whole = builder().build(schema()).unwrap();
        let mut want = Vec::new();
        for b in &batches {
            whole.push(0, b).unwrap();
            want.extend(whole.poll().unwrap());
        }
        want.extend(whole.finish().unwrap());

        let mut first = builder().build(schema()).unwrap();
        let mut got = Vec::new();
        for b in &batches[..3] {
            first.push(0, b).unwrap();
        }
        got.extend(first.poll().unwrap());
        let snapshot = first.snapshot().unwrap();
        let mut second = builder().threads(1).build(schema()).unwrap();
        second.restore(&snapshot).unwrap();
        for b in &batches[3..] {
            second.push(0, b).unwrap();
        }
        got.extend(second.finish().unwrap());
        let want = rows(want);
        assert!(want.len() > 10);
        assert_eq!(rows(got), want);
    }
}
