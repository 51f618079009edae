//! Window geometry: which pane an event falls in, which windows a pane belongs to, and
//! where each window starts and ends. Tumbling windows are hop windows with slide = size.
//!
//! Window `k` is `[k·slide + offset, k·slide + offset + size)`. Panes have length
//! `gcd(size, slide)`; pane `j` is `[j·pane + offset, (j+1)·pane + offset)`, so window `k`
//! is panes `k·s .. k·s + z` with `s = slide/pane`, `z = size/pane`.

use std::ops::{Range, RangeInclusive};

/// The geometry of tumbling or hop windows, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    size: i64,
    slide: i64,
    offset: i64,
    pane: i64,
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
        let offset = offset.rem_euclid(slide);
        Ok(WindowSpec {
            size,
            slide,
            offset,
            pane: gcd(size, slide),
        })
    }

    /// Window length in ms.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// Distance between window starts in ms.
    pub fn slide(&self) -> i64 {
        self.slide
    }

    /// Pane length in ms.
    pub fn pane_len(&self) -> i64 {
        self.pane
    }

    /// Panes per window.
    pub fn panes_per_window(&self) -> i64 {
        self.size / self.pane
    }

    /// The pane an event time falls in.
    #[inline]
    pub fn pane_of(&self, ts: i64) -> i64 {
        (ts - self.offset).div_euclid(self.pane)
    }

    /// The windows that contain pane `j`, as window indices.
    #[inline]
    pub fn windows_of_pane(&self, j: i64) -> RangeInclusive<i64> {
        let (s, z) = (self.slide / self.pane, self.size / self.pane);
        (j - z + 1).div_euclid(s) + i64::from((j - z + 1).rem_euclid(s) != 0)..=j.div_euclid(s)
    }

    /// The panes window `k` is made of.
    pub fn panes_of_window(&self, k: i64) -> Range<i64> {
        let (s, z) = (self.slide / self.pane, self.size / self.pane);
        let first = k.saturating_mul(s);
        first..first.saturating_add(z)
    }

    /// Start of window `k` in ms.
    pub fn start(&self, k: i64) -> i64 {
        k * self.slide + self.offset
    }

    /// End (exclusive) of window `k` in ms.
    #[inline]
    pub fn end(&self, k: i64) -> i64 {
        k * self.slide + self.offset + self.size
    }

    /// The number of windows whose `end - 1 + delay` is at most `watermark`: windows
    /// `0..n` (counting from the epoch, negative for earlier) have fired (delay 0) or
    /// expired (delay = allowed lateness). Exact for any watermark, ±∞ included.
    pub fn windows_closed_by(&self, watermark: i64, delay: i64) -> i128 {
        // end(k) - 1 + delay <= W  <=>  k <= (W + 1 - delay - offset - size) / slide
        let w = i128::from(watermark) + 1
            - i128::from(delay)
            - i128::from(self.offset)
            - i128::from(self.size);
        w.div_euclid(i128::from(self.slide)) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panes_and_windows_agree_with_the_definition() {
        for (size, slide, offset) in [
            (10, 10, 0),
            (15, 5, 0),
            (15, 6, 4),
            (7, 3, -2),
            (60_000, 60_000, 1000),
        ] {
            let w = WindowSpec::new(size, slide, offset).unwrap();
            for ts in -50..50 {
                let j = w.pane_of(ts);
                // Brute force: every window k with start <= ts < end.
                let want: Vec<i64> = (-100..100)
                    .filter(|&k| w.start(k) <= ts && ts < w.end(k))
                    .collect();
                let got: Vec<i64> = w.windows_of_pane(j).collect();
                assert_eq!(
                    want, got,
                    "size {size} slide {slide} offset {offset} ts {ts}"
                );
                for k in got {
                    assert!(w.panes_of_window(k).contains(&j));
                }
            }
        }
    }

    #[test]
    fn closed_windows_count_is_exact() {
        let w = WindowSpec::new(15, 5, 0).unwrap();
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
    }
}
