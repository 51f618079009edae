//! Which shard owns a key: a hash of the key columns' values, computed column by column,
//! and the rows of a batch that each shard owns.
//!
//! The hash depends only on the values (not on key ids, the batch or the thread count) and
//! is the same in every process, so a checkpoint's keys find their shards again at any
//! thread count, and a given input and thread count always give the same output order.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::key::{as_dictionary, dictionary_rows};

const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// The hash of a null value.
const NULL: u64 = 0x6A09_E667_F3BC_C909;

/// Mixes a 64-bit word into a 32-bit hash: one 32-bit multiply (Fibonacci hashing),
/// whose high bits, which pick the shard, depend on every bit of the word. (32 bits, so
/// that the compiler can mix several rows at once.)
fn mix(h: u32, x: u64) -> u32 {
    (h.rotate_left(5) ^ (x ^ (x >> 32)) as u32).wrapping_mul(0x9E37_79B9)
}

/// A hash of a byte string (foldhash, with a fixed seed: the same in every process).
fn hash_bytes(b: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(K).hash_one(b)
}

/// Folds the hash of each value of `col` into `hashes` (one per row).
fn fold_column(col: &ArrayRef, hashes: &mut [u32]) -> Result<()> {
    fn each(col: &ArrayRef, hashes: &mut [u32], value: impl Fn(usize) -> u64) {
        match col.logical_nulls() {
            None => hashes
                .iter_mut()
                .enumerate()
                .for_each(|(i, h)| *h = mix(*h, value(i))),
            Some(nulls) => hashes.iter_mut().enumerate().for_each(|(i, h)| {
                *h = mix(*h, if nulls.is_null(i) { NULL } else { value(i) });
            }),
        }
    }
    match col.data_type() {
        DataType::Int64 => {
            let v = col.as_primitive::<Int64Type>().values();
            each(col, hashes, |i| v[i] as u64);
        }
        DataType::UInt64 => {
            let v = col.as_primitive::<UInt64Type>().values();
            each(col, hashes, |i| v[i]);
        }
        DataType::Utf8 => {
            let v = col.as_string::<i32>();
            each(col, hashes, |i| hash_bytes(v.value(i).as_bytes()));
        }
        DataType::LargeUtf8 => {
            let v = col.as_string::<i64>();
            each(col, hashes, |i| hash_bytes(v.value(i).as_bytes()));
        }
        DataType::Utf8View => {
            let v = col.as_string_view();
            each(col, hashes, |i| hash_bytes(v.value(i).as_bytes()));
        }
        // (One key column that is a dictionary takes [`shards_of`]'s faster path.)
        DataType::Dictionary(_, values) => {
            let plain = cast(col, values)
                .map_err(|e| Error::Internal(format!("hashing a key column: {e}")))?;
            fold_column(&plain, hashes)?;
        }
        t if t.is_integer() => {
            let ints = cast(col, &DataType::Int64)
                .map_err(|e| Error::Internal(format!("hashing a key column: {e}")))?;
            let v = ints.as_primitive::<Int64Type>().values();
            each(col, hashes, |i| v[i] as u64);
        }
        t => {
            return Err(Error::Internal(format!(
                "a key column of type {t} reached the shard router"
            )));
        }
    }
    Ok(())
}

/// The shard (of `shards`) of hash `h`: its place in [0, shards), from its high bits.
fn shard_of(h: u32, shards: usize) -> usize {
    ((u64::from(h) * shards as u64) >> 32) as usize
}

/// One Int64 key column without nulls (the common case): its values, which every shard
/// hashes for itself (a multiply per row), so that no thread hashes for all of them.
/// Other keys (strings, several columns) are hashed once, by [`shards_of`].
pub(crate) fn one_int_key(cols: &[ArrayRef]) -> Option<&[i64]> {
    match cols {
        [col] if col.null_count() == 0 => col
            .as_primitive_opt::<Int64Type>()
            .map(|v| v.values().as_ref()),
        _ => None,
    }
}

/// Writes the rows that shard `s` (of `shards`) owns into `rows`, ascending: by hashing
/// key columns `cols` when [`one_int_key`] takes them, else from `owners` (one shard per
/// row, from [`shards_of`]).
pub(crate) fn rows_of(
    cols: &[ArrayRef],
    owners: &[u16],
    shards: usize,
    s: usize,
    rows: &mut Vec<u32>,
) {
    let n = cols.first().map_or(owners.len(), |c| c.len());
    rows.clear();
    rows.resize(n, 0);
    let mut k = 0;
    // Keeps the rows whose shard is `s` (without branches: each row is written at the
    // end, and kept if it is the shard's), a block of rows at a time.
    let mut keep = |from: usize, owners: &[u16]| {
        for (i, &o) in owners.iter().enumerate() {
            rows[k] = (from + i) as u32;
            k += usize::from(usize::from(o) == s);
        }
    };
    match one_int_key(cols) {
        Some(values) => {
            let mut block = [0u16; 1024];
            for (b, chunk) in values.chunks(block.len()).enumerate() {
                for (o, &v) in block.iter_mut().zip(chunk) {
                    *o = shard_of(mix(0, v as u64), shards) as u16;
                }
                keep(b * block.len(), &block[..chunk.len()]);
            }
        }
        None => keep(0, owners),
    }
    rows.truncate(k);
}

