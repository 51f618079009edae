//! The window operator: Arrow batches in, window results, late events and anomaly alerts
//! out.
//!
//! Time is decided once per batch, before anything else: the event times, and the watermark
//! each event meets (from its source partition's events before it). Then the batch is split
//! among shards by a hash of its key values (`route`): each shard (`shard::Shard`) owns a
//! disjoint set of keys with all their state (key dictionary, panes, open sessions,
//! baselines, revisions, spill files), and the shards run on threads of their own without
//! sharing any state. Every shard moves to the job watermark after each batch, so each
//! fires a window when the watermark passes it. Which events are late and what each
//! (key, window) holds do not depend on the thread count or the batching.
//!
//! Outputs are gathered after each batch: window by window, and within a window shard by
//! shard; or, with [`WindowOperator::stream_output`], passed on as windows fire, shard by
//! shard within a batch. For a given input, batching and thread count their order is
//! always the same, and the set of rows never depends on the thread count. Top-k lists of
//! one firing are merged across shards (`topk`). A job without keys has one group: with
//! fixed windows its events are split among the shards by event time and the shards'
//! partial states merged as windows fire (`keyless`); with sessions, anomaly detection or
//! top-k it runs on one shard, as does the GPU backend (one device).

pub(crate) mod anomaly;
mod keyless;
mod plan;
mod route;
mod shard;
mod snapshot;
mod topk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use panes_kernels::{AggSpec, Backend};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::job::{Job, TopK};
pub use crate::state::checkpoint::{OperatorState, Stats};
use crate::time::event_times;
use crate::time::watermark::WatermarkTracker;
use plan::Plan;
use shard::{Fired, Shard, Stream};

/// Takes result rows as windows fire (see [`WindowOperator::stream_output`]).
pub type RowConsumer = Box<dyn FnMut(RecordBatch) -> Result<()> + Send>;

/// The shards' streams of result rows, drained shard by shard into the consumer.
struct Streams {
    out: RowConsumer,
    from: Vec<std::sync::mpsc::Receiver<Option<RecordBatch>>>,
}

impl Streams {
    /// Passes on each shard's rows until it ends its batch, shard by shard, and returns the
    /// rows passed on. The first error of the consumer stops it taking more, but every
    /// stream is still drained, so that no shard waits for ever.
    fn drain(&mut self) -> Result<u64> {
        let (mut rows, mut failed) = (0, None);
        for rx in &self.from {
            // A shard that stopped (a panic) closed its channel: nothing more comes.
            while let Ok(Some(batch)) = rx.recv() {
                rows += batch.num_rows() as u64;
                if failed.is_none() {
                    failed = (self.out)(batch).err();
                }
            }
        }
        failed.map_or(Ok(rows), Err)
    }
}

