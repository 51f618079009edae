//! One shard of the window operator: the events of its keys in, window results and late
//! events out. Event times and the watermark each event meets are decided before a batch
//! is split among shards (see [`super::WindowOperator`]); a shard interns its keys, finds
//! each event's pane and splits off late events. It then cuts its batch where the
//! watermark crosses a window's firing or expiry point, so that a window fires with
//! exactly the events that met a watermark before its end, whatever the batch boundaries.
//! Between cuts the kernels aggregate; at each cut windows fire (revision 0) or expire.
//!
//! With allowed lateness, an event that arrives after its window fired but before it
//! expired is added and the window re-fires for that key at the end of the batch. The
//! `revision` of a (key, window) row is the number of such events so far: it never depends
//! on batching, and the highest revision holds every event.
//!
//! This file holds the shard, its batch loop and the [`WindowKind`] trait, behind which
//! `windows` (fixed windows: cuts, revisions, firing) and `sessions` (session windows)
//! keep their own state and drive the shard's [`Core`]: its key dictionary, backend,
//! outputs and budget. The core's other parts are `output` (result rows and alerts as
//! Arrow batches), `budget` (state held, spill and read-back) and `state` (checkpoint
//! batches and restore).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use panes_kernels::{Backend, Column, Domain, Events, Keys, OutColumn, Values, WindowRows};

use super::Stats;
use super::plan::Plan;
use super::topk;
use crate::error::{Error, Result};
use crate::job::{Job, TopK};
use crate::operator::anomaly::Detector;
use crate::state::key::KeyInterner;
use crate::state::spill::Spill;
use crate::window::WindowSpec;
use crate::window::session::{Emit, Sessions};

mod budget;
pub(crate) use budget::SharedBudget;
mod output;
mod partial;
mod sessions;
mod state;
mod windows;

pub(crate) use output::result_batch;
pub(crate) use partial::Partial;
use sessions::SessionWindows;
use windows::Fixed;

/// What differs between kinds of windows in a shard. Fixed windows (tumble, hop,
/// cumulate: [`Fixed`]) cut a batch where the watermark closes a window and re-fire the
/// windows that allowed-late events reach; session windows ([`SessionWindows`]) take
/// events one at a time into their key's sessions. Both aggregate and fire through the
/// shard's [`Core`], and keep their own state for checkpoints.
trait WindowKind: Send {
    /// Aggregates a batch's events, firing the windows that the watermark each event met
    /// closes before it, and marks the late events in `late`.
    fn aggregate(
        &mut self,
        core: &mut Core,
        events: &Events<'_>,
        met: &[i64],
        late: &mut Vec<bool>,
    ) -> Result<()>;

    /// Fires the windows that watermark `w` closes, and expires those past their lateness.
    fn advance(&mut self, core: &mut Core, w: i64) -> Result<()>;

    /// Re-fires, before window `before`, windows that events reached after they fired.
    fn refire(&mut self, _core: &mut Core, _before: i64) -> Result<()> {
        Ok(())
    }

    /// The watermark at which the earliest window that has not fired yet fires, where
    /// that is known ahead (fixed windows).
    fn next_firing(&self, _core: &Core) -> Option<i64> {
        None
    }

    /// The index of open windows, which the memory budget counts and may spill (sessions).
    fn index(&mut self) -> Option<&mut Sessions> {
        None
    }

    fn index_ref(&self) -> Option<&Sessions> {
        None
    }

    /// What decides which windows fire next, for a checkpoint.
    fn firing(&self) -> Firing;

    fn restore_firing(&mut self, firing: Firing);

