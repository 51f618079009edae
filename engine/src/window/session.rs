//! Session windows: per key, events closer than `gap` share a session `[first, last + gap)`,
//! and sessions merge when an event bridges them.
//!
//! This is the control-plane half: which sessions are open, when each fires, and whether an
//! event is late. The events themselves go to the backend in panes `gap` long. Two sessions
//! of one key are at least `gap` apart, so they never share a pane: a session's aggregate
//! is its key's state over the session's panes, and a bridging event merges two sessions
//! without moving any state.
//!
//! As for other windows (see the README):
//! - An event at `t` that meets watermark `W` is late when its window `[t, t + gap)`, merged
//!   with the open sessions it overlaps, has `end − 1 + lateness <= W`. Only a lone event can
//!   be late: every open session ends after `W − lateness`.
//! - A session fires when the watermark reaches `end − 1`, and stays open (for late events
//!   and merges) until it reaches `end − 1 + lateness`.
//! - A session that changes after it fired fires again: at once when its end has passed
//!   (the operator takes [`Sessions::take_dirty`] after each event), or when the watermark
//!   reaches its new end. Rows are named by (key, `window_start`); a row's revision is the
//!   number of events the session gained after its first row with that start.
//!
//! Under a memory budget the index can [spill](Sessions::spill) the keys whose sessions end
//! latest to disk (see [`crate::state::sessionspill`]); they come back when an event of the key
//! arrives or the watermark nears their end.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array};
use arrow::datatypes::{Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::state::sessionspill::{Record, SessionDisk};

/// A session to emit: its key, first and last event times, and revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emit {
    /// The key id.
    pub key: u32,
    /// Time of the first event.
    pub first: i64,
    /// Time of the last event.
    pub last: i64,
    /// Events gained since the first row with this start (0 for that row).
    pub revision: i64,
}

/// An open session of one key.
#[derive(Clone, Copy, Debug)]
struct Open {
    first: i64,
    last: i64,
    /// Events in the session.
    n: i64,
    /// Events it had when its first row with this start was emitted.
    base: Option<i64>,
    /// Its current form waits for the watermark to reach its end, to be emitted.
    pending: bool,
}

impl From<Record> for Open {
    fn from(r: Record) -> Open {
        Open {
            first: r.first,
            last: r.last,
            n: r.n,
            base: r.base,
            pending: r.pending,
        }
    }
}

impl Open {
    fn record(&self, key: u32) -> Record {
        Record {
            key,
            first: self.first,
            last: self.last,
            n: self.n,
            base: self.base,
            pending: self.pending,
        }
    }
}

/// A min-heap of (end − 1, key, first) entries, one per session, set when the session
/// starts (or, for firing, becomes pending). Nothing is pushed when a session only grows:
/// when its entry comes up, an entry for a session that has since ended later is pushed
/// again at the new end, and one for a session that merged away or closed is dropped.
type Timers = BinaryHeap<Reverse<(i64, u32, i64)>>;

/// Files a spill writes: its sessions in bands of end time.
const BANDS: usize = 8;

/// The open sessions of every key.
pub struct Sessions {
    gap: i64,
    lateness: i64,
    /// Per key: open sessions, sorted, windows disjoint. Looked up once an event: a fast
    /// hash of the key id, and a key's first session in its entry (most keys have one
    /// open), not behind a pointer.
    open: foldhash::HashMap<u32, SmallVec<[Open; 1]>>,
    /// When pending sessions fire.
    to_fire: Timers,
    /// When sessions close.
    to_close: Timers,
    /// Sessions that changed after their end passed: to emit at once.
    dirty: BTreeSet<(u32, i64)>,
    /// How many open sessions start at each time (for the oldest pane still needed).
    firsts: BTreeMap<i64, usize>,
    /// Keys whose sessions are on disk, once spilled.
    disk: Option<SessionDisk>,
    /// Sessions written to disk so far.
    pub spilled: u64,
}

impl Sessions {
    /// No sessions yet, for a gap of `gap` ms and an allowed lateness of `lateness` ms.
    pub fn new(gap: i64, lateness: i64) -> Sessions {
        Sessions {
            gap,
            lateness,
            open: foldhash::HashMap::default(),
            to_fire: Timers::new(),
            to_close: Timers::new(),
            dirty: BTreeSet::new(),
            firsts: BTreeMap::new(),
            disk: None,
            spilled: 0,
        }
    }

