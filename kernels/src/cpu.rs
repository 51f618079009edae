//! The CPU backend: columnar pane state over dense key ids, tight scatter-update loops,
//! rayon across key partitions.
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use rayon::prelude::*;

use crate::agg::{self, AggFn, AggSpec, Distinct, Domain, Moments, OutType, Value};
use arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, UInt32Type, UInt64Type};

use crate::error::Error;
use crate::events::{Events, OutColumn, Values, WindowRows};
use crate::state;
use crate::{Backend, Keys, fold_plan};

/// A pane with fewer than 1/`SPARSE_RATIO` of the keys is merged at its keys only.
const SPARSE_RATIO: usize = 4;

/// Segments whose runs of one pane average at least this many rows are updated run by
/// run; others are grouped by pane first.
const RUN_MIN_ROWS: usize = 64;

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
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// What one state array accumulates. State column 0 is always the row count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateCol {
    Rows,
    /// The row count with the sum, min and max of a float column beside it, in one
    /// [`StatsRow`] a key: one cache line per update.
    RowStats(usize),
    NonNull(usize),
    Typed(Op, usize, Domain),
    Moments(usize),
    Distinct(usize),
}

/// A key's row count and the `[sum, min, max]` of one float column, aligned so that a row
/// never straddles a cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct StatsRow {
    n: u64,
    s: [f64; 3],
}

const EMPTY_ROW: StatsRow = StatsRow {
    n: 0,
    s: [0.0, f64::MIN_IDENTITY, f64::MAX_IDENTITY],
};

/// `Vec::resize`, except that an empty vector (a pane taken from the pool) that must grow
/// gives its memory back first: growing it in place would copy its whole old capacity,
/// values or not, as a realloc of over-aligned memory ([`StatsRow`]) does. It still
/// doubles.
fn resize<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.is_empty() && n > v.capacity() {
        let capacity = n.max(2 * v.capacity());
        *v = Vec::new();
        v.reserve_exact(capacity);
    }
    v.resize(n, fill);
}

/// The counts of a state column: a plain array, or the counts in the rows of
/// [`StateCol::RowStats`].
#[derive(Clone, Copy)]
enum Counts<'a> {
    Plain(&'a [u64]),
    Rows(&'a [StatsRow]),
}

impl Counts<'_> {
    #[inline(always)]
    fn get(self, i: usize) -> u64 {
        match self {
            Counts::Plain(c) => c[i],
            Counts::Rows(r) => r[i].n,
        }
    }

    fn to_vec(self) -> Vec<u64> {
        match self {
            Counts::Plain(c) => c.to_vec(),
            Counts::Rows(r) => r.iter().map(|r| r.n).collect(),
        }
    }

    /// Calls `f(i)` for every `i >= lo` with a count above zero, in order.
    fn each_nonzero(self, lo: usize, f: impl FnMut(usize)) {
        match self {
            Counts::Plain(c) => (lo..c.len()).filter(|&i| c[i] > 0).for_each(f),
            Counts::Rows(r) => (lo..r.len()).filter(|&i| r[i].n > 0).for_each(f),
        }
    }
}

/// Adds one value to a `[sum, min, max]`.
#[inline(always)]
fn stats_push(s: &mut [f64; 3], x: f64) {
    s[0] += x;
    s[1] = s[1].min_of(x);
    s[2] = s[2].max_of(x);
}