    /// Revisions of windows that re-fired (key, window, revision), for a checkpoint.
    fn revisions_batch(&self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    fn restore_revisions(&mut self, _batch: &RecordBatch) -> Result<(), String> {
        Ok(())
    }

    /// Open sessions, spilled ones included, for a checkpoint.
    fn sessions_batch(&self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    fn restore_sessions(&mut self, _batch: &RecordBatch) -> Result<(), String> {
        Ok(())
    }

    /// Fixed windows' state, for a shard of a job without keys (see `partial`).
    fn as_fixed(&mut self) -> Option<&mut Fixed> {
        None
    }
}

/// What decides which windows a shard fires next: the next window to consider (fixed
/// windows), the first pane kept (sessions) and the panes with data (fixed windows).
pub(crate) struct Firing {
    pub next_fire: Option<i64>,
    pub first_kept: i64,
    pub live_panes: Vec<i64>,
}

/// Buffers reused from batch to batch, so the hot path does not allocate per event.
#[derive(Default)]
struct Scratch {
    keys: Vec<u32>,
    panes: Vec<i64>,
    late: Vec<bool>,
    zeros: Vec<i64>,
}

/// Result rows of one firing, with the window that fired (for merging top-k lists).
pub(crate) struct Fired {
    /// The window index (`i64::MIN` for sessions).
    pub window: i64,
    /// A first firing for every key (not a re-firing of some keys).
    pub all: bool,
    pub rows: RecordBatch,
}

/// Where a shard's result rows go as windows fire, instead of waiting for
/// [`Shard::take_output`]: a window of millions of keys is then never held whole.
pub(crate) enum Stream {
    /// Straight to the consumer (one shard, on the operator's thread).
    Direct(Box<dyn FnMut(RecordBatch) -> Result<()> + Send>),
    /// Into a channel that the operator drains shard by shard; `None` ends a batch.
    Channel(std::sync::mpsc::SyncSender<Option<RecordBatch>>),
}

/// A shard of the window operator. See the module docs.
pub(crate) struct Shard {
    core: Core,
    kind: Box<dyn WindowKind>,
}

/// What every kind of window uses in a shard: the key dictionary, the backend, the
/// outputs, the counters and the memory budget.
struct Core {
    plan: Arc<Plan>,
    spec: WindowSpec,
    lateness: i64,
    top_k: Option<TopK>,
    /// The anomaly detector and the aggregate it watches.
    anomaly: Option<(Detector, usize)>,
    alerts: Vec<RecordBatch>,
    interner: KeyInterner,
    backend: Box<dyn Backend>,
    /// The job watermark after the last batch.
    watermark: i64,
    output: Vec<Fired>,
    /// With a job without keys on several shards: the windows' partial states, which the
    /// operator merges, instead of rows.
    partials: Option<Vec<Partial>>,
    /// Where rows go as they are made, if not to `output`.
    stream: Option<Stream>,
    /// Small result batches not passed on to `stream` yet (see [`Core::pass_on`]), and
    /// their rows.
    held: Vec<RecordBatch>,
    held_rows: usize,
    /// Positions of late events in the batches processed since they were taken.
    late: Vec<u32>,
    stats: Stats,
    scratch: Scratch,
    /// Spilled panes, with a memory budget.
    spill: Option<Spill>,
    /// The job's memory budget, and this shard's place among those sharing it.
    budget: Option<(Arc<budget::SharedBudget>, usize)>,
    over_budget_warned: bool,
}

impl Shard {
    /// A shard of `job` as `plan` resolves it, aggregating on `backend`.
    pub fn new(job: &Job, plan: Arc<Plan>, mut backend: Box<dyn Backend>) -> Result<Self> {
        let interner =
            KeyInterner::new(&plan.key_fields).map_err(|e| Error::input(&plan.origin, e))?;
        // Overlapping windows (hop, cumulate) share blocks of panes folded once.
        backend.set_fold_block(panes_kernels::fold_block(job.window.panes_per_window()));
        let kind: Box<dyn WindowKind> = match job.window.session_gap() {
            Some(gap) => Box::new(SessionWindows::new(gap, job.allowed_lateness)),
            None => Box::new(Fixed::default()),
        };
        let core = Core {
            plan,
            spec: job.window,
            lateness: job.allowed_lateness,
            top_k: job.top_k,
            anomaly: job
                .anomaly
                .as_ref()
                .map(|a| (Detector::new(a.clone()), a.value)),
            alerts: Vec::new(),
            interner,
            backend,
            watermark: i64::MIN,
            output: Vec::new(),
            partials: None,
            stream: None,
            held: Vec::new(),
            held_rows: 0,
            late: Vec::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            spill: None,
            budget: None,
            over_budget_warned: false,
        };
        Ok(Shard { core, kind })
    }

    /// The backend's name, as `--backend` spells it.
    pub fn backend_name(&self) -> &'static str {
        self.core.backend.name()
    }

    /// The backend, as a run summary shows it.
    pub fn backend(&self) -> String {
        self.core.backend.describe()
    }

    /// Seconds its backend spent per stage, where it keeps a profile.
    pub fn profile(&self) -> Vec<(&'static str, f64)> {
        self.core.backend.profile()
    }

    /// The job watermark after the last batch or step it processed.
    pub fn watermark(&self) -> i64 {
        self.core.watermark
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    /// Takes the window results produced so far.
    pub fn take_output(&mut self) -> Vec<Fired> {
        std::mem::take(&mut self.core.output)
    }

    /// Sends result rows to `stream` as windows fire from now on.
    pub(crate) fn set_stream(&mut self, stream: Stream) {
        self.core.stream = Some(stream);
    }

    /// Tells the operator draining this shard's stream that its rows of the batch, or of
    /// the step, are all sent.
    pub(crate) fn end_output(&mut self) {
        if let Some(Stream::Channel(tx)) = &self.core.stream {
            // An operator that stopped draining has gone: there is nobody to tell.
            let _ = tx.send(None);
        }
    }

    /// Takes the positions of the late events of the last batch (in the batch given to
    /// [`Shard::process`], or in parts to [`Shard::aggregate`]).
    pub fn take_late(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.core.late)
    }

    /// Takes the anomaly alerts produced so far.
    pub fn take_alerts(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.core.alerts)
    }

