//! What kernels take in (a segment of events, columnar) and give back (a window's rows).

use crate::agg::OutType;

/// Values of one input column, in the domain the aggregates read it in.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// Integers.
    I64(&'a [i64]),
    /// Floats.
    F64(&'a [f64]),
}

/// One input column: values plus validity (`None` when the column has no nulls).
#[derive(Clone, Copy, Debug)]
pub struct Column<'a> {
    /// The values; slots that are null hold an arbitrary value.
    pub values: Values<'a>,
    /// `valid[i]` is false where row `i` is null.
    pub valid: Option<&'a [bool]>,
}

impl<'a> Column<'a> {
    /// Rows `range` of the column.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Column<'a> {
        Column {
            values: match self.values {
                Values::I64(v) => Values::I64(&v[range.clone()]),
                Values::F64(v) => Values::F64(&v[range.clone()]),
            },
            valid: self.valid.map(|v| &v[range]),
        }
    }

    /// Whether row `i` holds a value.
    #[inline(always)]
    pub fn is_valid(&self, i: usize) -> bool {
        self.valid.is_none_or(|v| v[i])
    }
}

/// A segment of events, columnar, in stream order. All slices have the same length.
#[derive(Clone, Copy, Debug)]
pub struct Events<'a> {
    /// Dense key id of each event.
    pub keys: &'a [u32],
    /// Pane index of each event.
    pub panes: &'a [i64],
    /// Event time in ms (first/last order by it).
    pub ts: &'a [i64],
    /// Input columns that the aggregates refer to by index.
    pub columns: &'a [Column<'a>],
}

impl<'a> Events<'a> {
    /// Events `range`, with their columns sliced into `columns` (which must hold them).
    pub fn slice(&self, range: std::ops::Range<usize>, columns: &'a [Column<'a>]) -> Events<'a> {
        Events {
            keys: &self.keys[range.clone()],
            panes: &self.panes[range.clone()],
            ts: &self.ts[range],
            columns,
        }
    }

    /// The columns of events `range`.
    pub fn columns_in(&self, range: std::ops::Range<usize>) -> Vec<Column<'a>> {
        self.columns
            .iter()
            .map(|c| c.slice(range.clone()))
            .collect()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One result column of a window.
#[derive(Clone, Debug, PartialEq)]
pub enum OutColumn {
    /// Integers (counts, integer sums, min, max, first, last).
    I64 {
        /// Values; arbitrary where not valid.
        values: Vec<i64>,
        /// Validity.
        valid: Vec<bool>,
    },
    /// Floats.
    F64 {
        /// Values; arbitrary where not valid.
        values: Vec<f64>,
        /// Validity.
        valid: Vec<bool>,
    },
}

impl OutColumn {
    /// An empty column for a result type, with room for `n` rows.
    pub fn with_capacity(ty: OutType, n: usize) -> OutColumn {
        match ty {
            OutType::Count | OutType::I64 => OutColumn::I64 {
                values: Vec::with_capacity(n),
                valid: Vec::with_capacity(n),
            },
            OutType::F64 => OutColumn::F64 {
                values: Vec::with_capacity(n),
                valid: Vec::with_capacity(n),
            },
        }
    }

    /// Appends an integer (`None` = null). Panics on a float column: a bug in panes.
    #[inline]
    pub fn push_i64(&mut self, v: Option<i64>) {
        match self {
            OutColumn::I64 { values, valid } => {
                values.push(v.unwrap_or(0));
                valid.push(v.is_some());
            }
            OutColumn::F64 { .. } => unreachable!("bug in panes: integer pushed to a float column"),
        }
    }

    /// Appends a float (`None` = null). Panics on an integer column: a bug in panes.
    #[inline]
    pub fn push_f64(&mut self, v: Option<f64>) {
        match self {
            OutColumn::F64 { values, valid } => {
                values.push(v.unwrap_or(0.0));
                valid.push(v.is_some());
            }
            OutColumn::I64 { .. } => {
                unreachable!("bug in panes: float pushed to an integer column")
            }
        }
    }

    /// Appends integers (`None` = null). Panics on a float column: a bug in panes.
    pub fn extend_i64(&mut self, vs: impl ExactSizeIterator<Item = Option<i64>>) {
        match self {
            OutColumn::I64 { values, valid } => extend(values, valid, vs),
            OutColumn::F64 { .. } => {
                unreachable!("bug in panes: integers pushed to a float column")
            }
        }
    }