/// The window operator. See the module docs.
pub struct WindowOperator {
    plan: Arc<Plan>,
    top_k: Option<TopK>,
    tracker: WatermarkTracker,
    /// The shards; empty while they process a batch on their threads.
    shards: Vec<Shard>,
    /// Runs the shards, when there are several.
    pool: Option<rayon::ThreadPool>,
    /// The batch the shards are processing, when they are.
    in_flight: Option<InFlight>,
    /// Buffers for the shard of each row, the batch's runs of rows grouped by shard, and
    /// each shard's rows, lent to the shards' threads with a batch.
    owners: Vec<u16>,
    runs: Vec<route::Run>,
    /// Each run's rows of each shard, gathered.
    pieces: Vec<Vec<Piece>>,
    /// Rows a shard takes at a time ([`PART_ROWS`]; tests change it).
    part_rows: usize,
    dictionary_shards: route::DictionaryShards,
    /// The backend as a summary names it, and the number of shards.
    backend: (&'static str, String),
    shard_count: usize,
    /// The end of input was reached: no batch may follow.
    finished: bool,
    /// The shards' counters at the last batch gathered.
    shard_stats: Stats,
    /// The watermark each event of the batch met.
    met: Vec<i64>,
    output: Vec<RecordBatch>,
    late: Vec<RecordBatch>,
    alerts: Vec<RecordBatch>,
    /// Where result rows go as windows fire (several shards), if not to `output`.
    streams: Option<Streams>,
    /// A job without keys on several shards: the state of the batches before, and how
    /// windows' partial states merge.
    keyless: Option<keyless::Keyless>,
    /// Rows a single shard passed on as windows fired, not counted yet.
    streamed: Arc<std::sync::atomic::AtomicU64>,
    /// Counters restored from a checkpoint; the shards count from zero.
    base: Stats,
    /// What the operator counts itself: rows out (after top-k merges) and peak state.
    own: Stats,
}

impl WindowOperator {
    /// An operator for `job` over inputs with `schema`, from `partitions` source partitions.
    /// `backends` builds the data planes for the aggregates the job resolves to: one shard
    /// runs on each. A job without keys on several shards calls it once more, for a
    /// backend that keeps and merges the shards' partial states; with sessions, anomaly detection or
    /// top-k it uses the first backend only.
    pub fn new(
        job: &Job,
        schema: &SchemaRef,
        partitions: usize,
        backends: impl Fn(&[AggSpec]) -> Result<Vec<Box<dyn Backend>>>,
    ) -> Result<Self> {
        let plan = Arc::new(Plan::new(job, schema)?);
        let mut made = backends(&plan.specs)?;
        let one_group = plan.key_indices.is_empty();
        let partial = one_group
            && made.len() > 1
            && job.window.session_gap().is_none()
            && job.anomaly.is_none()
            && job.top_k.is_none();
        if one_group && !partial {
            made.truncate(1);
        }
        if made.is_empty() {
            return Err(Error::Internal("an operator with no backend".into()));
        }
        let mut shards = made
            .into_iter()
            .map(|b| Shard::new(job, plan.clone(), b))
            .collect::<Result<Vec<_>>>()?;
        let keyless = match partial {
            true => {
                shards.iter_mut().for_each(Shard::set_partial);
                let Some(mut history) = backends(&plan.specs)?.into_iter().next() else {
                    return Err(Error::Internal(
                        "a job without keys on several shards needs one more backend".into(),
                    ));
                };
                history.set_fold_block(panes_kernels::fold_block(job.window.panes_per_window()));
                let lateness = job.allowed_lateness;
                Some(keyless::Keyless::new(history, job.window, lateness))
            }
            false => None,
        };
        let n = shards.len();
        let backend = match n {
            1 => (shards[0].backend_name(), shards[0].backend()),
            n => (
                shards[0].backend_name(),
                format!("{}, {n} shards", shards[0].backend()),
            ),
        };
        let pool = match n {
            1 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("panes-shard-{i}"))
                    .build()
                    .map_err(|e| Error::Internal(format!("starting shard threads: {e}")))?,
            ),
        };
        Ok(WindowOperator {
            plan,
            top_k: job.top_k,
            tracker: WatermarkTracker::new(
                partitions,
                job.max_out_of_orderness,
                job.idle_timeout,
                Instant::now(),
            ),
            shards,
            pool,
            in_flight: None,
            owners: Vec::new(),
            runs: Vec::new(),
            pieces: Vec::new(),
            part_rows: PART_ROWS,
            dictionary_shards: Default::default(),
            backend,
            shard_count: n,
            finished: false,
            shard_stats: Stats::default(),
            met: Vec::new(),
            output: Vec::new(),
            late: Vec::new(),
            alerts: Vec::new(),
            streams: None,
            keyless,
            streamed: Arc::default(),
            base: Stats::default(),
            own: Stats::default(),
        })
    }

    /// Passes result rows to `out` as windows fire, instead of holding them until
    /// [`WindowOperator::take_output`]: a window of millions of keys then never waits whole in
    /// memory (its rows come a slice of the keys at a time). Rows come window by window,
    /// and within a batch shard by shard. Jobs with top-k or without keys on several
    /// shards keep their rows for `take_output` (they merge across shards).
    pub fn stream_output(&mut self, mut out: RowConsumer) -> Result<()> {
        if let Some(p) = self.plan.projection.clone() {
            out = Box::new(move |batch| out(p.apply(&batch)?));
        }
        // The shards are at hand (not processing a batch), and what they made so far
        // waits for `take_output`.
        self.sync()?;
        if (self.top_k.is_some() || self.keyless.is_some()) && self.shards.len() > 1 {
            return Ok(());
        }
        if let [shard] = self.shards.as_mut_slice() {
            let streamed = self.streamed.clone();
            shard.set_stream(Stream::Direct(Box::new(move |batch: RecordBatch| {
                streamed.fetch_add(
                    batch.num_rows() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                out(batch)
            })));
            return Ok(());
        }
        // Two slices may wait per shard: the others wait their turn.
        let from = (self.shards.iter_mut())
            .map(|shard| {
                let (tx, rx) = std::sync::mpsc::sync_channel(2);
                shard.set_stream(Stream::Channel(tx));
                rx
            })
            .collect();
        self.streams = Some(Streams { out, from });
        Ok(())
    }

    /// Schema of the window results.
    pub fn output_schema(&self) -> &SchemaRef {
        match &self.plan.projection {
            Some(p) => &p.schema,
            None => &self.plan.out_schema,
        }
    }

    /// Schema of the late-event output: the input columns plus `watermark` and `reason`.
    pub fn late_schema(&self) -> &SchemaRef {
        &self.plan.late_schema
    }

    /// The schema of anomaly alert rows.
    pub fn alert_schema(&self) -> &SchemaRef {
        &self.plan.alert_schema
    }

    /// The backend's name, as `--backend` spells it.
    pub fn backend_name(&self) -> &'static str {
        self.backend.0
    }

    /// The backend, as a run summary shows it, with the number of shards.
    pub fn backend(&self) -> String {
        self.backend.1.clone()
    }

    /// How many shards it runs (each on a thread of its own when more than one).
    pub fn shards(&self) -> usize {
        self.shard_count
    }

    /// Counters so far (of the batches gathered: see [`WindowOperator::sync`]).
    pub fn stats(&self) -> Stats {
        self.base.combine(&self.shard_stats).combine(&self.own)
    }

    /// Seconds the backends spent per stage, summed over shards, where they keep a profile
    /// (the GPU's with `GpuOptions::profile`). Call it after [`WindowOperator::sync`].
    pub fn profile(&self) -> Vec<(&'static str, f64)> {
        let mut total: Vec<(&'static str, f64)> = Vec::new();
        for (stage, seconds) in self.shards.iter().flat_map(Shard::profile) {
            match total.iter_mut().find(|t| t.0 == stage) {
                Some(t) => t.1 += seconds,
                None => total.push((stage, seconds)),
            }
        }
        total
    }

    /// The current job watermark (`i64::MIN` before any).
    pub fn watermark(&self) -> i64 {
        self.tracker.current()
    }

    /// Takes the window results produced so far.
    pub fn take_output(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.output)
    }

    /// Takes the late events produced so far.
    pub fn take_late(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.late)
    }

    /// Takes the anomaly alerts produced so far.
    pub fn take_alerts(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.alerts)
    }

    /// Processes one batch from source partition `partition`; `origin` and `first_row` say
    /// where it came from, for errors. The batch arrives now, by the processing-time clock
    /// that idleness is measured on.
    #[cfg(test)]
    pub fn process_batch(
        &mut self,
        partition: usize,
        batch: &RecordBatch,
        origin: &str,
        first_row: u64,
    ) -> Result<()> {
        self.process_batch_at(partition, batch, origin, first_row, Instant::now())
    }

    /// [`WindowOperator::process_batch`] for a batch that arrived at processing time `now`
    /// (a caller that keeps its own clock, or a test).
    pub fn process_batch_at(
        &mut self,
        partition: usize,
        batch: &RecordBatch,
        origin: &str,
        first_row: u64,
        now: Instant,
    ) -> Result<()> {
        if self.finished {
            return Err(Error::input(
                origin,
                "a batch after the end of input: the operator has finished every window",
            ));
        }
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let partitions = self.tracker.partitions();
        if partition >= partitions {
            return Err(Error::input(
                origin,
                format!("partition {partition} does not exist: the source has {partitions}"),
            ));
        }
        if batch.num_columns() != self.plan.late_schema.fields().len() - 2 {
            return Err(Error::input(
                origin,
                format!(
                    "the batch has {} columns, the schema the job was built for {}",
                    batch.num_columns(),
                    self.plan.late_schema.fields().len() - 2
                ),
            ));
        }
        let plan = &self.plan;
        let mut ts = event_times(
            batch.column(plan.time_index),
            &plan.time_name,
            origin,
            first_row,
        )?;
        self.tracker.observe(partition, &ts, now, &mut self.met);
        let w = self.tracker.current();
        // Filtered events moved the watermark above; they go no further.
        let filtered;
        let batch = match &plan.events {
            Some(filter) => {
                let keep = filter.keep(batch)?;
                filtered = arrow::compute::filter_record_batch(batch, &keep)
                    .map_err(|e| Error::arrow("filtering events", e))?;
                ts = kept(ts, &keep)?;
                self.met = kept(std::mem::take(&mut self.met).into(), &keep)?.into();
                &filtered
            }
            None => batch,
        };
        // Shards see the columns they read; late events keep every column.
        let read = plan.read(batch)?;
        if self.shard_count == 1 {
            let shard = &mut self.shards[0];
            for part in parts(read.num_rows(), self.part_rows) {
                let (batch, first) = (read.slice(part.start, part.len()), part.start as u32);
                shard.aggregate(&batch, &ts[part.clone()], &self.met[part], origin, first)?;
            }
            shard.end_batch(w)?;
            let late = self.shards[0].take_late();
            if !late.is_empty() {
                let rows = late_rows(&self.plan, batch, late, &self.met)?;
                self.late.push(rows);
            }
            return self.collect();
        }
        // A dictionary-encoded key's shards are found here, where its values' shards are
        // kept; other keys are hashed on the shards' threads.
        let mut owners = std::mem::take(&mut self.owners);
        let keys = &read.columns()[..plan.key_indices.len()];
        let in_order = self.keyless.is_some();
        let owners_known = !in_order && route::keeps_dictionary(keys);
        owners.resize(if in_order { 0 } else { read.num_rows() }, 0);
        if owners_known {
            route::shards_of(
                keys,
                self.shard_count,
                &mut self.dictionary_shards,
                &mut owners,
            )?;
        }
        // The shards' threads take this batch once they are done with the last one, which
        // they processed while this thread prepared this one (and whose buffer for the
        // watermarks met comes back for the next batch).
        let met = std::mem::take(&mut self.met);
        self.sync()?;
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| Error::Internal("several shards without threads".into()))?;
        let mut work = Work {
            shards: std::mem::take(&mut self.shards),
            read,
            ts,
            met,
            w,
            origin: origin.to_string(),
            keys: self.plan.key_indices.len(),
            in_order,
            owners,
            owners_known,
            runs: std::mem::take(&mut self.runs),
            pieces: std::mem::take(&mut self.pieces),
            part_rows: self.part_rows,
        };
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        pool.spawn(move || {
            // A panic would abort the process from a pool's spawned job: it becomes an
            // error of the batch instead.
            let run = std::panic::AssertUnwindSafe(|| work.run());
            let result = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                Err(Error::Internal(
                    "a shard panicked while processing a batch".into(),
                ))
            });
            // When the operator went away, nobody waits for the batch.
            let _ = tx.send((work, result));
        });
        self.in_flight = Some(InFlight {
            done,
            batch: batch.clone(),
        });
        Ok(())
    }

    /// Waits for the shards to finish the batch they are processing, if any, and gathers
    /// its output. With several shards, [`WindowOperator::process_batch`] returns while
    /// the shards still work on the batch; its output comes with the next call, this one,
    /// or any call that ends the input. Call it before a checkpoint.
    pub fn sync(&mut self) -> Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let drained = self.drain_streams();
        let (work, result) = f
            .done
            .recv()
            .map_err(|_| Error::Internal("a shard's thread stopped with a panic".into()))?;
        let Work {
            shards,
            met,
            owners,
            runs,
            pieces,
            ..
        } = work;
        self.shards = shards;
        self.owners = owners;
        self.runs = runs;
        self.pieces = pieces;
        result?;
        drained?;
        let (mut late, mut rows) = (Vec::new(), Vec::new());
        let (n, shards) = (f.batch.num_rows(), self.shards.len());
        for (s, shard) in self.shards.iter_mut().enumerate() {
            let mine = shard.take_late();
            if mine.is_empty() {
                continue;
            }
            // The batch's rows that the shard took, found only for its late events.
            match self.keyless {
                Some(_) => rows = run_of(n, s, shards).map(|r| r as u32).collect(),
                None => route::rows_of(&self.runs, s, &mut rows),
            }
            late.extend(mine.into_iter().map(|i| rows[i as usize]));
        }
        if !late.is_empty() {
            late.sort_unstable();
            let rows = late_rows(&self.plan, &f.batch, late, &met)?;
            self.late.push(rows);
        }
        self.met = met;
        self.collect()
    }

    /// Runs `f` on every shard (after the batch in flight), in parallel when there are
    /// several, passing on the rows they stream meanwhile.
    fn each(&mut self, f: impl Fn(&mut Shard) -> Result<()> + Send + Sync) -> Result<()> {
        self.sync()?;
        let Some(pool) = &self.pool else {
            return self.shards.iter_mut().try_for_each(f);
        };
        let Some(streams) = self.streams.as_mut() else {
            return pool.install(|| self.shards.par_iter_mut().try_for_each(f));
        };
        let results: Vec<std::sync::Mutex<Result<()>>> = (self.shards.iter())
            .map(|_| std::sync::Mutex::new(Ok(())))
            .collect();
        let (f, shards) = (&f, &mut self.shards);
        let drained = pool.in_place_scope(|scope| {
            for (shard, result) in shards.iter_mut().zip(&results) {
                scope.spawn(move |_| {
                    let r = run_to_end(shard, f);
                    if let Ok(mut slot) = result.lock() {
                        *slot = r;
                    }
                });
            }
            streams.drain()
        });
        self.own.rows_out += drained?;
        for result in results {
            result
                .into_inner()
                .map_err(|_| Error::Internal("a shard panicked".into()))??;
        }
        Ok(())
    }

    /// Passes on the rows the shards stream until each ends its batch (nothing without
    /// streams).
    fn drain_streams(&mut self) -> Result<()> {
        if let Some(streams) = self.streams.as_mut() {
            self.own.rows_out += streams.drain()?;
        }
        Ok(())
    }

    /// Gathers what the shards produced, merges top-k lists, and notes the state held.
    fn collect(&mut self) -> Result<()> {
        let mut fired: Vec<Fired> = Vec::new();
        for shard in &mut self.shards {
            fired.extend(shard.take_output());
            self.alerts.extend(shard.take_alerts());
        }
        let several = self.shards.len() > 1;
        if several {
            // Window by window, shard by shard within a window, however the windows fell
            // into batches (sessions: shard by shard).
            fired.sort_by_key(|f| f.window);
        }
        let mut rows = match self.top_k.filter(|_| several) {
            Some(t) => self.merge_top_k(fired, t)?,
            None => fired.into_iter().map(|f| f.rows).collect(),
        };
        if let Some(keyless) = self.keyless.as_mut() {
            // The watermark the shards moved to (the tracker may be a batch ahead).
            let w = self.shards[0].watermark();
            rows.extend(keyless.gather(&mut self.shards, &self.plan, w)?);
        }
        self.own.rows_out += rows.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        self.own.rows_out += (self.streamed).swap(0, std::sync::atomic::Ordering::Relaxed);
        match &self.plan.projection {
            Some(p) => {
                for batch in rows {
                    self.output.push(p.apply(&batch)?);
                }
            }
            None => self.output.extend(rows),
        }
        let held = self.shards.iter().map(Shard::state_bytes).sum::<u64>()
            + self.keyless.as_ref().map_or(0, |k| k.state_bytes() as u64);
        self.own.peak_state_bytes = self.own.peak_state_bytes.max(held);
        // Shards count events, late events and alerts (not rows: see `own`).
        self.shard_stats =
            (self.shards.iter().map(Shard::stats)).fold(Stats::default(), |t, s| t.combine(&s));
        Ok(())
    }

    /// The shards' top-k lists of each firing (a window's first firing, or its re-firing
    /// for the keys that changed), ranked again as one list.
    fn merge_top_k(&self, fired: Vec<Fired>, t: TopK) -> Result<Vec<RecordBatch>> {
        let mut firings: BTreeMap<(i64, bool), Vec<RecordBatch>> = BTreeMap::new();
        for f in fired {
            firings.entry((f.window, !f.all)).or_default().push(f.rows);
        }
        firings
            .into_values()
            .map(|lists| {
                let all = concat_batches(&self.plan.out_schema, &lists)
                    .map_err(|e| Error::arrow("merging top-k lists", e))?;
                topk::rank(&all, &self.plan, t)
            })
            .collect()
    }

    /// Processing time passes without a batch: partitions that sent nothing for the job's
    /// `idle_timeout` stop holding the watermark back, and the windows that the others
    /// completed fire. Without ticks, idleness is only noticed when a batch arrives, so
    /// windows would not close while the input is quiet.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        self.sync()?;
        let before = self.tracker.current();
        let w = self.tracker.advance(now);
        if w > before {
            self.each(|s| s.advance_to(w))?;
            self.collect()?;
        }
        Ok(())
    }

    /// Partition `p` is exhausted: it no longer holds the watermark back.
    pub fn finish_partition(&mut self, p: usize) -> Result<()> {
        let partitions = self.tracker.partitions();
        if p >= partitions {
            return Err(Error::input(
                format!("partition {p}"),
                format!("it does not exist: the source has {partitions}"),
            ));
        }
        let w = self.tracker.finish(p, Instant::now());
        self.each(|s| s.advance_to(w))?;
        self.collect()
    }

    /// End of a bounded input, a window at a time: fires the next window that has not
    /// fired (as the watermark reaching its end would) and returns false; when none is
    /// left, does [`WindowOperator::finish`] and returns true. Taking the output between
    /// calls keeps it from piling up: a job with many keys and long hop windows has one
    /// window's rows in memory at a time, not all the windows the end of input fires.
    pub fn finish_step(&mut self) -> Result<bool> {
        self.sync()?;
        match self.shards.iter().filter_map(Shard::next_firing).min() {
            Some(w) => {
                self.each(|s| s.advance_to(w))?;
                self.collect()?;
                Ok(false)
            }
            None => {
                self.finish()?;
                Ok(true)
            }
        }
    }

    /// End of a bounded input: the watermark jumps to +∞ and every window fires.
    pub fn finish(&mut self) -> Result<()> {
        self.finished = true;
        self.each(Shard::finish)?;
        self.collect()
    }

    /// Spills state to `dir` whenever it exceeds `budget` bytes after a batch, closed
    /// panes first, then the key dictionary, then open sessions. The shards share the
    /// budget: each may hold what the others leave of it, and spills in a directory of its
    /// own beside `dir`. Set it before the first batch.
    pub fn set_memory_budget(&mut self, budget: u64, dir: PathBuf) {
        let n = self.shards.len();
        let shared = shard::SharedBudget::new(budget, n);
        for (s, shard) in self.shards.iter_mut().enumerate() {
            let dir = match n {
                1 => dir.clone(),
                _ => PathBuf::from(format!("{}-shard-{s}", dir.display())),
            };
            shard.set_memory_budget(shared.clone(), s, dir);
        }
    }

    /// Panes spilled so far, and their bytes on disk (of the batches gathered).
    pub fn spilled(&self) -> (u64, u64) {
        self.shards
            .iter()
            .map(Shard::spilled)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Keys of the dictionary on disk, and all its keys.
    pub fn keys_spilled(&self) -> (usize, usize) {
        self.shards
            .iter()
            .map(Shard::keys_spilled)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Open sessions spilled to disk so far.
    pub fn sessions_spilled(&self) -> u64 {
        self.shards.iter().map(Shard::sessions_spilled).sum()
    }
}

/// A batch the shards are processing on their threads.
struct InFlight {
    done: std::sync::mpsc::Receiver<(Work, Result<()>)>,
    /// The whole batch, for its late events.
    batch: RecordBatch,
}

/// One batch for the shards' threads, with everything they need.
struct Work {
    shards: Vec<Shard>,
    /// The plan's columns of the batch; key columns first.
    read: RecordBatch,
    ts: ScalarBuffer<i64>,
    met: Vec<i64>,
    w: i64,
    origin: String,
    keys: usize,
    /// A job without keys: each shard takes a run of consecutive rows, the first shard
    /// the first run (its partial states then merge in arrival order).
    in_order: bool,
    /// The shard of each row: found on the shards' threads unless `owners_known`.
    owners: Vec<u16>,
    owners_known: bool,
    /// The batch's rows in runs, one per shard, grouped by shard.
    runs: Vec<route::Run>,
    /// The rows of each run (outer) that each shard (inner) owns, gathered.
    pieces: Vec<Vec<Piece>>,
    part_rows: usize,
}

/// The rows of one run of a batch that one shard owns, gathered by the thread that split
/// the run: the plan's columns, the event times and the watermarks met.
#[derive(Default)]
struct Piece {
    batch: Option<RecordBatch>,
    ts: Vec<i64>,
    met: Vec<i64>,
}

impl Piece {
    /// Gathers rows `at` of `read` and of its event times `ts` and watermarks met `met`.
    fn gather(&mut self, read: &RecordBatch, ts: &[i64], met: &[i64], at: &[u32]) -> Result<()> {
        let (ts, met) = (&ts[..read.num_rows()], &met[..read.num_rows()]);
        // One pass over the rows for both.
        self.ts.resize(at.len(), 0);
        self.met.resize(at.len(), 0);
        for ((t, m), &r) in self.ts.iter_mut().zip(self.met.iter_mut()).zip(at) {
            (*t, *m) = (ts[r as usize], met[r as usize]);
        }
        let at = UInt32Array::from_iter_values(at.iter().copied());
        let batch = take_record_batch(read, &at)
            .map_err(|e| Error::arrow("splitting a batch among shards", e))?;
        self.batch = Some(batch);
        Ok(())
    }
}

impl Work {
    /// The batch is split in parallel: each thread groups a run of the batch's rows by the
    /// hash of their key values and gathers each shard's rows of the run (so every row is
    /// read by one thread only). Then each shard processes its rows of every run, a part
    /// ([`PART_ROWS`]) at a time.
    fn run(&mut self) -> Result<()> {
        let (read, ts, met) = (&self.read, &self.ts, &self.met);
        let (w, origin) = (self.w, &self.origin);
        let (shards, in_order, part_rows) = (self.shards.len(), self.in_order, self.part_rows);
        if !in_order {
            let keys = &read.columns()[..self.keys];
            let per_run = read.num_rows().div_ceil(shards).max(1);
            let runs = read.num_rows().div_ceil(per_run);
            self.runs.resize_with(runs, Default::default);
            self.pieces.resize_with(runs, Default::default);
            let known = self.owners_known;
            let split = self
                .owners
                .par_chunks_mut(per_run)
                .zip(&mut self.runs)
                .zip(&mut self.pieces)
                .enumerate()
                .try_for_each(|(r, ((owners, run), pieces))| {
                    route::split_run(keys, r * per_run, owners, known, shards, run)?;
                    pieces.resize_with(shards, Default::default);
                    (pieces.iter_mut().enumerate())
                        .try_for_each(|(s, piece)| piece.gather(read, ts, met, run.of(s)))
                });
            if let Err(e) = split {
                self.shards.iter_mut().for_each(Shard::end_output);
                return Err(e);
            }
        }
        let pieces = &self.pieces;
        // Every shard runs and ends its output, whatever the others do: the operator
        // drains their streams one after the other.
        let results: Vec<Result<()>> = self
            .shards
            .par_iter_mut()
            .enumerate()
            .map(|(s, shard)| {
                run_to_end(shard, |shard| {
                    if in_order {
                        let run = run_of(read.num_rows(), s, shards);
                        let part = read.slice(run.start, run.len());
                        return shard.process(&part, &ts[run.clone()], &met[run], w, origin);
                    }
                    // The piece's first row among the shard's rows.
                    let mut first = 0;
                    for piece in pieces.iter().map(|p| &p[s]) {
                        let Some(batch) = &piece.batch else { continue };
                        for part in parts(piece.ts.len(), part_rows) {
                            let (batch, at) =
                                (batch.slice(part.start, part.len()), first + part.start);
                            let (ts, met) = (&piece.ts[part.clone()], &piece.met[part]);
                            shard.aggregate(&batch, ts, met, origin, at as u32)?;
                        }
                        first += piece.ts.len();
                    }
                    shard.end_batch(w)
                })
            })
            .collect();
        results.into_iter().collect()
    }
}

/// A shard takes a batch in parts of this many rows, so that a part's columns and the
/// scratch the shard fills from them stay in a core's cache (L2) while it works on them.
const PART_ROWS: usize = 16 * 1024;

/// The run of consecutive rows of a batch of `n` rows that shard `s` (of `shards`) takes
/// in a job without keys.
fn run_of(n: usize, s: usize, shards: usize) -> std::ops::Range<usize> {
    n * s / shards..n * (s + 1) / shards
}

/// The parts of `n` rows: consecutive ranges of at most `size`.
fn parts(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n).step_by(size).map(move |s| s..(s + size).min(n))
}