    /// Adds an event of `key` at `t` that met watermark `w`, merging the sessions it
    /// bridges. Returns false, changing nothing, when the event is late. Sessions that `w`
    /// fires or expires must have been handled first ([`Sessions::fire`],
    /// [`Sessions::expire`]).
    pub fn add(&mut self, key: u32, t: i64, w: i64) -> Result<bool> {
        if let Some(disk) = self.disk.as_mut().filter(|d| d.holds(key)) {
            let back = disk.take(key)?;
            self.insert(back);
        }
        let gap = self.gap;
        let list = self.open.entry(key).or_default();
        // The overlapping sessions are a run of the sorted list.
        let from = list.partition_point(|s| s.last + gap <= t);
        let to = from + list[from..].partition_point(|s| s.first < t.saturating_add(gap));
        if from == to && (t + gap - 1).saturating_add(self.lateness) <= w {
            if list.is_empty() {
                self.open.remove(&key);
            }
            return Ok(false);
        }
        let mut merged = Open {
            first: t,
            last: t,
            n: 1,
            base: None,
            pending: false,
        };
        // Whether the session whose start the merged one keeps (if one does) was pending.
        let mut kept = None;
        for s in &list[from..to] {
            if s.first <= merged.first {
                merged.base = s.base;
                kept = Some(s.pending);
            }
            merged.first = merged.first.min(s.first);
            merged.last = merged.last.max(s.last);
            merged.n += s.n;
        }
        let end = merged.last + gap - 1;
        let (same_start, was_pending) = (kept.is_some(), kept == Some(true));
        merged.pending = end > w;
        // The event joins one session (most do): it changes in place.
        let gone: SmallVec<[Open; 2]> = match to - from {
            1 => smallvec::smallvec![std::mem::replace(&mut list[from], merged)],
            _ => {
                let gone = list.drain(from..to).collect();
                list.insert(from, merged);
                gone
            }
        };
        for s in gone {
            self.dirty.remove(&(key, s.first));
            if !(same_start && s.first == merged.first) {
                release(&mut self.firsts, s.first);
            }
        }
        if !same_start {
            *self.firsts.entry(merged.first).or_insert(0) += 1;
        }
        if !same_start {
            self.to_close.push(Reverse((end, key, merged.first)));
        }
        if merged.pending {
            if !(same_start && was_pending) {
                self.to_fire.push(Reverse((end, key, merged.first)));
            }
        } else {
            self.dirty.insert((key, merged.first));
        }
        Ok(true)
    }

