//! The state representation: the state columns of a job, the state arrays of one key
//! partition of a pane (`Part`), dense over the key ids or sparse (a slot per key it saw),
//! and their sizing, clearing and listing of keys with rows.

use std::ops::Range;

use hashbrown::HashMap;

use crate::agg::{Distinct, Domain, Moments, Value};

/// A pane with fewer than 1/`SPARSE_RATIO` of the keys is merged at its keys only.
pub(super) const SPARSE_RATIO: usize = 4;

/// What a key costs a sparse part beyond its state row: its slot in the index (with the
/// index's spare room) and in the list of keys, and its place in the sorted key lists.
const SLOT_BYTES: usize = 24;

/// Whether `keys` keys with state rows of `row` bytes cost less sparse than a dense part
/// over `span` key ids does. `margin` (1 or more) asks for that much less.
pub(super) fn sparse_pays(keys: usize, span: usize, row: usize, margin: usize) -> bool {
    keys * (row + SLOT_BYTES) * margin < span * row
}

/// Which panes keep their state sparse: a slot per key they saw instead of a row per key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparsePanes {
    /// A new pane (or one read back) is sparse when there are at least `min_keys` key ids
    /// and slots for the keys of the pane before it (its own) would cost at most half the
    /// memory of a row per key id; a sparse pane that would cost less dense becomes dense.
    /// Dense panes are faster: a pane of most keys stays dense. The default `min_keys` is
    /// [`SPARSE_MIN_KEYS`].
    Auto {
        /// Key spaces below this many ids keep dense panes.
        min_keys: usize,
    },
    /// Every pane is sparse, whatever it sees (for tests: the sparse path on small inputs).
    Always,
    /// Every pane is dense.
    Never,
}

impl Default for SparsePanes {
    fn default() -> Self {
        SparsePanes::Auto {
            min_keys: SPARSE_MIN_KEYS,
        }
    }
}

/// Key spaces below this many ids keep dense panes, by default: their panes are small.
pub const SPARSE_MIN_KEYS: usize = 1 << 14;

/// The slots of a sparse part: its arrays hold one row per key it saw, in the order it
/// saw them.
#[derive(Clone, Debug, Default)]
pub(super) struct Slots {
    /// The slot of each local key seen.
    index: HashMap<u32, u32>,
    /// The local key of each slot.
    pub(super) keys: Vec<u32>,
    /// The key space seen: every local key is below this.
    span: usize,
}

impl Slots {
    /// The slot of local key `i`, made if it is new.
    #[inline(always)]
    pub(super) fn slot(&mut self, i: u32) -> u32 {
        let next = self.keys.len() as u32;
        let slot = *self.index.entry(i).or_insert(next);
        if slot == next {
            self.keys.push(i);
            self.span = self.span.max(i as usize + 1);
        }
        slot
    }

    fn bytes(&self) -> usize {
        self.index.capacity() * (size_of::<(u32, u32)>() + 1) + self.keys.capacity() * 4
    }
}

