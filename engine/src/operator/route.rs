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

/// One Int64 key column without nulls (the common case): its values.
fn one_int_key(cols: &[ArrayRef]) -> Option<&[i64]> {
    match cols {
        [col] if col.null_count() == 0 => col
            .as_primitive_opt::<Int64Type>()
            .map(|v| v.values().as_ref()),
        _ => None,
    }
}

/// Whether key columns `cols` are one dictionary-encoded column, whose rows' shards
/// [`shards_of`] finds with a kept [`DictionaryShards`] (so, on one thread).
pub(crate) fn keeps_dictionary(cols: &[ArrayRef]) -> bool {
    matches!(cols, [col] if matches!(col.data_type(), DataType::Dictionary(..)))
}

/// The rows of one run of a batch's rows, grouped by shard: shard `s`'s rows are
/// `rows[starts[s]..starts[s + 1]]`, ascending.
#[derive(Default)]
pub(crate) struct Run {
    rows: Vec<u32>,
    starts: Vec<usize>,
}

/// Groups the rows of the run that starts at row `from` by shard (of `shards`).
/// `owners` holds one entry per row of the run: their shards when `known`, else it is
/// filled here from key columns `cols` (the whole batch's). Runs are split in parallel,
/// so that no thread hashes every row.
pub(crate) fn split_run(
    cols: &[ArrayRef],
    from: usize,
    owners: &mut [u16],
    known: bool,
    shards: usize,
    run: &mut Run,
) -> Result<()> {
    if !known {
        match one_int_key(cols) {
            Some(values) => {
                let values = &values[from..from + owners.len()];
                for (o, &v) in owners.iter_mut().zip(values) {
                    *o = shard_of(mix(0, v as u64), shards) as u16;
                }
            }
            None => {
                let part: Vec<ArrayRef> =
                    cols.iter().map(|c| c.slice(from, owners.len())).collect();
                shards_of(&part, shards, &mut DictionaryShards::default(), owners)?;
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if shards <= COMPRESS_MAX_SHARDS && has_avx512() {
        // SAFETY: the CPU has the features the function is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            group_compressed(owners, from, shards, run)
        };
        return Ok(());
    }
    group(owners, from, shards, run);
    Ok(())
}

/// Groups the rows of a run by shard without AVX-512: [`group_few`] at 2 and 3 shards,
/// else [`group_counted`].
fn group(owners: &[u16], from: usize, shards: usize, run: &mut Run) {
    match shards {
        2 => group_few::<2>(owners, from, run),
        3 => group_few::<3>(owners, from, run),
        _ => group_counted(owners, from, shards, run),
    }
}

/// Groups the rows of a run among `S` shards in one pass with no branch on a row's shard:
/// each row's index is written at the end of every shard's region of the rows, and only
/// its own shard's end advances; the regions then close up. At 2 and 3 shards faster than
/// [`group_counted`], whose placing pass waits on the count it just stored (on a Zen 4
/// core without AVX-512, per row: 2.5 ns against 6 at 2 shards, 3 against 5 at 3; no
/// gain at 4).
fn group_few<const S: usize>(owners: &[u16], from: usize, run: &mut Run) {
    let n = owners.len();
    // Every place read below is written first, so the rows need not be cleared.
    run.rows.resize(S * n, 0);
    let rows = &mut run.rows[..S * n];
    let mut ends: [usize; S] = std::array::from_fn(|s| s * n);
    for (i, &o) in owners.iter().enumerate() {
        let row = (from + i) as u32;
        for (s, end) in ends.iter_mut().enumerate() {
            // A shard keeps at most the rows before this one, so its end is in its region.
            rows[*end] = row;
            *end += usize::from(usize::from(o) == s);
        }
    }
    run.starts.clear();
    run.starts.push(0);
    let mut at = 0;
    for (s, end) in ends.into_iter().enumerate() {
        rows.copy_within(s * n..end, at);
        at += end - s * n;
        run.starts.push(at);
    }
}

/// Groups the rows of a run by shard with a counting sort: a pass to count each shard's
/// rows, one to place them.
fn group_counted(owners: &[u16], from: usize, shards: usize, run: &mut Run) {
    let starts = &mut run.starts;
    starts.clear();
    starts.resize(shards + 1, 0);
    for &o in owners {
        starts[usize::from(o) + 1] += 1;
    }
    for s in 0..shards {
        starts[s + 1] += starts[s];
    }
    let mut next = starts[..shards].to_vec();
    run.rows.clear();
    run.rows.resize(owners.len(), 0);
    for (i, &o) in owners.iter().enumerate() {
        let at = &mut next[usize::from(o)];
        run.rows[*at] = (from + i) as u32;
        *at += 1;
    }
}

/// Up to this many shards, [`group_compressed`] (a pass per shard) is faster than
/// [`group_counted`] (two scalar passes): on a Zen 4 core, per row, 0.5 ns against 2.1 at
/// 2 shards; 3.9 against 1.6 at 16.
const COMPRESS_MAX_SHARDS: usize = 8;

/// Whether the CPU has the AVX-512 features that [`group_compressed`] is compiled for.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// Groups the rows of a run by shard: a pass per shard, which compares 16 owners at a
/// time with the shard and compresses the indices of the equal ones into place.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
fn group_compressed(owners: &[u16], from: usize, shards: usize, run: &mut Run) {
    use std::arch::x86_64::*;
    let n = owners.len();
    // Each store writes 16 indices, of which the ones kept advance the end.
    run.rows.clear();
    run.rows.resize(n + 16, 0);
    run.starts.clear();
    run.starts.push(0);
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut k = 0;
    for s in 0..shards {
        let shard = _mm256_set1_epi16(s as i16);
        let mut at = _mm512_add_epi32(_mm512_set1_epi32(from as i32), lanes);
        let mut blocks = owners.chunks_exact(16);
        for block in &mut blocks {
            // SAFETY: `block` holds 16 u16; at most `n` indices are kept before this
            // store, so its 16 fit in the `n + 16` of `rows`.
            unsafe {
                let o = _mm256_loadu_si256(block.as_ptr().cast());
                let keep = _mm256_cmpeq_epi16_mask(o, shard);
                let kept = _mm512_maskz_compress_epi32(keep, at);
                _mm512_storeu_si512(run.rows.as_mut_ptr().add(k).cast(), kept);
                k += keep.count_ones() as usize;
            }
            at = _mm512_add_epi32(at, _mm512_set1_epi32(16));
        }
        let tail = n - blocks.remainder().len();
        for (i, &o) in blocks.remainder().iter().enumerate() {
            run.rows[k] = (from + tail + i) as u32;
            k += usize::from(usize::from(o) == s);
        }
        run.starts.push(k);
    }
    run.rows.truncate(k);
}

impl Run {
    /// The rows of the run that shard `s` owns: ascending.
    pub(crate) fn of(&self, s: usize) -> &[u32] {
        &self.rows[self.starts[s]..self.starts[s + 1]]
    }
}

/// Writes the rows that shard `s` owns, of every run (in order), into `rows`: ascending.
pub(crate) fn rows_of(runs: &[Run], s: usize, rows: &mut Vec<u32>) {
    rows.clear();
    for run in runs {
        rows.extend_from_slice(run.of(s));
    }
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
    fn every_way_of_grouping_a_run_by_shard_agrees() {
        let mut x = 7u64;
        for shards in [1, 2, 3, 8, 9, 16] {
            for n in [0, 5, 16, 100, 1000] {
                let owners: Vec<u16> = (0..n)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((x >> 33) % shards as u64) as u16
                    })
                    .collect();
                let mut counted = Run::default();
                group_counted(&owners, 40, shards, &mut counted);
                let mut few = Run::default();
                group(&owners, 40, shards, &mut few);
                assert_eq!(few.starts, counted.starts);
                assert_eq!(few.rows[..n], counted.rows[..]);
                for s in 0..shards {
                    let want: Vec<u32> = (0..n)
                        .filter(|&i| usize::from(owners[i]) == s)
                        .map(|i| (40 + i) as u32)
                        .collect();
                    let got = &counted.rows[counted.starts[s]..counted.starts[s + 1]];
                    assert_eq!(got, want, "{shards} shards, {n} rows, shard {s}");
                }
                #[cfg(target_arch = "x86_64")]
                if has_avx512() {
                    let mut compressed = Run::default();
                    #[allow(unsafe_code)]
                    unsafe {
                        group_compressed(&owners, 40, shards, &mut compressed)
                    };
                    assert_eq!(compressed.rows, counted.rows);
                    assert_eq!(compressed.starts, counted.starts);
                }
            }
        }
    }

    #[test]
    fn keys_spread_evenly_over_shards() {
        let names: Vec<String> = (0..10_000).map(|i| format!("art-{i:06}")).collect();
        let col: ArrayRef = Arc::new(StringArray::from(names));
        let mut owners = vec![0; 10_000];
        shards_of(
            &[col.clone()],
            4,
            &mut DictionaryShards::default(),
            &mut owners,
        )
        .unwrap();
        for s in 0..4 {
            let rows = owners.iter().filter(|&&o| o == s).count();
            assert!((2_300..2_700).contains(&rows), "shard {s}: {rows}");
        }
        // Strings split in runs: the same shards, hashed in each run.
        let mut found = vec![u16::MAX; 10_000];
        let mut run = Run::default();
        for (r, part) in found.chunks_mut(3000).enumerate() {
            split_run(&[col.clone()], r * 3000, part, false, 4, &mut run).unwrap();
        }
        assert_eq!(found, owners);
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
        // The same shards, split in runs of 1000 rows (their owners found there).
        let mut found = vec![u16::MAX; 10_000];
        let mut runs: Vec<Run> = (0..10).map(|_| Run::default()).collect();
        for (r, (part, run)) in found.chunks_mut(1000).zip(&mut runs).enumerate() {
            split_run(&[ints.clone()], r * 1000, part, false, 3, run).unwrap();
        }
        assert_eq!(found, owners);
        let mut rows = Vec::new();
        for s in 0..3 {
            rows_of(&runs, s, &mut rows);
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
