//! The scatter-update path: events of a segment folded into their panes' state, run by
//! run or grouped by pane, partitions in parallel, with prefetching over large state.

use std::collections::HashMap;

use rayon::prelude::*;

use super::CpuBackend;
use super::state::{Acc, Op, Part, SparsePanes, StateCol, Typed, reuse, sparse_pays};
use crate::agg::{self, Value};
use crate::events::{Events, Values};

/// Segments whose runs of one pane average at least this many rows are updated run by
/// run; others are grouped by pane first.
pub(super) const RUN_MIN_ROWS: usize = 64;

/// Segments smaller than this are updated on the calling thread.
const PARALLEL_MIN_ROWS: usize = 1 << 15;

/// How many events ahead the update loop prefetches its state row.
const PREFETCH: usize = 32;

/// State arrays smaller than this (twice a common L2 cache) are updated without
/// prefetching: they mostly sit in cache, and the prefetches only cost (row counts alone
/// at 100k keys ran at half the speed with them).
const PREFETCH_MIN_BYTES: usize = 1 << 20;

/// Asks the CPU to start loading the cache line at `p`.
#[inline(always)]
#[allow(unsafe_code)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Adds one value to a `[sum, min, max]`.
#[inline(always)]
fn stats_push(s: &mut [f64; 3], x: f64) {
    s[0] += x;
    s[1] = s[1].min_of(x);
    s[2] = s[2].max_of(x);
}

/// Which rows of a segment a kernel visits.
#[derive(Clone, Copy)]
pub(super) enum Sel<'a> {
    All(usize),
    Rows(&'a [u32]),
}

impl Sel<'_> {
    pub(super) fn len(self) -> usize {
        match self {
            Sel::All(n) => n,
            Sel::Rows(rows) => rows.len(),
        }
    }
}

/// Values and validity of input column `i`, which the layout says is in the float domain.
fn floats<'a>(ev: &Events<'a>, i: usize) -> (&'a [f64], Option<&'a [bool]>) {
    match ev.columns[i].values {
        Values::F64(x) => (x, ev.columns[i].valid),
        Values::I64(_) => unreachable!("bug in panes: column {i} is not in the float domain"),
    }
}

/// Values and validity of input column `i`, which the layout says is in the integer domain.
fn ints<'a>(ev: &Events<'a>, i: usize) -> (&'a [i64], Option<&'a [bool]>) {
    match ev.columns[i].values {
        Values::I64(x) => (x, ev.columns[i].valid),
        Values::F64(_) => unreachable!("bug in panes: column {i} is not in the integer domain"),
    }
}

/// Calls `f(row, local_key)` for every selected row, in order. Never inlined: each loop is
/// a small function of its own, with the keys and the shift in registers.
#[inline(never)]
pub(super) fn each(sel: Sel<'_>, keys: &[u32], shift: u32, mut f: impl FnMut(usize, usize)) {
    match sel {
        Sel::All(n) => {
            for (r, &k) in keys[..n].iter().enumerate() {
                f(r, (k >> shift) as usize)
            }
        }
        Sel::Rows(rows) => {
            for &r in rows {
                let r = r as usize;
                f(r, (keys[r] >> shift) as usize)
            }
        }
    }
}

/// Calls `f(row, state)` with the state of the row's local key in `state` for every
/// selected row, in order. Over large state, it prefetches the state of the row
/// [`PREFETCH`] rows ahead: the scatter-update then waits on many cache misses at once
/// instead of one at a time.
#[inline(never)]
fn each_ahead<S>(
    sel: Sel<'_>,
    keys: &[u32],
    shift: u32,
    state: &mut [S],
    mut f: impl FnMut(usize, &mut S),
) {
    if size_of_val(state) < PREFETCH_MIN_BYTES {
        return each(sel, keys, shift, |r, k| f(r, &mut state[k]));
    }
    let base = state.as_ptr();
    let ahead = |r: usize| prefetch(base.wrapping_add((keys[r] >> shift) as usize));
    match sel {
        Sel::All(n) => {
            for r in 0..n {
                if r + PREFETCH < n {
                    ahead(r + PREFETCH);
                }
                f(r, &mut state[(keys[r] >> shift) as usize])
            }
        }
        Sel::Rows(rows) => {
            for (j, &r) in rows.iter().enumerate() {
                if let Some(&later) = rows.get(j + PREFETCH) {
                    ahead(later as usize);
                }
                let r = r as usize;
                f(r, &mut state[(keys[r] >> shift) as usize])
            }
        }
    }
}