/// What one state array accumulates. State column 0 is always the row count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateCol {
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
pub(super) struct StatsRow {
    pub(super) n: u64,
    pub(super) s: [f64; 3],
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
pub(super) enum Counts<'a> {
    Plain(&'a [u64]),
    Rows(&'a [StatsRow]),
}

impl Counts<'_> {
    #[inline(always)]
    pub(super) fn get(self, i: usize) -> u64 {
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
    pub(super) fn each_nonzero(self, lo: usize, f: impl FnMut(usize)) {
        match self {
            Counts::Plain(c) => (lo..c.len()).filter(|&i| c[i] > 0).for_each(f),
            Counts::Rows(r) => (lo..r.len()).filter(|&i| r[i].n > 0).for_each(f),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
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
    pub(crate) fn ts_identity(self) -> i64 {
        if self == Op::First {
            i64::MAX
        } else {
            i64::MIN
        }
    }
}

/// Values of one typed state column, plus event times for first/last.
#[derive(Clone, Debug)]
pub(super) struct Typed<T> {
    pub(super) op: Op,
    pub(super) v: Vec<T>,
    pub(super) ts: Vec<i64>,
}

#[derive(Clone, Debug)]
pub(super) enum Acc {
    Count(Vec<u64>),
    Rows(Vec<StatsRow>),
    /// A non-null count while the pane has seen no null in its column: the row count.
    SameAsRows,
    Int(Typed<i64>),
    Float(Typed<f64>),
    Moments(Vec<Moments>),
    Distinct(Vec<Distinct>),
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

    /// Puts key `i` back to the empty state.
    fn clear_key(&mut self, i: usize) {
        self.v[i] = self.op.identity();
        if let Some(t) = self.ts.get_mut(i) {
            *t = self.op.ts_identity();
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

    /// Bytes a key's state takes in the arrays (a sketch's heap not counted).
    fn row_bytes(&self) -> usize {
        match self {
            Acc::Count(_) => 8,
            Acc::Rows(_) => size_of::<StatsRow>(),
            Acc::SameAsRows => 0,
            Acc::Int(Typed { op, .. }) | Acc::Float(Typed { op, .. }) => {
                // First and last keep an event time beside the value.
                8 + 8 * matches!(op, Op::First | Op::Last) as usize
            }
            Acc::Moments(_) => size_of::<Moments>(),
            Acc::Distinct(_) => size_of::<Distinct>(),
        }
    }

    pub(super) fn bytes(&self) -> usize {
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
}

/// The state of one key partition of one pane (or of a window being combined).
#[derive(Clone, Debug)]
pub(super) struct Part {
    pub(super) accs: Vec<Acc>,
    /// Bumped by every change of the state.
    pub(super) version: u64,
    /// The local keys with rows, as of version `present_at`.
    pub(super) present: Vec<u32>,
    /// The slot of each key of `present`, where the part is sparse.
    pub(super) present_slots: Vec<u32>,
    pub(super) present_at: Option<u64>,
    /// No local key below this one holds data (`usize::MAX`: none does). Key spaces that
    /// keep growing (new auctions, new sessions) use only their newest ids, so scans of
    /// the rows start here.
    pub(super) lo: usize,
    /// Sparse state: the arrays are indexed by slot, not by local key.
    pub(super) slots: Option<Box<Slots>>,
}

impl Part {
    pub(super) fn new(layout: &[StateCol]) -> Part {
        Part {
            accs: layout.iter().map(|&c| Acc::new(c)).collect(),
            version: 0,
            present: Vec::new(),
            present_slots: Vec::new(),
            present_at: None,
            lo: usize::MAX,
            slots: None,
        }
    }

    /// An empty sparse part with a slot for each of `keys` (local keys), in that order.
    pub(super) fn sparse_with(layout: &[StateCol], keys: impl Iterator<Item = u32>) -> Part {
        let mut slots = Box::<Slots>::default();
        keys.for_each(|k| {
            slots.slot(k);
        });
        let mut part = Part::new(layout);
        part.grow(slots.keys.len());
        part.slots = Some(slots);
        part
    }

    /// Rows in the state arrays: one per local key when dense, one per slot when sparse.
    pub(super) fn len(&self) -> usize {
        self.accs[0].len()
    }

    /// The key space it covers: every local key with state is below this.
    pub(super) fn span(&self) -> usize {
        self.slots.as_ref().map_or(self.len(), |s| s.span)
    }

    /// Where local key `i` is in the state arrays, if it has a row there.
    #[inline]
    pub(super) fn slot(&self, i: usize) -> Option<usize> {
        match &self.slots {
            None => (i < self.len()).then_some(i),
            Some(s) => s.index.get(&(i as u32)).map(|&s| s as usize),
        }
    }

    /// Bytes of state a key costs (in the state arrays).
    pub(super) fn row_bytes(&self) -> usize {
        self.accs.iter().map(Acc::row_bytes).sum()
    }

    /// Bytes held: the state arrays, and the slots and key lists of a sparse part. (A dense
    /// part's list of keys with rows is not counted: at most half its arrays' bytes.)
    pub(super) fn bytes(&self) -> usize {
        self.accs.iter().map(Acc::bytes).sum::<usize>()
            + self.slots.as_ref().map_or(0, |s| s.bytes())
            + self.slots.as_ref().map_or(0, |_| {
                (self.present.capacity() + self.present_slots.capacity()) * 4
            })
    }

    /// A sparse part whose keys would cost less dense becomes dense: a row per key id is
    /// then cheaper than slots, and faster.
    pub(super) fn densify_if_full(&mut self, layout: &[StateCol]) {
        let Some(slots) = self.slots.as_ref() else {
            return;
        };
        if sparse_pays(slots.keys.len(), slots.span, self.row_bytes(), 1) {
            return;
        }
        let mut dense = Part::new(layout);
        dense.grow(slots.span);
        dense.lo = self.lo;
        dense.version = self.version + 1;
        dense.merge_pairs(
            self,
            slots.keys.iter().enumerate().map(|(s, &k)| (k as usize, s)),
        );
        *self = dense;
    }

    pub(super) fn grow(&mut self, n: usize) {
        if n > self.len() {
            self.accs.iter_mut().for_each(|a| a.resize(n));
        }
    }

    /// Lists the keys with rows, ascending (with their slots, where sparse), unless the
    /// list is current.
    pub(super) fn refresh_present(&mut self) {
        if self.present_at == Some(self.version) {
            return;
        }
        self.present.clear();
        self.present_slots.clear();
        let rows = rows_of(&self.accs);
        match &self.slots {
            None => {
                let present = &mut self.present;
                rows.each_nonzero(self.lo, |i| present.push(i as u32));
            }
            Some(slots) => {
                let mut at: Vec<(u32, u32)> = (slots.keys.iter().enumerate())
                    .filter(|&(s, _)| rows.get(s) > 0)
                    .map(|(s, &k)| (k, s as u32))
                    .collect();
                at.sort_unstable();
                self.present.extend(at.iter().map(|a| a.0));
                self.present_slots.extend(at.iter().map(|a| a.1));
            }
        }
        self.present_at = Some(self.version);
    }

    /// Whether a merge visits this pane at its `present` keys only, not whole (never
    /// when the keys are not listed; always when it is sparse).
    pub(super) fn sparse(&self) -> bool {
        self.present_at.is_some()
            && (self.slots.is_some() || self.present.len() * SPARSE_RATIO < self.len())
    }

    /// The listed keys with rows among local keys `range`, each with its row in the state
    /// arrays (the list must be current).
    pub(super) fn present_in(&self, range: Range<usize>) -> (&[u32], Option<&[u32]>) {
        let at = |i: usize| self.present.partition_point(|&k| (k as usize) < i);
        let (from, to) = (at(range.start), at(range.end));
        let slots = self.slots.as_ref().map(|_| &self.present_slots[from..to]);
        (&self.present[from..to], slots)
    }

    /// Makes the `present` list current where a merge reads it: a pane last listed as
    /// dense stays dense while events only add keys, and is merged whole. (Hop windows
    /// merge a pane again after late events changed it: a rescan of every key each time.)
    pub(super) fn refresh_if_sparse(&mut self) {
        if self.present_at.is_none() || self.sparse() {
            self.refresh_present();
        }
    }

    /// Puts local key `i` back to the empty state.
    pub(super) fn clear_key(&mut self, i: usize) {
        if let Some(s) = self.slot(i) {
            self.clear_slot(s);
        }
    }

    /// Puts row `i` of the state arrays back to the empty state.
    pub(super) fn clear_slot(&mut self, i: usize) {
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

    /// Empties the state and sizes it for `n` keys, dense, keeping the memory it has.
    pub(super) fn reset(&mut self, layout: &[StateCol], n: usize) {
        self.version += 1;
        self.present_at = None;
        self.lo = usize::MAX;
        self.slots = None;
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
    pub(super) fn materialize(&mut self, needed: impl Fn(usize) -> bool) {
        let (rows, rest) = self.accs.split_at_mut(1);
        for (i, a) in rest.iter_mut().enumerate() {
            if matches!(a, Acc::SameAsRows) && needed(i + 1) {
                *a = Acc::Count(rows_of(rows).to_vec());
            }
        }
    }

    /// The counts of state column `c` (a row or non-null count).
    pub(super) fn counts(&self, c: usize) -> Counts<'_> {
        match &self.accs[c] {
            Acc::SameAsRows => self.rows(),
            a => a.counts().expect("bug in panes: count state expected"),
        }
    }

    pub(super) fn rows(&self) -> Counts<'_> {
        rows_of(&self.accs)
    }
}

/// The row counts of a part's state columns (column 0).
fn rows_of(accs: &[Acc]) -> Counts<'_> {
    accs[0]
        .counts()
        .expect("bug in panes: state column 0 is not the row count")
}

/// Empty state of `parts` partitions for a pane or a block: an evicted one when the pool
/// has one (its memory is reused, no fresh pages to fault in).
pub(super) fn reuse(pool: &mut Vec<Vec<Part>>, layout: &[StateCol], parts: usize) -> Vec<Part> {
    match pool.pop() {
        Some(mut state) => {
            state.iter_mut().for_each(|p| p.reset(layout, 0));
            state
        }
        None => vec![Part::new(layout); parts],
    }
}
