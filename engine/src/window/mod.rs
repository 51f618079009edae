//! Window geometry: which pane an event falls in, which windows a pane belongs to, and
//! where each window starts and ends.
//!
//! Hop windows (tumbling: slide = size): window `k` is `[k·slide + offset, k·slide + offset
//! + size)`. Panes have length `gcd(size, slide)`; pane `j` is `[j·pane + offset, (j+1)·pane
//! + offset)`, so window `k` is panes `k·s .. k·s + z` with `s = slide/pane`, `z = size/pane`.
//!
//! Cumulate windows (Flink's `CUMULATE(step, size)`): every `size` from `offset`, windows
//! start together and grow by `step`: `[b·size + offset, b·size + offset + i·step)` for
//! `i = 1 ..= n`, `n = size/step`. Panes are `step` long, and window `k = b·n + i − 1` is
//! panes `b·n .. k + 1`.
//!
//! Either way, window ids increase with the window end, and `end(k)` is linear in `k`.

pub(crate) mod session;

use std::ops::{Range, RangeInclusive};

/// The geometry of tumbling, hop or cumulate windows, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    size: i64,
    slide: i64,
    offset: i64,
    pane: i64,
    /// Cumulate windows: windows per period of `size` (their `slide` is the step).
    cumulate: Option<i64>,
    /// Session windows: panes are the gap long; the geometry lives in `session::Sessions`.
    session: bool,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WindowSpec {
    /// Hop windows of `size` every `slide`, shifted by `offset` (tumbling: slide = size).
    pub fn new(size: i64, slide: i64, offset: i64) -> Result<WindowSpec, String> {
        if size <= 0 || slide <= 0 {
            return Err(format!(
                "size and slide must be positive (got size {size} ms, slide {slide} ms)"
            ));
        }
        if slide > size {
            return Err(format!(
                "slide ({slide} ms) is longer than size ({size} ms): events between windows would belong to none"
            ));
        }
        Ok(WindowSpec {
            size,
            slide,
            offset: offset.rem_euclid(slide),
            pane: gcd(size, slide),
            cumulate: None,
            session: false,
        })
    }

    /// Cumulate windows: every `size` from `offset`, windows that end every `step`.
    pub fn cumulate(step: i64, size: i64, offset: i64) -> Result<WindowSpec, String> {
        if size <= 0 || step <= 0 {
            return Err(format!(
                "size and step must be positive (got size {size} ms, step {step} ms)"
            ));
        }
        if size % step != 0 {
            return Err(format!(
                "size ({size} ms) must be a whole number of steps ({step} ms)"
            ));
        }
        Ok(WindowSpec {
            size,
            slide: step,
            offset: offset.rem_euclid(size),
            pane: step,
            cumulate: Some(size / step),
            session: false,
        })
    }

    /// Session windows with `gap`: per key, events closer than `gap` share a session.
    pub fn session(gap: i64) -> Result<WindowSpec, String> {
        if gap <= 0 {
            return Err(format!("gap must be positive (got {gap} ms)"));
        }
        Ok(WindowSpec {
            size: gap,
            slide: gap,
            offset: 0,
            pane: gap,
            cumulate: None,
            session: true,
        })
    }

    /// The gap of session windows; `None` for the others.
    pub fn session_gap(&self) -> Option<i64> {
        self.session.then_some(self.pane)
    }

    /// The panes of the longest window (a session: 1, its panes vary).
    pub fn panes_per_window(&self) -> i64 {
        if self.session {
            1
        } else {
            self.size / self.pane
        }
    }

    /// Pane length in ms.
    pub fn pane_len(&self) -> i64 {
        self.pane
    }

    /// The pane that holds event time `ts`.
    #[inline]
    pub fn pane_of(&self, ts: i64) -> i64 {
        (ts - self.offset).div_euclid(self.pane)
    }

    /// Appends the pane of each of `ts` to `out`. Consecutive events mostly share a pane,
    /// so only an event outside the last one's pane costs a division.
    pub fn panes_of(&self, ts: &[i64], out: &mut Vec<i64>) {
        // The last pane's first and last ms, and its number (at first: no ms).
        let mut last = (i64::MAX, i64::MIN, 0);
        out.extend(ts.iter().map(|&t| {
            if t < last.0 || t > last.1 {
                let j = self.pane_of(t);
                let first = j
                    .checked_mul(self.pane)
                    .and_then(|s| s.checked_add(self.offset));
                let end = first.and_then(|f| f.checked_add(self.pane - 1));
                last = match (first, end) {
                    (Some(first), Some(end)) => (first, end, j),
                    _ => (t, t, j),
                };
            }
            last.2
        }));
    }

    /// The windows that contain pane `j`, in order.
    #[inline]
    pub fn windows_of_pane(&self, j: i64) -> RangeInclusive<i64> {
        if let Some(n) = self.cumulate {
            return j..=j.div_euclid(n) * n + n - 1;
        }
        let (s, z) = (self.slide / self.pane, self.size / self.pane);
        (j - z + 1).div_euclid(s) + i64::from((j - z + 1).rem_euclid(s) != 0)..=j.div_euclid(s)
    }

    /// The last window that contains pane `j`.
    #[inline]
    pub fn last_window_of_pane(&self, j: i64) -> i64 {
        match self.cumulate {
            Some(n) => j.div_euclid(n) * n + n - 1,
            None => j.div_euclid(self.slide / self.pane),
        }
    }

    /// The panes of window `k`.
    pub fn panes_of_window(&self, k: i64) -> Range<i64> {
        if let Some(n) = self.cumulate {
            return k.div_euclid(n).saturating_mul(n)..k.saturating_add(1);
        }
        let (s, z) = (self.slide / self.pane, self.size / self.pane);
        let first = k.saturating_mul(s);
        first..first.saturating_add(z)
    }

    /// Start of window `k` (inclusive), in ms.
    pub fn start(&self, k: i64) -> i64 {
        match self.cumulate {
            Some(n) => k.div_euclid(n) * self.size + self.offset,
            None => k * self.slide + self.offset,
        }
    }

    /// End of window `k` (exclusive), in ms: `k · end_step()` plus the end of window 0.
    #[inline]
    pub fn end(&self, k: i64) -> i64 {
        k * self.end_step() + self.end_0()
    }

    /// Distance between the ends of consecutive windows.
    pub fn end_step(&self) -> i64 {
        self.slide
    }

    /// End of window 0.
    fn end_0(&self) -> i64 {
        match self.cumulate {
            Some(_) => self.slide + self.offset,
            None => self.size + self.offset,
        }
    }

    /// The first window that has not closed at watermark `watermark` when windows close
    /// `delay` ms after their last millisecond: windows `..k` have `end − 1 + delay <= W`.
    /// In i128 so that extreme watermarks cannot overflow.
    pub fn windows_closed_by(&self, watermark: i64, delay: i64) -> i128 {
        let w = i128::from(watermark) + 1 - i128::from(delay) - i128::from(self.end_0());
        w.div_euclid(i128::from(self.end_step())) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_of_a_run_of_events_are_each_events_pane() {
        let mut x = 11u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as i64
        };
        for w in [
            WindowSpec::new(60_000, 60_000, 0).unwrap(),
            WindowSpec::new(15, 6, 4).unwrap(),
            WindowSpec::new(7, 3, -2).unwrap(),
            WindowSpec::cumulate(4, 12, 5).unwrap(),
        ] {
            // Runs in one pane, steps to the next, jumps back and far, negative times, and
            // times whose pane's bounds do not fit in an i64.
            let mut ts: Vec<i64> = (0..2_000).map(|_| next() % 200 - 100).collect();
            ts.sort_unstable_by_key(|&t| t / 20);
            ts.extend([0, 0, 1, -1, 1 << 40, -(1 << 40), i64::MAX - 1, i64::MAX, 0]);
            ts.extend([i64::MIN / 2, i64::MIN / 2 + 1, i64::MAX / 2, 3]);
            let mut got = vec![7];
            w.panes_of(&ts, &mut got);
            let want: Vec<i64> = std::iter::once(7)
                .chain(ts.iter().map(|&t| w.pane_of(t)))
                .collect();
            assert_eq!(got, want, "{w:?}");
        }
    }

    #[test]
    fn panes_and_windows_agree_with_the_definition() {
        let hop = [
            (10, 10, 0),
            (15, 5, 0),
            (15, 6, 4),
            (7, 3, -2),
            (60_000, 60_000, 1000),
        ]
        .map(|(size, slide, offset)| (size, slide, offset, false));
        let cumulate = [(12, 3, 0), (12, 4, 5), (5, 5, -1), (9, 1, 2)]
            .map(|(size, step, offset)| (size, step, offset, true));
        for (size, slide, offset, cumulative) in hop.into_iter().chain(cumulate) {
            let w = match cumulative {
                false => WindowSpec::new(size, slide, offset).unwrap(),
                true => WindowSpec::cumulate(slide, size, offset).unwrap(),
            };
            for ts in -50..50 {
                let j = w.pane_of(ts);
                // Brute force: every window k with start <= ts < end.
                let want: Vec<i64> = (-100..100)
                    .filter(|&k| w.start(k) <= ts && ts < w.end(k))
                    .collect();
                let got: Vec<i64> = w.windows_of_pane(j).collect();
                assert_eq!(got.last(), Some(&w.last_window_of_pane(j)));
                assert_eq!(
                    want, got,
                    "size {size} slide {slide} offset {offset} ts {ts}"
                );
                for k in got {
                    let panes = w.panes_of_window(k);
                    assert!(panes.contains(&j));
                    // A window's panes cover exactly [start, end).
                    assert_eq!(panes.start * w.pane_len() + w.offset, w.start(k));
                    assert_eq!(panes.end * w.pane_len() + w.offset, w.end(k));
                }
            }
        }
    }

    #[test]
    fn closed_windows_count_is_exact() {
        for w in [
            WindowSpec::new(15, 5, 0).unwrap(),
            WindowSpec::cumulate(5, 15, 2).unwrap(),
        ] {
            closed_windows_count_is_exact_for(w);
        }
    }

    fn closed_windows_count_is_exact_for(w: WindowSpec) {
        for wm in -40..40 {
            let n = w.windows_closed_by(wm, 3);
            assert!(
                w.end(n as i64 - 1) - 1 + 3 <= wm && w.end(n as i64) - 1 + 3 > wm,
                "wm {wm}"
            );
        }
        assert!(w.windows_closed_by(i64::MIN, 0) < -(1 << 50));
        assert!(w.windows_closed_by(i64::MAX, 0) > 1 << 50);
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(WindowSpec::new(0, 1, 0).is_err());
        assert!(
            WindowSpec::new(10, 20, 0)
                .unwrap_err()
                .contains("longer than size")
        );
        assert!(
            WindowSpec::cumulate(4, 10, 0)
                .unwrap_err()
                .contains("whole number of steps")
        );
    }
}