impl<T: Value> Typed<T> {
    fn update(
        &mut self,
        sel: Sel<'_>,
        keys: &[u32],
        shift: u32,
        ts: &[i64],
        x: &[T],
        valid: Option<&[bool]>,
    ) {
        let v = &mut self.v[..];
        macro_rules! run {
            (|$r:ident, $k:ident| $body:expr) => {
                match valid {
                    None => each(sel, keys, shift, |$r, $k| $body),
                    Some(ok) => each(sel, keys, shift, |$r, $k| {
                        if ok[$r] {
                            $body
                        }
                    }),
                }
            };
        }
        match self.op {
            Op::Sum => run!(|r, k| v[k] = v[k].add(x[r])),
            Op::Min => run!(|r, k| v[k] = agg::min(v[k], x[r])),
            Op::Max => run!(|r, k| v[k] = agg::max(v[k], x[r])),
            Op::First => {
                let t = &mut self.ts[..];
                run!(|r, k| if ts[r] < t[k] {
                    t[k] = ts[r];
                    v[k] = x[r];
                })
            }
            Op::Last => {
                let t = &mut self.ts[..];
                run!(|r, k| if ts[r] >= t[k] {
                    t[k] = ts[r];
                    v[k] = x[r];
                })
            }
        }
    }
}

impl Acc {
    /// Aggregates the selected rows of `ev` at `keys` (key ids, or slots of a sparse part).
    fn update(&mut self, col: StateCol, ev: &Events<'_>, keys: &[u32], sel: Sel<'_>, shift: u32) {
        match (self, col) {
            (Acc::Count(c), StateCol::Rows) => each(sel, keys, shift, |_, k| c[k] += 1),
            (Acc::SameAsRows, StateCol::NonNull(_)) => {}
            (Acc::Rows(v), StateCol::RowStats(i)) => {
                let (x, valid) = floats(ev, i);
                match valid {
                    None => each_ahead(sel, keys, shift, v, |r, row| {
                        row.n += 1;
                        stats_push(&mut row.s, x[r]);
                    }),
                    Some(ok) => each_ahead(sel, keys, shift, v, |r, row| {
                        row.n += 1;
                        if ok[r] {
                            stats_push(&mut row.s, x[r])
                        }
                    }),
                }
            }
            (Acc::Count(c), StateCol::NonNull(i)) => match ev.columns[i].valid {
                None => each(sel, keys, shift, |_, k| c[k] += 1),
                Some(ok) => each(sel, keys, shift, |r, k| c[k] += ok[r] as u64),
            },
            (Acc::Int(t), StateCol::Typed(_, i, _)) => {
                let (x, valid) = ints(ev, i);
                t.update(sel, keys, shift, ev.ts, x, valid)
            }
            (Acc::Float(t), StateCol::Typed(_, i, _)) => {
                let (x, valid) = floats(ev, i);
                t.update(sel, keys, shift, ev.ts, x, valid)
            }
            (Acc::Moments(m), StateCol::Moments(i)) => {
                let col = ev.columns[i];
                match col.values {
                    Values::I64(x) => each(sel, keys, shift, |r, k| {
                        if col.is_valid(r) {
                            m[k].push(x[r] as f64)
                        }
                    }),
                    Values::F64(x) => each(sel, keys, shift, |r, k| {
                        if col.is_valid(r) {
                            m[k].push(x[r])
                        }
                    }),
                }
            }
            (Acc::Distinct(d), StateCol::Distinct(i)) => {
                let col = ev.columns[i];
                match col.values {
                    Values::I64(x) => each(sel, keys, shift, |r, k| {
                        if col.is_valid(r) {
                            d[k].push_i64(x[r])
                        }
                    }),
                    Values::F64(x) => each(sel, keys, shift, |r, k| {
                        if col.is_valid(r) {
                            d[k].push_f64(x[r])
                        }
                    }),
                }
            }
            (acc, col) => unreachable!("bug in panes: state {col:?} has the wrong layout {acc:?}"),
        }
    }
}

/// Groups rows by pane. The common case, one pane, needs no row lists at all.
pub(super) fn group_by_pane(panes: &[i64]) -> Vec<(i64, Vec<u32>)> {
    let mut groups: Vec<(i64, Vec<u32>)> = Vec::new();
    let mut index: HashMap<i64, usize> = HashMap::new();
    let mut last = usize::MAX;
    for (r, &p) in panes.iter().enumerate() {
        if last == usize::MAX || groups[last].0 != p {
            last = *index.entry(p).or_insert_with(|| {
                groups.push((p, Vec::new()));
                groups.len() - 1
            });
        }
        groups[last].1.push(r as u32);
    }
    groups.sort_unstable_by_key(|g| g.0);
    groups
}