/// The shard of each value of the last dictionary that a one-column key came in, kept
/// while batches share the dictionary (the batches of a Parquet column chunk do).
#[derive(Default)]
pub(crate) struct DictionaryShards(Option<(ArrayRef, Vec<u16>)>);

/// Writes the shard (of `shards`) that owns each row of key columns `cols` into `out`,
/// which has one entry per row. One dictionary-encoded column: each value is hashed once
/// while `dictionary` keeps it.
pub(crate) fn shards_of(
    cols: &[ArrayRef],
    shards: usize,
    dictionary: &mut DictionaryShards,
    out: &mut [u16],
) -> Result<()> {
    if let [col] = cols
        && let Some(d) = as_dictionary(col)?
    {
        let of_values = match &mut dictionary.0 {
            Some((values, of)) if Arc::ptr_eq(values, d.values()) => of,
            cached => {
                let mut of = vec![0; d.values().len()];
                shards_of(
                    &[d.values().clone()],
                    shards,
                    &mut DictionaryShards(None),
                    &mut of,
                )?;
                &mut cached.insert((d.values().clone(), of)).1
            }
        };
        let null = shard_of(mix(0, NULL), shards) as u16;
        let value_of = dictionary_rows(&d);
        for (i, o) in out.iter_mut().enumerate() {
            *o = value_of(i).map_or(null, |k| of_values[k]);
        }
        return Ok(());
    }
    let mut hashes = vec![0u32; out.len()];
    for col in cols {
        fold_column(col, &mut hashes)?;
    }
    for (o, &h) in out.iter_mut().zip(&hashes) {
        *o = shard_of(h, shards) as u16;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn owners(cols: &[ArrayRef], shards: usize) -> Vec<usize> {
        let mut out = vec![u16::MAX; cols[0].len()];
        shards_of(cols, shards, &mut DictionaryShards::default(), &mut out).unwrap();
        out.into_iter().map(usize::from).collect()
    }

    #[test]
    fn a_key_has_one_shard_whatever_its_integer_type_and_batch() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            Some(7),
            None,
            Some(1),
            Some(-3),
        ]));
        let b: ArrayRef = Arc::new(Int32Array::from(vec![Some(-3), None, Some(7), Some(1)]));
        let (oa, ob) = (owners(&[a], 3), owners(&[b], 3));
        assert!(oa.iter().all(|&s| s < 3), "every row has a shard");
        assert_eq!(oa[0], oa[3], "the same key, the same shard");
        assert_eq!((oa[4], oa[1], oa[2], oa[0]), (ob[0], ob[2], ob[1], ob[3]));
    }

    #[test]
    fn a_dictionary_encoded_key_has_the_shard_of_its_string() {
        use arrow::array::DictionaryArray;
        use arrow::datatypes::Int32Type;
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("art-000001"),
            None,
            Some("art-000002"),
            Some("art-000003"),
        ]));
        let keys = vec![Some(0), Some(2), None, Some(1), Some(3), Some(0), Some(3)];
        let dict: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(keys.into(), values));
        let plain = cast(&dict, &DataType::Utf8).unwrap();
        let second: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3, 4, 5, 6, 7]));
        for shards in [2, 3, 8] {
            assert_eq!(
                owners(&[dict.clone()], shards),
                owners(&[plain.clone()], shards)
            );
            // The shards a kept dictionary gives, for a second batch of it.
            let mut kept = DictionaryShards::default();
            let mut out = vec![0; dict.len()];
            for _ in 0..2 {
                shards_of(&[dict.clone()], shards, &mut kept, &mut out).unwrap();
                let out: Vec<usize> = out.iter().map(|&o| usize::from(o)).collect();
                assert_eq!(out, owners(&[plain.clone()], shards));
            }
            // With a second key column: the general path.
            assert_eq!(
                owners(&[dict.clone(), second.clone()], shards),
                owners(&[plain.clone(), second.clone()], shards)
            );
        }
        // Not all on one shard, or the test would say nothing.
        let o = owners(&[plain], 8);
        assert!(o.iter().any(|&s| s != o[0]));
    }

    #[test]
    fn keys_spread_evenly_over_shards() {
        let names: Vec<String> = (0..10_000).map(|i| format!("art-{i:06}")).collect();
        let col: ArrayRef = Arc::new(StringArray::from(names));
        let mut owners = vec![0; 10_000];
        shards_of(&[col], 4, &mut DictionaryShards::default(), &mut owners).unwrap();
        for s in 0..4 {
            let rows = owners.iter().filter(|&&o| o == s).count();
            assert!((2_300..2_700).contains(&rows), "shard {s}: {rows}");
        }
        // Integer keys, by the one-pass path and the general one.
        let ints: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10_000));
        let mut owners = vec![0; 10_000];
        shards_of(
            &[ints.clone()],
            3,
            &mut DictionaryShards::default(),
            &mut owners,
        )
        .unwrap();
        let mut rows = Vec::new();
        for s in 0..3 {
            rows_of(&[ints.clone()], &[], 3, s, &mut rows);
            assert!(
                (3_000..3_700).contains(&rows.len()),
                "shard {s}: {}",
                rows.len()
            );
            assert!(rows.windows(2).all(|w| w[0] < w[1]));
            assert!(rows.iter().all(|&r| usize::from(owners[r as usize]) == s));
        }
    }
}
