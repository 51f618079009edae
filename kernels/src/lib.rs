//! panes-kernels: the data plane of panes.
//!
//! Kernels aggregate events that the engine has already assigned to a dense key id and a
//! pane, into per-pane columnar state, and combine a window's panes per key into result
//! columns. They know arrays and pane state only: no watermarks, files or Kafka.
//!
//! Three backends implement [`Backend`]: [`ReferenceBackend`], scalar and obviously correct
//! (the oracle); [`CpuBackend`], dense columnar state and rayon across key partitions; and
//! [`GpuBackend`], pane state resident on a GPU, WGSL kernels through wgpu.

pub mod agg;
pub mod cpu;
pub mod distinct;
pub mod error;
pub mod events;
pub mod gpu;
pub mod reference;
mod state;

pub use agg::{AggFn, AggSpec, Domain, OutType};
pub use cpu::{CpuBackend, SparsePanes};
pub use error::{Error, Result};
pub use events::{Column, Events, OutColumn, Values, WindowRows, rank_f64, rank_i64};
pub use gpu::{GpuBackend, GpuOptions, Profile};
pub use reference::ReferenceBackend;

use std::ops::Range;

use arrow::record_batch::RecordBatch;

/// Which keys a window combine reports.
#[derive(Clone, Copy, Debug)]
pub enum Keys<'a> {
    /// Every key with at least one event in the window's panes.
    All,
    /// Only these keys (ascending), for re-fired windows; keys without events are skipped.
    Only(&'a [u32]),
    /// Every key id in `start..end` with at least one event: one slice of a window whose
    /// rows are combined and emitted a slice at a time (see [`Backend::key_slice`]).
    Range {
        /// The first key id.
        start: u32,
        /// Past the last key id.
        end: u32,
    },
}

impl Keys<'_> {
    /// Whether key id `k` is one of these (where it has events).
    pub fn contains(&self, k: u32) -> bool {
        match *self {
            Keys::All => true,
            Keys::Only(only) => only.binary_search(&k).is_ok(),
            Keys::Range { start, end } => (start..end).contains(&k),
        }
    }
}

/// The order in which every backend folds a window's panes, as consecutive ranges: left to
/// right, except that each aligned block of `block` panes (those `j` with the same
/// `j.div_euclid(block)`) lying wholly inside the window is folded on its own first, then
/// into the window. Float sums depend on the order of their additions, and every backend
/// follows this plan, so their results agree to the bit. A `block` of 1 folds pane by pane.
///
/// Overlapping windows share their blocks, so a backend that keeps each block's fold
/// merges about `n / block + block` states per window of `n` panes instead of `n`.
pub fn fold_plan(panes: Range<i64>, block: i64) -> Vec<Range<i64>> {
    let block = block.max(1);
    let mut plan = Vec::new();
    let mut j = panes.start;
    while j < panes.end {
        let step = if j.rem_euclid(block) == 0 && panes.end - j >= block {
            block
        } else {
            1
        };
        plan.push(j..j + step);
        j += step;
    }
    plan
}

/// The block length of [`fold_plan`] for a job whose windows span up to `panes` panes:
/// about its square root, which minimizes the merges per window, and no blocks for
/// windows under 8 panes (where they would save little and cost a state each).
pub fn fold_block(panes: i64) -> i64 {
    if panes < 8 {
        1
    } else {
        (panes as f64).sqrt().round() as i64
    }
}

