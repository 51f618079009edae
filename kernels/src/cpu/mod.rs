//! The CPU backend: columnar pane state over dense key ids (or over the keys a pane saw,
//! where they are few among many), tight scatter-update loops, rayon across key partitions.
//!
//! A pane holds one state array per *state column* (row count, non-null count, sum, min,
//! max, moments, first, last), shared by the aggregates that need it (`sum` and `avg` of a
//! column share its sum). The row count and the sum, min and max of one float column share
//! a 32-byte row per key when a job asks for two of them or more: one cache line an event.
//! Keys are split into `2^k` partitions by their low bits; a partition owns local keys
//! `key >> k` of every array, so threads never share state.
//! Combining a window merges its panes array by array, in the order of
//! [`crate::fold_plan`], then evaluates keys that had rows. The fold of each block of panes
//! in that plan is kept while its panes are held: overlapping windows merge it instead of
//! its panes, and events that reach one of its panes later are folded into it key by key.
//!
//! A *sparse* pane (see [`SparsePanes`]) indexes its arrays by a slot per key it saw; the
//! same kernels update it through the slots, and merges visit its keys in key order. A
//! window of sparse panes is combined a slice of the key ids at a time (`Keys::Range`), so
//! its accumulator covers the slice only.
//!
//! Submodules: `state` (the state arrays), `update` (the scatter-update of events),
//! `combine` (merging panes into windows, evaluating them), `codec` (state batches).

mod codec;
mod combine;
mod state;
mod update;

use std::collections::BTreeMap;
use std::ops::Range;

use crate::agg::{AggFn, AggSpec, Domain};
use arrow::array::RecordBatch;

use crate::events::{Events, WindowRows};
use crate::{Backend, Keys};
use combine::Eval;
use state::{Op, Part, StateCol};
use update::{RUN_MIN_ROWS, Sel, group_by_pane};

pub(crate) use codec::{Gather, layout, read_state_batch, state_batch};
pub(crate) use state::{Op as StateOp, StateCol as StateColumn};
pub use state::{SPARSE_MIN_KEYS, SparsePanes};
pub use update::prefetch;

/// Local key ids a window combines at a time where its panes are sparse (per partition).
const KEY_SLICE: u32 = 1 << 16;

/// The CPU backend. See the module docs.
pub struct CpuBackend {
    layout: Vec<StateCol>,
    evals: Vec<Eval>,
    shift: u32,
    panes: BTreeMap<i64, Vec<Part>>,
    /// Evicted panes, reused for new ones (no fresh pages to fault in).
    pool: Vec<Vec<Part>>,
    /// The window being combined, one state per partition, reused between windows.
    window: Vec<Part>,
    /// The folds of blocks of panes (see [`crate::fold_plan`]) that overlapping windows
    /// share, by pane range; patched when one of their panes changes, dropped when one
    /// is evicted, spilled or replaced.
    blocks: BTreeMap<(i64, i64), Vec<Part>>,
    /// Per-partition row lists, reused between updates.
    scratch: Vec<Vec<u32>>,
    /// Rows of the last window emitted: the next one's lists are sized for about as many
    /// (a window of a million keys would otherwise regrow them from empty).
    last_rows: usize,
    /// The block length of [`crate::fold_plan`].
    fold_block: i64,
    /// Which panes are sparse.
    sparse: SparsePanes,
    /// Local key ids a window of sparse panes combines at a time.
    key_slice: u32,
    /// Per-partition slots of the rows of an update of sparse panes, reused.
    slots: Vec<Vec<u32>>,
}

