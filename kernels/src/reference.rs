//! The reference backend: keeps every event of a (pane, key) as it came and folds them with
//! plain scalar code when a window is combined. Slow and obviously correct: the oracle.
//!
//! Per pane it folds events in arrival order, then merges pane partials in the order of
//! [`crate::fold_plan`], the association the fast backends use, so float results agree to
//! the last bit.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::agg::{self, AggFn, AggSpec, Distinct, Domain, Moments, Value};
use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt32Type};

use crate::error::Error;
use crate::events::{Column, Events, OutColumn, Values, WindowRows};
use crate::state;
use crate::{Backend, Keys};

/// One input value as stored: `None` is SQL null.
#[derive(Clone, Copy, Debug)]
enum Scalar {
    I(i64),
    F(f64),
}

#[derive(Clone, Debug)]
struct Event {
    ts: i64,
    values: Vec<Option<Scalar>>,
}

/// The scalar oracle. See the module docs.
pub struct ReferenceBackend {
    aggs: Vec<AggSpec>,
    events: BTreeMap<(i64, u32), Vec<Event>>,
    /// The block length of [`crate::fold_plan`].
    fold_block: i64,
}

impl ReferenceBackend {
    /// A backend for these aggregates.
    pub fn new(aggs: Vec<AggSpec>) -> Self {
        ReferenceBackend {
            aggs,
            events: BTreeMap::new(),
            fold_block: 1,
        }
    }
}

fn scalar_at(col: &Column<'_>, i: usize) -> Option<Scalar> {
    if !col.is_valid(i) {
        return None;
    }
    Some(match col.values {
        Values::I64(v) => Scalar::I(v[i]),
        Values::F64(v) => Scalar::F(v[i]),
    })
}

/// Folds one aggregate's values of a window (per pane, in pane order; arrival order within
/// a pane) the way the fast backends do: a partial per pane, then the partials merged as
/// `plan` ([`crate::fold_plan`]) groups the panes.
fn fold<T: Value>(panes: &[(i64, Vec<(i64, T)>)], plan: &[Range<i64>]) -> Option<Partial<T>> {
    let segment = |j: i64| plan.partition_point(|r| r.end <= j);
    panes
        .chunk_by(|a, b| segment(a.0) == segment(b.0))
        .filter_map(|seg| {
            seg.iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(_, v)| Partial::of(v))
                .reduce(Partial::merge)
        })
        .reduce(Partial::merge)
}

struct Partial<T> {
    n: u64,
    sum: T,
    min: T,
    max: T,
    moments: Moments,
    distinct: Distinct,
    first: Option<(i64, T)>,
    last: Option<(i64, T)>,
}

impl<T: Value> Partial<T> {
    /// The partial of one pane's values.
    fn of(values: &[(i64, T)]) -> Self {
        let mut p = Partial {
            n: 0,
            sum: T::ZERO,
            min: T::MIN_IDENTITY,
            max: T::MAX_IDENTITY,
            moments: Moments::default(),
            distinct: Distinct::default(),
            first: None,
            last: None,
        };
        for &(ts, x) in values {
            p.n += 1;
            p.sum = p.sum.add(x);
            p.min = agg::min(p.min, x);
            p.max = agg::max(p.max, x);
            p.moments.push(x.to_f64());
            x.add_to(&mut p.distinct);
            if p.first.is_none_or(|(t, _)| ts < t) {
                p.first = Some((ts, x));
            }
            if p.last.is_none_or(|(t, _)| ts >= t) {
                p.last = Some((ts, x));
            }
        }
        p
    }

    /// Merges the partial of later panes into this one.
    fn merge(mut self, p: Self) -> Self {
        self.n += p.n;
        self.sum = self.sum.add(p.sum);
        self.min = agg::min(self.min, p.min);
        self.max = agg::max(self.max, p.max);
        self.moments.merge(&p.moments);
        self.distinct.merge(&p.distinct);
        if p.first
            .is_some_and(|(t, _)| self.first.is_none_or(|(u, _)| t < u))
        {
            self.first = p.first;
        }
        if p.last
            .is_some_and(|(t, _)| self.last.is_none_or(|(u, _)| t >= u))
        {
            self.last = p.last;
        }
        self
    }
}

