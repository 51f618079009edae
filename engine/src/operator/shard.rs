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
use crate::anomaly::Detector;
use crate::error::{Error, Result};
use crate::job::{Job, TopK};
use crate::key::KeyInterner;
use crate::session::{Emit, Sessions};
use crate::spill::Spill;
use crate::window::WindowSpec;

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

/// A shard of the window operator. See the module docs.
pub(crate) struct Shard {
    plan: Arc<Plan>,
    spec: WindowSpec,
    lateness: i64,
    top_k: Option<TopK>,
    /// Session windows: the open sessions.
    sessions: Option<Sessions>,
    /// Panes before this one have been evicted (session windows).
    first_kept: i64,
    /// The anomaly detector and the aggregate it watches.
    anomaly: Option<(Detector, usize)>,
    alerts: Vec<RecordBatch>,
    interner: KeyInterner,
    backend: Box<dyn Backend>,
    /// The job watermark after the last batch.
    watermark: i64,
    /// Windows before this index have been considered for firing.
    next_fire: Option<i64>,
    /// Panes holding data that no window has expired yet.
    live_panes: BTreeSet<i64>,
    /// Revision of each (key, window) that received events after it fired.
    revisions: HashMap<(u32, i64), i64>,
    /// Windows to re-fire at the end of the batch, with the keys that changed.
    dirty: BTreeMap<i64, BTreeSet<u32>>,
    output: Vec<Fired>,
    /// Positions of late events in the batches processed since they were taken.
    late: Vec<u32>,
    stats: Stats,
    scratch: Scratch,
    /// Spilled panes, with a memory budget.
    spill: Option<Spill>,
    over_budget_warned: bool,
}

fn no_sessions() -> Error {
    Error::Internal("session state missing for a session window".into())
}

impl Shard {
    /// A shard of `job` as `plan` resolves it, aggregating on `backend`.
    pub fn new(job: &Job, plan: Arc<Plan>, mut backend: Box<dyn Backend>) -> Result<Self> {
        let interner =
            KeyInterner::new(&plan.key_fields).map_err(|e| Error::input(&plan.origin, e))?;
        // Overlapping windows (hop, cumulate) share blocks of panes folded once.
        backend.set_fold_block(panes_kernels::fold_block(job.window.panes_per_window()));
        Ok(Shard {
            plan,
            spec: job.window,
            lateness: job.allowed_lateness,
            top_k: job.top_k,
            sessions: job
                .window
                .session_gap()
                .map(|gap| Sessions::new(gap, job.allowed_lateness)),
            first_kept: i64::MIN,
            anomaly: job
                .anomaly
                .as_ref()
                .map(|a| (Detector::new(a.clone()), a.value)),
            alerts: Vec::new(),
            interner,
            backend,
            watermark: i64::MIN,
            next_fire: None,
            live_panes: BTreeSet::new(),
            revisions: HashMap::new(),
            dirty: BTreeMap::new(),
            output: Vec::new(),
            late: Vec::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            spill: None,
            over_budget_warned: false,
        })
    }

    /// The backend's name, as `--backend` spells it.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend, as a run summary shows it.
    pub fn backend(&self) -> String {
        self.backend.describe()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes the window results produced so far.
    pub fn take_output(&mut self) -> Vec<Fired> {
        std::mem::take(&mut self.output)
    }

    /// Takes the positions of the late events of the last batch (in the batch given to
    /// [`Shard::process`]).
    pub fn take_late(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.late)
    }

