//! State batches (for checkpoints and spill): a pane's state gathered at its keys with rows
//! into named columns, and scattered back into partitions from such a batch.

use super::CpuBackend;
use super::state::{Acc, Op, Part, SparsePanes, StateCol, StatsRow, sparse_pays};
use crate::agg::{Distinct, Domain, Moments};
use crate::error::Error;
use crate::state;
use arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, UInt32Type, UInt64Type};

/// One state column of a pane, gathered at its keys with rows (for a state batch). Other
/// backends convert their state to and from these to write and read the same batches.
pub(crate) enum Gather {
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

/// The state columns of the CPU backend for `aggs`: the layout of every backend's state
/// batches (checkpoints move between backends).
pub(crate) fn layout(aggs: &[crate::AggSpec]) -> Vec<StateCol> {
    CpuBackend::new(aggs, 1).layout
}

/// A state batch from `keys` and one gathered column per state column of the layout.
pub(crate) fn state_batch(keys: Vec<u32>, columns: Vec<Gather>) -> crate::Result<RecordBatch> {
    state::batch(state_columns(keys, columns))
}

/// The keys of a state batch and its columns, read for the state columns of `layout`.
pub(crate) fn read_state_batch(
    layout: &[StateCol],
    batch: &RecordBatch,
) -> crate::Result<(Vec<u32>, Vec<Gather>)> {
    check_columns(layout, batch)?;
    let keys = state::values::<UInt32Type>(batch, "key")?.to_vec();
    let columns = layout
        .iter()
        .enumerate()
        .map(|(j, &col)| {
            let name = |suffix: &str| format!("c{j}{suffix}");
            let ts = || -> crate::Result<Option<Vec<i64>>> {
                Ok(match col {
                    StateCol::Typed(Op::First | Op::Last, ..) => {
                        Some(state::values::<Int64Type>(batch, &name("_ts"))?.to_vec())
                    }
                    _ => None,
                })
            };
            let floats = |k: usize| {
                state::values::<Float64Type>(batch, &name(&format!("_{k}"))).map(<[f64]>::to_vec)
            };
            let counts = || state::values::<UInt64Type>(batch, &name("")).map(<[u64]>::to_vec);
            Ok(match col {
                StateCol::Rows | StateCol::NonNull(_) => Gather::Count(counts()?),
                StateCol::Typed(_, _, Domain::I64) => Gather::Int(
                    state::values::<Int64Type>(batch, &name(""))?.to_vec(),
                    ts()?,
                ),
                StateCol::Typed(_, _, Domain::F64) => Gather::Float(
                    state::values::<Float64Type>(batch, &name(""))?.to_vec(),
                    ts()?,
                ),
                StateCol::RowStats(_) => {
                    Gather::Rows(counts()?, [floats(0)?, floats(1)?, floats(2)?])
                }
                StateCol::Moments(_) => Gather::Triple([floats(0)?, floats(1)?, floats(2)?]),
                StateCol::Distinct(_) => Gather::Distinct(
                    state::binary(batch, &name(""))?
                        .iter()
                        .map(|b| b.unwrap_or_default().to_vec())
                        .collect(),
                ),
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    Ok((keys, columns))
}

/// Fails unless `batch` has exactly the columns of a state batch of `layout`.
fn check_columns(layout: &[StateCol], batch: &RecordBatch) -> crate::Result<()> {
    let expected: Vec<String> = state_columns(Vec::new(), gathers(layout))
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
    Ok(())
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

impl CpuBackend {
    /// A pane's state from a batch that `export_pane` wrote (of any partition count).
    pub(super) fn parts_from(&self, batch: &RecordBatch) -> crate::Result<Vec<Part>> {
        check_columns(&self.layout, batch)?;
        let keys = state::values::<UInt32Type>(batch, "key")?;
        let (shift, mask) = (self.shift, (self.parts() - 1) as u32);
        let local = |p: usize| {
            (keys.iter())
                .filter(move |&&k| (k & mask) as usize == p)
                .map(move |&k| (k >> shift) as usize)
        };
        let mut parts = vec![Part::new(&self.layout); self.parts()];
        for (p, part) in parts.iter_mut().enumerate() {
            let (count, span) = (local(p).count(), local(p).max().map_or(0, |i| i + 1));
            let sparse = match self.sparse {
                SparsePanes::Never => false,
                SparsePanes::Always => true,
                SparsePanes::Auto { min_keys } => {
                    let row = part.row_bytes();
                    sparse_pays(count, span, row, 2) && span << shift >= min_keys
                }
            };
            if sparse {
                *part = Part::sparse_with(&self.layout, local(p).map(|i| i as u32));
            } else {
                part.reset(&self.layout, span);
            }
            part.lo = local(p).min().unwrap_or(usize::MAX);
            part.materialize(|_| true);
        }
        // Each row's (partition, row in the state arrays).
        let at = (keys.iter())
            .map(|&k| {
                let (p, i) = ((k & mask) as usize, (k >> shift) as usize);
                let row = parts[p].slot(i);
                row.map(|r| (p, r))
                    .ok_or_else(|| Error::BadState(format!("key {k} has no row")))
            })
            .collect::<crate::Result<Vec<(usize, usize)>>>()?;
        for (j, &col) in self.layout.iter().enumerate() {
            scatter(&mut parts, j, col, batch, &at)?;
        }
        Ok(parts)
    }

    /// The state batch of `pane` (see `export_pane`): `None` when the pane is not held or
    /// has no rows.
    pub(super) fn pane_batch(&mut self, pane: i64) -> crate::Result<Option<RecordBatch>> {
        let Some(parts) = self.panes.get_mut(&pane) else {
            return Ok(None);
        };
        let shift = self.shift;
        let mut keys = Vec::new();
        let mut gathers = gathers(&self.layout);
        for (p, part) in parts.iter_mut().enumerate() {
            part.refresh_present();
            let (present, slots) = part.present_in(0..usize::MAX);
            for (n, &i) in present.iter().enumerate() {
                keys.push((i << shift) | p as u32);
                let row = slots.map_or(i as usize, |s| s[n] as usize);
                for (j, g) in gathers.iter_mut().enumerate() {
                    g.push(part, j, row);
                }
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        state::batch(state_columns(keys, gathers)).map(Some)
    }
}