    /// Adds sessions read back (from disk or a checkpoint), with their timers. A key's
    /// sessions come together, in order, and the key has none open.
    fn insert(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            let s = Open::from(r);
            let end = s.last + self.gap - 1;
            self.to_close.push(Reverse((end, r.key, s.first)));
            if s.pending {
                self.to_fire.push(Reverse((end, r.key, s.first)));
            }
            *self.firsts.entry(s.first).or_insert(0) += 1;
            self.open.entry(r.key).or_default().push(s);
        }
    }

    /// Brings back the spilled sessions that end by `w`.
    fn load_due(&mut self, w: i64) -> Result<()> {
        if let Some(disk) = self.disk.as_mut().filter(|d| d.due() <= w) {
            let back = disk.take_due(w)?;
            self.insert(back);
        }
        Ok(())
    }

    /// Moves the sessions of the half of the keys whose sessions end latest to disk, in
    /// `dir` (created) on the first spill. Returns false when there is no room for another
    /// file or nothing to spill.
    pub fn spill(&mut self, dir: impl FnOnce() -> Result<PathBuf>) -> Result<bool> {
        let disk = match &mut self.disk {
            Some(d) => d,
            None => self.disk.insert(SessionDisk::new(dir()?)?),
        };
        if !disk.has_room(BANDS) || self.open.is_empty() {
            return Ok(false);
        }
        let dirty = &self.dirty;
        let mut latest: Vec<(i64, u32)> = self
            .open
            .iter()
            .filter(|&(&k, _)| dirty.range((k, i64::MIN)..=(k, i64::MAX)).next().is_none())
            .map(|(&k, list)| (list.last().map_or(i64::MIN, |s| s.last), k))
            .collect();
        latest.sort_unstable_by(|a, b| b.cmp(a));
        latest.truncate(self.open.len().div_ceil(2));
        let mut keys: Vec<u32> = latest.into_iter().map(|(_, k)| k).collect();
        keys.sort_unstable();
        let mut records = Vec::new();
        for key in keys {
            for s in self.open.remove(&key).unwrap_or_default() {
                release(&mut self.firsts, s.first);
                records.push(s.record(key));
            }
        }
        if records.is_empty() {
            return Ok(false);
        }
        // In bands of end time, each its own file: a band comes back when its sessions are
        // about to fire, not with the later ones.
        let gap = self.gap;
        let mut ends: Vec<i64> = records.iter().map(|r| r.last + gap - 1).collect();
        ends.sort_unstable();
        let bounds: Vec<i64> = (1..BANDS).map(|b| ends[b * ends.len() / BANDS]).collect();
        // A key's sessions stay together, in the band of its last one.
        let mut bands = vec![Vec::new(); BANDS];
        for key in records.chunk_by(|a, b| a.key == b.key) {
            let end = key
                .iter()
                .map(|r| r.last + gap - 1)
                .max()
                .unwrap_or(i64::MIN);
            bands[bounds.partition_point(|&b| b <= end)].extend_from_slice(key);
        }
        for band in bands {
            disk.write(&band, gap)?;
        }
        self.spilled += records.len() as u64;
        // New timers, one per session kept: the old ones include spilled sessions and
        // entries left behind by sessions that grew or merged.
        let timers = |pending_only: bool| -> Timers {
            self.open
                .iter()
                .flat_map(|(&k, list)| list.iter().map(move |s| (k, s)))
                .filter(|(_, s)| s.pending || !pending_only)
                .map(|(k, s)| Reverse((s.last + gap - 1, k, s.first)))
                .collect()
        };
        (self.to_fire, self.to_close) = (timers(true), timers(false));
        self.open.shrink_to_fit();
        Ok(true)
    }

    /// The open session of `key` that starts at `first`.
    fn current(&mut self, key: u32, first: i64) -> Option<&mut Open> {
        let list = self.open.get_mut(&key)?;
        let i = list.partition_point(|s| s.first < first);
        list.get_mut(i).filter(|s| s.first == first)
    }

    /// Brings the top of the firing (or closing) timers up to date: drops entries of
    /// sessions that are gone (or, for firing, no longer pending) and moves entries of
    /// sessions that now end later to their new end.
    fn clean(&mut self, firing: bool) {
        let gap = self.gap;
        loop {
            let timers = if firing {
                &self.to_fire
            } else {
                &self.to_close
            };
            let Some(&Reverse((end, key, first))) = timers.peek() else {
                return;
            };
            let now = self
                .current(key, first)
                .filter(|s| s.pending || !firing)
                .map(|s| s.last + gap - 1);
            if now == Some(end) {
                return;
            }
            let timers = if firing {
                &mut self.to_fire
            } else {
                &mut self.to_close
            };
            match now {
                // The session ends later now: its entry moves down (one sift, not a pop
                // and a push).
                Some(later) => {
                    if let Some(mut top) = timers.peek_mut() {
                        *top = Reverse((later, key, first));
                    }
                }
                None => {
                    timers.pop();
                }
            }
        }
    }

    /// Whether watermark `w` fires or closes a session: [`Sessions::next_due`] `<= w`, but
    /// without bringing the timers up to date while their tops are later than `w` (a
    /// timer is never later than its session's end: sessions only grow), which is the
    /// case for most events.
    pub fn due_by(&mut self, w: i64) -> bool {
        self.timers_due() <= w && self.next_due() <= w
    }

    /// The watermark at which the next session fires or closes (`i64::MAX` when none).
    pub fn next_due(&mut self) -> i64 {
        self.clean(true);
        self.clean(false);
        self.timers_due()
    }

    /// When the timers' tops fire or close, as they stand (up to date or not), and the
    /// earliest end on disk.
    fn timers_due(&self) -> i64 {
        let fire = self.to_fire.peek().map_or(i64::MAX, |s| s.0.0);
        let close = self
            .to_close
            .peek()
            .map_or(i64::MAX, |s| s.0.0.saturating_add(self.lateness));
        fire.min(close).min(self.spilled_due())
    }

    /// Bytes held (an estimate from capacities, in constant time: about one session a key).
    pub fn bytes(&self) -> usize {
        let per_key = size_of::<(u32, SmallVec<[Open; 1]>)>() + 1;
        let timer = size_of::<Reverse<(i64, u32, i64)>>();
        self.open.capacity() * per_key
            + (self.to_fire.capacity() + self.to_close.capacity()) * timer
            + self.firsts.len() * 48
            + self.dirty.len() * 32
            + self.disk.as_ref().map_or(0, SessionDisk::bytes)
    }

    /// The earliest first event time of an open session (for a spilled one, a bound).
    pub fn oldest(&self) -> Option<i64> {
        let spilled = self.disk.as_ref().and_then(SessionDisk::oldest);
        self.firsts
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(spilled)
            .min()
    }

    /// The earliest end of a session on disk (`i64::MAX` when none).
    pub fn spilled_due(&self) -> i64 {
        self.disk.as_ref().map_or(i64::MAX, SessionDisk::due)
    }

    /// Keys whose sessions are on disk.
    #[cfg(test)]
    pub fn keys_on_disk(&self) -> usize {
        self.disk.as_ref().map_or(0, SessionDisk::keys)
    }

    /// The sessions that watermark `w` fires, in firing order.
    pub fn fire(&mut self, w: i64) -> Result<Vec<Emit>> {
        self.load_due(w)?;
        let mut due = Vec::new();
        loop {
            self.clean(true);
            match self.to_fire.peek() {
                Some(&Reverse((end, key, first))) if end <= w => {
                    self.to_fire.pop();
                    if let Some(s) = self.current(key, first) {
                        s.pending = false;
                    }
                    due.push((key, first));
                }
                _ => break,
            }
        }
        Ok(due.into_iter().map(|(k, f)| self.emit(k, f)).collect())
    }

    /// The sessions that changed after their end passed, by key and start.
    pub fn take_dirty(&mut self) -> Vec<Emit> {
        // Asked after every event, and mostly empty.
        if self.dirty.is_empty() {
            return Vec::new();
        }
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().map(|(k, f)| self.emit(k, f)).collect()
    }

    /// An emission of session (`key`, `first`); its first row with this start sets the
    /// base of later revisions.
    fn emit(&mut self, key: u32, first: i64) -> Emit {
        let s = self.current(key, first).expect("a session to emit is open");
        let base = *s.base.get_or_insert(s.n);
        Emit {
            key,
            first,
            last: s.last,
            revision: s.n - base,
        }
    }

    /// Closes the sessions that watermark `w` expires; returns them as (key, first, last).
    pub fn expire(&mut self, w: i64) -> Result<Vec<(u32, i64, i64)>> {
        self.load_due(w)?;
        let mut closed = Vec::new();
        loop {
            self.clean(false);
            let Some(&Reverse((end, key, first))) = self.to_close.peek() else {
                break;
            };
            if end.saturating_add(self.lateness) > w {
                break;
            }
            self.to_close.pop();
            let list = self.open.get_mut(&key).expect("a timer's session is open");
            let i = list.partition_point(|s| s.first < first);
            let s = list.remove(i);
            if list.is_empty() {
                self.open.remove(&key);
            }
            self.dirty.remove(&(key, first));
            release(&mut self.firsts, first);
            closed.push((key, s.first, s.last));
        }
        Ok(closed)
    }
}

