//! Merging and evaluating: pane states folded into a window (and into the block folds that
//! overlapping windows share) in the order of [`crate::fold_plan`], then evaluated per key.

use std::borrow::Cow;
use std::ops::Range;

use rayon::prelude::*;

use super::CpuBackend;
use super::state::{Acc, Counts, Op, Part, SPARSE_RATIO, StatsRow, Typed, reuse};
use super::update::{Sel, each};
use crate::agg::{self, AggFn, OutType, Value};
use crate::events::{OutColumn, WindowRows};
use crate::{Keys, fold_plan};
use arrow::array::RecordBatch;

/// Merges a later pane's row into `d`.
#[inline(always)]
fn row_merge(d: &mut StatsRow, s: &StatsRow) {
    d.n += s.n;
    d.s[0] += s.s[0];
    d.s[1] = d.s[1].min_of(s.s[1]);
    d.s[2] = d.s[2].max_of(s.s[2]);
}

/// How an aggregate reads its state: indices into the state columns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Eval {
    pub(super) func: AggFn,
    pub(super) out: OutType,
    /// The non-null (or row) count.
    pub(super) count: usize,
    /// The typed or moments state, if any.
    pub(super) state: Option<usize>,
}

impl<T: Value> Typed<T> {
    /// Merges element `si` of a later pane's state into element `di` of this one.
    #[inline(always)]
    fn merge_at(&mut self, di: usize, src: &Typed<T>, si: usize) {
        let d = &mut self.v[di];
        let s = src.v[si];
        match self.op {
            Op::Sum => *d = d.add(s),
            Op::Min => *d = agg::min(*d, s),
            Op::Max => *d = agg::max(*d, s),
            Op::First => {
                if src.ts[si] < self.ts[di] {
                    self.ts[di] = src.ts[si];
                    *d = s;
                }
            }
            Op::Last => {
                if src.ts[si] != i64::MIN && src.ts[si] >= self.ts[di] {
                    self.ts[di] = src.ts[si];
                    *d = s;
                }
            }
        }
    }

    /// Merges a later pane at the keys `keys`.
    fn merge_keys(&mut self, src: &Typed<T>, keys: &[u32]) {
        let (d, s) = (&mut self.v[..], &src.v[..]);
        match self.op {
            Op::Sum => keys
                .iter()
                .for_each(|&i| d[i as usize] = d[i as usize].add(s[i as usize])),
            Op::Min => keys
                .iter()
                .for_each(|&i| d[i as usize] = agg::min(d[i as usize], s[i as usize])),
            Op::Max => keys
                .iter()
                .for_each(|&i| d[i as usize] = agg::max(d[i as usize], s[i as usize])),
            Op::First | Op::Last => keys
                .iter()
                .for_each(|&i| self.merge_at(i as usize, src, i as usize)),
        }
    }

    /// Merges a whole later pane, element by element (vectorizes for sum/min/max).
    fn merge_all(&mut self, src: &Typed<T>) {
        let n = src.v.len();
        match self.op {
            Op::Sum => self.v[..n]
                .iter_mut()
                .zip(&src.v)
                .for_each(|(d, &s)| *d = d.add(s)),
            Op::Min => self.v[..n]
                .iter_mut()
                .zip(&src.v)
                .for_each(|(d, &s)| *d = agg::min(*d, s)),
            Op::Max => self.v[..n]
                .iter_mut()
                .zip(&src.v)
                .for_each(|(d, &s)| *d = agg::max(*d, s)),
            Op::First | Op::Last => (0..n).for_each(|i| self.merge_at(i, src, i)),
        }
    }
}

