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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array};
use arrow::datatypes::{Int64Type, UInt32Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

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

/// A min-heap of (end − 1, key, first) entries, one per session, set when the session
/// starts (or, for firing, becomes pending). Nothing is pushed when a session only grows:
/// when its entry comes up, an entry for a session that has since ended later is pushed
/// again at the new end, and one for a session that merged away or closed is dropped.
type Timers = BinaryHeap<Reverse<(i64, u32, i64)>>;

/// The open sessions of every key.
#[derive(Clone, Debug)]
pub struct Sessions {
    gap: i64,
    lateness: i64,
    /// Per key: open sessions, sorted, windows disjoint.
    open: HashMap<u32, Vec<Open>>,
    /// When pending sessions fire.
    to_fire: Timers,
    /// When sessions close.
    to_close: Timers,
    /// Sessions that changed after their end passed: to emit at once.
    dirty: BTreeSet<(u32, i64)>,
    /// How many open sessions start at each time (for the oldest pane still needed).
    firsts: BTreeMap<i64, usize>,
}

impl Sessions {
    /// No sessions yet, for a gap of `gap` ms and an allowed lateness of `lateness` ms.
    pub fn new(gap: i64, lateness: i64) -> Sessions {
        Sessions {
            gap,
            lateness,
            open: HashMap::new(),
            to_fire: Timers::new(),
            to_close: Timers::new(),
            dirty: BTreeSet::new(),
            firsts: BTreeMap::new(),
        }
    }

    /// Adds an event of `key` at `t` that met watermark `w`, merging the sessions it
    /// bridges. Returns false, changing nothing, when the event is late. Sessions that `w`
    /// fires or expires must have been handled first ([`Sessions::fire`],
    /// [`Sessions::expire`]).
    pub fn add(&mut self, key: u32, t: i64, w: i64) -> bool {
        let gap = self.gap;
        let list = self.open.entry(key).or_default();
        // The overlapping sessions are a run of the sorted list.
        let from = list.partition_point(|s| s.last + gap <= t);
        let to = from + list[from..].partition_point(|s| s.first < t.saturating_add(gap));
        if from == to && (t + gap - 1).saturating_add(self.lateness) <= w {
            return false;
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
        for s in list.splice(from..to, [merged]) {
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
        true
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
            timers.pop();
            if let Some(later) = now {
                timers.push(Reverse((later, key, first)));
            }
        }
    }

    /// The watermark at which the next session fires or closes (`i64::MAX` when none).
    pub fn next_due(&mut self) -> i64 {
        self.clean(true);
        self.clean(false);
        let fire = self.to_fire.peek().map_or(i64::MAX, |s| s.0.0);
        let close = self
            .to_close
            .peek()
            .map_or(i64::MAX, |s| s.0.0.saturating_add(self.lateness));
        fire.min(close)
    }

    /// Bytes held (an estimate from capacities, in constant time: about one session a key).
    pub fn bytes(&self) -> usize {
        let per_key = size_of::<(u32, Vec<Open>)>() + size_of::<Open>() + 1;
        let timer = size_of::<Reverse<(i64, u32, i64)>>();
        self.open.capacity() * per_key
            + (self.to_fire.capacity() + self.to_close.capacity()) * timer
            + self.firsts.len() * 48
            + self.dirty.len() * 32
    }

    /// The earliest first event time of an open session.
    pub fn oldest(&self) -> Option<i64> {
        self.firsts.keys().next().copied()
    }

    /// The sessions that watermark `w` fires, in firing order.
    pub fn fire(&mut self, w: i64) -> Vec<Emit> {
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
        due.into_iter().map(|(k, f)| self.emit(k, f)).collect()
    }

    /// The sessions that changed after their end passed, by key and start.
    pub fn take_dirty(&mut self) -> Vec<Emit> {
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
    pub fn expire(&mut self, w: i64) -> Vec<(u32, i64, i64)> {
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
        closed
    }
}

impl Sessions {
    /// The open sessions as a batch (checkpoints): key, first, last, n, base, pending.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let mut rows: Vec<(u32, Open)> = self
            .open
            .iter()
            .flat_map(|(&k, list)| list.iter().map(move |&s| (k, s)))
            .collect();
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
    }

    /// Adds the sessions of a batch that [`Sessions::to_batch`] wrote, with their timers.
    /// The sessions must not be dirty (checkpoints are taken between batches).
    pub fn restore(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("session state has no column {name:?}"))
        };
        let int = |name: &str| -> Result<&Int64Array, String> {
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
        for i in 0..batch.num_rows() {
            let (key, s) = (
                keys.value(i),
                Open {
                    first: first.value(i),
                    last: last.value(i),
                    n: n.value(i),
                    base: base.is_valid(i).then(|| base.value(i)),
                    pending: pending.value(i),
                },
            );
            let end = s.last + self.gap - 1;
            self.to_close.push(Reverse((end, key, s.first)));
            if s.pending {
                self.to_fire.push(Reverse((end, key, s.first)));
            }
            *self.firsts.entry(s.first).or_insert(0) += 1;
            self.open.entry(key).or_default().push(s);
        }
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
        assert!(s.add(1, 100, w) && s.add(1, 105, w));
        assert!(s.add(1, 130, w)); // 25 after the last event: a session of its own
        assert!(s.add(2, 101, w)); // another key
        assert!(s.add(1, 120, w)); // exactly the gap before 130: not closer, apart
        assert_eq!((s.next_due(), s.oldest()), (110, Some(100)));
        assert_eq!(
            s.fire(114),
            vec![emit(2, 101, 101, 0), emit(1, 100, 105, 0)]
        );
        assert_eq!(s.expire(114), vec![(2, 101, 101), (1, 100, 105)]);
        assert!(s.add(1, 125, 114)); // bridges 120 and 130
        assert_eq!(s.fire(i64::MAX), vec![emit(1, 120, 130, 0)]);
        assert_eq!(s.expire(i64::MAX).len(), 1);
        assert_eq!((s.next_due(), s.oldest()), (i64::MAX, None));
    }

    #[test]
    fn bridging_events_merge_sessions_and_late_events_are_refused() {
        let mut s = Sessions::new(10, 0);
        let w = i64::MIN;
        assert!(s.add(7, 0, w) && s.add(7, 30, w) && s.add(7, 15, w));
        assert!(s.add(7, 8, w)); // [8, 18) overlaps the sessions at 0 and at 15
        assert!(s.add(7, 22, w)); // [22, 32) overlaps [0, 25) and [30, 40)
        assert_eq!(s.fire(i64::MAX - 1), vec![emit(7, 0, 30, 0)]);
        s.expire(i64::MAX - 1);
        // A lone event whose window ends by the watermark is late.
        assert!(!s.add(7, 100, 109));
        assert_eq!(s.next_due(), i64::MAX);
        assert!(s.add(7, 100, 108));
    }

    #[test]
    fn fired_sessions_take_late_events_and_fire_again_with_revisions() {
        let mut s = Sessions::new(10, 50);
        assert!(s.add(3, 0, i64::MIN) && s.add(3, 5, i64::MIN));
        assert_eq!(s.fire(14), vec![emit(3, 0, 5, 0)]);
        assert!(s.expire(14).is_empty()); // open until 14 + 50
        assert!(s.add(3, 2, 20)); // inside, after the end: re-fires at the end of the batch
        assert!(s.add(3, 9, 20));
        assert_eq!(s.take_dirty(), vec![emit(3, 0, 9, 2)]);
        assert!(s.add(3, 17, 20)); // extends the session past the watermark: fires at 26
        assert_eq!(s.fire(25), vec![]);
        assert_eq!(s.fire(26), vec![emit(3, 0, 17, 3)]);
        assert!(s.add(3, -5, 30)); // starts earlier: a new row, revision 0
        assert_eq!(s.take_dirty(), vec![emit(3, -5, 17, 0)]);
        assert_eq!(s.next_due(), 26 + 50);
        assert_eq!(s.expire(76), vec![(3, -5, 17)]);
        // Late only when even the lateness has passed.
        assert!(s.add(4, 0, 58));
        assert!(!s.add(5, 0, 59));
    }
}