/// A data-plane backend: pane state plus the kernels that update and combine it.
///
/// The engine guarantees that events reach `update` in stream order and that a pane is
/// never updated after `evict_before` passed it.
pub trait Backend: Send {
    /// The backend's name as `--backend` spells it.
    fn name(&self) -> &'static str;
    /// The backend as a run summary shows it (the GPU adds its adapter).
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Aggregates a segment of events into the state of their panes.
    fn update(&mut self, events: &Events<'_>) -> Result<()>;
    /// Folds windows in blocks of `block` panes from now on (see [`fold_plan`]; 1, the
    /// default, folds pane by pane). Every backend of a job must be given the same length
    /// for their results to agree to the bit.
    fn set_fold_block(&mut self, block: i64);
    /// How many key ids a window's combine should take at a time, where its panes hold so
    /// many keys that combining them all at once would hold a row per key for the whole
    /// window; `None` (the default): combine every key at once.
    fn key_slice(&self) -> Option<u32> {
        None
    }
    /// Combines panes `panes` per key into one row per key with data, keys ascending,
    /// folding them in the order of [`fold_plan`].
    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<WindowRows>;
    /// Frees the state of every pane before `pane`.
    fn evict_before(&mut self, pane: i64);
    /// Empties the state of one key in panes `panes` (a session that ended).
    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> Result<()>;
    /// Bytes of state currently held.
    fn state_bytes(&self) -> usize;
    /// Seconds spent per stage so far, where the backend keeps a profile (the GPU's, with
    /// `GpuOptions::profile`); empty otherwise.
    fn profile(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
    /// Whether float sums and moments equal the reference's bit for bit (they add in the
    /// same order); otherwise each stays within 1e-9 of it, relative to the larger.
    fn exact_floats(&self) -> bool {
        true
    }
    /// The panes that hold state, ascending.
    fn panes(&self) -> Vec<i64>;
    /// The state of pane `pane` as an Arrow batch of partial state in this backend's own
    /// layout (for checkpoints and spill); `None` when the pane holds nothing.
    fn export_pane(&mut self, pane: i64) -> Result<Option<RecordBatch>>;
    /// Sets pane `pane` to a state that [`Backend::export_pane`] of the same backend and
    /// aggregates wrote, replacing what it held.
    fn import_pane(&mut self, pane: i64, state: &RecordBatch) -> Result<()>;
    /// Adds a state that [`Backend::export_pane`] of a backend like this one wrote to pane
    /// `pane`, merged with what the pane holds as if its events had come after the pane's
    /// own: partial states of one pane, aggregated on several shards, become one.
    fn merge_pane(&mut self, _pane: i64, _state: &RecordBatch) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.name(),
            what: "merging partial pane state (jobs without keys on several threads)".into(),
        })
    }
    /// Frees the state of one pane (after it was exported to a spill file).
    fn drop_pane(&mut self, pane: i64);
    /// Like [`Backend::combine`], where panes `spilled` (ascending) are not held but read
    /// back with `load` (as [`Backend::export_pane`] wrote them) and freed again. This
    /// default holds them all at once; the CPU backend reads one at a time.
    fn combine_spilled(
        &mut self,
        panes: Range<i64>,
        keys: Keys<'_>,
        spilled: &[i64],
        load: &mut dyn FnMut(i64) -> Result<RecordBatch>,
    ) -> Result<WindowRows> {
        let spilled: Vec<i64> = spilled
            .iter()
            .copied()
            .filter(|j| panes.contains(j))
            .collect();
        for &j in &spilled {
            let state = load(j)?;
            self.import_pane(j, &state)?;
        }
        let rows = self.combine(panes, keys);
        spilled.iter().for_each(|&j| self.drop_pane(j));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::{fold_block, fold_plan};

    #[test]
    fn a_plan_covers_the_window_with_its_aligned_blocks() {
        // 15 panes: blocks of 4, aligned to multiples of 4.
        assert_eq!(fold_block(15), 4);
        assert_eq!(
            fold_plan(1..16, 4),
            vec![1..2, 2..3, 3..4, 4..8, 8..12, 12..16]
        );
        assert_eq!(fold_plan(-8..7, 4)[..3], [-8..-4, -4..0, 0..4]);
        // Blocks of 1, and windows shorter than a block, fold pane by pane; an empty range
        // folds nothing.
        let singles = |r: std::ops::Range<i64>| r.map(|j| j..j + 1).collect::<Vec<_>>();
        assert_eq!(fold_plan(5..10, 1), singles(5..10));
        assert_eq!(fold_plan(5..8, 4), singles(5..8));
        assert_eq!(fold_block(7), 1);
        assert!(fold_plan(3..3, 4).is_empty());
        for block in 1..9 {
            for start in -20..20 {
                for n in 0..70 {
                    let plan = fold_plan(start..start + n, block);
                    let covered: Vec<i64> = plan.iter().cloned().flatten().collect();
                    assert_eq!(covered, (start..start + n).collect::<Vec<_>>());
                    assert!(plan.iter().all(|r| r.end - r.start == 1
                        || (r.end - r.start == block && r.start.rem_euclid(block) == 0)));
                }
            }
        }
    }
}