impl CpuBackend {
    /// Whether a new pane starts sparse, where the events of the update that makes it have
    /// key ids up to `max_key`. See [`SparsePanes`].
    fn new_pane_sparse(&self, max_key: u32) -> bool {
        match self.sparse {
            SparsePanes::Never => false,
            SparsePanes::Always => true,
            SparsePanes::Auto { min_keys } => {
                let Some((_, newest)) = self.panes.last_key_value() else {
                    return false;
                };
                let space = newest.iter().map(Part::span).max().unwrap_or(0) * newest.len();
                let space = space.max(max_key as usize + 1);
                let seen: usize = (newest.iter())
                    .map(|p| match &p.slots {
                        Some(s) => s.keys.len(),
                        None => {
                            let mut n = 0;
                            p.rows().each_nonzero(p.lo, |_| n += 1);
                            n
                        }
                    })
                    .sum();
                space >= min_keys && sparse_pays(seen, space, newest[0].row_bytes(), 2)
            }
        }
    }

    /// Updates one pane with the selected rows, and the block folds that hold it.
    pub(super) fn update_pane(
        &mut self,
        pane: i64,
        ev: &Events<'_>,
        sel: Sel<'_>,
        keys: (u32, u32),
    ) {
        let (min_key, max_key) = keys;
        let (shift, parts) = (self.shift, self.parts());
        let sparse = !self.panes.contains_key(&pane) && self.new_pane_sparse(max_key);
        let densify = matches!(self.sparse, SparsePanes::Auto { .. });
        let layout = &self.layout;
        // A new dense pane is sized for the keys the newest pane has: they will mostly come
        // again, and growing arrays step by step costs copies and page faults.
        let known: Vec<usize> = self
            .panes
            .last_key_value()
            .map_or(vec![0; parts], |(_, p)| p.iter().map(Part::span).collect());
        let pool = &mut self.pool;
        let state = self.panes.entry(pane).or_insert_with(|| {
            if sparse {
                return vec![Part::sparse_with(layout, std::iter::empty()); parts];
            }
            let mut new = reuse(pool, layout, parts);
            new.iter_mut().zip(known).for_each(|(p, n)| p.grow(n));
            new
        });
        for (p, part) in state.iter_mut().enumerate() {
            // Partition p holds the keys k with k & (parts-1) == p at local index k >> shift.
            let needed = if (max_key as usize & (parts - 1)) >= p {
                1
            } else {
                0
            } + (max_key >> shift) as usize;
            if part.slots.is_none() {
                part.grow(needed);
            }
        }
        let update = |part: &mut Part, sel: Sel<'_>, slots: &mut Vec<u32>| {
            part.version += 1;
            part.lo = part.lo.min((min_key >> shift) as usize);
            // A null in a column makes its non-null count diverge from the row count.
            part.materialize(
                |i| matches!(layout[i], StateCol::NonNull(c) if ev.columns[c].valid.is_some()),
            );
            let Some(map) = part.slots.as_mut() else {
                for (acc, &col) in part.accs.iter_mut().zip(layout) {
                    acc.update(col, ev, ev.keys, sel, shift);
                }
                return;
            };
            // Sparse: each row's key to its slot (a new one for a key not seen yet), then
            // the same kernels over slots.
            slots.resize(ev.len(), 0);
            each(sel, ev.keys, shift, |r, k| slots[r] = map.slot(k as u32));
            let n = map.keys.len();
            part.grow(n);
            for (acc, &col) in part.accs.iter_mut().zip(layout) {
                acc.update(col, ev, slots, sel, 0);
            }
            if densify {
                part.densify_if_full(layout);
            }
        };
        let mut slots = std::mem::take(&mut self.slots);
        slots.resize_with(parts, Vec::new);
        if parts == 1 {
            update(&mut state[0], sel, &mut slots[0]);
        } else {
            for rows in self.scratch.iter_mut() {
                rows.clear();
            }
            let mask = (parts - 1) as u32;
            match sel {
                Sel::All(n) => (0..n as u32)
                    .for_each(|r| self.scratch[(ev.keys[r as usize] & mask) as usize].push(r)),
                Sel::Rows(rows) => rows
                    .iter()
                    .for_each(|&r| self.scratch[(ev.keys[r as usize] & mask) as usize].push(r)),
            }
            let run = |((part, rows), slots): ((&mut Part, &Vec<u32>), &mut Vec<u32>)| {
                update(part, Sel::Rows(rows), slots)
            };
            if sel.len() >= PARALLEL_MIN_ROWS {
                (state.par_iter_mut().zip(&self.scratch).zip(&mut slots)).for_each(run);
            } else {
                (state.iter_mut().zip(&self.scratch).zip(&mut slots)).for_each(run);
            }
        }
        self.slots = slots;
        self.patch_blocks(pane, ev.keys, sel);
    }
}
