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

    /// Merges element `s` of a later pane's state into element `d`, for each `(d, s)`.
    fn merge_pairs(&mut self, src: &Typed<T>, pairs: impl Iterator<Item = (usize, usize)>) {
        let (d, s) = (&mut self.v[..], &src.v[..]);
        match self.op {
            Op::Sum => pairs.for_each(|(i, j)| d[i] = d[i].add(s[j])),
            Op::Min => pairs.for_each(|(i, j)| d[i] = agg::min(d[i], s[j])),
            Op::Max => pairs.for_each(|(i, j)| d[i] = agg::max(d[i], s[j])),
            Op::First | Op::Last => pairs.for_each(|(i, j)| self.merge_at(i, src, j)),
        }
    }

    /// Merges elements `from..from + n` of a later pane's state into elements `0..n`,
    /// element by element (vectorizes for sum/min/max).
    fn merge_range(&mut self, src: &Typed<T>, from: usize, n: usize) {
        let (d, s) = (&mut self.v[..n], &src.v[from..from + n]);
        match self.op {
            Op::Sum => d.iter_mut().zip(s).for_each(|(d, &s)| *d = d.add(s)),
            Op::Min => d.iter_mut().zip(s).for_each(|(d, &s)| *d = agg::min(*d, s)),
            Op::Max => d.iter_mut().zip(s).for_each(|(d, &s)| *d = agg::max(*d, s)),
            Op::First | Op::Last => (0..n).for_each(|i| self.merge_at(i, src, from + i)),
        }
    }
}

impl Acc {
    /// Merges elements `from..from + n` of a later pane's state into elements `0..n`.
    fn merge_range(&mut self, src: &Acc, from: usize, n: usize) {
        fn zip<'a, D, S>(
            d: &'a mut [D],
            s: &'a [S],
            from: usize,
            n: usize,
        ) -> impl Iterator<Item = (&'a mut D, &'a S)> {
            d[..n].iter_mut().zip(&s[from..from + n])
        }
        match (self, src) {
            (Acc::Count(d), Acc::Count(s)) => zip(d, s, from, n).for_each(|(d, s)| *d += s),
            (Acc::Int(d), Acc::Int(s)) => d.merge_range(s, from, n),
            (Acc::Float(d), Acc::Float(s)) => d.merge_range(s, from, n),
            (Acc::Moments(d), Acc::Moments(s)) => zip(d, s, from, n).for_each(|(d, s)| d.merge(s)),
            (Acc::Distinct(d), Acc::Distinct(s)) => {
                zip(d, s, from, n).for_each(|(d, s)| d.merge(s))
            }
            (Acc::Rows(d), Acc::Rows(s)) => zip(d, s, from, n).for_each(|(d, s)| row_merge(d, s)),
            (Acc::Count(d), Acc::Rows(s)) => zip(d, s, from, n).for_each(|(d, s)| *d += s.n),
            (Acc::SameAsRows, Acc::SameAsRows) => {}
            _ => unreachable!("bug in panes: merging states of different layouts"),
        }
    }

    /// Merges element `s` of a later pane's state into element `d`, for each `(d, s)`.
    fn merge_pairs(&mut self, src: &Acc, pairs: impl Iterator<Item = (usize, usize)>) {
        match (self, src) {
            (Acc::Count(d), Acc::Count(s)) => pairs.for_each(|(i, j)| d[i] += s[j]),
            (Acc::Int(d), Acc::Int(s)) => d.merge_pairs(s, pairs),
            (Acc::Float(d), Acc::Float(s)) => d.merge_pairs(s, pairs),
            (Acc::Moments(d), Acc::Moments(s)) => pairs.for_each(|(i, j)| d[i].merge(&s[j])),
            (Acc::Distinct(d), Acc::Distinct(s)) => pairs.for_each(|(i, j)| d[i].merge(&s[j])),
            (Acc::Rows(d), Acc::Rows(s)) => pairs.for_each(|(i, j)| row_merge(&mut d[i], &s[j])),
            (Acc::Count(d), Acc::Rows(s)) => pairs.for_each(|(i, j)| d[i] += s[j].n),
            (Acc::SameAsRows, Acc::SameAsRows) => {}
            _ => unreachable!("bug in panes: merging states of different layouts"),
        }
    }
}

impl Part {
    /// Merges each element `s` of a later pane's state into element `d`, for each `(d, s)`.
    pub(super) fn merge_pairs(
        &mut self,
        src: &Part,
        pairs: impl Iterator<Item = (usize, usize)> + Clone,
    ) {
        self.materialize(|i| matches!(src.accs[i], Acc::Count(_)));
        for (d, s) in self.accs.iter_mut().zip(&src.accs) {
            match (&mut *d, s) {
                (Acc::Count(_), Acc::SameAsRows) => d.merge_pairs(&src.accs[0], pairs.clone()),
                _ => d.merge_pairs(s, pairs.clone()),
            }
        }
    }

    /// Merges rows `from..from + n` of a dense later pane into rows `0..n`.
    fn merge_range(&mut self, src: &Part, from: usize, n: usize) {
        self.materialize(|i| matches!(src.accs[i], Acc::Count(_)));
        for (d, s) in self.accs.iter_mut().zip(&src.accs) {
            match (&mut *d, s) {
                (Acc::Count(_), Acc::SameAsRows) => d.merge_range(&src.accs[0], from, n),
                _ => d.merge_range(s, from, n),
            }
        }
    }