impl Acc {
    fn merge_all(&mut self, src: &Acc) {
        match (self, src) {
            (Acc::Count(d), Acc::Count(s)) => {
                d[..s.len()].iter_mut().zip(s).for_each(|(d, s)| *d += s)
            }
            (Acc::Int(d), Acc::Int(s)) => d.merge_all(s),
            (Acc::Float(d), Acc::Float(s)) => d.merge_all(s),
            (Acc::Moments(d), Acc::Moments(s)) => {
                d[..s.len()].iter_mut().zip(s).for_each(|(d, s)| d.merge(s))
            }
            (Acc::Distinct(d), Acc::Distinct(s)) => {
                d[..s.len()].iter_mut().zip(s).for_each(|(d, s)| d.merge(s))
            }
            (Acc::Rows(d), Acc::Rows(s)) => d[..s.len()]
                .iter_mut()
                .zip(s)
                .for_each(|(d, s)| row_merge(d, s)),
            (Acc::Count(d), Acc::Rows(s)) => {
                d[..s.len()].iter_mut().zip(s).for_each(|(d, s)| *d += s.n)
            }
            (Acc::SameAsRows, Acc::SameAsRows) => {}
            _ => unreachable!("bug in panes: merging states of different layouts"),
        }
    }

    /// Merges a later pane's state at the local keys `keys`.
    fn merge_keys(&mut self, src: &Acc, keys: &[u32]) {
        match (self, src) {
            (Acc::Count(d), Acc::Count(s)) => {
                keys.iter().for_each(|&i| d[i as usize] += s[i as usize])
            }
            (Acc::Int(d), Acc::Int(s)) => d.merge_keys(s, keys),
            (Acc::Float(d), Acc::Float(s)) => d.merge_keys(s, keys),
            (Acc::Moments(d), Acc::Moments(s)) => keys
                .iter()
                .for_each(|&i| d[i as usize].merge(&s[i as usize])),
            (Acc::Distinct(d), Acc::Distinct(s)) => keys
                .iter()
                .for_each(|&i| d[i as usize].merge(&s[i as usize])),
            (Acc::Rows(d), Acc::Rows(s)) => keys
                .iter()
                .for_each(|&i| row_merge(&mut d[i as usize], &s[i as usize])),
            (Acc::Count(d), Acc::Rows(s)) => {
                keys.iter().for_each(|&i| d[i as usize] += s[i as usize].n)
            }
            (Acc::SameAsRows, Acc::SameAsRows) => {}
            _ => unreachable!("bug in panes: merging states of different layouts"),
        }
    }

    fn merge_at(&mut self, di: usize, src: &Acc, si: usize) {
        match (self, src) {
            (Acc::Count(d), Acc::Count(s)) => d[di] += s[si],
            (Acc::Int(d), Acc::Int(s)) => d.merge_at(di, s, si),
            (Acc::Float(d), Acc::Float(s)) => d.merge_at(di, s, si),
            (Acc::Moments(d), Acc::Moments(s)) => d[di].merge(&s[si]),
            (Acc::Distinct(d), Acc::Distinct(s)) => d[di].merge(&s[si]),
            (Acc::Rows(d), Acc::Rows(s)) => row_merge(&mut d[di], &s[si]),
            (Acc::Count(d), Acc::Rows(s)) => d[di] += s[si].n,
            (Acc::SameAsRows, Acc::SameAsRows) => {}
            _ => unreachable!("bug in panes: merging states of different layouts"),
        }
    }
}

impl Part {
    /// Merges a later pane at the keys it holds only (its `present` list must be current).
    fn merge_present(&mut self, src: &Part) {
        self.materialize(|i| matches!(src.accs[i], Acc::Count(_)));
        for (d, s) in self.accs.iter_mut().zip(&src.accs) {
            match (&mut *d, s) {
                (Acc::Count(_), Acc::SameAsRows) => d.merge_keys(&src.accs[0], &src.present),
                _ => d.merge_keys(s, &src.present),
            }
        }
    }

    /// Merges a later pane's whole state into this one.
    fn merge_all(&mut self, src: &Part) {
        self.materialize(|i| matches!(src.accs[i], Acc::Count(_)));
        for (d, s) in self.accs.iter_mut().zip(&src.accs) {
            match (&mut *d, s) {
                (Acc::Count(_), Acc::SameAsRows) => d.merge_all(&src.accs[0]),
                _ => d.merge_all(s),
            }
        }
    }

    /// Merges local key `si` of a later pane into local key `di` of this state.
    fn merge_key(&mut self, di: usize, src: &Part, si: usize) {
        self.materialize(|i| matches!(src.accs[i], Acc::Count(_)));
        for (d, s) in self.accs.iter_mut().zip(&src.accs) {
            match (&mut *d, s) {
                (Acc::Count(_), Acc::SameAsRows) => d.merge_at(di, &src.accs[0], si),
                _ => d.merge_at(di, s, si),
            }
        }
    }
}