    /// Takes the anomaly alerts produced so far.
    pub fn take_alerts(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.alerts)
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
        let mut s = std::mem::take(&mut self.scratch);
        let result = if batch.num_rows() == 0 {
            Ok(())
        } else {
            self.aggregate(batch, ts, met, origin, &mut s)
        };
        self.scratch = s;
        result?;
        self.watermark = self.watermark.max(w);
        self.advance(self.watermark)?;
        self.refire_dirty(i64::MAX)?;
        self.enforce_budget()
    }

    fn aggregate(
        &mut self,
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

        let spec = self.spec;
        s.panes.clear();
        s.panes.extend(ts.iter().map(|&t| spec.pane_of(t)));

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

        if self.sessions.is_some() {
            let events = Events {
                keys,
                panes,
                ts,
                columns: &columns,
            };
            self.aggregate_sessions(&events, met, &mut s.late)?;
        } else {
            // Late: even the last window of the event's pane has expired. Consecutive
            // events mostly share a pane, so its expiry is computed once per run of a pane.
            let expiry =
                |j: i64| (spec.end(spec.last_window_of_pane(j)) - 1).saturating_add(self.lateness);
            let mut last = (i64::MIN, i64::MIN);
            s.late.clear();
            s.late.extend(s.panes.iter().zip(met).map(|(&j, &w)| {
                if j != last.0 {
                    last = (j, expiry(j));
                }
                last.1 <= w
            }));
            self.aggregate_windows(keys, panes, ts, met, &s.late, &columns)?;
        }
        let before = self.late.len();
        let late = s.late.iter().enumerate().filter(|(_, l)| **l);
        self.late.extend(late.map(|(i, _)| i as u32));
        self.stats.late_events += (self.late.len() - before) as u64;
        Ok(())
    }

    /// Keeps state within the memory budget, if there is one, by spilling closed panes
    /// (oldest first) to disk, then the key dictionary, then open sessions.
    pub fn enforce_budget(&mut self) -> Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        let sessions = |s: &Option<Sessions>| s.as_ref().map_or(0, Sessions::bytes) as u64;
        let held = |b: &dyn Backend, k: &KeyInterner, s: &Option<Sessions>| {
            (b.state_bytes() + k.bytes()) as u64 + sessions(s)
        };
        // The index of open sessions grows by doubling (a hash map and heaps): room is left
        // for it to double before the next spill.
        if held(self.backend.as_ref(), &self.interner, &self.sessions) + sessions(&self.sessions)
            <= spill.budget
        {
            return Ok(());
        }
        // The watermark has passed the end of panes before this one: on-time events no
        // longer reach them.
        let closed = match self.watermark {
            i64::MIN => i64::MIN,
            w => self.spec.pane_of(w.saturating_add(1)),
        };
        for j in self.backend.panes() {
            if j >= closed
                || held(self.backend.as_ref(), &self.interner, &self.sessions) <= spill.budget
            {
                break;
            }
            if let Some(state) = self.backend.export_pane(j)? {
                spill.write(j, &state)?;
            }
            self.backend.drop_pane(j);
        }
        // Each spill of the dictionary or the sessions writes a file, so it waits for a
        // share of the budget.
        let share = spill.budget / 16;
        if held(self.backend.as_ref(), &self.interner, &self.sessions) > spill.budget
            && self.interner.spillable_bytes() as u64 >= share
        {
            self.interner.spill(|| spill.subdir("keys"))?;
        }
        while held(self.backend.as_ref(), &self.interner, &self.sessions) + sessions(&self.sessions)
            > spill.budget
            && let Some(s) = self.sessions.as_mut().filter(|s| s.bytes() as u64 >= share)
            && s.spill(|| spill.subdir("sessions"))?
        {}
        let now = held(self.backend.as_ref(), &self.interner, &self.sessions);
        if now > spill.budget && !self.over_budget_warned {
            self.over_budget_warned = true;
            tracing::warn!(
                "the state of open panes and the indexes of the key dictionary and of \
                 spilled sessions ({:.1} MiB) exceeds the memory budget ({:.1} MiB): only \
                 closed panes, the key dictionary and open sessions spill",
                now as f64 / (1 << 20) as f64,
                spill.budget as f64 / (1 << 20) as f64
            );
        }
        Ok(())
    }

    /// Spills state to `dir` whenever it exceeds `budget` bytes after a batch.
    pub fn set_memory_budget(&mut self, budget: u64, dir: PathBuf) {
        self.spill = Some(Spill::new(budget, dir));
    }

    /// Panes spilled so far, and their bytes on disk.
    pub fn spilled(&self) -> (u64, u64) {
        self.spill.as_ref().map_or((0, 0), |s| (s.written, s.bytes))
    }

    /// Keys of the dictionary on disk, and all its keys.
    pub fn keys_spilled(&self) -> (usize, usize) {
        (self.interner.spilled(), self.interner.len())
    }

    /// Open sessions spilled to disk so far.
    pub fn sessions_spilled(&self) -> u64 {
        self.sessions.as_ref().map_or(0, |s| s.spilled)
    }

    /// Reads back, for good, the spilled panes among `panes` (events are about to update
    /// them).
    fn unspill(&mut self, panes: &[i64]) -> Result<()> {
        let Some(spill) = self.spill.as_mut().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let mut last = None;
        for &j in panes {
            if last != Some(j) && spill.holds(j) {
                let state = spill.read(j)?;
                self.backend.import_pane(j, &state)?;
                spill.remove(j)?;
            }
            last = Some(j);
        }
        Ok(())
    }

    /// Reads back, for good, the spilled panes within `ranges`.
    fn unspill_for(&mut self, ranges: impl Iterator<Item = Range<i64>>) -> Result<()> {
        let Some(spill) = self.spill.as_ref().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let mut needed: Vec<i64> = ranges.flat_map(|r| spill.within(r)).collect();
        needed.sort_unstable();
        needed.dedup();
        self.unspill(&needed)
    }

    /// Combines panes `panes` per key, reading spilled ones back while they are merged.
    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<WindowRows> {
        let Some(spill) = &self.spill else {
            return Ok(self.backend.combine(panes, keys)?);
        };
        let spilled = spill.within(panes.clone());
        let mut load = |j| {
            spill
                .read(j)
                .map_err(|e| panes_kernels::Error::Spill(e.to_string()))
        };
        Ok(self
            .backend
            .combine_spilled(panes, keys, &spilled, &mut load)?)
    }

    /// Frees the panes before `j`, held or spilled.
    fn evict_before(&mut self, j: i64) -> Result<()> {
        self.backend.evict_before(j);
        match self.spill.as_mut() {
            Some(spill) => spill.evict_before(j),
            None => Ok(()),
        }
    }

    /// Hop and cumulate windows: updates the backend segment by segment, cut where the
    /// watermark crosses the next firing or expiry point, and around late events (already
    /// sent to the late output; rare, so the batch is not compacted).
    fn aggregate_windows(
        &mut self,
        keys: &[u32],
        panes: &[i64],
        ts: &[i64],
        met: &[i64],
        late: &[bool],
        columns: &[Column<'_>],
    ) -> Result<()> {
        let m = keys.len();
        let mut start = 0;
        while start < m {
            if late[start] {
                start += 1;
                continue;
            }
            let w = met[start];
            self.advance(w)?;
            let next = self.next_threshold(w);
            let end = (start + 1..m)
                .find(|&i| met[i] >= next || late[i])
                .unwrap_or(m);
            if self.lateness > 0 {
                self.count_revisions(&keys[start..end], &panes[start..end], &met[start..end]);
            }
            let events = Events {
                keys: &keys[start..end],
                panes: &panes[start..end],
                ts: &ts[start..end],
                columns: &columns
                    .iter()
                    .map(|c| c.slice(start..end))
                    .collect::<Vec<_>>(),
            };
            self.unspill(&panes[start..end])?;
            self.backend.update(&events)?;
            let mut last = None;
            for &j in &panes[start..end] {
                if last != Some(j) {
                    self.live_panes.insert(j);
                    last = Some(j);
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Session windows: event by event, sessions that the event's watermark closes fire
    /// first (after the events before it reach the backend); then the event joins, opens
    /// or bridges its key's sessions, or is late.
    fn aggregate_sessions(
        &mut self,
        events: &Events<'_>,
        met: &[i64],
        late: &mut Vec<bool>,
    ) -> Result<()> {
        let m = events.len();
        late.clear();
        late.resize(m, false);
        let mut pending = 0;
        for i in 0..m {
            let Some(sessions) = self.sessions.as_mut() else {
                break;
            };
            if sessions.next_due() <= met[i] {
                self.send(events, pending..i, late)?;
                pending = i;
                self.fire_sessions(met[i])?;
            }
            let sessions = self.sessions.as_mut().ok_or_else(no_sessions)?;
            late[i] = !sessions.add(events.keys[i], events.ts[i], met[i])?;
            // A session that changed after its end passed fires again at once, so that
            // what it emits does not depend on how the stream is cut into batches.
            let dirty = sessions.take_dirty();
            if !dirty.is_empty() {
                self.send(events, pending..i + 1, late)?;
                pending = i + 1;
                self.emit_sessions(&dirty)?;
            }
        }
        self.send(events, pending..m, late)
    }

    /// Sends events `range` to the backend, less the late ones.
    fn send(&mut self, events: &Events<'_>, range: Range<usize>, late: &[bool]) -> Result<()> {
        let mut start = range.start;
        while start < range.end {
            if late[start] {
                start += 1;
                continue;
            }
            let end = (start..range.end).find(|&i| late[i]).unwrap_or(range.end);
            let columns = events.columns_in(start..end);
            self.unspill(&events.panes[start..end])?;
            self.backend.update(&events.slice(start..end, &columns))?;
            start = end;
        }
        Ok(())
    }

    /// Fires and closes the sessions that watermark `w` ends, and frees panes no session
    /// can need any more.
    fn fire_sessions(&mut self, w: i64) -> Result<()> {
        // Spilled sessions come back a file at a time: the watermark steps through the
        // earliest end in each, so that the sessions before it fire and close first.
        loop {
            let sessions = self.sessions.as_ref().ok_or_else(no_sessions)?;
            let step = sessions.spilled_due().min(w);
            self.fire_sessions_at(step)?;
            if step >= w {
                return Ok(());
            }
        }
    }

    fn fire_sessions_at(&mut self, w: i64) -> Result<()> {
        let sessions = self.sessions.as_mut().ok_or_else(no_sessions)?;
        let due = sessions.fire(w)?;
        let expired = sessions.expire(w)?;
        let oldest = sessions.oldest();
        self.emit_sessions(&due)?;
        let spec = self.spec;
        let ranges: Vec<(u32, Range<i64>)> = expired
            .iter()
            .map(|&(key, first, last)| (key, spec.pane_of(first)..spec.pane_of(last) + 1))
            .collect();
        self.unspill_for(ranges.iter().map(|r| r.1.clone()))?;
        for (key, panes) in ranges {
            self.backend.clear_key(panes, key)?;
        }
        // A new event that is not late is after w + 1 - gap - lateness; open sessions keep
        // theirs.
        let horizon = w
            .saturating_add(2)
            .saturating_sub(spec.pane_len())
            .saturating_sub(self.lateness);
        let keep = spec.pane_of(oldest.map_or(horizon, |o| o.min(horizon)));
        if keep > self.first_kept {
            self.first_kept = keep;
            self.evict_before(keep)?;
        }
        Ok(())
    }

    /// Emits one row per session, with its revision when lateness is allowed.
    fn emit_sessions(&mut self, due: &[Emit]) -> Result<()> {
        let spec = self.spec;
        let mut rows = WindowRows::default();
        let (mut starts, mut ends, mut revisions) = (Vec::new(), Vec::new(), Vec::new());
        let panes_of = |s: &Emit| spec.pane_of(s.first)..spec.pane_of(s.last) + 1;
        // Sessions combine one key each: spilled panes are read back once for all of them
        // (and spill again after the batch if the budget asks), not once a session.
        self.unspill_for(due.iter().map(panes_of))?;
        for s in due {
            let panes = panes_of(s);
            let row = self.combine(panes, Keys::Only(&[s.key]))?;
            for _ in &row.keys {
                starts.push(s.first);
                ends.push(s.last + spec.pane_len());
                revisions.push(s.revision);
            }
            rows.append(row);
        }
        let revisions = (self.lateness > 0).then_some(revisions);
        self.push_rows(rows, starts, ends, revisions, (i64::MIN, false))
    }

    /// The smallest watermark at which some window fires or expires, after `w`.
    fn next_threshold(&self, w: i64) -> i64 {
        let spec = &self.spec;
        let at = |delay: i64| {
            let k = spec.windows_closed_by(w, delay);
            let end = k * i128::from(spec.end_step()) + i128::from(spec.end(0));
            i64::try_from(end - 1 + i128::from(delay)).unwrap_or(i64::MAX)
        };
        at(0).min(at(self.lateness))
    }

    /// Marks windows that already fired, and have not expired, and receive these events.
    fn count_revisions(&mut self, keys: &[u32], panes: &[i64], met: &[i64]) {
        for ((&key, &j), &w) in keys.iter().zip(panes).zip(met) {
            for k in self.spec.windows_of_pane(j) {
                let end = self.spec.end(k);
                if end - 1 > w {
                    break;
                }
                if (end - 1).saturating_add(self.lateness) <= w {
                    continue; // expired: the event is late for this window
                }
                *self.revisions.entry((key, k)).or_insert(0) += 1;
                self.dirty.entry(k).or_default().insert(key);
            }
        }
    }

    /// Fires windows whose end the watermark `w` has reached, and expires those past their
    /// allowed lateness (re-firing their pending revisions first).
    fn advance(&mut self, w: i64) -> Result<()> {
        if self.sessions.is_some() {
            return self.fire_sessions(w);
        }
        let fire = self.spec.windows_closed_by(w, 0);
        loop {
            let from = self
                .next_fire
                .map_or(i64::MIN, |k| self.spec.panes_of_window(k).start);
            let Some(&j) = self.live_panes.range(from..).next() else {
                break;
            };
            let first = *self.spec.windows_of_pane(j).start();
            let k = self.next_fire.map_or(first, |n| n.max(first));
            if i128::from(k) >= fire {
                break;
            }
            self.emit(k, Keys::All)?;
            self.next_fire = Some(k + 1);
        }
        let expire = self.spec.windows_closed_by(w, self.lateness);
        let clamp = |x: i128| {
            i64::try_from(x.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(0)
        };
        self.refire_dirty(clamp(expire))?;
        let expire = clamp(expire);
        let first_kept = self.spec.panes_of_window(expire).start;
        // Every window the watermark closed has had its first firing, or had no events
        // (here: in this shard) when it closed. Either way it does not fire for every key
        // again: an event that reaches it later (allowed lateness) re-fires it for its key,
        // with a revision, and an expired one never fires again (its events were late).
        let fired = clamp(fire);
        self.next_fire = Some(self.next_fire.map_or(fired, |n| n.max(fired)));
        if self.live_panes.first().is_some_and(|&j| j < first_kept) {
            self.live_panes = self.live_panes.split_off(&first_kept);
            self.evict_before(first_kept)?;
            self.revisions.retain(|&(_, k), _| k >= expire);
        }
        Ok(())
    }

    /// Re-fires dirty windows before window index `before`.
    fn refire_dirty(&mut self, before: i64) -> Result<()> {
        if self.sessions.is_some() {
            return Ok(()); // sessions re-fire as they change
        }
        while let Some(entry) = self.dirty.first_entry() {
            if *entry.key() >= before {
                break;
            }
            let (k, keys) = entry.remove_entry();
            let keys: Vec<u32> = keys.into_iter().collect();
            self.emit(k, Keys::Only(&keys))?;
        }
        Ok(())
    }

    /// Combines window `k` for `keys` and appends the rows to the output.
    fn emit(&mut self, k: i64, keys: Keys<'_>) -> Result<()> {
        let mut rows = self.combine(self.spec.panes_of_window(k), keys)?;
        if rows.keys.is_empty() {
            return Ok(());
        }
        if matches!(keys, Keys::All) {
            self.detect_anomalies(k, &rows)?;
        }
        if let Some(t) = self.top_k {
            // Every row that ties with the k-th: ranks break ties by key value below.
            rows = rows.top_k_ties(t.by, t.k);
        }
        let n = rows.keys.len();
        let revisions = (self.lateness > 0).then(|| {
            rows.keys
                .iter()
                .map(|&key| self.revisions.get(&(key, k)).copied().unwrap_or(0))
                .collect()
        });
        let (start, end) = (self.spec.start(k), self.spec.end(k));
        let all = matches!(keys, Keys::All);
        self.push_rows(rows, vec![start; n], vec![end; n], revisions, (k, all))
    }

    /// Appends result rows to the output: key columns, window bounds, aggregates, then the
    /// rank (with top-k) and the revision (with allowed lateness). `fired` is the window
    /// and whether it fired for every key.
    fn push_rows(
        &mut self,
        rows: WindowRows,
        starts: Vec<i64>,
        ends: Vec<i64>,
        revisions: Option<Vec<i64>>,
        fired: (i64, bool),
    ) -> Result<()> {
        let n = rows.keys.len();
        if n == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = self
            .interner
            .columns(&rows.keys)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
        columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
        // No validity buffer where every row is valid (counts, mostly).
        let nulls = |valid: Vec<bool>| valid.contains(&false).then(|| valid.into());
        for col in rows.columns {
            columns.push(match col {
                OutColumn::I64 { values, valid } => {
                    Arc::new(Int64Array::new(values.into(), nulls(valid))) as ArrayRef
                }
                OutColumn::F64 { values, valid } => {
                    Arc::new(Float64Array::new(values.into(), nulls(valid)))
                }
            });
        }
        if self.top_k.is_some() {
            columns.push(Arc::new(Int64Array::from_iter_values(1..=n as i64)));
        }
        if let Some(revisions) = revisions {
            columns.push(Arc::new(Int64Array::from(revisions)));
        }
        let mut batch = RecordBatch::try_new(self.plan.out_schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building a result batch: {e}")))?;
        if let Some(t) = self.top_k {
            batch = topk::rank(&batch, &self.plan, t)?;
        }
        self.output.push(Fired {
            window: fired.0,
            all: fired.1,
            rows: batch,
        });
        Ok(())
    }

    /// Checks the watched aggregate of a window's first firing against each key's
    /// baseline, and queues an alert row per anomalous key.
    fn detect_anomalies(&mut self, k: i64, rows: &WindowRows) -> Result<()> {
        let Some((detector, value)) = self.anomaly.as_mut() else {
            return Ok(());
        };
        let counts: Option<(&[i64], i64)> = match detector.min_count() {
            Some((c, at_least)) => match &rows.columns[c] {
                OutColumn::I64 { values, .. } => Some((values, at_least)),
                OutColumn::F64 { .. } => None,
            },
            None => None,
        };
        let values: Vec<Option<f64>> = match &rows.columns[*value] {
            OutColumn::I64 { values, valid } => values
                .iter()
                .zip(valid)
                .map(|(&v, &ok)| ok.then_some(v as f64))
                .collect(),
            OutColumn::F64 { values, valid } => values
                .iter()
                .zip(valid)
                .map(|(&v, &ok)| ok.then_some(v))
                .collect(),
        };
        let (mut keys, mut found) = (Vec::new(), Vec::new());
        for (i, (&key, v)) in rows.keys.iter().zip(values).enumerate() {
            if counts.is_some_and(|(c, at_least)| c[i] < at_least) {
                continue;
            }
            if let Some(alert) = v.and_then(|v| detector.observe(key, v)) {
                keys.push(key);
                found.push((v.unwrap_or(f64::NAN), alert));
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let n = keys.len();
        let mut columns: Vec<ArrayRef> = self
            .interner
            .columns(&keys)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        columns.push(Arc::new(TimestampMillisecondArray::from(vec![
            self.spec
                .start(k);
            n
        ])));
        columns.push(Arc::new(TimestampMillisecondArray::from(vec![
            self.spec
                .end(k);
            n
        ])));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.0),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.mean),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.std),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.z),
        )));
        let batch = RecordBatch::try_new(self.plan.alert_schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building an alert batch: {e}")))?;
        self.stats.alerts += n as u64;
        self.alerts.push(batch);
        Ok(())
    }

    /// The state it holds (panes, the key dictionary, open sessions), in bytes.
    pub fn state_bytes(&self) -> u64 {
        let sessions = self.sessions.as_ref().map_or(0, Sessions::bytes);
        (self.backend.state_bytes() + self.interner.bytes() + sessions) as u64
    }

    /// Moves the watermark to `w`: fires the windows it closes and expires those past
    /// their allowed lateness.
    pub fn advance_to(&mut self, w: i64) -> Result<()> {
        self.watermark = self.watermark.max(w);
        self.advance(self.watermark)
    }

    /// The watermark at which the earliest window that has not fired yet fires (fixed
    /// windows); `None` when no window is left or for sessions.
    pub fn next_firing(&self) -> Option<i64> {
        if self.sessions.is_some() {
            return None;
        }
        let spec = self.spec;
        let next = self.live_panes.iter().find_map(|&j| {
            let windows = spec.windows_of_pane(j);
            let k = self
                .next_fire
                .map_or(*windows.start(), |n| n.max(*windows.start()));
            (k <= *windows.end()).then_some(k)
        })?;
        Some(spec.end(next).saturating_sub(1)).filter(|&w| w < i64::MAX)
    }

    /// End of a bounded input: the watermark jumps to +∞ and every window fires.
    pub fn finish(&mut self) -> Result<()> {
        self.advance_to(i64::MAX)?;
        self.refire_dirty(i64::MAX)
    }

    // Checkpoints: the shard's state as Arrow batches whose `key` columns hold this shard's
    // key ids (see `super::snapshot`).

    /// Keys in the dictionary.
    pub fn keys(&self) -> usize {
        self.interner.len()
    }

    /// The key columns of keys `ids`.
    pub fn key_columns(&mut self, ids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        self.interner.columns(ids)
    }

    /// Interns keys of a checkpoint's dictionary into `ids`; false when one was known.
    pub fn restore_keys(
        &mut self,
        columns: &[ArrayRef],
        rows: usize,
        ids: &mut Vec<u32>,
    ) -> Result<bool> {
        let before = self.interner.len() as u32;
        self.interner.intern(columns, rows, ids)?;
        self.enforce_budget()?;
        Ok(ids.iter().copied().eq(before..before + ids.len() as u32))
    }

    /// The panes that hold state, in memory or spilled, ascending.
    pub fn panes(&self) -> Vec<i64> {
        let mut panes = self.backend.panes();
        panes.extend(self.spill.iter().flat_map(Spill::panes));
        panes.sort_unstable();
        panes
    }

    /// The state of pane `pane`, from memory or its spill file.
    pub fn pane_state(&mut self, pane: i64) -> Result<Option<RecordBatch>> {
        match self.spill.as_ref().filter(|s| s.holds(pane)) {
            Some(s) => s.read(pane).map(Some),
            None => Ok(self.backend.export_pane(pane)?),
        }
    }

    /// Sets pane `pane` to a checkpoint's state.
    pub fn restore_pane(&mut self, pane: i64, state: &RecordBatch) -> Result<()> {
        self.backend.import_pane(pane, state)?;
        Ok(())
    }

    /// Revisions of windows that re-fired: key, window, revision.
    pub fn revisions_batch(&self) -> Result<Option<RecordBatch>> {
        if !self.dirty.is_empty() {
            return Err(Error::Internal(
                "a checkpoint with windows to re-fire".into(),
            ));
        }
        if self.revisions.is_empty() {
            return Ok(None);
        }
        let mut revisions: Vec<(&(u32, i64), &i64)> = self.revisions.iter().collect();
        revisions.sort_unstable();
        RecordBatch::try_from_iter([
            (
                "key",
                Arc::new(UInt32Array::from_iter_values(
                    revisions.iter().map(|r| r.0.0),
                )) as ArrayRef,
            ),
            (
                "window",
                Arc::new(Int64Array::from_iter_values(
                    revisions.iter().map(|r| r.0.1),
                )),
            ),
            (
                "revision",
                Arc::new(Int64Array::from_iter_values(revisions.iter().map(|r| *r.1))),
            ),
        ])
        .map(Some)
        .map_err(|e| Error::Internal(format!("building checkpoint state: {e}")))
    }

    /// Adds revisions as [`Shard::revisions_batch`] wrote them.
    pub fn restore_revisions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let cols = (
            batch
                .column_by_name("key")
                .and_then(|c| c.as_primitive_opt::<UInt32Type>()),
            batch
                .column_by_name("window")
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
            batch
                .column_by_name("revision")
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        );
        let (Some(keys), Some(windows), Some(revs)) = cols else {
            return Err("revisions.arrow: missing or mistyped columns".into());
        };
        for i in 0..batch.num_rows() {
            self.revisions
                .insert((keys.value(i), windows.value(i)), revs.value(i));
        }
        Ok(())
    }

    /// Open sessions, spilled ones included (session windows).
    pub fn sessions_batch(&self) -> Result<Option<RecordBatch>> {
        self.sessions.as_ref().map(Sessions::to_batch).transpose()
    }

    /// Adds open sessions as [`Shard::sessions_batch`] wrote them.
    pub fn restore_sessions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self.sessions.as_mut() {
            Some(s) => s.restore(batch),
            None => Ok(()),
        }
    }

    /// Anomaly baselines, with `[anomaly]`.
    pub fn baselines_batch(&self) -> Result<Option<RecordBatch>> {
        let arrow = |e| Error::Internal(format!("building checkpoint state: {e}"));
        self.anomaly
            .as_ref()
            .map(|(d, _)| d.to_batch().map_err(arrow))
            .transpose()
    }

    /// Adds baselines as [`Shard::baselines_batch`] wrote them.
    pub fn restore_baselines(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self.anomaly.as_mut() {
            Some((d, _)) => d.restore(batch),
            None => Ok(()),
        }
    }

    /// What decides which windows fire next: the next window to consider, the first pane
    /// kept (sessions) and the panes with data.
    pub fn firing(&self) -> (Option<i64>, i64, &BTreeSet<i64>) {
        (self.next_fire, self.first_kept, &self.live_panes)
    }

    /// Restores [`Shard::firing`] and the watermark, after the keyed state.
    pub fn restore_firing(
        &mut self,
        next_fire: Option<i64>,
        first_kept: i64,
        live_panes: &[i64],
        watermark: i64,
    ) -> Result<()> {
        self.next_fire = next_fire;
        self.first_kept = first_kept;
        self.live_panes = live_panes.iter().copied().collect();
        self.watermark = watermark;
        self.enforce_budget()
    }
}
