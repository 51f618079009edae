//! Session windows: per key, events closer than `gap` share a session `[first, last + gap)`,
//! and sessions merge when an event bridges them.
//!
//! This is the control-plane half: which sessions are open, when each fires, and whether an
//! event is late. The events themselves go to the backend in panes `gap` long. Two sessions
//! of one key are at least `gap` apart, so they never share a pane: a session's aggregate
//! is its key's state over the session's panes, and a bridging event merges two sessions
//! without moving any state.
//!
//! An event at `t` that meets watermark `W` is late when its window `[t, t + gap)`, merged
//! with the open sessions it overlaps, has `end − 1 <= W`. Sessions fire, and are closed,
//! when the watermark reaches `end − 1` (allowed lateness is 0 for sessions).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A session of one key: its first and last event times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The key id.
    pub key: u32,
    /// Time of the first event.
    pub first: i64,
    /// Time of the last event.
    pub last: i64,
}

/// The open sessions of every key.
#[derive(Clone, Debug)]
pub struct Sessions {
    gap: i64,
    /// Per key: open sessions as (first, last), sorted, windows disjoint.
    open: HashMap<u32, Vec<(i64, i64)>>,
    /// Every open session by the watermark that fires it: (end − 1, key, first).
    by_fire: BTreeSet<(i64, u32, i64)>,
    /// How many open sessions start at each time (for the oldest pane still needed).
    firsts: BTreeMap<i64, usize>,
}

impl Sessions {
    /// No sessions yet, for a gap of `gap` ms.
    pub fn new(gap: i64) -> Sessions {
        Sessions {
            gap,
            open: HashMap::new(),
            by_fire: BTreeSet::new(),
            firsts: BTreeMap::new(),
        }
    }

    /// Adds an event of `key` at `t` that met watermark `w`, merging the sessions it
    /// bridges. Returns false, changing nothing, when the event is late. Sessions that `w`
    /// fires must have been taken with [`Sessions::fire`] first.
    pub fn add(&mut self, key: u32, t: i64, w: i64) -> bool {
        let gap = self.gap;
        let list = self.open.entry(key).or_default();
        // The overlapping sessions are a run of the sorted list.
        let from = list.partition_point(|&(_, last)| last + gap <= t);
        let to = from + list[from..].partition_point(|&(first, _)| first < t.saturating_add(gap));
        let (mut first, mut last) = (t, t);
        if from < to {
            first = first.min(list[from].0);
            last = last.max(list[to - 1].1);
        }
        if (last + gap - 1) <= w {
            // Only a lone event can be late: open sessions end after the watermark.
            return false;
        }
        for (f, l) in list.drain(from..to) {
            self.by_fire.remove(&(l + gap - 1, key, f));
            match self.firsts.get_mut(&f) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.firsts.remove(&f);
                }
            }
        }
        list.insert(from, (first, last));
        self.by_fire.insert((last + gap - 1, key, first));
        *self.firsts.entry(first).or_insert(0) += 1;
        true
    }

    /// The watermark at which the next session fires (`i64::MAX` when none is open).
    pub fn next_fire(&self) -> i64 {
        self.by_fire.first().map_or(i64::MAX, |s| s.0)
    }

    /// The earliest first event time of an open session.
    pub fn oldest(&self) -> Option<i64> {
        self.firsts.keys().next().copied()
    }

    /// Closes and returns, in firing order, the sessions that watermark `w` fires.
    pub fn fire(&mut self, w: i64) -> Vec<Session> {
        let mut fired = Vec::new();
        while let Some(&(at, key, first)) = self.by_fire.first() {
            if at > w {
                break;
            }
            self.by_fire.pop_first();
            let list = self.open.get_mut(&key).expect("an open session has a list");
            let i = list.partition_point(|&(f, _)| f < first);
            let (_, last) = list.remove(i);
            if list.is_empty() {
                self.open.remove(&key);
            }
            match self.firsts.get_mut(&first) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.firsts.remove(&first);
                }
            }
            fired.push(Session { key, first, last });
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: u32, first: i64, last: i64) -> Session {
        Session { key, first, last }
    }

    #[test]
    fn events_closer_than_the_gap_share_a_session() {
        let mut s = Sessions::new(10);
        let w = i64::MIN;
        assert!(s.add(1, 100, w) && s.add(1, 105, w));
        assert!(s.add(1, 130, w)); // 25 after the last event: a session of its own
        assert!(s.add(2, 101, w)); // another key
        assert!(s.add(1, 120, w)); // exactly the gap before 130: not closer, apart
        assert_eq!((s.next_fire(), s.oldest()), (110, Some(100)));
        assert_eq!(
            s.fire(114),
            vec![session(2, 101, 101), session(1, 100, 105)]
        );
        assert!(s.add(1, 125, 114)); // bridges 120 and 130
        assert_eq!(s.fire(i64::MAX), vec![session(1, 120, 130)]);
        assert_eq!((s.next_fire(), s.oldest()), (i64::MAX, None));
    }

    #[test]
    fn bridging_events_merge_sessions_and_late_events_are_refused() {
        let mut s = Sessions::new(10);
        let w = i64::MIN;
        assert!(s.add(7, 0, w) && s.add(7, 30, w) && s.add(7, 15, w));
        assert!(s.add(7, 8, w)); // [8, 18) overlaps the sessions at 0 and at 15
        assert!(s.add(7, 22, w)); // [22, 32) overlaps [0, 25) and [30, 40)
        assert_eq!(s.fire(i64::MAX - 1), vec![session(7, 0, 30)]);
        // A lone event whose window ends by the watermark is late.
        assert!(!s.add(7, 100, 109));
        assert_eq!(s.next_fire(), i64::MAX);
        assert!(s.add(7, 100, 108));
    }
}