impl CpuBackend {
    /// A backend for these aggregates with `threads` worker threads (rayon's pool);
    /// keys are split into the next power of two of partitions.
    pub fn new(aggs: &[AggSpec], threads: usize) -> Self {
        // Sum, min and max of the first float column asked for at least two of them live
        // in the row count's array, beside the count: one cache line per event for all
        // four. (One of them alone keeps an array of its own: half the memory.)
        let asked =
            |c: usize, f: &[AggFn]| aggs.iter().any(|a| a.column == c && f.contains(&a.func));
        let groups: [&[AggFn]; 3] = [&[AggFn::Sum, AggFn::Avg], &[AggFn::Min], &[AggFn::Max]];
        let in_rows = aggs
            .iter()
            .find(|a| {
                a.domain == Domain::F64 && groups.iter().filter(|f| asked(a.column, f)).count() >= 2
            })
            .map(|a| a.column);
        let mut layout = vec![in_rows.map_or(StateCol::Rows, StateCol::RowStats)];
        let mut slot = |c: StateCol| match layout.iter().position(|&l| l == c) {
            Some(i) => i,
            None => {
                layout.push(c);
                layout.len() - 1
            }
        };
        let evals = aggs
            .iter()
            .map(|a| {
                let (c, d) = (a.column, a.domain);
                let (count, state) = match a.func {
                    AggFn::CountRows => (0, None),
                    AggFn::Count => (slot(StateCol::NonNull(c)), None),
                    AggFn::Sum | AggFn::Avg | AggFn::Min | AggFn::Max if in_rows == Some(c) => {
                        (slot(StateCol::NonNull(c)), Some(0))
                    }
                    AggFn::Sum | AggFn::Avg => (
                        slot(StateCol::NonNull(c)),
                        Some(slot(StateCol::Typed(Op::Sum, c, d))),
                    ),
                    AggFn::Min => (
                        slot(StateCol::NonNull(c)),
                        Some(slot(StateCol::Typed(Op::Min, c, d))),
                    ),
                    AggFn::Max => (
                        slot(StateCol::NonNull(c)),
                        Some(slot(StateCol::Typed(Op::Max, c, d))),
                    ),
                    AggFn::First => (0, Some(slot(StateCol::Typed(Op::First, c, d)))),
                    AggFn::Last => (0, Some(slot(StateCol::Typed(Op::Last, c, d)))),
                    AggFn::VarSamp | AggFn::VarPop | AggFn::StddevSamp | AggFn::StddevPop => {
                        (0, Some(slot(StateCol::Moments(c))))
                    }
                    AggFn::ApproxCountDistinct => (0, Some(slot(StateCol::Distinct(c)))),
                };
                Eval {
                    func: a.func,
                    out: a.output(),
                    count,
                    state,
                }
            })
            .collect();
        let parts = threads.max(1).next_power_of_two();
        CpuBackend {
            window: vec![Part::new(&layout); parts],
            layout,
            evals,
            shift: parts.trailing_zeros(),
            panes: BTreeMap::new(),
            blocks: BTreeMap::new(),
            pool: Vec::new(),
            scratch: vec![Vec::new(); parts],
            last_rows: 0,
            fold_block: 1,
            sparse: SparsePanes::default(),
            key_slice: KEY_SLICE,
            slots: Vec::new(),
        }
    }

    /// Which panes keep sparse state from now on (the default: [`SparsePanes::default`]).
    pub fn with_sparse_panes(mut self, sparse: SparsePanes) -> Self {
        self.sparse = sparse;
        self
    }

    /// Combines windows of sparse panes `keys` key ids of each partition at a time (the
    /// default: 65 536; small slices are for tests).
    pub fn with_key_slice(mut self, keys: u32) -> Self {
        self.key_slice = keys.max(1);
        self
    }

    fn parts(&self) -> usize {
        1 << self.shift
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// Also forgets the block folds kept so far, which were of other blocks.
    fn set_fold_block(&mut self, block: i64) {
        self.fold_block = block;
        self.blocks.clear();
    }

    fn update(&mut self, ev: &Events<'_>) -> crate::Result<()> {
        if ev.is_empty() {
            return Ok(());
        }
        let keys = ev
            .keys
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &k| (lo.min(k), hi.max(k)));
        // Most segments are one run of a pane, or a long run broken by a few stragglers
        // (events late for a window that fired, on time for later ones): each run is
        // updated whole. Panes that interleave finely are grouped instead.
        let runs = ev.panes.chunk_by(|a, b| a == b).count();
        if runs == 1 || runs * RUN_MIN_ROWS <= ev.len() {
            let mut start = 0;
            for run in ev.panes.chunk_by(|a, b| a == b) {
                let range = start..start + run.len();
                let columns = ev.columns_in(range.clone());
                let ev = ev.slice(range.clone(), &columns);
                self.update_pane(run[0], &ev, Sel::All(run.len()), keys);
                start = range.end;
            }
            return Ok(());
        }
        for (pane, rows) in group_by_pane(ev.panes) {
            self.update_pane(pane, ev, Sel::Rows(&rows), keys);
        }
        Ok(())
    }