impl Sessions {
    /// The open sessions as a batch (checkpoints): key, first, last, n, base, pending.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let mut rows: Vec<(u32, Open)> = self
            .open
            .iter()
            .flat_map(|(&k, list)| list.iter().map(move |&s| (k, s)))
            .collect();
        let spilled = self.disk.as_ref().map(SessionDisk::all).transpose()?;
        rows.extend(
            spilled
                .into_iter()
                .flatten()
                .map(|r| (r.key, Open::from(r))),
        );
        rows.sort_unstable_by_key(|&(k, s)| (k, s.first));
        let ints = |f: fn(&Open) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(&r.1))))
        };
        RecordBatch::try_from_iter([
            (
                "key",
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            ("first", ints(|s| s.first)),
            ("last", ints(|s| s.last)),
            ("n", ints(|s| s.n)),
            (
                "base",
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1.base))),
            ),
            (
                "pending",
                Arc::new(BooleanArray::from_iter(
                    rows.iter().map(|r| Some(r.1.pending)),
                )),
            ),
        ])
        .map_err(|e| Error::arrow("building session state", e))
    }

    /// Adds the sessions of a batch that [`Sessions::to_batch`] wrote, with their timers.
    /// The sessions must not be dirty (checkpoints are taken between batches).
    pub fn restore(&mut self, batch: &RecordBatch) -> std::result::Result<(), String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("session state has no column {name:?}"))
        };
        let int = |name: &str| -> std::result::Result<&Int64Array, String> {
            col(name)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| format!("session state column {name:?} is not Int64"))
        };
        let keys = col("key")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or("session state column \"key\" is not UInt32")?;
        let (first, last, n, base) = (int("first")?, int("last")?, int("n")?, int("base")?);
        let pending = col("pending")?
            .as_boolean_opt()
            .ok_or("session state column \"pending\" is not Boolean")?;
        self.insert((0..batch.num_rows()).map(|i| Record {
            key: keys.value(i),
            first: first.value(i),
            last: last.value(i),
            n: n.value(i),
            base: base.is_valid(i).then(|| base.value(i)),
            pending: pending.value(i),
        }));
        Ok(())
    }
}

