//! Watermarks: bounded out-of-orderness per source partition, the job watermark as the
//! minimum over partitions that are not idle, computed per event so that which events are
//! late never depends on how the stream is cut into batches.

use std::time::{Duration, Instant};

/// A watermark: an event time, or "this input is idle".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// All events with time ≤ t are believed to have arrived.
    EventTime(i64),
    /// The input has produced nothing for the idle timeout and holds nothing back.
    Idle,
}

#[derive(Clone, Debug)]
struct Partition {
    /// Largest event time seen, `None` before the first event.
    max_ts: Option<i64>,
    last_data: Instant,
    finished: bool,
}

/// Tracks per-partition watermarks and the job watermark. See the module docs.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    bound: i64,
    idle_timeout: Duration,
    partitions: Vec<Partition>,
    current: i64,
}

impl WatermarkTracker {
    /// A tracker for `partitions` inputs with the given out-of-orderness bound (ms).
    pub fn new(partitions: usize, bound: i64, idle_timeout: Duration, now: Instant) -> Self {
        let p = Partition {
            max_ts: None,
            last_data: now,
            finished: false,
        };
        WatermarkTracker {
            bound,
            idle_timeout,
            partitions: vec![p; partitions.max(1)],
            current: i64::MIN,
        }
    }

    /// The number of source partitions.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The job watermark: never goes back; `i64::MIN` before any.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// A partition's own watermark at `now`.
    pub fn partition(&self, p: usize, now: Instant) -> Watermark {
        let part = &self.partitions[p];
        if part.finished {
            Watermark::EventTime(i64::MAX)
        } else if now.duration_since(part.last_data) >= self.idle_timeout {
            Watermark::Idle
        } else {
            Watermark::EventTime(part.max_ts.map_or(i64::MIN, |t| t - self.bound - 1))
        }
    }

    /// Feeds the event times of a batch from partition `p`, arriving at `now`, and writes
    /// the watermark each event meets (computed from the events before it) into `met`.
    pub fn observe(&mut self, p: usize, ts: &[i64], now: Instant, met: &mut Vec<i64>) {
        // The other partitions do not move during this batch.
        let others = (0..self.partitions.len())
            .filter(|&q| q != p)
            .filter_map(|q| match self.partition(q, now) {
                Watermark::EventTime(t) => Some(t),
                Watermark::Idle => None,
            })
            .min()
            .unwrap_or(i64::MAX);
        let part = &mut self.partitions[p];
        part.last_data = now;
        // The partition's watermark only rises, so the job's is the larger of where it
        // stood and the partition's capped by the others': one running maximum a row.
        let (bound, before) = (self.bound, self.current);
        let mut max = part.max_ts.unwrap_or(i64::MIN);
        let met_at = |max: i64| before.max(max.saturating_sub(bound + 1).min(others));
        met.clear();
        met.resize(ts.len(), 0);
        for (m, &t) in met.iter_mut().zip(ts) {
            *m = met_at(max);
            max = max.max(t);
        }
        if !ts.is_empty() {
            part.max_ts = Some(max);
        }
        self.current = met_at(max);
    }

    /// Re-evaluates the job watermark at `now` (idle partitions stop holding it back).
    pub fn advance(&mut self, now: Instant) -> i64 {
        let min = (0..self.partitions.len())
            .filter_map(|q| match self.partition(q, now) {
                Watermark::EventTime(t) => Some(t),
                Watermark::Idle => None,
            })
            .min();
        if let Some(min) = min {
            self.current = self.current.max(min);
        }
        self.current
    }

    /// Per partition: the largest event time seen and whether it finished (checkpoints).
    pub fn state(&self) -> Vec<(Option<i64>, bool)> {
        self.partitions
            .iter()
            .map(|p| (p.max_ts, p.finished))
            .collect()
    }