/// Evaluates every aggregate at the rows `at`, each a (state, local key) pair of `parts`,
/// one output column at a time.
fn evaluate(evals: &[Eval], parts: &[Part], at: &[(usize, usize)], out: &mut [OutColumn]) {
    for (e, col) in evals.iter().zip(out.iter_mut()) {
        let counts: Vec<Counts> = parts.iter().map(|p| p.counts(e.count)).collect();
        let n = |p: usize, i: usize| counts[p].get(i);
        let Some(s) = e
            .state
            .filter(|_| !matches!(e.func, AggFn::CountRows | AggFn::Count))
        else {
            col.extend_i64(at.iter().map(|&(p, i)| Some(n(p, i) as i64)));
            continue;
        };
        // The state column `s` of every part, as the variant `f` picks.
        fn views<'a, T: ?Sized>(
            parts: &'a [Part],
            s: usize,
            f: impl Fn(&'a Acc) -> Option<&'a T>,
        ) -> Vec<&'a T> {
            parts
                .iter()
                .map(|p| f(&p.accs[s]).expect("bug in panes: parts differ in state layout"))
                .collect()
        }
        match (e.func, &parts[0].accs[s]) {
            (_, Acc::Distinct(_)) => {
                let d = views(parts, s, |a| match a {
                    Acc::Distinct(d) => Some(d.as_slice()),
                    _ => None,
                });
                col.extend_i64(at.iter().map(|&(p, i)| Some(d[p][i].estimate())));
            }
            (f, Acc::Int(_)) => {
                let t = views(parts, s, |a| match a {
                    Acc::Int(t) => Some(t),
                    _ => None,
                });
                if f == AggFn::Avg {
                    col.extend_f64(at.iter().map(|&(p, i)| {
                        let n = n(p, i);
                        (n > 0).then(|| t[p].v[i] as f64 / n as f64)
                    }));
                } else {
                    col.extend_i64(
                        at.iter()
                            .map(|&(p, i)| typed_valid(t[p], i, n(p, i)).then(|| t[p].v[i])),
                    );
                }
            }
            (f, Acc::Float(_)) => {
                let t = views(parts, s, |a| match a {
                    Acc::Float(t) => Some(t),
                    _ => None,
                });
                col.extend_f64(at.iter().map(|&(p, i)| {
                    let n = n(p, i);
                    match f {
                        AggFn::Avg => (n > 0).then(|| t[p].v[i] / n as f64),
                        _ => typed_valid(t[p], i, n).then(|| t[p].v[i]),
                    }
                }));
            }
            (f, Acc::Moments(_)) => {
                let m = views(parts, s, |a| match a {
                    Acc::Moments(m) => Some(m.as_slice()),
                    _ => None,
                });
                col.extend_f64(at.iter().map(|&(p, i)| m[p][i].finish(f)));
            }
            (f, Acc::Rows(_)) => {
                let v = views(parts, s, |a| match a {
                    Acc::Rows(v) => Some(v.as_slice()),
                    _ => None,
                });
                let k = match f {
                    AggFn::Min => 1,
                    AggFn::Max => 2,
                    _ => 0,
                };
                let avg = f == AggFn::Avg;
                col.extend_f64(at.iter().map(|&(p, i)| {
                    let n = n(p, i);
                    let x = v[p][i].s[k];
                    (n > 0).then_some(if avg { x / n as f64 } else { x })
                }));
            }
            (f, a) => unreachable!("bug in panes: no evaluation of {f} over {a:?}"),
        }
    }
}

fn typed_valid<T>(t: &Typed<T>, i: usize, n: u64) -> bool {
    match t.op {
        Op::First | Op::Last => t.ts[i] != t.op.ts_identity(),
        _ => n > 0,
    }
}

