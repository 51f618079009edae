//! Pane state as Arrow batches: the columns a backend writes for a checkpoint or a spill
//! file, and their checked reading back.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, PrimitiveArray, RecordBatch};
use arrow::datatypes::ArrowPrimitiveType;

use crate::error::{Error, Result};

/// A batch of named columns.
pub(crate) fn batch(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch> {
    RecordBatch::try_from_iter(columns).map_err(|e| Error::BadState(e.to_string()))
}

/// A primitive column from a plain vector.
pub(crate) fn array<T: ArrowPrimitiveType>(values: Vec<T::Native>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::from_iter_values(values))
}

/// Column `name` of a state batch as an array of `T`.
pub(crate) fn primitive<'a, T: ArrowPrimitiveType>(
    state: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    let col = state
        .column_by_name(name)
        .ok_or_else(|| Error::BadState(format!("column {name:?} is missing")))?;
    col.as_primitive_opt::<T>().ok_or_else(|| {
        Error::BadState(format!(
            "column {name:?} has type {}, not {}",
            col.data_type(),
            T::DATA_TYPE
        ))
    })
}

/// The values of column `name`, which must hold no nulls.
pub(crate) fn values<'a, T: ArrowPrimitiveType>(
    state: &'a RecordBatch,
    name: &str,
) -> Result<&'a [T::Native]> {
    let col = primitive::<T>(state, name)?;
    if col.null_count() > 0 {
        return Err(Error::BadState(format!("column {name:?} holds nulls")));
    }
    Ok(col.values())
}

/// Binary column `name`.
pub(crate) fn binary<'a>(state: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    state
        .column_by_name(name)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| Error::BadState(format!("binary column {name:?} is missing")))
}