/// Takes one session starting at `first` out of the count.
fn release(firsts: &mut BTreeMap<i64, usize>, first: i64) {
    match firsts.get_mut(&first) {
        Some(n) if *n > 1 => *n -= 1,
        _ => {
            firsts.remove(&first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(key: u32, first: i64, last: i64, revision: i64) -> Emit {
        Emit {
            key,
            first,
            last,
            revision,
        }
    }

    #[test]
    fn events_closer_than_the_gap_share_a_session() {
        let mut s = Sessions::new(10, 0);
        let w = i64::MIN;
        assert!(s.add(1, 100, w).unwrap() && s.add(1, 105, w).unwrap());
        assert!(s.add(1, 130, w).unwrap()); // 25 after the last event: a session of its own
        assert!(s.add(2, 101, w).unwrap()); // another key
        assert!(s.add(1, 120, w).unwrap()); // exactly the gap before 130: not closer, apart
        assert_eq!((s.next_due(), s.oldest()), (110, Some(100)));
        assert_eq!(
            s.fire(114).unwrap(),
            vec![emit(2, 101, 101, 0), emit(1, 100, 105, 0)]
        );
        assert_eq!(s.expire(114).unwrap(), vec![(2, 101, 101), (1, 100, 105)]);
        assert!(s.add(1, 125, 114).unwrap()); // bridges 120 and 130
        assert_eq!(s.fire(i64::MAX).unwrap(), vec![emit(1, 120, 130, 0)]);
        assert_eq!(s.expire(i64::MAX).unwrap().len(), 1);
        assert_eq!((s.next_due(), s.oldest()), (i64::MAX, None));
    }

    #[test]
    fn bridging_events_merge_sessions_and_late_events_are_refused() {
        let mut s = Sessions::new(10, 0);
        let w = i64::MIN;
        assert!(s.add(7, 0, w).unwrap() && s.add(7, 30, w).unwrap() && s.add(7, 15, w).unwrap());
        assert!(s.add(7, 8, w).unwrap()); // [8, 18) overlaps the sessions at 0 and at 15
        assert!(s.add(7, 22, w).unwrap()); // [22, 32) overlaps [0, 25) and [30, 40)
        assert_eq!(s.fire(i64::MAX - 1).unwrap(), vec![emit(7, 0, 30, 0)]);
        s.expire(i64::MAX - 1).unwrap();
        // A lone event whose window ends by the watermark is late.
        assert!(!s.add(7, 100, 109).unwrap());
        assert_eq!(s.next_due(), i64::MAX);
        assert!(s.add(7, 100, 108).unwrap());
    }

    #[test]
    fn fired_sessions_take_late_events_and_fire_again_with_revisions() {
        let mut s = Sessions::new(10, 50);
        assert!(s.add(3, 0, i64::MIN).unwrap() && s.add(3, 5, i64::MIN).unwrap());
        assert_eq!(s.fire(14).unwrap(), vec![emit(3, 0, 5, 0)]);
        assert!(s.expire(14).unwrap().is_empty()); // open until 14 + 50
        assert!(s.add(3, 2, 20).unwrap()); // inside, after the end: re-fires at the end of the batch
        assert!(s.add(3, 9, 20).unwrap());
        assert_eq!(s.take_dirty(), vec![emit(3, 0, 9, 2)]);
        assert!(s.add(3, 17, 20).unwrap()); // extends the session past the watermark: fires at 26
        assert_eq!(s.fire(25).unwrap(), vec![]);
        assert_eq!(s.fire(26).unwrap(), vec![emit(3, 0, 17, 3)]);
        assert!(s.add(3, -5, 30).unwrap()); // starts earlier: a new row, revision 0
        assert_eq!(s.take_dirty(), vec![emit(3, -5, 17, 0)]);
        assert_eq!(s.next_due(), 26 + 50);
        assert_eq!(s.expire(76).unwrap(), vec![(3, -5, 17)]);
        // Late only when even the lateness has passed.
        assert!(s.add(4, 0, 58).unwrap());
        assert!(!s.add(5, 0, 59).unwrap());
    }

    /// Runs a random event stream through a spilling and a plain index, spilling at random
    /// moments: every answer must agree.
    #[test]
    fn spilled_sessions_come_back_in_time_and_answer_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for seed in 0..20 {
            let mut rng = panes_datasets::rng::Rng::new(seed);
            let (gap, lateness) = (10 + rng.below(50) as i64, rng.below(40) as i64);
            let (mut plain, mut spilling) =
                (Sessions::new(gap, lateness), Sessions::new(gap, lateness));
            let mut w = i64::MIN;
            let mut t = 0i64;
            for step in 0..3000 {
                t += rng.below(3) as i64;
                let (key, ts) = (rng.below(200) as u32, t - rng.below(60) as i64);
                if rng.below(8) == 0 {
                    w = w.max(t - 30);
                }
                // The quick answer first, before next_due brings the timers up to date.
                let quick = [plain.due_by(w), spilling.due_by(w)];
                let (a, b) = (plain.next_due(), spilling.next_due());
                assert_eq!(
                    quick,
                    [a <= w, b <= w],
                    "seed {seed} step {step}: due by {w}"
                );
                assert!(b <= a, "seed {seed} step {step}: due {b} after {a}");
                if b <= w {
                    assert_eq!(
                        plain.fire(w).unwrap(),
                        spilling.fire(w).unwrap(),
                        "seed {seed}"
                    );
                    assert_eq!(plain.expire(w).unwrap(), spilling.expire(w).unwrap());
                }
                let late = plain.add(key, ts, w).unwrap();
                assert_eq!(
                    spilling.add(key, ts, w).unwrap(),
                    late,
                    "seed {seed} step {step}"
                );
                assert_eq!(
                    plain.take_dirty(),
                    spilling.take_dirty(),
                    "seed {seed} step {step}"
                );
                let (a, b) = (plain.oldest(), spilling.oldest());
                assert!(
                    b <= a || a.is_none(),
                    "seed {seed} step {step}: {b:?} vs {a:?}"
                );
                if rng.below(100) == 0 {
                    spilling.spill(|| Ok(dir.path().join("s"))).unwrap();
                }
                if rng.below(500) == 0 {
                    let (x, y) = (plain.to_batch().unwrap(), spilling.to_batch().unwrap());
                    assert_eq!(x, y, "seed {seed} step {step}: checkpoints differ");
                }
            }
            assert!(spilling.spilled > 0);
            assert_eq!(
                plain.fire(i64::MAX).unwrap(),
                spilling.fire(i64::MAX).unwrap()
            );
            assert_eq!(
                plain.expire(i64::MAX).unwrap(),
                spilling.expire(i64::MAX).unwrap()
            );
            assert_eq!(spilling.keys_on_disk(), 0);
        }
    }
}