/// Merges a later state (a pane's or a block's, one state per partition) into `acc`: whole
/// partitions for `Keys::All` (a sparse one at its listed keys only), or one single-key
/// state per key asked for.
fn fold_into(acc: &mut [Part], src: &[Part], keys: Keys<'_>, shift: u32) {
    match keys {
        Keys::All => acc.par_iter_mut().zip(src).for_each(|(acc, src)| {
            acc.grow(src.len());
            acc.lo = acc.lo.min(src.lo);
            if src.sparse() {
                acc.merge_present(src);
            } else {
                acc.merge_all(src);
            }
        }),
        Keys::Only(only) => {
            let mask = (src.len() - 1) as u32;
            for (acc, &key) in acc.iter_mut().zip(only) {
                let (p, i) = ((key & mask) as usize, (key >> shift) as usize);
                if i < src[p].len() {
                    acc.merge_key(0, &src[p], i);
                }
            }
        }
    }
}

impl CpuBackend {
    /// Forgets the block folds that hold any of the panes `panes`.
    pub(super) fn forget_blocks(&mut self, panes: Range<i64>) {
        self.blocks
            .retain(|&(start, end), _| end <= panes.start || start >= panes.end);
    }

    /// Brings the block folds that hold `pane` up to date after the rows `sel` changed it
    /// (events late for a window that fired, on time for later ones). When few keys
    /// changed, the block's panes are folded again at each changed key, in the same order;
    /// otherwise the block is dropped, and the next window that needs it folds it anew.
    pub(super) fn patch_blocks(&mut self, pane: i64, keys: &[u32], sel: Sel<'_>) {
        if self.blocks.is_empty() {
            return;
        }
        let n = sel.len();
        let (shift, mask) = (self.shift, (self.parts() - 1) as u32);
        let panes = &self.panes;
        self.blocks.retain(|&(start, end), block| {
            if !(start..end).contains(&pane) {
                return true;
            }
            if n * SPARSE_RATIO >= block.iter().map(Part::len).sum() {
                return false;
            }
            each(sel, keys, 0, |_, key| {
                let (p, i) = ((key as u32 & mask) as usize, key >> shift);
                let part = &mut block[p];
                part.grow(i + 1);
                part.lo = part.lo.min(i);
                let was = part.rows().get(i);
                part.clear_key(i);
                for src in panes.range(start..end).map(|(_, s)| &s[p]) {
                    if i < src.len() {
                        part.merge_key(i, src, i);
                    }
                }
                if part.present_at.is_some() {
                    if was == 0 && part.rows().get(i) > 0 {
                        part.present.push(i as u32);
                    }
                    part.present_at = Some(part.version);
                }
            });
            true
        });
    }