    /// Merges local keys `keys` of a later state into rows `keys.start..` of this one,
    /// at the keys it lists only where it is sparse.
    pub(super) fn merge_keys_of(&mut self, src: &Part, keys: Range<usize>) {
        let keys = keys.start..keys.end.min(src.span());
        if keys.is_empty() {
            return;
        }
        let base = keys.start;
        self.grow(keys.end - base);
        self.lo = self.lo.min(src.lo.max(base) - base);
        if !src.sparse() {
            return self.merge_range(src, base, keys.end - base);
        }
        match src.present_in(keys) {
            (present, None) => self.merge_pairs(
                src,
                present.iter().map(|&k| (k as usize - base, k as usize)),
            ),
            (present, Some(slots)) => self.merge_pairs(
                src,
                (present.iter().zip(slots)).map(|(&k, &s)| (k as usize - base, s as usize)),
            ),
        }
    }

    /// Merges local key `si` of a later pane into row `di` of this state, if it has it.
    fn merge_key(&mut self, di: usize, src: &Part, si: usize) {
        if let Some(si) = src.slot(si) {
            self.merge_pairs(src, std::iter::once((di, si)));
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

/// The local keys of partition `p` (of `1 << shift`) whose key ids `keys` takes, for
/// `Keys::All` and `Keys::Range`: those ids are `local << shift | p`.
pub(super) fn local_keys(keys: Keys<'_>, p: usize, shift: u32) -> Range<usize> {
    match keys {
        Keys::Range { start, end } => {
            let first = |k: u32| (k as usize + (1 << shift) - 1 - p) >> shift;
            first(start)..first(end)
        }
        _ => 0..usize::MAX,
    }
}

/// Merges a later state (a pane's or a block's, one state per partition) into `acc`: whole
/// partitions for `Keys::All` (a sparse one at its listed keys only), the keys of a slice
/// for `Keys::Range` (into rows from 0: the slice's first key of each partition), or one
/// single-key state per key asked for.
fn fold_into(acc: &mut [Part], src: &[Part], keys: Keys<'_>, shift: u32) {
    match keys {
        Keys::All | Keys::Range { .. } => (acc.par_iter_mut().zip(src).enumerate())
            .for_each(|(p, (acc, src))| acc.merge_keys_of(src, local_keys(keys, p, shift))),
        Keys::Only(only) => {
            let mask = (src.len() - 1) as u32;
            for (acc, &key) in acc.iter_mut().zip(only) {
                let (p, i) = ((key & mask) as usize, (key >> shift) as usize);
                acc.merge_key(0, &src[p], i);
            }
        }
    }
}

/// The rows of a state batch whose keys `keys` takes: a slice's share of a spilled pane,
/// so that reading it back costs the slice's keys, not the pane's.
fn within(batch: RecordBatch, keys: Keys<'_>) -> crate::Result<RecordBatch> {
    let Keys::Range { start, end } = keys else {
        return Ok(batch);
    };
    let ids = crate::state::values::<arrow::datatypes::UInt32Type>(&batch, "key")?;
    let keep: arrow::array::BooleanArray =
        ids.iter().map(|k| Some((start..end).contains(k))).collect();
    arrow::compute::filter_record_batch(&batch, &keep)
        .map_err(|e| crate::Error::BadState(format!("selecting a slice of a pane: {e}")))
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
                    part.merge_key(i, src, i);
                }
                if part.present_at.is_some() {
                    if was == 0 && part.rows().get(i) > 0 {
                        // The list stays sorted: slices of it are found by key.
                        let at = part.present.partition_point(|&k| (k as usize) < i);
                        part.present.insert(at, i as u32);
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
        if !matches!(keys, Keys::Only(_)) {
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
            Keys::Only(only) => single(only.len()),
            _ => Vec::new(),
        };
        let mut window = std::mem::take(&mut self.window);
        if let Keys::Range { .. } = keys {
            // A slice needs rows for its keys only: no more the whole key space that an
            // earlier window combined at once may have left.
            for (p, part) in window.iter_mut().enumerate() {
                if part.len() > local_keys(keys, p, shift).len() {
                    *part = Part::new(&self.layout);
                }
            }
        }
        let acc = match keys {
            Keys::Only(_) => &mut singles,
            _ => &mut window,
        };
        let mut kept = Vec::new();
        let mut pool = std::mem::take(&mut self.pool);
        let this = &*self;
        let mut source = |j: i64| -> crate::Result<Cow<'_, [Part]>> {
            if let Some(held) = this.panes.get(&j) {
                return Ok(Cow::Borrowed(held));
            }
            let mut state = this.parts_from(&within(load(j)?, keys)?)?;
            if !matches!(keys, Keys::Only(_)) {
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
                Keys::Range { .. } => vec![Part::new(&this.layout); parts],
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
            Keys::All | Keys::Range { .. } => {
                let combined = &mut self.window;
                // (partition, row) of each key with data, in the order of the keys: key =
                // local << shift | partition, where row = local - the slice's first local
                // key of the partition.
                let base: Vec<usize> = (0..parts)
                    .map(|p| local_keys(keys, p, shift).start)
                    .collect();
                let key = |p: usize, i: usize| (((i + base[p]) as u32) << shift) | p as u32;
                let mut at = Vec::with_capacity(self.last_rows + self.last_rows / 8);
                for (p, acc) in combined.iter().enumerate() {
                    acc.rows().each_nonzero(acc.lo, |i| at.push((p, i)));
                }
                if parts > 1 {
                    at.sort_unstable_by_key(|&(p, i)| key(p, i));
                }
                rows.keys = at.iter().map(|&(p, i)| key(p, i)).collect();
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