    /// Appends floats (`None` = null). Panics on an integer column: a bug in panes.
    pub fn extend_f64(&mut self, vs: impl ExactSizeIterator<Item = Option<f64>>) {
        match self {
            OutColumn::F64 { values, valid } => extend(values, valid, vs),
            OutColumn::I64 { .. } => {
                unreachable!("bug in panes: floats pushed to an integer column")
            }
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            OutColumn::I64 { valid, .. } | OutColumn::F64 { valid, .. } => valid.len(),
        }
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn extend<T: Default>(
    values: &mut Vec<T>,
    valid: &mut Vec<bool>,
    vs: impl ExactSizeIterator<Item = Option<T>>,
) {
    // Sized first, then filled through zipped slices: no capacity check per row.
    let (from, n) = (values.len(), vs.len());
    values.resize_with(from + n, T::default);
    valid.resize(from + n, false);
    for ((x, ok), v) in values[from..].iter_mut().zip(&mut valid[from..]).zip(vs) {
        *ok = v.is_some();
        *x = v.unwrap_or_default();
    }
}

/// Top-k order of integer values (`None`: null): larger first, nulls last.
pub fn rank_i64(a: Option<i64>, b: Option<i64>) -> std::cmp::Ordering {
    b.cmp(&a)
}

/// Top-k order of float values (`None`: null): NaN first (of either sign: NaN is the
/// largest float, as for `max`), then numbers larger first (zeros of both signs equal),
/// nulls last.
pub fn rank_f64(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    let class = |v: Option<f64>| match v {
        None => 0,
        Some(x) if x.is_nan() => 2,
        Some(_) => 1,
    };
    match (a, b) {
        (Some(x), Some(y)) if class(a) == 1 && class(b) == 1 => {
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
        }
        _ => class(b).cmp(&class(a)),
    }
}

/// The rows of one fired window: a key id per row and one column per aggregate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowRows {
    /// Key id of each row, ascending.
    pub keys: Vec<u32>,
    /// One column per aggregate of the job, in job order.
    pub columns: Vec<OutColumn>,
}

impl WindowRows {
    /// The rows within the `k` largest values of column `by`, largest first, and every row
    /// that ties with the `k`th (the caller breaks those ties): nulls rank last, a float
    /// NaN first (NaN is the largest float, as for `max`). Rows of equal value keep key id
    /// order.
    pub fn top_k_ties(&self, by: usize, k: usize) -> WindowRows {
        use std::cmp::Ordering;
        type Compare<'a> = Box<dyn Fn(&usize, &usize) -> Ordering + 'a>;
        let by_value: Compare<'_> = match &self.columns[by] {
            OutColumn::I64 { values, valid } => {
                let v = |i: usize| valid[i].then_some(values[i]);
                Box::new(move |&a, &b| rank_i64(v(a), v(b)))
            }
            OutColumn::F64 { values, valid } => {
                let v = |i: usize| valid[i].then_some(values[i]);
                Box::new(move |&a, &b| rank_f64(v(a), v(b)))
            }
        };
        let mut rows: Vec<usize> = (0..self.keys.len()).collect();
        if k == 0 {
            rows.clear();
        } else if k < rows.len() {
            rows.select_nth_unstable_by(k - 1, &by_value);
            let kth = rows[k - 1];
            rows.retain(|r| by_value(r, &kth) != Ordering::Greater);
        }
        rows.sort_unstable_by(|a, b| by_value(a, b).then(a.cmp(b)));
        self.take(&rows)
    }

    /// Appends the rows of `other`, which has the same columns.
    pub fn append(&mut self, other: WindowRows) {
        if self.columns.is_empty() {
            *self = other;
            return;
        }
        self.keys.extend(other.keys);
        for (mine, theirs) in self.columns.iter_mut().zip(other.columns) {
            match (mine, theirs) {
                (
                    OutColumn::I64 { values, valid },
                    OutColumn::I64 {
                        values: v,
                        valid: ok,
                    },
                ) => {
                    values.extend(v);
                    valid.extend(ok);
                }
                (
                    OutColumn::F64 { values, valid },
                    OutColumn::F64 {
                        values: v,
                        valid: ok,
                    },
                ) => {
                    values.extend(v);
                    valid.extend(ok);
                }
                _ => unreachable!("bug in panes: appending rows of different columns"),
            }
        }
    }

    /// Rows `rows`, in that order.
    pub fn take(&self, rows: &[usize]) -> WindowRows {
        WindowRows {
            keys: rows.iter().map(|&r| self.keys[r]).collect(),
            columns: self
                .columns
                .iter()
                .map(|c| match c {
                    OutColumn::I64 { values, valid } => OutColumn::I64 {
                        values: rows.iter().map(|&r| values[r]).collect(),
                        valid: rows.iter().map(|&r| valid[r]).collect(),
                    },
                    OutColumn::F64 { values, valid } => OutColumn::F64 {
                        values: rows.iter().map(|&r| values[r]).collect(),
                        valid: rows.iter().map(|&r| valid[r]).collect(),
                    },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_largest_first_nulls_last_and_keeps_ties() {
        let rows = WindowRows {
            keys: vec![1, 2, 3, 4, 5, 6],
            columns: vec![OutColumn::F64 {
                values: vec![2.0, 0.0, 7.0, f64::NAN, 7.0, -1.0],
                valid: vec![true, false, true, true, true, true],
            }],
        };
        assert_eq!(rows.top_k_ties(0, 3).keys, vec![4, 3, 5]);
        assert_eq!(rows.top_k_ties(0, 2).keys, vec![4, 3, 5], "7.0 ties");
        assert_eq!(rows.top_k_ties(0, 10).keys, vec![4, 3, 5, 1, 6, 2]);
        assert!(rows.top_k_ties(0, 0).keys.is_empty());
        let ints = WindowRows {
            keys: vec![7, 8, 9],
            columns: vec![OutColumn::I64 {
                values: vec![5, 9, 5],
                valid: vec![true, true, true],
            }],
        };
        assert_eq!(ints.top_k_ties(0, 1).keys, vec![8]);
        let top = ints.top_k_ties(0, 2);
        assert_eq!(top.keys, vec![8, 7, 9]);
        assert_eq!(
            top.columns[0],
            OutColumn::I64 {
                values: vec![9, 5, 5],
                valid: vec![true, true, true]
            }
        );
    }
}