    /// Combines a window of held and spilled panes: the body of
    /// [`Backend::combine_spilled`](crate::Backend::combine_spilled), which see.
    pub(super) fn combine_window(
        &mut self,
        panes: Range<i64>,
        keys: Keys<'_>,
        spilled: &[i64],
        load: &mut dyn FnMut(i64) -> crate::Result<RecordBatch>,
    ) -> crate::Result<WindowRows> {
        let parts = self.parts();
        let shift = self.shift;
        if matches!(keys, Keys::All) {
            for part in self
                .panes
                .range_mut(panes.clone())
                .flat_map(|(_, p)| p.iter_mut())
            {
                part.refresh_if_sparse();
            }
        }
        let mut ids: Vec<i64> = self.panes.range(panes.clone()).map(|(&j, _)| j).collect();
        ids.extend(spilled.iter().filter(|j| panes.contains(j)));
        ids.sort_unstable();
        let mut rows = WindowRows {
            keys: Vec::new(),
            columns: self
                .evals
                .iter()
                .map(|e| OutColumn::with_capacity(e.out, 0))
                .collect(),
        };
        if ids.is_empty() {
            return Ok(rows);
        }
        // Keys::Only: one single-key state per key asked for.
        let single = |n: usize| {
            let mut acc = Part::new(&self.layout);
            acc.grow(1);
            vec![acc; n]
        };
        let mut singles = match keys {
            Keys::All => Vec::new(),
            Keys::Only(only) => single(only.len()),
        };
        let mut window = std::mem::take(&mut self.window);
        let acc = match keys {
            Keys::All => &mut window,
            Keys::Only(_) => &mut singles,
        };
        let mut kept = Vec::new();
        let mut pool = std::mem::take(&mut self.pool);
        let this = &*self;
        let mut source = |j: i64| -> crate::Result<Cow<'_, [Part]>> {
            if let Some(held) = this.panes.get(&j) {
                return Ok(Cow::Borrowed(held));
            }
            let mut state = this.parts_from(&load(j)?)?;
            if matches!(keys, Keys::All) {
                state.iter_mut().for_each(Part::refresh_present);
            }
            Ok(Cow::Owned(state))
        };
        for seg in fold_plan(panes, self.fold_block) {
            let at = ids.partition_point(|&j| j < seg.start)..ids.partition_point(|&j| j < seg.end);
            let in_seg = &ids[at];
            if let [j] = in_seg {
                fold_into(acc, &source(*j)?, keys, shift);
                continue;
            }
            if in_seg.is_empty() {
                continue;
            }
            if let Some(block) = this.blocks.get(&(seg.start, seg.end)) {
                fold_into(acc, block, keys, shift);
                continue;
            }
            // The block's own fold: of whole partitions for `Keys::All`, else of one
            // single-key state per key asked for, which then merge into `acc` one to one.
            let mut block = match keys {
                Keys::All => reuse(&mut pool, &this.layout, parts),
                Keys::Only(only) => single(only.len()),
            };
            // A block whose panes are all sparse in a partition lists their keys there.
            let mut listed: Vec<Option<Vec<u32>>> = vec![Some(Vec::new()); parts];
            for &j in in_seg {
                let src = source(j)?;
                fold_into(&mut block, &src, keys, shift);
                for (list, src) in listed.iter_mut().zip(src.iter()) {
                    match list {
                        Some(l) if src.sparse() => l.extend(&src.present),
                        _ => *list = None,
                    }
                }
            }
            fold_into(acc, &block, Keys::All, shift);
            if matches!(keys, Keys::All) && in_seg.iter().all(|j| this.panes.contains_key(j)) {
                for (part, list) in block.iter_mut().zip(listed) {
                    if let Some(mut list) = list {
                        list.sort_unstable();
                        list.dedup();
                        part.present = list;
                        part.present_at = Some(part.version);
                    }
                }
                kept.push((seg, block));
            }
        }
        self.blocks
            .extend(kept.into_iter().map(|(seg, b)| ((seg.start, seg.end), b)));
        self.window = window;
        self.pool = pool;
        match keys {
            Keys::All => {
                let combined = &mut self.window;
                // (partition, local key) of each key with data, in the order of the keys:
                // key = local << shift | partition.
                let mut at = Vec::with_capacity(self.last_rows + self.last_rows / 8);
                for (p, acc) in combined.iter().enumerate() {
                    acc.rows().each_nonzero(acc.lo, |i| at.push((p, i)));
                }
                if parts > 1 {
                    at.sort_unstable_by_key(|&(p, i)| (i, p));
                }
                rows.keys = at
                    .iter()
                    .map(|&(p, i)| ((i as u32) << shift) | p as u32)
                    .collect();
                self.last_rows = at.len();
                evaluate(&self.evals, combined, &at, &mut rows.columns);
                // Leave the window state empty for the next window: key by key when few
                // keys were emitted, otherwise in one sweep.
                let len: usize = combined.iter().map(Part::len).sum();
                if at.len() * SPARSE_RATIO < len {
                    for &(p, i) in &at {
                        combined[p].clear_key(i);
                    }
                } else {
                    let layout = &self.layout;
                    combined
                        .iter_mut()
                        .for_each(|acc| acc.reset(layout, acc.len()));
                }
                combined.iter_mut().for_each(|acc| acc.lo = usize::MAX);
            }
            Keys::Only(only) => {
                let mut at = Vec::new();
                for (s, (acc, &key)) in singles.iter().zip(only).enumerate() {
                    if acc.rows().get(0) > 0 {
                        rows.keys.push(key);
                        at.push((s, 0));
                    }
                }
                evaluate(&self.evals, &singles, &at, &mut rows.columns);
            }
        }
        Ok(rows)
    }
}