    /// Windows of sparse panes (many keys, few in each pane) combine a slice of the keys
    /// at a time: the window's state is then a row per key of the slice, not of all keys.
    fn key_slice(&self) -> Option<u32> {
        let sparse = self.panes.values().flatten().any(|p| p.slots.is_some());
        sparse.then_some(self.key_slice << self.shift)
    }

    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> crate::Result<WindowRows> {
        self.combine_spilled(panes, keys, &[], &mut |_| {
            unreachable!("no pane is spilled")
        })
    }

    /// Merges the window's panes one at a time in the order of [`crate::fold_plan`],
    /// reading each spilled pane back only while it is merged: a window needs one pane of
    /// memory beyond what is held, and one more for a block. A block's fold is kept for the
    /// next windows when all its panes are held.
    fn combine_spilled(
        &mut self,
        panes: Range<i64>,
        keys: Keys<'_>,
        spilled: &[i64],
        load: &mut dyn FnMut(i64) -> crate::Result<RecordBatch>,
    ) -> crate::Result<WindowRows> {
        self.combine_window(panes, keys, spilled, load)
    }

    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> crate::Result<()> {
        self.forget_blocks(panes.clone());
        let mask = (self.parts() - 1) as u32;
        let (p, i) = ((key & mask) as usize, (key >> self.shift) as usize);
        for (_, parts) in self.panes.range_mut(panes) {
            parts[p].clear_key(i);
        }
        Ok(())
    }

    fn evict_before(&mut self, pane: i64) {
        let kept = self.panes.split_off(&pane);
        let evicted = std::mem::replace(&mut self.panes, kept);
        let kept = self.blocks.split_off(&(pane, i64::MIN));
        let blocks = std::mem::replace(&mut self.blocks, kept);
        // Keep a few for reuse; a pane is a few arrays of the key count.
        self.pool.extend(
            evicted
                .into_values()
                .chain(blocks.into_values())
                .take(4usize.saturating_sub(self.pool.len())),
        );
    }

    /// Pane state, plus the window state that combines reuse, the block folds and the pool
    /// of evicted panes.
    fn state_bytes(&self) -> usize {
        self.panes
            .values()
            .chain(self.blocks.values())
            .chain(&self.pool)
            .flatten()
            .chain(&self.window)
            .map(Part::bytes)
            .sum()
    }

    fn panes(&self) -> Vec<i64> {
        self.panes.keys().copied().collect()
    }

    fn export_pane(&mut self, pane: i64) -> crate::Result<Option<RecordBatch>> {
        self.pane_batch(pane)
    }

    fn import_pane(&mut self, pane: i64, batch: &RecordBatch) -> crate::Result<()> {
        let parts = self.parts_from(batch)?;
        self.forget_blocks(pane..pane + 1);
        self.panes.insert(pane, parts);
        Ok(())
    }

    /// The merged pane is dense: partial states are small (a job without keys has one).
    fn merge_pane(&mut self, pane: i64, batch: &RecordBatch) -> crate::Result<()> {
        let src = self.parts_from(batch)?;
        self.forget_blocks(pane..pane + 1);
        let Some(held) = self.panes.remove(&pane) else {
            self.panes.insert(pane, src);
            return Ok(());
        };
        let merged = (held.into_iter().zip(src))
            .map(|(held, src)| {
                let mut part = Part::new(&self.layout);
                for mut from in [held, src] {
                    from.refresh_present();
                    part.merge_keys_of(&from, 0..usize::MAX);
                }
                part
            })
            .collect();
        self.panes.insert(pane, merged);
        Ok(())
    }

    /// Frees a pane, the block folds that hold it and the pool of evicted panes: panes are
    /// dropped to save memory.
    fn drop_pane(&mut self, pane: i64) {
        self.panes.remove(&pane);
        self.forget_blocks(pane..pane + 1);
        self.pool.clear();
    }
}