/// The non-null values of column `col`, with their event times, per pane.
fn values_per_pane<T>(
    per_pane: &[(i64, &Vec<Event>)],
    col: usize,
    get: fn(Scalar) -> Option<T>,
) -> Vec<(i64, Vec<(i64, T)>)> {
    per_pane
        .iter()
        .map(|&(j, evs)| {
            let values = evs
                .iter()
                .filter_map(|e| e.values[col].and_then(get).map(|x| (e.ts, x)))
                .collect();
            (j, values)
        })
        .collect()
}

/// Evaluates one aggregate over the non-null values of a window and appends it to `out`.
fn evaluate<T: Value>(
    func: AggFn,
    panes: &[(i64, Vec<(i64, T)>)],
    plan: &[Range<i64>],
    out: &mut OutColumn,
    push: fn(&mut OutColumn, Option<T>),
) {
    let p = fold(panes, plan);
    match func {
        AggFn::Count => out.push_i64(Some(p.map_or(0, |p| p.n as i64))),
        AggFn::ApproxCountDistinct => out.push_i64(Some(p.map_or(0, |p| p.distinct.estimate()))),
        AggFn::Sum => push(out, p.map(|p| p.sum)),
        AggFn::Min => push(out, p.map(|p| p.min)),
        AggFn::Max => push(out, p.map(|p| p.max)),
        AggFn::First => push(out, p.and_then(|p| p.first).map(|(_, x)| x)),
        AggFn::Last => push(out, p.and_then(|p| p.last).map(|(_, x)| x)),
        AggFn::Avg => out.push_f64(p.map(|p| p.sum.to_f64() / p.n as f64)),
        AggFn::VarSamp | AggFn::VarPop | AggFn::StddevSamp | AggFn::StddevPop => {
            out.push_f64(p.and_then(|p| p.moments.finish(func)))
        }
        AggFn::CountRows => unreachable!("count(*) is evaluated by the caller"),
    }
}