/// Runs `f` on `shard`, then ends the shard's output whatever came of it (the operator
/// drains each shard's stream until it ends); a panic becomes an error.
fn run_to_end(shard: &mut Shard, f: impl FnOnce(&mut Shard) -> Result<()>) -> Result<()> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *shard)))
        .unwrap_or_else(|_| Err(Error::Internal("a shard panicked".into())));
    shard.end_output();
    r
}

/// The values of `v` whose row `keep` says true (arrow's filter: a null keeps none).
fn kept(v: ScalarBuffer<i64>, keep: &arrow::array::BooleanArray) -> Result<ScalarBuffer<i64>> {
    use arrow::array::AsArray;
    let v = arrow::array::Int64Array::new(v, None);
    let kept = arrow::compute::filter(&v, keep).map_err(|e| Error::arrow("filtering events", e))?;
    Ok(kept
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .clone())
}

/// The late events among `rows` of `batch`, with the watermark each met (`met`, per row
/// of the batch) and why.
fn late_rows(plan: &Plan, batch: &RecordBatch, rows: Vec<u32>, met: &[i64]) -> Result<RecordBatch> {
    let wm: TimestampMillisecondArray = rows
        .iter()
        .map(|&r| Some(met[r as usize]).filter(|&w| w != i64::MIN))
        .collect();
    let n = rows.len();
    let late = take_record_batch(batch, &UInt32Array::from(rows))
        .map_err(|e| Error::arrow("selecting late events", e))?;
    let reason = StringArray::from(vec![
        "all windows of the event had expired (end - 1 + allowed_lateness <= watermark)";
        n
    ]);
    let mut columns = late.columns().to_vec();
    columns.push(Arc::new(wm));
    columns.push(Arc::new(reason));
    RecordBatch::try_new(plan.late_schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("building a late-event batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use panes_kernels::CpuBackend;

    fn operator(partitions: usize) -> (WindowOperator, SchemaRef) {
        let (job, schema) = job_and_schema();
        let op = WindowOperator::new(&job, &schema, partitions, |aggs| {
            Ok(vec![Box::new(CpuBackend::new(aggs, 1))])
        })
        .expect("operator");
        (op, schema)
    }

    fn job_and_schema() -> (Job, SchemaRef) {
        let job = Job::from_toml(
            r#"
            [source]
            kind = "parquet"
            path = "unused"
            [time]
            column = "ts"
            [window]
            kind = "tumble"
            size = "10s"
            [[aggregate]]
            name = "n"
            fn = "count"
            [sink]
            kind = "jsonl"
            "#,
            "test job",
        )
        .expect("valid job");
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, false)]));
        (job, schema)
    }

    fn batch(schema: &SchemaRef, ts: Vec<i64>) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ts))]).expect("batch")
    }

    fn fired_windows(op: &mut WindowOperator) -> usize {
        op.take_output().iter().map(RecordBatch::num_rows).sum()
    }

    /// A batch that shards take in parts gives the rows it gives whole: windows that fire
    /// within it, re-firings of windows that allowed-late events reach, and late events,
    /// in the same order, on one shard and on three.
    #[test]
    fn a_batch_in_parts_gives_what_it_gives_whole() {
        let job = Job::from_toml(
            r#"
            [source]
            kind = "parquet"
            path = "unused"
            [time]
            column = "ts"
            max_out_of_orderness = "2s"
            allowed_lateness = "10s"
            [window]
            kind = "hop"
            size = "20s"
            slide = "5s"
            [key]
            columns = ["k"]
            [[aggregate]]
            name = "n"
            fn = "count"
            [[aggregate]]
            name = "total"
            fn = "sum"
            column = "x"
            [sink]
            kind = "jsonl"
            "#,
            "parts job",
        )
        .expect("valid job");
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("k", DataType::Int64, false),
            Field::new("x", DataType::Int64, false),
        ]));
        // 30k events over 300 s, 2% of them 5 to 65 s late; keys skewed to a few.
        let mut state = 7u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let (mut ts, mut keys, mut xs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..30_000i64 {
            let back = match next(50) {
                0 => 5_000 + next(60_000) as i64,
                _ => next(1_500) as i64,
            };
            ts.push(i * 10 - back);
            keys.push((next(40) * next(40) / 40) as i64);
            xs.push(next(1000) as i64);
        }
        let input = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ts)),
                Arc::new(Int64Array::from(keys)),
                Arc::new(Int64Array::from(xs)),
            ],
        )
        .expect("batch");
        let run = |shards: usize, part_rows: usize| {
            let mut op = WindowOperator::new(&job, &schema, 1, |aggs| {
                Ok((0..shards)
                    .map(|_| Box::new(CpuBackend::new(aggs, 1)) as Box<dyn Backend>)
                    .collect())
            })
            .expect("operator");
            op.part_rows = part_rows;
            for start in (0..input.num_rows()).step_by(12_000) {
                let len = (input.num_rows() - start).min(12_000);
                op.process_batch(0, &input.slice(start, len), "test", start as u64)
                    .expect("batch");
            }
            op.finish().expect("finish");
            let rows = op.take_output();
            let late = op.take_late();
            let late_events: usize = late.iter().map(RecordBatch::num_rows).sum();
            assert!(late_events > 100, "{late_events} late events");
            (rows, late)
        };
        for shards in [1, 3] {
            let whole = run(shards, usize::MAX);
            assert!(
                whole.0.iter().any(|b| {
                    let revision = b.column_by_name("revision").expect("revisions");
                    revision
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .iter()
                        .any(|&r| r > 0)
                }),
                "some windows re-fire"
            );
            for part_rows in [1_000, 4_096] {
                let parts = run(shards, part_rows);
                assert!(whole == parts, "{shards} shards, parts of {part_rows} rows");
            }
        }
    }

    #[test]
    fn the_slowest_partition_holds_windows_back_until_it_finishes() {
        let (mut op, schema) = operator(2);
        op.process_batch(0, &batch(&schema, vec![1_000, 25_000, 47_000]), "p0", 0)
            .unwrap();
        assert_eq!(
            fired_windows(&mut op),
            0,
            "partition 1 has produced nothing yet"
        );
        op.process_batch(1, &batch(&schema, vec![2_000, 12_000]), "p1", 0)
            .unwrap();
        // Watermark = min(46 999, 11 999): only [0 s, 10 s) has closed.
        assert_eq!(op.watermark(), 11_999);
        assert_eq!(fired_windows(&mut op), 1);
        op.finish_partition(1).unwrap();
        // Partition 1 is done: partition 0 alone sets the pace, [10 s, 20 s) and
        // [20 s, 30 s) fire; [40 s, 50 s) waits for the end of the input.
        assert_eq!(op.watermark(), 46_999);
        assert_eq!(fired_windows(&mut op), 2);
        op.finish().unwrap();
        assert_eq!(fired_windows(&mut op), 1);
        assert_eq!(op.stats().events_in, 5);
        assert_eq!(op.stats().late_events, 0);
    }

    #[test]
    fn a_partition_or_batch_that_does_not_fit_is_an_error() {
        let (mut op, schema) = operator(2);
        let err = op
            .process_batch(2, &batch(&schema, vec![1_000]), "p2", 0)
            .unwrap_err();
        assert!(
            err.to_string().contains("partition 2 does not exist"),
            "{err}"
        );
        let wide = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("x", DataType::Int64, false),
        ]));
        let two = RecordBatch::try_new(
            wide,
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![1])),
            ],
        )
        .unwrap();
        let err = op.process_batch(0, &two, "p0", 0).unwrap_err();
        assert!(err.to_string().contains("2 columns"), "{err}");
    }

    /// One of two partitions goes quiet: ticks of processing time past the idle timeout
    /// fire the windows the other completed, without a batch and without sleeping.
    #[test]
    fn ticks_past_the_idle_timeout_close_windows_while_a_partition_is_quiet() {
        let (mut job, schema) = job_and_schema();
        job.idle_timeout = std::time::Duration::from_secs(30);
        let mut op = WindowOperator::new(&job, &schema, 2, |aggs| {
            Ok(vec![Box::new(CpuBackend::new(aggs, 1)) as Box<dyn Backend>])
        })
        .unwrap();
        let t0 = Instant::now();
        op.process_batch_at(1, &batch(&schema, vec![1_000]), "p1", 0, t0)
            .unwrap();
        // Partition 0 runs a minute ahead, 20 s later: partition 1 holds the watermark at
        // 1 s.
        let times = (0..60).map(|s| s * 1_000).collect();
        let later = t0 + std::time::Duration::from_secs(20);
        op.process_batch_at(0, &batch(&schema, times), "p0", 0, later)
            .unwrap();
        op.sync().unwrap();
        assert!(op.take_output().is_empty(), "no window closed yet");
        op.tick(t0 + std::time::Duration::from_secs(29)).unwrap();
        assert!(op.take_output().is_empty(), "partition 1 is not idle yet");
        // Partition 1 has been quiet for 31 s, partition 0 for 11 s.
        op.tick(t0 + std::time::Duration::from_secs(31)).unwrap();
        let fired = fired_windows(&mut op);
        // Windows of 10 s up to the watermark of partition 0 (59 s less its bound).
        assert_eq!(
            fired, 5,
            "the windows partition 0 completed fire on the tick"
        );
        assert_eq!(op.watermark(), 58_999);
    }

    #[test]
    fn a_batch_after_the_end_of_input_is_an_error() {
        let (mut op, schema) = operator(1);
        op.process_batch(0, &batch(&schema, vec![1_000]), "p0", 0)
            .unwrap();
        op.finish().unwrap();
        assert_eq!(fired_windows(&mut op), 1);
        let err = op
            .process_batch(0, &batch(&schema, vec![2_000]), "p0", 1)
            .unwrap_err();
        assert!(err.to_string().contains("after the end of input"), "{err}");
    }

    #[test]
    fn a_job_built_in_code_that_ranks_by_no_aggregate_is_an_error() {
        let (mut job, schema) = job_and_schema();
        job.top_k = Some(TopK { by: 5, k: 3 });
        let err = WindowOperator::new(&job, &schema, 1, |aggs| {
            Ok(vec![Box::new(CpuBackend::new(aggs, 1)) as Box<dyn Backend>])
        })
        .err()
        .expect("top_k names no aggregate")
        .to_string();
        assert!(err.contains("[top_k] by is aggregate 5"), "{err}");
    }
}
