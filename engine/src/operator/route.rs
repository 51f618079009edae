//! Which shard owns a key: a hash of the key columns' values, computed column by column,
//! and the split of a batch's rows among shards (a counting sort of row indices).
//!
//! The hash depends only on the values (not on key ids, the batch or the thread count) and
//! is the same in every process, so a checkpoint's keys find their shards again at any
//! thread count, and a given input and thread count always give the same output order.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, UInt64Type};

use crate::error::{Error, Result};

const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// The hash of a null value.
const NULL: u64 = 0x6A09_E667_F3BC_C909;

/// Mixes a 64-bit word into a hash (murmur3's finalizer over the sum).
fn mix(h: u64, x: u64) -> u64 {
    let mut z = (h.rotate_left(23) ^ x).wrapping_mul(K);
    z ^= z >> 32;
    z = z.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z ^ (z >> 32)
}

/// A hash of a byte string, eight bytes at a time.
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    h
}

/// Folds one value hash per row of `col` into `hashes`.
fn fold_column(col: &ArrayRef, hashes: &mut [u64]) -> Result<()> {
    let each = |hashes: &mut [u64], value: &dyn Fn(usize) -> u64| {
        for (i, h) in hashes.iter_mut().enumerate() {
            *h = mix(*h, if col.is_null(i) { NULL } else { value(i) });
        }
    };
    match col.data_type() {
        DataType::UInt64 => {
            let v = col.as_primitive::<UInt64Type>().values();
            each(hashes, &|i| v[i]);
        }
        DataType::Utf8 => {
            let v = col.as_string::<i32>();
            each(hashes, &|i| hash_bytes(v.value(i).as_bytes()));
        }
        DataType::LargeUtf8 => {
            let v = col.as_string::<i64>();
            each(hashes, &|i| hash_bytes(v.value(i).as_bytes()));
        }
        DataType::Utf8View => {
            let v = col.as_string_view();
            each(hashes, &|i| hash_bytes(v.value(i).as_bytes()));
        }
        t if t.is_integer() => {
            let ints = cast(col, &DataType::Int64)
                .map_err(|e| Error::Internal(format!("hashing a key column: {e}")))?;
            let v = ints.as_primitive::<Int64Type>().values();
            each(hashes, &|i| v[i] as u64);
        }
        t => {
            return Err(Error::Internal(format!(
                "a key column of type {t} reached the shard router"
            )));
        }
    }
    Ok(())
}

/// The rows of a batch grouped by shard: shard `s` owns `rows[bounds[s]..bounds[s + 1]]`,
/// in their order in the batch.
#[derive(Debug, Default)]
pub(crate) struct Split {
    hashes: Vec<u64>,
    pub rows: Vec<u32>,
    pub bounds: Vec<usize>,
}

impl Split {
    /// Splits `rows` rows with key columns `cols` among `shards` shards.
    pub fn split(&mut self, cols: &[ArrayRef], rows: usize, shards: usize) -> Result<()> {
        self.hashes.clear();
        self.hashes.resize(rows, 0);
        for col in cols {
            fold_column(col, &mut self.hashes)?;
        }
        // The shard is the hash's place in [0, shards): its high bits.
        let shard_of = |h: u64| ((u128::from(h) * shards as u128) >> 64) as usize;
        self.bounds.clear();
        self.bounds.resize(shards + 1, 0);
        for &h in &self.hashes {
            self.bounds[shard_of(h) + 1] += 1;
        }
        for s in 0..shards {
            self.bounds[s + 1] += self.bounds[s];
        }
        let mut next = self.bounds.clone();
        self.rows.clear();
        self.rows.resize(rows, 0);
        for (i, &h) in self.hashes.iter().enumerate() {
            let s = shard_of(h);
            self.rows[next[s]] = i as u32;
            next[s] += 1;
        }
        Ok(())
    }

    /// The rows of shard `s`.
    pub fn of(&self, s: usize) -> &[u32] {
        &self.rows[self.bounds[s]..self.bounds[s + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn owners(cols: &[ArrayRef], shards: usize) -> Vec<usize> {
        let mut split = Split::default();
        split.split(cols, cols[0].len(), shards).unwrap();
        let mut owner = vec![usize::MAX; cols[0].len()];
        for s in 0..shards {
            for &r in split.of(s) {
                owner[r as usize] = s;
            }
        }
        owner
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
    fn keys_spread_over_shards_and_rows_keep_their_order() {
        let names: Vec<String> = (0..10_000).map(|i| format!("art-{i:06}")).collect();
        let col: ArrayRef = Arc::new(StringArray::from(names));
        let mut split = Split::default();
        split.split(&[col], 10_000, 4).unwrap();
        for s in 0..4 {
            let rows = split.of(s);
            assert!(
                (2_300..2_700).contains(&rows.len()),
                "shard {s}: {}",
                rows.len()
            );
            assert!(rows.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