impl Backend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn set_fold_block(&mut self, block: i64) {
        self.fold_block = block;
    }

    fn update(&mut self, ev: &Events<'_>) -> crate::Result<()> {
        for i in 0..ev.len() {
            let values = ev.columns.iter().map(|c| scalar_at(c, i)).collect();
            let event = Event {
                ts: ev.ts[i],
                values,
            };
            self.events
                .entry((ev.panes[i], ev.keys[i]))
                .or_default()
                .push(event);
        }
        Ok(())
    }

    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> crate::Result<WindowRows> {
        // Gather each key's events per pane, in pane order.
        let mut by_key: BTreeMap<u32, Vec<(i64, &Vec<Event>)>> = BTreeMap::new();
        for ((j, key), evs) in self.events.range((panes.start, 0)..(panes.end, 0)) {
            by_key.entry(*key).or_default().push((*j, evs));
        }
        let plan = crate::fold_plan(panes, self.fold_block);
        by_key.retain(|&k, _| keys.contains(k));
        let mut rows = WindowRows {
            keys: by_key.keys().copied().collect(),
            columns: self
                .aggs
                .iter()
                .map(|a| OutColumn::with_capacity(a.output(), by_key.len()))
                .collect(),
        };
        for per_pane in by_key.values() {
            for (spec, out) in self.aggs.iter().zip(rows.columns.iter_mut()) {
                if spec.func == AggFn::CountRows {
                    out.push_i64(Some(per_pane.iter().map(|e| e.1.len() as i64).sum()));
                    continue;
                }
                let col = spec.column;
                match spec.domain {
                    Domain::I64 => {
                        let panes = values_per_pane(per_pane, col, |s| match s {
                            Scalar::I(x) => Some(x),
                            Scalar::F(_) => None,
                        });
                        evaluate(spec.func, &panes, &plan, out, |o, v| o.push_i64(v));
                    }
                    Domain::F64 => {
                        let panes = values_per_pane(per_pane, col, |s| match s {
                            Scalar::F(x) => Some(x),
                            Scalar::I(_) => None,
                        });
                        evaluate(spec.func, &panes, &plan, out, |o, v| o.push_f64(v));
                    }
                }
            }
        }
        Ok(rows)
    }

    fn evict_before(&mut self, pane: i64) {
        self.events = self.events.split_off(&(pane, 0));
    }

    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> crate::Result<()> {
        for p in panes {
            self.events.remove(&(p, key));
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.events
            .values()
            .map(|v| v.len() * (std::mem::size_of::<Event>() + 16 * self.aggs.len()))
            .sum()
    }

    fn panes(&self) -> Vec<i64> {
        let mut panes: Vec<i64> = self.events.keys().map(|&(p, _)| p).collect();
        panes.dedup();
        panes
    }

    /// The pane's events as they came: `key`, `ts` and one column `v{c}` per input column.
    fn export_pane(&mut self, pane: i64) -> crate::Result<Option<RecordBatch>> {
        let events: Vec<(u32, &Event)> = self
            .events
            .range((pane, 0)..=(pane, u32::MAX))
            .flat_map(|(&(_, key), evs)| evs.iter().map(move |e| (key, e)))
            .collect();
        let Some((_, first)) = events.first() else {
            return Ok(None);
        };
        let mut columns = vec![
            (
                "key".to_string(),
                state::array::<UInt32Type>(events.iter().map(|e| e.0).collect()),
            ),
            (
                "ts".to_string(),
                state::array::<Int64Type>(events.iter().map(|e| e.1.ts).collect()),
            ),
        ];
        for c in 0..first.values.len() {
            // The column's domain, not its values, sets the type: every pane has one schema.
            let floats = self
                .aggs
                .iter()
                .any(|a| a.column == c && a.func != AggFn::CountRows && a.domain == Domain::F64);
            let values = events.iter().map(|e| e.1.values[c]);
            let array: ArrayRef = if floats {
                Arc::new(Float64Array::from_iter(values.map(|v| match v {
                    Some(Scalar::F(x)) => Some(x),
                    _ => None,
                })))
            } else {
                Arc::new(Int64Array::from_iter(values.map(|v| match v {
                    Some(Scalar::I(x)) => Some(x),
                    _ => None,
                })))
            };
            columns.push((format!("v{c}"), array));
        }
        state::batch(columns).map(Some)
    }

    fn import_pane(&mut self, pane: i64, batch: &RecordBatch) -> crate::Result<()> {
        self.drop_pane(pane);
        self.merge_pane(pane, batch)
    }

    /// The state's events follow the pane's own.
    fn merge_pane(&mut self, pane: i64, batch: &RecordBatch) -> crate::Result<()> {
        let keys = state::values::<UInt32Type>(batch, "key")?;
        let ts = state::values::<Int64Type>(batch, "ts")?;
        let mut columns: Vec<Box<dyn Fn(usize) -> Option<Scalar> + '_>> = Vec::new();
        while let Some(col) = batch.column_by_name(&format!("v{}", columns.len())) {
            let name = format!("v{}", columns.len());
            columns.push(match col.data_type() {
                DataType::Int64 => {
                    let a = state::primitive::<Int64Type>(batch, &name)?;
                    Box::new(move |r| a.is_valid(r).then(|| Scalar::I(a.value(r))))
                }
                DataType::Float64 => {
                    let a = state::primitive::<Float64Type>(batch, &name)?;
                    Box::new(move |r| a.is_valid(r).then(|| Scalar::F(a.value(r))))
                }
                t => return Err(Error::BadState(format!("column {name:?} has type {t}"))),
            });
        }
        for (r, (&key, &ts)) in keys.iter().zip(ts).enumerate() {
            let values = columns.iter().map(|get| get(r)).collect();
            self.events
                .entry((pane, key))
                .or_default()
                .push(Event { ts, values });
        }
        Ok(())
    }

    fn drop_pane(&mut self, pane: i64) {
        self.events.retain(|&(p, _), _| p != pane);
    }
}
