//! Event time: reading the time column of a batch as milliseconds since the epoch.

pub mod watermark;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{
    DataType, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};

use crate::error::{Error, Result};

/// Earliest event time accepted: 0001-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: i64 = -62_135_596_800_000;
/// Latest event time accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: i64 = 253_402_300_799_999;

/// Converts a time column (a timestamp of any unit, or Int64 milliseconds) to ms: the
/// column's own values when they are ms already (no copy). `origin` names where the batch
/// came from, for errors; `first_row` its first row.
pub fn event_times(
    col: &ArrayRef,
    name: &str,
    origin: &str,
    first_row: u64,
) -> Result<ScalarBuffer<i64>> {
    // Rows are counted from 1, as a person reading the file counts data rows.
    let bad = |row: usize, message: String| {
        Error::input(
            format!("{origin}, row {}", first_row + row as u64 + 1),
            message,
        )
    };
    if col.null_count() > 0 {
        let row = (0..col.len()).find(|&i| col.is_null(i)).unwrap_or(0);
        return Err(bad(
            row,
            format!("time column {name:?} is null; every event needs an event time"),
        ));
    }
    let ms = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            scaled::<1000, 1>(col.as_primitive::<TimestampSecondType>().values())
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => col
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .clone(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            scaled::<1, 1000>(col.as_primitive::<TimestampMicrosecondType>().values())
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            scaled::<1, 1_000_000>(col.as_primitive::<TimestampNanosecondType>().values())
        }
        DataType::Int64 => col.as_primitive::<Int64Type>().values().clone(),
        other => {
            return Err(Error::input(
                origin,
                format!(
                    "time column {name:?} has type {other}; expected a timestamp or Int64 milliseconds"
                ),
            ));
        }
    };
    // Whether any time is out of range first (one pass without branches); the row only
    // when one is.
    let span = MAX_EVENT_TIME.abs_diff(MIN_EVENT_TIME);
    let out = |t: i64| t.wrapping_sub(MIN_EVENT_TIME) as u64 > span;
    if ms.iter().fold(false, |any, &t| any | out(t)) {
        let row = ms.iter().position(|&t| out(t)).unwrap_or(0);
        let raw = arrow::util::display::array_value_to_string(col, row).unwrap_or_default();
        return Err(bad(
            row,
            format!(
                "event time {raw} in column {name:?} is out of range (years 0001 to 9999 are accepted)"
            ),
        ));
    }
    Ok(ms)
}

/// `values` times `MUL`, divided by `DIV` (rounding down); a product out of range becomes
/// `i64::MAX` (then refused as out of range). Constants, so that the division is a
/// multiplication, not a hardware divide per event.
fn scaled<const MUL: i64, const DIV: i64>(values: &[i64]) -> ScalarBuffer<i64> {
    (values.iter())
        .map(|&v| v.checked_mul(MUL).map_or(i64::MAX, |v| v.div_euclid(DIV)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampNanosecondArray, TimestampSecondArray};
    use std::sync::Arc;

    #[test]
    fn converts_units_and_refuses_bad_columns() {
        let ns: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![1_500_000, -1]));
        assert_eq!(event_times(&ns, "ts", "f", 0).unwrap().as_ref(), [1, -1]);
        let s: ArrayRef = Arc::new(TimestampSecondArray::from(vec![1, i64::MAX / 10]));
        let e = event_times(&s, "ts", "f.parquet", 100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 102") && e.contains("out of range") && e.contains("f.parquet"),
            "{e}"
        );
        let f: ArrayRef = Arc::new(Float64Array::from(vec![1.0]));
        let e = event_times(&f, "ts", "f", 0).unwrap_err().to_string();
        assert!(e.contains("Float64"), "{e}");
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let e = event_times(&n, "ts", "f", 0).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("null"), "{e}");
    }
}