/// Merges a later pane's row into `d`.
#[inline(always)]
fn row_merge(d: &mut StatsRow, s: &StatsRow) {
    d.n += s.n;
    d.s[0] += s.s[0];
    d.s[1] = d.s[1].min_of(s.s[1]);
    d.s[2] = d.s[2].max_of(s.s[2]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Sum,
    Min,
    Max,
    First,
    Last,
}

impl Op {
    fn identity<T: Value>(self) -> T {
        match self {
            Op::Sum | Op::First | Op::Last => T::ZERO,
            Op::Min => T::MIN_IDENTITY,
            Op::Max => T::MAX_IDENTITY,
        }
    }

    /// Initial event time: `First` keeps the smallest, `Last` the largest.
    fn ts_identity(self) -> i64 {
        if self == Op::First {
            i64::MAX
        } else {
            i64::MIN
        }
    }
}

/// Values of one typed state column, plus event times for first/last.
#[derive(Clone, Debug)]
struct Typed<T> {
    op: Op,
    v: Vec<T>,
    ts: Vec<i64>,
}

#[derive(Clone, Debug)]
enum Acc {
    Count(Vec<u64>),
    Rows(Vec<StatsRow>),
    /// A non-null count while the pane has seen no null in its column: the row count.
    SameAsRows,
    Int(Typed<i64>),
    Float(Typed<f64>),
    Moments(Vec<Moments>),
    Distinct(Vec<Distinct>),
}

/// How an aggregate reads its state: indices into the state columns.
#[derive(Clone, Copy, Debug)]
struct Eval {
    func: AggFn,
    out: OutType,
    /// The non-null (or row) count.
    count: usize,
    /// The typed or moments state, if any.
    state: Option<usize>,
}

/// Which rows of a segment a kernel visits.
#[derive(Clone, Copy)]
enum Sel<'a> {
    All(usize),
    Rows(&'a [u32]),
}

impl Sel<'_> {
    fn len(self) -> usize {
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
fn each(sel: Sel<'_>, keys: &[u32], shift: u32, mut f: impl FnMut(usize, usize)) {
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
    fn new(op: Op) -> Self {
        Typed {
            op,
            v: Vec::new(),
            ts: Vec::new(),
        }
    }

    fn resize(&mut self, n: usize) {
        resize(&mut self.v, n, self.op.identity());
        if matches!(self.op, Op::First | Op::Last) {
            resize(&mut self.ts, n, self.op.ts_identity());
        }
    }

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

    /// Puts key `i` back to the empty state.
    fn clear_key(&mut self, i: usize) {
        self.v[i] = self.op.identity();
        if let Some(t) = self.ts.get_mut(i) {
            *t = self.op.ts_identity();
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
    fn new(col: StateCol) -> Acc {
        match col {
            StateCol::Rows => Acc::Count(Vec::new()),
            StateCol::RowStats(_) => Acc::Rows(Vec::new()),
            StateCol::NonNull(_) => Acc::SameAsRows,
            StateCol::Typed(op, _, Domain::I64) => Acc::Int(Typed::new(op)),
            StateCol::Typed(op, _, Domain::F64) => Acc::Float(Typed::new(op)),
            StateCol::Moments(_) => Acc::Moments(Vec::new()),
            StateCol::Distinct(_) => Acc::Distinct(Vec::new()),
        }
    }

    /// The counts this state holds, if it is a count.
    fn counts(&self) -> Option<Counts<'_>> {
        match self {
            Acc::Count(c) => Some(Counts::Plain(c)),
            Acc::Rows(r) => Some(Counts::Rows(r)),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Acc::Count(c) => c.len(),
            Acc::Rows(v) => v.len(),
            Acc::SameAsRows => 0,
            Acc::Int(t) => t.v.len(),
            Acc::Float(t) => t.v.len(),
            Acc::Moments(m) => m.len(),
            Acc::Distinct(d) => d.len(),
        }
    }

    fn resize(&mut self, n: usize) {
        match self {
            Acc::Count(c) => resize(c, n, 0),
            Acc::Rows(v) => resize(v, n, EMPTY_ROW),
            Acc::SameAsRows => {}
            Acc::Int(t) => t.resize(n),
            Acc::Float(t) => t.resize(n),
            Acc::Moments(m) => resize(m, n, Moments::default()),
            Acc::Distinct(d) => d.resize_with(n, Distinct::default),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Acc::Count(c) => c.capacity() * 8,
            Acc::Rows(v) => v.capacity() * size_of::<StatsRow>(),
            Acc::SameAsRows => 0,
            Acc::Int(t) => t.v.capacity() * 8 + t.ts.capacity() * 8,
            Acc::Float(t) => t.v.capacity() * 8 + t.ts.capacity() * 8,
            Acc::Moments(m) => m.capacity() * std::mem::size_of::<Moments>(),
            Acc::Distinct(d) => {
                d.capacity() * size_of::<Distinct>()
                    + d.iter().map(Distinct::heap_bytes).sum::<usize>()
            }
        }
    }

    fn update(&mut self, col: StateCol, ev: &Events<'_>, sel: Sel<'_>, shift: u32) {
        let keys = ev.keys;
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

/// The state of one key partition of one pane (or of a window being combined).
#[derive(Clone, Debug)]
struct Part {
    accs: Vec<Acc>,
    /// Bumped by every change of the state.
    version: u64,
    /// The local keys with rows, as of version `present_at`.
    present: Vec<u32>,
    present_at: Option<u64>,
    /// No local key below this one holds data (`usize::MAX`: none does). Key spaces that
    /// keep growing (new auctions, new sessions) use only their newest ids, so scans of
    /// the rows start here.
    lo: usize,
}

impl Part {
    fn new(layout: &[StateCol]) -> Part {
        Part {
            accs: layout.iter().map(|&c| Acc::new(c)).collect(),
            version: 0,
            present: Vec::new(),
            present_at: None,
            lo: usize::MAX,
        }
    }

    fn len(&self) -> usize {
        self.accs[0].len()
    }

    fn grow(&mut self, n: usize) {
        if n > self.len() {
            self.accs.iter_mut().for_each(|a| a.resize(n));
        }
    }

    /// Lists the keys with rows, unless the list is current.
    fn refresh_present(&mut self) {
        if self.present_at != Some(self.version) {
            self.present.clear();
            let present = &mut self.present;
            rows_of(&self.accs).each_nonzero(self.lo, |i| present.push(i as u32));
            self.present_at = Some(self.version);
        }
    }

    /// Whether a merge visits this pane at its `present` keys only, not whole (never
    /// when the keys are not listed).
    fn sparse(&self) -> bool {
        self.present_at.is_some() && self.present.len() * SPARSE_RATIO < self.len()
    }

    /// Makes the `present` list current where a merge reads it: a pane last listed as
    /// dense stays dense while events only add keys, and is merged whole. (Hop windows
    /// merge a pane again after late events changed it: a rescan of every key each time.)
    fn refresh_if_sparse(&mut self) {
        if self.present_at.is_none() || self.sparse() {
            self.refresh_present();
        }
    }

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

    /// Puts local key `i` back to the empty state.
    fn clear_key(&mut self, i: usize) {
        self.version += 1;
        for a in self.accs.iter_mut() {
            match a {
                Acc::Count(c) => c[i] = 0,
                Acc::SameAsRows => {}
                Acc::Int(t) => t.clear_key(i),
                Acc::Float(t) => t.clear_key(i),
                Acc::Moments(m) => m[i] = Moments::default(),
                Acc::Distinct(d) => d[i] = Distinct::default(),
                Acc::Rows(v) => v[i] = EMPTY_ROW,
            }
        }
    }

    /// Empties the state and sizes it for `n` keys, keeping the memory it has.
    fn reset(&mut self, layout: &[StateCol], n: usize) {
        self.version += 1;
        self.present_at = None;
        self.lo = usize::MAX;
        for (a, &col) in self.accs.iter_mut().zip(layout) {
            if let StateCol::NonNull(_) = col {
                *a = Acc::SameAsRows;
            }
            a.resize(0);
            a.resize(n);
        }
    }

    /// Gives non-null counts that were the row count (`SameAsRows`) arrays of their own,
    /// where `needed(i)` says state column `i` is about to diverge from the row count.
    fn materialize(&mut self, needed: impl Fn(usize) -> bool) {
        let (rows, rest) = self.accs.split_at_mut(1);
        for (i, a) in rest.iter_mut().enumerate() {
            if matches!(a, Acc::SameAsRows) && needed(i + 1) {
                *a = Acc::Count(rows_of(rows).to_vec());
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

    /// The counts of state column `c` (a row or non-null count).
    fn counts(&self, c: usize) -> Counts<'_> {
        match &self.accs[c] {
            Acc::SameAsRows => self.rows(),
            a => a.counts().expect("bug in panes: count state expected"),
        }
    }

    fn rows(&self) -> Counts<'_> {
        rows_of(&self.accs)
    }
}

/// The row counts of a part's state columns (column 0).
fn rows_of(accs: &[Acc]) -> Counts<'_> {
    accs[0]
        .counts()
        .expect("bug in panes: state column 0 is not the row count")
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

/// One state column of a pane, gathered at its keys with rows (for a state batch).
enum Gather {
    Count(Vec<u64>),
    Rows(Vec<u64>, [Vec<f64>; 3]),
    /// Values, and event times for first/last.
    Int(Vec<i64>, Option<Vec<i64>>),
    Float(Vec<f64>, Option<Vec<i64>>),
    Triple([Vec<f64>; 3]),
    Distinct(Vec<Vec<u8>>),
}

impl Gather {
    fn new(col: StateCol) -> Gather {
        match col {
            StateCol::Rows | StateCol::NonNull(_) => Gather::Count(Vec::new()),
            StateCol::Typed(op, _, d) => {
                let ts = matches!(op, Op::First | Op::Last).then(Vec::new);
                match d {
                    Domain::I64 => Gather::Int(Vec::new(), ts),
                    Domain::F64 => Gather::Float(Vec::new(), ts),
                }
            }
            StateCol::RowStats(_) => Gather::Rows(Vec::new(), Default::default()),
            StateCol::Moments(_) => Gather::Triple(Default::default()),
            StateCol::Distinct(_) => Gather::Distinct(Vec::new()),
        }
    }

    /// Appends state column `j` of local key `i`.
    fn push(&mut self, part: &Part, j: usize, i: usize) {
        match (self, &part.accs[j]) {
            (Gather::Count(v), _) => v.push(part.counts(j).get(i)),
            (Gather::Rows(n, s), Acc::Rows(x)) => {
                n.push(x[i].n);
                s.iter_mut().zip(x[i].s).for_each(|(s, x)| s.push(x))
            }
            (Gather::Int(v, ts), Acc::Int(t)) => {
                v.push(t.v[i]);
                ts.iter_mut().for_each(|ts| ts.push(t.ts[i]));
            }
            (Gather::Float(v, ts), Acc::Float(t)) => {
                v.push(t.v[i]);
                ts.iter_mut().for_each(|ts| ts.push(t.ts[i]));
            }
            (Gather::Triple(s), Acc::Moments(m)) => {
                let m = m[i];
                s.iter_mut()
                    .zip([m.n, m.mean, m.m2])
                    .for_each(|(s, x)| s.push(x));
            }
            (Gather::Distinct(d), Acc::Distinct(x)) => d.push(x[i].to_bytes()),
            (_, a) => unreachable!("bug in panes: state column {j} is {a:?}"),
        }
    }

    /// The named columns of state column `j`: `c{j}`, with `c{j}_ts` for first/last, or
    /// `c{j}_0` to `c{j}_2` for `[sum, min, max]` (beside the row count `c{j}`) and moments
    /// `[n, mean, m2]`.
    fn columns(self, j: usize, out: &mut Vec<(String, ArrayRef)>) {
        let name = |suffix: &str| format!("c{j}{suffix}");
        match self {
            Gather::Count(v) => out.push((name(""), state::array::<UInt64Type>(v))),
            Gather::Rows(n, s) => {
                Gather::Count(n).columns(j, out);
                Gather::Triple(s).columns(j, out);
            }
            Gather::Int(v, ts) => {
                out.push((name(""), state::array::<Int64Type>(v)));
                if let Some(ts) = ts {
                    out.push((name("_ts"), state::array::<Int64Type>(ts)));
                }
            }
            Gather::Float(v, ts) => {
                out.push((name(""), state::array::<Float64Type>(v)));
                if let Some(ts) = ts {
                    out.push((name("_ts"), state::array::<Int64Type>(ts)));
                }
            }
            Gather::Triple(t) => {
                for (k, v) in t.into_iter().enumerate() {
                    out.push((name(&format!("_{k}")), state::array::<Float64Type>(v)));
                }
            }
            Gather::Distinct(d) => out.push((
                name(""),
                std::sync::Arc::new(BinaryArray::from_iter_values(d)) as ArrayRef,
            )),
        }
    }
}

/// An empty gather for each state column of `layout`.
fn gathers(layout: &[StateCol]) -> Vec<Gather> {
    layout.iter().map(|&c| Gather::new(c)).collect()
}

/// The columns of a state batch: the keys, then the gathered state columns.
fn state_columns(keys: Vec<u32>, gathers: Vec<Gather>) -> Vec<(String, ArrayRef)> {
    let mut columns = vec![("key".to_string(), state::array::<UInt32Type>(keys))];
    for (j, g) in gathers.into_iter().enumerate() {
        g.columns(j, &mut columns);
    }
    columns
}

/// The source of one state column in a state batch.
enum Scatter<'a> {
    Count(&'a [u64]),
    Rows(&'a [u64], [&'a [f64]; 3]),
    Int(&'a [i64], Option<&'a [i64]>),
    Float(&'a [f64], Option<&'a [i64]>),
    Triple([&'a [f64]; 3]),
    Distinct(&'a BinaryArray),
}

/// Sets state column `j` at `(partition, local key)` of each row of a state batch.
fn scatter(
    parts: &mut [Part],
    j: usize,
    col: StateCol,
    batch: &RecordBatch,
    at: &[(usize, usize)],
) -> crate::Result<()> {
    let name = |suffix: &str| format!("c{j}{suffix}");
    let ts = match col {
        StateCol::Typed(Op::First | Op::Last, ..) => {
            Some(state::values::<Int64Type>(batch, &name("_ts"))?)
        }
        _ => None,
    };
    let floats = |k: usize| state::values::<Float64Type>(batch, &name(&format!("_{k}")));
    let src = match col {
        StateCol::Rows | StateCol::NonNull(_) => {
            Scatter::Count(state::values::<UInt64Type>(batch, &name(""))?)
        }
        StateCol::Typed(_, _, Domain::I64) => {
            Scatter::Int(state::values::<Int64Type>(batch, &name(""))?, ts)
        }
        StateCol::Typed(_, _, Domain::F64) => {
            Scatter::Float(state::values::<Float64Type>(batch, &name(""))?, ts)
        }
        StateCol::RowStats(_) => Scatter::Rows(
            state::values::<UInt64Type>(batch, &name(""))?,
            [floats(0)?, floats(1)?, floats(2)?],
        ),
        StateCol::Moments(_) => Scatter::Triple([floats(0)?, floats(1)?, floats(2)?]),
        StateCol::Distinct(_) => Scatter::Distinct(state::binary(batch, &name(""))?),
    };
    for (r, &(p, i)) in at.iter().enumerate() {
        match (&mut parts[p].accs[j], &src) {
            (Acc::Count(c), Scatter::Count(v)) => c[i] = v[r],
            (Acc::Int(t), Scatter::Int(v, ts)) => {
                t.v[i] = v[r];
                ts.inspect(|ts| t.ts[i] = ts[r]);
            }
            (Acc::Float(t), Scatter::Float(v, ts)) => {
                t.v[i] = v[r];
                ts.inspect(|ts| t.ts[i] = ts[r]);
            }
            (Acc::Rows(x), Scatter::Rows(n, v)) => {
                x[i] = StatsRow {
                    n: n[r],
                    s: [v[0][r], v[1][r], v[2][r]],
                }
            }
            (Acc::Moments(m), Scatter::Triple(v)) => {
                m[i] = Moments {
                    n: v[0][r],
                    mean: v[1][r],
                    m2: v[2][r],
                }
            }
            (Acc::Distinct(d), Scatter::Distinct(v)) => {
                d[i] = Distinct::from_bytes(v.value(r)).ok_or_else(|| {
                    Error::BadState(format!("column c{j}, row {r}: not a distinct-count sketch"))
                })?
            }
            (a, _) => unreachable!("bug in panes: state column {j} is {a:?}"),
        }
    }
    Ok(())
}

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
    /// The block length of [`fold_plan`].
    fold_block: i64,
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
        }
    }

    fn parts(&self) -> usize {
        1 << self.shift
    }

    /// A pane's state from a batch that `export_pane` wrote (of any partition count).
    fn parts_from(&self, batch: &RecordBatch) -> crate::Result<Vec<Part>> {
        let expected: Vec<String> = state_columns(Vec::new(), gathers(&self.layout))
            .into_iter()
            .map(|c| c.0)
            .collect();
        let schema = batch.schema();
        let found: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        if !found.iter().copied().eq(&expected) {
            return Err(Error::BadState(format!(
                "expected the columns {expected:?}, found {found:?}"
            )));
        }
        let keys = state::values::<UInt32Type>(batch, "key")?;
        let (shift, mask) = (self.shift, (self.parts() - 1) as u32);
        let at: Vec<(usize, usize)> = keys
            .iter()
            .map(|&k| ((k & mask) as usize, (k >> shift) as usize))
            .collect();
        let mut parts = vec![Part::new(&self.layout); self.parts()];
        for (p, part) in parts.iter_mut().enumerate() {
            let local = at.iter().filter(|a| a.0 == p).map(|a| a.1);
            part.reset(&self.layout, local.clone().max().map_or(0, |i| i + 1));
            part.lo = local.min().unwrap_or(usize::MAX);
            part.materialize(|_| true);
        }
        for (j, &col) in self.layout.iter().enumerate() {
            scatter(&mut parts, j, col, batch, &at)?;
        }
        Ok(parts)
    }

    /// Forgets the block folds that hold any of the panes `panes`.
    fn forget_blocks(&mut self, panes: Range<i64>) {
        self.blocks
            .retain(|&(start, end), _| end <= panes.start || start >= panes.end);
    }

    /// Brings the block folds that hold `pane` up to date after the rows `sel` changed it
    /// (events late for a window that fired, on time for later ones). When few keys
    /// changed, the block's panes are folded again at each changed key, in the same order;
    /// otherwise the block is dropped, and the next window that needs it folds it anew.
    fn patch_blocks(&mut self, pane: i64, keys: &[u32], sel: Sel<'_>) {
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

    /// Updates one pane with the selected rows, and the block folds that hold it.
    fn update_pane(&mut self, pane: i64, ev: &Events<'_>, sel: Sel<'_>, keys: (u32, u32)) {
        let (min_key, max_key) = keys;
        let (shift, parts) = (self.shift, self.parts());
        let layout = &self.layout;
        // A new pane is sized for the keys the newest pane has: they will mostly come again,
        // and growing arrays step by step costs copies and page faults.
        let known: Vec<usize> = self
            .panes
            .last_key_value()
            .map_or(vec![0; parts], |(_, p)| p.iter().map(Part::len).collect());
        let pool = &mut self.pool;
        let state = self.panes.entry(pane).or_insert_with(|| {
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
            part.grow(needed);
        }
        let update = |part: &mut Part, sel: Sel<'_>| {
            part.version += 1;
            part.lo = part.lo.min((min_key >> shift) as usize);
            // A null in a column makes its non-null count diverge from the row count.
            part.materialize(
                |i| matches!(layout[i], StateCol::NonNull(c) if ev.columns[c].valid.is_some()),
            );
            for (acc, &col) in part.accs.iter_mut().zip(layout) {
                acc.update(col, ev, sel, shift);
            }
        };
        if parts == 1 {
            update(&mut state[0], sel);
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
            if sel.len() >= PARALLEL_MIN_ROWS {
                state
                    .par_iter_mut()
                    .zip(&self.scratch)
                    .for_each(|(part, rows)| update(part, Sel::Rows(rows)));
            } else {
                state
                    .iter_mut()
                    .zip(&self.scratch)
                    .for_each(|(part, rows)| update(part, Sel::Rows(rows)));
            }
        }
        self.patch_blocks(pane, ev.keys, sel);
    }
}

/// Empty state of `parts` partitions for a pane or a block: an evicted one when the pool
/// has one (its memory is reused, no fresh pages to fault in).
fn reuse(pool: &mut Vec<Vec<Part>>, layout: &[StateCol], parts: usize) -> Vec<Part> {
    match pool.pop() {
        Some(mut state) => {
            state.iter_mut().for_each(|p| p.reset(layout, 0));
            state
        }
        None => vec![Part::new(layout); parts],
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

/// Groups rows by pane. The common case, one pane, needs no row lists at all.
fn group_by_pane(panes: &[i64]) -> Vec<(i64, Vec<u32>)> {
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

    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> crate::Result<()> {
        self.forget_blocks(panes.clone());
        let mask = (self.parts() - 1) as u32;
        let (p, i) = ((key & mask) as usize, (key >> self.shift) as usize);
        for (_, parts) in self.panes.range_mut(panes) {
            if i < parts[p].len() {
                parts[p].clear_key(i);
            }
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
            .flat_map(|p| &p.accs)
            .map(Acc::bytes)
            .sum()
    }

    fn panes(&self) -> Vec<i64> {
        self.panes.keys().copied().collect()
    }

    fn export_pane(&mut self, pane: i64) -> crate::Result<Option<RecordBatch>> {
        let Some(parts) = self.panes.get_mut(&pane) else {
            return Ok(None);
        };
        let shift = self.shift;
        let mut keys = Vec::new();
        let mut gathers = gathers(&self.layout);
        for (p, part) in parts.iter_mut().enumerate() {
            part.refresh_present();
            for &i in &part.present {
                keys.push((i << shift) | p as u32);
                for (j, g) in gathers.iter_mut().enumerate() {
                    g.push(part, j, i as usize);
                }
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        state::batch(state_columns(keys, gathers)).map(Some)
    }

    fn import_pane(&mut self, pane: i64, batch: &RecordBatch) -> crate::Result<()> {
        let parts = self.parts_from(batch)?;
        self.forget_blocks(pane..pane + 1);
        self.panes.insert(pane, parts);
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