    /// Restores what [`WatermarkTracker::state`] and [`WatermarkTracker::current`] gave;
    /// the partitions count as active from `now`.
    pub fn restore(
        &mut self,
        state: &[(Option<i64>, bool)],
        current: i64,
        now: Instant,
    ) -> Result<(), String> {
        if state.len() != self.partitions.len() {
            return Err(format!(
                "the checkpoint has {} source partitions, the job now {}",
                state.len(),
                self.partitions.len()
            ));
        }
        for (p, &(max_ts, finished)) in self.partitions.iter_mut().zip(state) {
            *p = Partition {
                max_ts,
                last_data: now,
                finished,
            };
        }
        self.current = current;
        Ok(())
    }

    /// Marks partition `p` as exhausted: it holds nothing back any more.
    pub fn finish(&mut self, p: usize, now: Instant) -> i64 {
        self.partitions[p].finished = true;
        self.advance(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_event_watermark_is_a_prefix_maximum() {
        let now = Instant::now();
        let mut t = WatermarkTracker::new(1, 5, Duration::from_secs(30), now);
        let mut met = Vec::new();
        t.observe(0, &[100, 90, 120, 110], now, &mut met);
        assert_eq!(met, vec![i64::MIN, 94, 94, 114]);
        assert_eq!(t.current(), 114);
        t.observe(0, &[50], now, &mut met);
        assert_eq!(
            (met[0], t.current()),
            (114, 114),
            "watermarks never go back"
        );
    }

    /// On random out-of-order batches from three partitions, each event meets the
    /// watermark of a step-by-step model: the job's, raised after each event by the
    /// partition's own (up to the others').
    #[test]
    fn per_event_watermarks_match_a_step_by_step_model() {
        let now = Instant::now();
        let bound = 7;
        let mut t = WatermarkTracker::new(3, bound, Duration::from_secs(30), now);
        let (mut largest, mut current) = ([i64::MIN; 3], i64::MIN);
        let (mut x, mut met) = (1u64, Vec::new());
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for step in 0..300 {
            let p = next(3) as usize;
            let ts: Vec<i64> = (0..next(20))
                .map(|_| (step * 10 + next(50)) as i64)
                .collect();
            t.observe(p, &ts, now, &mut met);
            let own_of = |l: i64| if l == i64::MIN { l } else { l - bound - 1 };
            let others = (0..3).filter(|&q| q != p).map(|q| own_of(largest[q])).min();
            let others = others.unwrap_or(i64::MAX);
            let mut want = Vec::new();
            for &e in &ts {
                want.push(current);
                largest[p] = largest[p].max(e);
                current = current.max(own_of(largest[p]).min(others));
            }
            assert_eq!(met, want, "step {step}");
            assert_eq!(t.current(), current, "step {step}");
        }
        assert!(current > 2000, "the watermark moved: {current}");
    }

    #[test]
    fn slowest_partition_holds_the_watermark_until_idle() {
        let start = Instant::now();
        let mut t = WatermarkTracker::new(2, 0, Duration::from_secs(30), start);
        let mut met = Vec::new();
        t.observe(0, &[1000, 2000], start, &mut met);
        assert_eq!(
            t.current(),
            i64::MIN,
            "partition 1 has produced nothing yet"
        );
        t.observe(1, &[500], start, &mut met);
        assert_eq!(met, vec![i64::MIN]);
        assert_eq!(t.current(), 499);
        // Partition 1 goes quiet: after the idle timeout partition 0 alone sets the pace.
        let later = start + Duration::from_secs(31);
        t.observe(0, &[3000], later, &mut met);
        assert_eq!(met, vec![1999]);
        assert_eq!(t.current(), 2999);
        assert_eq!(t.partition(1, later), Watermark::Idle);
        // It produces again: no longer idle, but the watermark does not go back.
        t.observe(1, &[600], later, &mut met);
        assert_eq!((met[0], t.current()), (2999, 2999));
        assert_eq!(t.finish(1, later), 2999);
    }
}
