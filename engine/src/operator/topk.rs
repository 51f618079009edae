//! Top-k per window: ranks result rows by the job's ranking aggregate, largest first
//! ([`panes_kernels::rank_f64`]), ties by key value, and keeps the first k. A shard ranks
//! its own rows; the operator ranks the shards' lists of one firing again, which gives the
//! rows a single shard would have given, whatever the thread count.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use panes_kernels::{rank_f64, rank_i64};

use super::plan::Plan;
use crate::error::{Error, Result};
use crate::job::TopK;

/// The first `t.k` rows of `batch` (window rows of one firing) in rank order, with their
/// `rank` column set.
pub(crate) fn rank(batch: &RecordBatch, plan: &Plan, t: TopK) -> Result<RecordBatch> {
    let internal = |e: arrow::error::ArrowError| Error::Internal(format!("ranking top-k: {e}"));
    let keys = plan.key_fields.len();
    let by = batch.column(keys + 2 + t.by);
    let value: Box<dyn Fn(usize, usize) -> std::cmp::Ordering> =
        if let Some(v) = by.as_primitive_opt::<Int64Type>() {
            Box::new(move |a, b| {
                rank_i64(
                    v.is_valid(a).then(|| v.value(a)),
                    v.is_valid(b).then(|| v.value(b)),
                )
            })
        } else if let Some(v) = by.as_primitive_opt::<Float64Type>() {
            Box::new(move |a, b| {
                rank_f64(
                    v.is_valid(a).then(|| v.value(a)),
                    v.is_valid(b).then(|| v.value(b)),
                )
            })
        } else {
            return Err(Error::Internal(format!(
                "top-k ranks by a column of type {}",
                by.data_type()
            )));
        };
    let fields = plan
        .key_fields
        .iter()
        .map(|(_, ty)| SortField::new(ty.clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(internal)?;
    let key_rows = converter
        .convert_columns(&batch.columns()[..keys])
        .map_err(internal)?;
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        value(a, b).then_with(|| key_rows.row(a).cmp(&key_rows.row(b)))
    });
    order.truncate(t.k);
    let n = order.len();
    let top = take_record_batch(batch, &UInt32Array::from(order)).map_err(internal)?;
    let mut columns: Vec<ArrayRef> = top.columns().to_vec();
    columns[keys + 2 + plan.specs.len()] = Arc::new(Int64Array::from_iter_values(1..=n as i64));
    RecordBatch::try_new(top.schema(), columns).map_err(internal)
}