    /// Processes this shard's events of one batch (the plan's columns only): `ts` are their
    /// event times, `met` the watermark each met, and `w` the job watermark after the whole
    /// batch; `origin` says where they came from, for errors. An empty batch only moves the
    /// watermark. The late events' positions wait in [`Shard::take_late`].
    pub fn process(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        met: &[i64],
        w: i64,
        origin: &str,
    ) -> Result<()> {
        self.aggregate(batch, ts, met, origin, 0)?;
        self.end_batch(w)
    }

    /// [`Shard::process`] without the end of the batch: aggregates a part of a batch whose
    /// first event is the batch's event `first` (late events' positions count from the
    /// batch's first). Windows fire as the watermark each event met closes them, so a
    /// batch given in parts gives what it gives whole; [`Shard::end_batch`] ends it.
    pub fn aggregate(
        &mut self,
        batch: &RecordBatch,
        ts: &[i64],
        met: &[i64],
        origin: &str,
        first: u32,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let core = &mut self.core;
        let mut s = std::mem::take(&mut core.scratch);
        let late_before = core.late.len();
        let result = core.aggregate(self.kind.as_mut(), batch, ts, met, origin, &mut s);
        core.scratch = s;
        core.late[late_before..]
            .iter_mut()
            .for_each(|i| *i += first);
        result
    }

    /// Ends a batch given to [`Shard::aggregate`] in parts: the job watermark after it is
    /// `w`; windows that late events reached re-fire, rows are passed on, and the memory
    /// budget is enforced.
    pub fn end_batch(&mut self, w: i64) -> Result<()> {
        let core = &mut self.core;
        core.watermark = core.watermark.max(w);
        self.kind.advance(core, core.watermark)?;
        self.kind.refire(core, i64::MAX)?;
        core.pass_on()?;
        self.enforce_budget()
    }

    /// Moves the watermark to `w`: fires the windows it closes and expires those past
    /// their allowed lateness.
    pub fn advance_to(&mut self, w: i64) -> Result<()> {
        let core = &mut self.core;
        core.watermark = core.watermark.max(w);
        self.kind.advance(core, core.watermark)?;
        core.pass_on()
    }

    /// End of a bounded input: the watermark jumps to +∞ and every window fires.
    pub fn finish(&mut self) -> Result<()> {
        self.advance_to(i64::MAX)?;
        self.kind.refire(&mut self.core, i64::MAX)?;
        self.core.pass_on()
    }

    /// The watermark at which the earliest window that has not fired yet fires (fixed
    /// windows); `None` when no window is left or for sessions.
    pub(crate) fn next_firing(&self) -> Option<i64> {
        self.kind.next_firing(&self.core)
    }
}

impl Core {
    fn aggregate(
        &mut self,
        kind: &mut dyn WindowKind,
        batch: &RecordBatch,
        ts: &[i64],
        met: &[i64],
        origin: &str,
        s: &mut Scratch,
    ) -> Result<()> {
        let n = batch.num_rows();
        let key_cols: Vec<ArrayRef> = self
            .plan
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        self.interner.intern(&key_cols, n, &mut s.keys)?;
        self.stats.events_in += n as u64;

        s.panes.clear();
        self.spec.panes_of(ts, &mut s.panes);

        // Value columns in their kernel domains; an overflowing cast is an error, not a null.
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.plan.inputs.len());
        for input in &self.plan.inputs {
            let col = batch.column(input.index);
            let cast_to = |to: &DataType| {
                let name = batch.schema().field(input.index).name().clone();
                cast_with_options(col, to, &strict)
                    .map_err(|e| Error::arrow(format!("{origin}: column {name:?}"), e))
            };
            arrays.push(match input.domain {
                Some(Domain::I64) => cast_to(&DataType::Int64)?,
                Some(Domain::F64) => cast_to(&DataType::Float64)?,
                None => col.clone(),
            });
        }

        let (keys, panes) = (&s.keys, &s.panes);

        let m = keys.len();
        if s.zeros.len() < m {
            s.zeros.resize(m, 0);
        }
        let zeros = &s.zeros;
        let valid: Vec<Option<Vec<bool>>> = arrays
            .iter()
            .map(|a| a.logical_nulls().map(|nulls| nulls.iter().collect()))
            .collect();
        let columns: Vec<Column<'_>> = arrays
            .iter()
            .zip(&valid)
            .map(|(a, v)| Column {
                values: match a.data_type() {
                    DataType::Float64 => Values::F64(a.as_primitive::<Float64Type>().values()),
                    DataType::Int64 => Values::I64(a.as_primitive::<Int64Type>().values()),
                    _ => Values::I64(&zeros[..m]),
                },
                valid: v.as_deref(),
            })
            .collect();

        let events = Events {
            keys,
            panes,
            ts,
            columns: &columns,
        };
        kind.aggregate(self, &events, met, &mut s.late)?;
        let before = self.late.len();
        let late = s.late.iter().enumerate().filter(|(_, l)| **l);
        self.late.extend(late.map(|(i, _)| i as u32));
        self.stats.late_events += (self.late.len() - before) as u64;
        Ok(())
    }
}
