//! Key interning: key columns of a batch to dense `u32` key ids, and ids back to columns.
//!
//! One integer column takes a fast path (a direct table for small values, else a hash
//! map from `i64`), and one string column another (its bytes, hashed and stored as they
//! are, in a table of our own that keeps each key's first 16 bytes and is looked up with
//! prefetching: `StrTable`). Anything else (several columns) is
//! row-encoded with `arrow::row` and interned by its bytes. Either way a key's bytes are
//! stored once in an arena. A null key is a key of its own.
//!
//! Under a memory budget the dictionary can [spill](KeyInterner::spill): the keys it gained
//! since the last spill go to a [`DiskKeys`] and leave memory. (A direct table for small
//! integers, at most 16 MiB, stays in memory.)

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use arrow::row::{RowConverter, SortField};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::keyspill::DiskKeys;

enum Interner {
    /// No key columns: every event is in the one global group.
    Global,
    /// One integer column, read as i64.
    /// Values in `0..DENSE_LIMIT` are looked up in a direct table (`u32::MAX`: not seen yet).
    Int {
        ty: DataType,
        dense: Vec<u32>,
        /// Other values of the ids in memory.
        ids: HashMap<i64, u32>,
        /// The id of the null key, once seen.
        null: Option<u32>,
        /// The value of each id in memory (0 for the null key's), from the first.
        values: Vec<i64>,
    },
    /// One string column: each key's bytes after a tag byte (1) in `arena`, the null key's
    /// empty, in id order from the first in memory.
    Str {
        ty: DataType,
        /// Ids in memory, less the first (not the null key's), with their heads.
        table: StrTable,
        /// The hash of each row of the batch being interned.
        hashes: Vec<u64>,
        hasher: DefaultHashBuilder,
        arena: Vec<u8>,
        ends: Vec<usize>,
        /// The id of the null key, once seen.
        null: Option<u32>,
        /// The values of the last dictionary-encoded batch and the id of each
        /// (`u32::MAX`: not looked up yet), kept while batches share them.
        dict: Option<(ArrayRef, Vec<u32>)>,
    },
    /// Row-encoded keys, bytes stored once in `arena`, in id order from the first in memory.
    Rows {
        converter: RowConverter,
        /// Ids in memory, less the first.
        table: HashTable<u32>,
        hasher: DefaultHashBuilder,
        arena: Vec<u8>,
        ends: Vec<usize>,
    },
}

/// The bytes of the `i`th key in the arena.
fn slice<'a>(arena: &'a [u8], ends: &[usize], i: u32) -> &'a [u8] {
    let start = if i == 0 { 0 } else { ends[i as usize - 1] };
    &arena[start..ends[i as usize]]
}

/// A string key in the table: its place in the arena and its first 16 bytes, so that a
/// lookup compares a key of up to 16 bytes (most keys: slugs, codes, ids) without a
/// call and without reading the arena, and a longer one only where the heads agree.
#[derive(Clone, Copy)]
struct Short {
    /// The id, less the first in memory.
    at: u32,
    len: u32,
    head: [u64; 2],
}

impl Short {
    fn new(at: u32, value: &[u8]) -> Short {
        Short {
            at,
            len: value.len() as u32,
            head: head(value),
        }
    }

    /// Whether this is an empty slot ([`StrTable::EMPTY`]).
    fn is_free(&self) -> bool {
        self.len == u32::MAX
    }

    /// Whether this is the key `value` of head `h` (its bytes after the tag byte in the
    /// arena).
    fn is(&self, value: &[u8], h: [u64; 2], arena: &[u8], ends: &[usize]) -> bool {
        self.len as usize == value.len()
            && self.head == h
            && (value.len() <= 16 || slice(arena, ends, self.at)[17..] == value[16..])
    }
}

/// The string keys in memory: open addressing with linear probing, a key's first slot
/// given by the high bits of its hash. Lookups go a batch at a time and prefetch the
/// slots of the keys [`StrTable::AHEAD`] rows ahead, so that for a table beyond the
/// core's cache the waits on memory overlap instead of coming one after the other.
#[derive(Default)]
struct StrTable {
    /// A power of two of them (or none), at most three quarters used; empty: length
    /// `u32::MAX`.
    slots: Vec<Short>,
    used: usize,
}

impl StrTable {
    const AHEAD: usize = 16;
    const EMPTY: Short = Short {
        at: 0,
        len: u32::MAX,
        head: [0; 2],
    };

    fn first(&self, hash: u64) -> usize {
        // The high bits: the low ones of a shard's keys may share a pattern.
        ((hash >> 32) as usize) & (self.slots.len().max(1) - 1)
    }

    fn prefetch(&self, hash: u64) {
        if let Some(slot) = self.slots.get(self.first(hash)) {
            panes_kernels::cpu::prefetch(slot);
        }
    }

    /// The key `value` (of head `h` and hash `hash`), if in memory.
    fn find(
        &self,
        hash: u64,
        value: &[u8],
        h: [u64; 2],
        arena: &[u8],
        ends: &[usize],
    ) -> Option<Short> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = self.first(hash);
        loop {
            let k = self.slots[i];
            if k.is_free() {
                return None;
            }
            if k.is(value, h, arena, ends) {
                return Some(k);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a key not in the table; `rehash` gives the hash of a key already there, when
    /// the table grows.
    fn insert(&mut self, hash: u64, k: Short, rehash: impl Fn(&Short) -> u64) {
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            let size = (self.slots.len() * 2).max(1024);
            let old = std::mem::replace(&mut self.slots, vec![StrTable::EMPTY; size]);
            for k in old.into_iter().filter(|k| !k.is_free()) {
                self.place(rehash(&k), k);
            }
        }
        self.place(hash, k);
        self.used += 1;
    }

    fn place(&mut self, hash: u64, k: Short) {
        let mask = self.slots.len() - 1;
        let mut i = self.first(hash);
        while !self.slots[i].is_free() {
            i = (i + 1) & mask;
        }
        self.slots[i] = k;
    }
}

/// Up to 16 bytes of `v` in two words, loaded as overlapping words (no loop, no call):
/// with the length, they tell apart any two values of at most 16 bytes.
fn head(v: &[u8]) -> [u64; 2] {
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let half = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
    let n = v.len();
    match n {
        16.. => [word(&v[..8]), word(&v[8..16])],
        8.. => [word(&v[..8]), word(&v[n - 8..])],
        4.. => [half(&v[..4]) | half(&v[n - 4..]) << 32, 0],
        _ => [v.iter().fold(0, |h, &b| h << 8 | u64::from(b)), 0],
    }
}

/// Bytes of an arena and its end offsets.
fn arena_bytes(arena: &Vec<u8>, ends: &Vec<usize>) -> usize {
    arena.capacity() + ends.capacity() * 8
}

/// Moves the keys of an arena to disk, and empties it.
fn arena_to_disk(disk: &mut DiskKeys, arena: &mut Vec<u8>, ends: &mut Vec<usize>) -> Result<()> {
    disk.flush((0..ends.len() as u32).map(|i| slice(arena, ends, i)))?;
    (*arena, *ends) = (Vec::new(), Vec::new());
    Ok(())
}

/// Stores a new key's bytes in the arena; its id.
fn push(arena: &mut Vec<u8>, ends: &mut Vec<usize>, len: &mut u32, key: &[u8]) -> u32 {
    reserve_gently(arena, key.len());
    arena.extend_from_slice(key);
    reserve_gently(ends, 1);
    ends.push(arena.len());
    *len += 1;
    *len - 1
}

/// Makes room for `more` items in a vector that grows by an eighth, not by doubling, so
/// that the dictionary's memory rises smoothly towards a budget.
fn reserve_gently<T>(v: &mut Vec<T>, more: usize) {
    if v.len() + more > v.capacity() {
        v.reserve_exact((v.len() / 8).max(more).max(1024));
    }
}

/// Integer keys below this are interned through a direct table (at most 16 MiB).
const DENSE_LIMIT: i64 = 1 << 22;

/// Writes the id of each of `values` that the direct table `dense` knows to `out`, and
/// `u32::MAX` for the others, in one pass with no branch per value; whether it knew every
/// one (the common case).
fn known_ids(dense: &[u32], values: &[i64], out: &mut Vec<u32>) -> bool {
    out.resize(values.len(), 0);
    let mut known = true;
    for (o, &v) in out.iter_mut().zip(values) {
        let id = usize::try_from(v)
            .ok()
            .and_then(|v| dense.get(v))
            .map_or(u32::MAX, |&id| id);
        known &= id != u32::MAX;
        *o = id;
    }
    known
}

/// Maps key columns to dense ids. See the module docs.
pub struct KeyInterner {
    names: Vec<String>,
    inner: Interner,
    len: u32,
    /// Keys of ids `0..disk.len()`, once spilled.
    disk: Option<DiskKeys>,
}

fn is_int(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

fn is_key_type(ty: &DataType) -> bool {
    is_int(ty)
        || matches!(
            ty,
            DataType::UInt64 | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

/// The type of a key column's values: a dictionary's value type, else its own. Key
/// columns may come dictionary-encoded; the interner and the outputs use this type.
pub(crate) fn value_type(ty: &DataType) -> &DataType {
    match ty {
        DataType::Dictionary(_, values) => values,
        ty => ty,
    }
}

/// A dictionary-encoded column with `Int32` keys (as Parquet gives them; other key types
/// are cast), if `col` is one.
pub(crate) fn as_dictionary(col: &ArrayRef) -> Result<Option<DictionaryArray<Int32Type>>> {
    let DataType::Dictionary(keys, values) = col.data_type() else {
        return Ok(None);
    };
    let col = match **keys {
        DataType::Int32 => col.clone(),
        _ => cast(
            col,
            &DataType::Dictionary(Box::new(DataType::Int32), values.clone()),
        )
        .map_err(|e| Error::arrow("key column", e))?,
    };
    Ok(Some(col.as_dictionary::<Int32Type>().clone()))
}

/// For a dictionary-encoded column, the index of each row's value (`None`: a null row;
/// a null value is the dictionary's to tell).
pub(crate) fn dictionary_rows(d: &DictionaryArray<Int32Type>) -> impl Fn(usize) -> Option<usize> {
    let (keys, nulls, len) = (d.keys().values(), d.keys().nulls(), d.values().len());
    move |i| {
        let k = keys[i] as usize;
        (k < len && nulls.is_none_or(|n| n.is_valid(i))).then_some(k)
    }
}

/// The id of a key missing from the in-memory tables: from the disk, else a new id from
/// `new`.
fn recall(disk: &mut Option<DiskKeys>, key: &[u8], new: impl FnOnce() -> u32) -> Result<u32> {
    let found = match disk {
        Some(disk) => disk.find(key)?,
        None => None,
    };
    Ok(found.unwrap_or_else(new))
}

impl KeyInterner {
    /// An interner for key columns with these names and types.
    pub fn new(fields: &[(String, DataType)]) -> Result<Self, String> {
        for (name, ty) in fields {
            if !is_key_type(ty) {
                return Err(format!(
                    "key column {name:?} has type {ty}; keys must be integers or strings (or dictionaries of them)"
                ));
            }
        }
        let inner = match fields {
            [] => Interner::Global,
            [(_, ty)] if is_int(ty) => Interner::Int {
                ty: ty.clone(),
                dense: Vec::new(),
                ids: HashMap::new(),
                null: None,
                values: Vec::new(),
            },
            [(_, ty)]
                if matches!(
                    ty,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                Interner::Str {
                    ty: ty.clone(),
                    table: StrTable::default(),
                    hashes: Vec::new(),
                    hasher: DefaultHashBuilder::default(),
                    arena: Vec::new(),
                    ends: Vec::new(),
                    null: None,
                    dict: None,
                }
            }
            _ => Interner::Rows {
                converter: RowConverter::new(
                    fields
                        .iter()
                        .map(|(_, t)| SortField::new(t.clone()))
                        .collect(),
                )
                .map_err(|e| format!("key columns: {e}"))?,
                table: HashTable::new(),
                hasher: DefaultHashBuilder::default(),
                arena: Vec::new(),
                ends: Vec::new(),
            },
        };
        Ok(KeyInterner {
            names: fields.iter().map(|(n, _)| n.clone()).collect(),
            inner,
            len: 0,
            disk: None,
        })
    }

    /// Number of distinct keys seen.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Keys on disk.
    pub fn spilled(&self) -> usize {
        self.disk.as_ref().map_or(0, |d| d.len() as usize)
    }

    /// Bytes held by the dictionary (approximate).
    pub fn bytes(&self) -> usize {
        let dense = match &self.inner {
            Interner::Int { dense, .. } => dense.capacity() * 4,
            _ => 0,
        };
        dense + self.spillable_bytes() + self.disk.as_ref().map_or(0, DiskKeys::bytes)
    }

    /// Bytes a [`KeyInterner::spill`] would free (approximate).
    pub fn spillable_bytes(&self) -> usize {
        let held = match &self.inner {
            Interner::Global => 0,
            Interner::Int { ids, values, .. } => ids.capacity() * 16 + values.capacity() * 8,
            Interner::Rows {
                table, arena, ends, ..
            } => table.capacity() * 4 + arena_bytes(arena, ends),
            Interner::Str {
                table,
                arena,
                ends,
                dict,
                ..
            } => {
                let dict = dict.as_ref().map_or(0, |(values, ids)| {
                    values.get_array_memory_size() + ids.capacity() * 4
                });
                table.slots.len() * size_of::<Short>() + arena_bytes(arena, ends) + dict
            }
        };
        held + self.disk.as_ref().map_or(0, DiskKeys::found_bytes)
    }

    /// Moves the keys in memory to disk, in `dir` (created) on the first spill.
    pub fn spill(&mut self, dir: impl FnOnce() -> Result<PathBuf>) -> Result<()> {
        let disk = match &mut self.disk {
            Some(d) => d,
            None => self.disk.insert(DiskKeys::new(dir()?)?),
        };
        match &mut self.inner {
            Interner::Global => {}
            Interner::Int {
                ids, null, values, ..
            } => {
                // The null key's bytes are empty: no value's are.
                let first = disk.len();
                let bytes: Vec<[u8; 8]> = values.iter().map(|v| v.to_le_bytes()).collect();
                disk.flush(bytes.iter().enumerate().map(|(i, b)| {
                    let len = if *null == Some(first + i as u32) {
                        0
                    } else {
                        8
                    };
                    &b[..len]
                }))?;
                *ids = HashMap::new();
                *values = Vec::new();
            }
            Interner::Rows {
                table, arena, ends, ..
            } => {
                arena_to_disk(disk, arena, ends)?;
                *table = HashTable::new();
            }
            Interner::Str {
                table,
                arena,
                ends,
                dict,
                ..
            } => {
                arena_to_disk(disk, arena, ends)?;
                *table = StrTable::default();
                *dict = None;
            }
        }
        Ok(())
    }

    /// Interns the key columns of a batch of `rows` rows, writing one id per row to `out`.
    pub fn intern(&mut self, cols: &[ArrayRef], rows: usize, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        let len = &mut self.len;
        let disk = &mut self.disk;
        let base = disk.as_ref().map_or(0, DiskKeys::len);
        match &mut self.inner {
            Interner::Global => {
                out.resize(rows, 0);
                *len = (*len).max(u32::from(rows > 0));
            }
            Interner::Int {
                dense,
                ids,
                null,
                values,
                ..
            } => {
                let col =
                    cast(&cols[0], &DataType::Int64).map_err(|e| Error::arrow("key column", e))?;
                let col = col.as_primitive::<Int64Type>();
                let no_nulls = col.null_count() == 0;
                if no_nulls && known_ids(dense, col.values(), out) {
                    return Ok(());
                }
                let max = col.values().iter().copied().max().unwrap_or(0);
                if (0..DENSE_LIMIT).contains(&max) && dense.len() <= max as usize {
                    dense.resize(max as usize + 1, u32::MAX);
                }
                let mut new_id = |v: i64| {
                    reserve_gently(values, 1);
                    values.push(v);
                    *len += 1;
                    *len - 1
                };
                // The id of value `v` (`None`: the null key), new or not.
                let mut id_of = |v: Option<i64>| -> Result<u32> {
                    let Some(v) = v else {
                        return Ok(*null.get_or_insert_with(|| new_id(0)));
                    };
                    let slot = match usize::try_from(v).ok().and_then(|v| dense.get_mut(v)) {
                        Some(&mut id) if id != u32::MAX => return Ok(id),
                        slot => slot,
                    };
                    // A value the direct table does not know yet may have been seen
                    // before it covered the value.
                    let id = match ids.get(&v) {
                        Some(&id) => id,
                        None => {
                            let id = recall(disk, &v.to_le_bytes(), || new_id(v))?;
                            if slot.is_none() {
                                ids.insert(v, id);
                            }
                            id
                        }
                    };
                    if let Some(slot) = slot {
                        *slot = id;
                    }
                    Ok(id)
                };
                // The rows without an id yet (those `known_ids` did not know, or every row
                // of a column with nulls) take theirs in the order they come.
                if !no_nulls {
                    out.resize(col.len(), u32::MAX);
                }
                for (i, (o, &v)) in out.iter_mut().zip(col.values()).enumerate() {
                    if *o == u32::MAX {
                        *o = id_of(col.is_valid(i).then_some(v))?;
                    }
                }
            }
            Interner::Str {
                table,
                hashes,
                hasher,
                arena,
                ends,
                null,
                dict,
                ..
            } => {
                // The id of `value` (`None`: the null key) of hash `hash`, after a
                // prefetch of the slot of hash `ahead`.
                let mut id_of =
                    |value: Option<&[u8]>, hash: u64, ahead: Option<u64>| -> Result<u32> {
                        if let Some(ahead) = ahead {
                            table.prefetch(ahead);
                        }
                        let Some(value) = value else {
                            let id = match *null {
                                Some(id) => id,
                                None => recall(disk, &[], || push(arena, ends, len, &[]))?,
                            };
                            *null = Some(id);
                            return Ok(id);
                        };
                        let h = head(value);
                        Ok(match table.find(hash, value, h, arena, ends) {
                            Some(k) => base + k.at,
                            None => {
                                let key = [&[1u8][..], value].concat();
                                let id = recall(disk, &key, || push(arena, ends, len, &key))?;
                                if id >= base {
                                    table.insert(hash, Short::new(id - base, value), |k| {
                                        hasher.hash_one(&slice(arena, ends, k.at)[1..])
                                    });
                                }
                                id
                            }
                        })
                    };
                if let Some(d) = as_dictionary(&cols[0])? {
                    // Each value of a dictionary is looked up once, when a row first
                    // uses it, and its id kept while batches share the dictionary (the
                    // batches of a Parquet column chunk do).
                    let values = cast(d.values(), &DataType::Utf8)
                        .map_err(|e| Error::arrow("key column", e))?;
                    let values = values.as_string::<i32>();
                    let ids = match dict {
                        Some((v, ids)) if Arc::ptr_eq(v, d.values()) => ids,
                        _ => {
                            &mut dict
                                .insert((d.values().clone(), vec![u32::MAX; values.len()]))
                                .1
                        }
                    };
                    // The value of each row, `None` for a null row.
                    let value_of = dictionary_rows(&d);
                    // The values that rows use for the first time (`None`: a null row),
                    // in the order they first do, so that ids come as for the strings
                    // unencoded; looked up as a batch of strings is: hashes first,
                    // prefetching ahead.
                    const NEW: u32 = u32::MAX - 1;
                    let (mut new, mut nulls) = (Vec::new(), false);
                    let n = d.len();
                    for i in 0..n {
                        match value_of(i) {
                            Some(k) if ids[k] == u32::MAX => {
                                ids[k] = NEW;
                                new.push(Some(k));
                            }
                            Some(_) => {}
                            None if !nulls => {
                                nulls = true;
                                new.push(None);
                            }
                            None => {}
                        }
                    }
                    let value = |k: Option<usize>| {
                        k.filter(|&k| values.is_valid(k))
                            .map(|k| values.value(k).as_bytes())
                    };
                    hashes.clear();
                    hashes.extend(
                        new.iter()
                            .map(|&k| hasher.hash_one(value(k).unwrap_or_default())),
                    );
                    let mut null_id = u32::MAX;
                    for (j, &k) in new.iter().enumerate() {
                        let ahead = hashes.get(j + StrTable::AHEAD).copied();
                        let id = id_of(value(k), hashes[j], ahead)?;
                        match k {
                            Some(k) => ids[k] = id,
                            None => null_id = id,
                        }
                    }
                    out.extend((0..n).map(|i| value_of(i).map_or(null_id, |k| ids[k])));
                    return Ok(());
                }
                // As Utf8 (no copy when it is): one loop, without a call through a
                // trait object for each row.
                let col =
                    cast(&cols[0], &DataType::Utf8).map_err(|e| Error::arrow("key column", e))?;
                let col = col.as_string::<i32>();
                // Hashes first, so that the slots of rows ahead can be prefetched.
                hashes.clear();
                // (A null row's value is empty: its hash goes unused.)
                let value = |i| col.value(i).as_bytes();
                hashes.extend((0..col.len()).map(|i| hasher.hash_one(value(i))));
                for (i, value) in col.iter().enumerate() {
                    let ahead = hashes.get(i + StrTable::AHEAD).copied();
                    out.push(id_of(value.map(str::as_bytes), hashes[i], ahead)?);
                }
            }
            Interner::Rows {
                converter,
                table,
                hasher,
                arena,
                ends,
            } => {
                let cols: Vec<ArrayRef> = (cols.iter())
                    .map(|c| cast(c, value_type(c.data_type())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::arrow("key columns", e))?;
                let encoded = converter
                    .convert_columns(&cols)
                    .map_err(|e| Error::arrow("encoding key columns", e))?;
                for row in encoded.iter() {
                    let bytes = row.as_ref();
                    let hash = hasher.hash_one(bytes);
                    let id = match table.find(hash, |&i| slice(arena, ends, i) == bytes) {
                        Some(&i) => base + i,
                        None => recall(disk, bytes, || {
                            let id = push(arena, ends, len, bytes);
                            table.insert_unique(hash, id - base, |&i| {
                                hasher.hash_one(slice(arena, ends, i))
                            });
                            id
                        })?,
                    };
                    out.push(id);
                }
            }
        }
        Ok(())
    }

    /// The key columns for these ids, with the names and types of the input.
    pub fn columns(&mut self, ids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let base = self.disk.as_ref().map_or(0, DiskKeys::len);
        let arrays: Vec<ArrayRef> = match &self.inner {
            Interner::Global => Vec::new(),
            Interner::Int {
                ty, values, null, ..
            } => {
                let mut col = Int64Array::builder(ids.len());
                for &id in ids {
                    if Some(id) == *null {
                        col.append_null();
                    } else if id >= base {
                        col.append_value(values[(id - base) as usize]);
                    } else {
                        let key = self.disk.as_mut().map(|d| d.key(id)).transpose()?;
                        let v = key
                            .and_then(|k| <[u8; 8]>::try_from(k).ok())
                            .ok_or_else(|| {
                                Error::Internal(format!("key {id} on disk is not an integer"))
                            })?;
                        col.append_value(i64::from_le_bytes(v));
                    }
                }
                vec![cast(&col.finish(), ty).map_err(|e| Error::arrow("key column", e))?]
            }
            Interner::Str {
                ty, arena, ends, ..
            } => {
                let mut col = arrow::array::StringBuilder::new();
                for &id in ids {
                    let spilled;
                    let key = if id >= base {
                        slice(arena, ends, id - base)
                    } else {
                        let disk = self.disk.as_mut();
                        spilled = disk.map(|d| d.key(id).map(<[u8]>::to_vec)).transpose()?;
                        spilled.as_deref().unwrap_or_default()
                    };
                    match key.split_first() {
                        None => col.append_null(),
                        Some((_, text)) => {
                            col.append_value(std::str::from_utf8(text).map_err(|e| {
                                Error::Internal(format!("key {id} is not UTF-8: {e}"))
                            })?)
                        }
                    }
                }
                vec![cast(&col.finish(), ty).map_err(|e| Error::arrow("key column", e))?]
            }
            Interner::Rows {
                converter,
                arena,
                ends,
                ..
            } => {
                let parser = converter.parser();
                let (mut spilled, mut spilled_ends) = (Vec::new(), Vec::new());
                if let Some(disk) = self.disk.as_mut() {
                    for &id in ids.iter().filter(|&&id| id < base) {
                        spilled.extend_from_slice(disk.key(id)?);
                        spilled_ends.push(spilled.len());
                    }
                }
                let mut k = 0;
                let rows = ids.iter().map(|&id| {
                    parser.parse(if id >= base {
                        slice(arena, ends, id - base)
                    } else {
                        k += 1;
                        slice(&spilled, &spilled_ends, k - 1)
                    })
                });
                converter
                    .convert_rows(rows)
                    .map_err(|e| Error::arrow("decoding key columns", e))?
            }
        };
        Ok(self.names.iter().cloned().zip(arrays).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use panes_datasets::rng::Rng;
    use std::sync::Arc;

    #[test]
    fn ids_are_dense_stable_and_round_trip() {
        let mut k = KeyInterner::new(&[("a".into(), DataType::Int32)]).unwrap();
        let mut ids = Vec::new();
        let col: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(7),
            None,
            Some(7),
            Some(-3),
            None,
        ]));
        k.intern(&[col.clone()], 5, &mut ids).unwrap();
        assert_eq!(ids, vec![0, 1, 0, 2, 1]);
        // Dense (direct table) and sparse (hash map) values share one id space.
        let big: ArrayRef = Arc::new(Int32Array::from(vec![i32::MAX, 7, -3, i32::MAX, 100]));
        k.intern(&[big], 5, &mut ids).unwrap();
        assert_eq!(ids, vec![3, 0, 2, 3, 4]);
        let back = k.columns(&[2, 1, 0]).unwrap();
        assert_eq!(
            back[0].1.as_ref(),
            &Int32Array::from(vec![Some(-3), None, Some(7)]) as &dyn Array
        );

        let fields = [("s".into(), DataType::Utf8), ("n".into(), DataType::Int64)];
        let mut k = KeyInterner::new(&fields).unwrap();
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("x"),
            Some("y"),
            Some("x"),
            None,
        ]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1, 1]));
        k.intern(&[s, n], 4, &mut ids).unwrap();
        assert_eq!(ids, vec![0, 1, 0, 2]);
        let back = k.columns(&[1, 2]).unwrap();
        assert_eq!(
            back[0].1.as_ref(),
            &StringArray::from(vec![Some("y"), None]) as &dyn Array
        );
        assert_eq!(k.len(), 3);

        // One string column: the null key and the empty string are two keys.
        let mut k = KeyInterner::new(&[("s".into(), DataType::LargeUtf8)]).unwrap();
        let s: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec![
            Some("b"),
            None,
            Some(""),
            Some("b"),
            None,
            Some("é"),
        ]));
        k.intern(&[s], 6, &mut ids).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0, 1, 3]);
        let back = k.columns(&[3, 2, 1, 0]).unwrap();
        assert_eq!(
            back[0].1.as_ref(),
            &arrow::array::LargeStringArray::from(vec![Some("é"), Some(""), None, Some("b")])
                as &dyn Array
        );
    }

    #[test]
    fn known_integers_and_new_ones_in_one_batch_get_first_seen_ids() {
        let mut k = KeyInterner::new(&[("a".into(), DataType::Int64)]).unwrap();
        let mut ids = Vec::new();
        let mut intern = |v: Vec<i64>| {
            let n = v.len();
            let col: ArrayRef = Arc::new(Int64Array::from(v));
            k.intern(&[col], n, &mut ids).unwrap();
            ids.clone()
        };
        assert_eq!(intern(vec![5, 9, 5, 0]), [0, 1, 0, 2]);
        // All known: the one-pass path.
        assert_eq!(intern(vec![9, 0, 5, 5, 0]), [1, 2, 0, 0, 2]);
        // Known, then new ones (in the table's range, past it, negative), then known.
        assert_eq!(
            intern(vec![0, 7, 9, 1 << 40, -4, 7, 5]),
            [2, 3, 1, 4, 5, 3, 0]
        );
        assert_eq!(intern(vec![-4, 1 << 40, 7]), [5, 4, 3]);
        // A new value past the table's end (which grows to it), twice, among known ones.
        assert_eq!(intern(vec![5, 11, 9, 11]), [0, 6, 1, 6]);
    }

    #[test]
    fn string_keys_that_share_bytes_are_still_different_keys() {
        // Every length around the heads' cases (0-3, 4-7, 8-15, 16 and over), each value
        // differing from another in one byte only, at the start, the middle or the end.
        let mut values = Vec::new();
        for n in 0usize..40 {
            let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            values.push(base.clone());
            for at in [0, n / 2, n.saturating_sub(1)] {
                if at < n {
                    let mut v = base.clone();
                    v[at] = b'Z';
                    values.push(v);
                }
            }
        }
        values.sort();
        values.dedup();
        // The table compares lengths and heads (and the arena beyond 16 bytes): a head
        // must tell apart any two values of one length up to 16 bytes.
        for a in values.iter().filter(|v| v.len() <= 16) {
            for b in values.iter().filter(|b| b.len() == a.len() && *b != a) {
                assert_ne!(head(a), head(b), "{a:?} and {b:?}");
            }
        }
        let strings: Vec<String> = values
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        let col: ArrayRef = Arc::new(StringArray::from(strings.clone()));
        let mut k = KeyInterner::new(&[("s".into(), DataType::Utf8)]).unwrap();
        let mut ids = Vec::new();
        k.intern(&[col.clone()], strings.len(), &mut ids).unwrap();
        assert_eq!(
            ids,
            (0..strings.len() as u32).collect::<Vec<_>>(),
            "one id each"
        );
        let mut again = Vec::new();
        let reversed: ArrayRef = Arc::new(StringArray::from_iter_values(strings.iter().rev()));
        k.intern(&[reversed], strings.len(), &mut again).unwrap();
        assert!(
            again.iter().rev().eq(ids.iter()),
            "the same ids the second time"
        );
        let back = k.columns(&ids).unwrap();
        assert_eq!(back[0].1.as_ref(), col.as_ref());

        // Enough keys for the table to grow several times: each keeps its id.
        let many: Vec<String> = (0..5_000).map(|i| format!("key-{i}")).collect();
        let col: ArrayRef = Arc::new(StringArray::from(many.clone()));
        k.intern(&[col.clone()], many.len(), &mut ids).unwrap();
        let first = strings.len() as u32;
        assert_eq!(ids, (first..first + 5_000).collect::<Vec<_>>());
        let mut again = Vec::new();
        k.intern(&[col], many.len(), &mut again).unwrap();
        assert_eq!(again, ids);
    }

    #[test]
    fn dictionary_encoded_keys_get_the_ids_their_strings_would() {
        use arrow::array::{DictionaryArray, Int8Array};
        use arrow::datatypes::{Int8Type, Int32Type};
        // Batches of one dictionary, then of another, with null keys and a null value,
        // interned dictionary-encoded and as plain strings by a second interner.
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            Some("a"),
            None,
            Some("a long key of more than sixteen bytes"),
            Some("unused"),
        ]));
        let other: ArrayRef = Arc::new(StringArray::from(vec![Some("c"), Some("b")]));
        let batches: Vec<DictionaryArray<Int32Type>> = vec![
            DictionaryArray::new(
                vec![Some(1), None, Some(0), Some(1), Some(3), Some(2)].into(),
                values.clone(),
            ),
            DictionaryArray::new(vec![Some(3), Some(0), None, Some(1)].into(), values.clone()),
            DictionaryArray::new(vec![Some(0), Some(1), Some(0)].into(), other),
        ];
        let field = [("s".into(), DataType::Utf8)];
        let (mut dict, mut plain) = (
            KeyInterner::new(&field).unwrap(),
            KeyInterner::new(&field).unwrap(),
        );
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (b, batch) in batches.into_iter().enumerate() {
            let batch: ArrayRef = Arc::new(batch);
            let strings = cast(&batch, &DataType::Utf8).unwrap();
            dict.intern(&[batch.clone()], batch.len(), &mut got)
                .unwrap();
            plain
                .intern(&[strings.clone()], batch.len(), &mut want)
                .unwrap();
            assert_eq!(got, want, "batch {b}");
            let back = dict.columns(&got).unwrap();
            assert_eq!(back[0].1.as_ref(), strings.as_ref(), "batch {b}");
        }
        // A value no row used got no id; the null key (null row or null value) is one.
        assert_eq!(dict.len(), 5, "b, a, null, the long key, c");
        // All rows null: an empty dictionary.
        let empty = DictionaryArray::<Int8Type>::new(
            Int8Array::from(vec![None, None]),
            Arc::new(StringArray::from(Vec::<&str>::new())),
        );
        dict.intern(&[Arc::new(empty)], 2, &mut got).unwrap();
        assert_eq!(got, vec![1, 1], "the null key's id");
    }

    #[test]
    fn an_integer_seen_before_the_direct_table_covered_it_keeps_its_id() {
        let mut k = KeyInterner::new(&[("a".into(), DataType::Int64)]).unwrap();
        let mut ids = Vec::new();
        let col = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        k.intern(&[col(vec![100, DENSE_LIMIT + 5])], 2, &mut ids)
            .unwrap();
        k.intern(&[col(vec![200, 100])], 2, &mut ids).unwrap();
        assert_eq!(ids, vec![2, 0]);
        assert_eq!(k.len(), 3);
    }

    /// Interns the same random batches with and without spilling after random batches;
    /// ids and key columns must agree.
    fn check_spilling(fields: &[(String, DataType)], batch: impl Fn(&mut Rng) -> Vec<ArrayRef>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut plain, mut spilling) = (
            KeyInterner::new(fields).unwrap(),
            KeyInterner::new(fields).unwrap(),
        );
        let mut rng = Rng::new(11);
        let (mut want, mut got) = (Vec::new(), Vec::new());
        for b in 0..60 {
            let cols = batch(&mut rng);
            let rows = cols[0].len();
            plain.intern(&cols, rows, &mut want).unwrap();
            spilling.intern(&cols, rows, &mut got).unwrap();
            assert_eq!(got, want, "batch {b}");
            // The ids give back the batch's own key columns.
            for (col, (_, back)) in cols.iter().zip(spilling.columns(&got).unwrap()) {
                assert_eq!(col.as_ref(), back.as_ref(), "batch {b}");
            }
            if rng.below(3) == 0 {
                spilling.spill(|| Ok(dir.path().join("keys"))).unwrap();
                assert_eq!(spilling.spillable_bytes(), 0);
            }
            let some: Vec<u32> = want.iter().step_by(5).copied().collect();
            let (x, y) = (
                plain.columns(&some).unwrap(),
                spilling.columns(&some).unwrap(),
            );
            assert_eq!(x, y, "batch {b}");
        }
        assert!(spilling.spilled() > 0);
        let all: Vec<u32> = (0..plain.len() as u32).collect();
        assert_eq!(
            plain.columns(&all).unwrap(),
            spilling.columns(&all).unwrap()
        );
    }

    #[test]
    fn a_spilled_dictionary_gives_the_same_ids_and_keys() {
        let strings = [("s".into(), DataType::Utf8), ("n".into(), DataType::Int32)];
        check_spilling(&strings, |rng| {
            let n = 1 + rng.below(500) as usize;
            let keys: Vec<u64> = (0..n).map(|_| rng.below(5000)).collect();
            let s: StringArray = keys
                .iter()
                .map(|&k| (k % 97 != 0).then(|| format!("user-{}", k % 2500)))
                .collect();
            let n: Int32Array = keys.iter().map(|&k| Some((k / 2500) as i32)).collect();
            vec![Arc::new(s), Arc::new(n)]
        });
        // One string column (its own path), null and "" among the keys, of each type.
        for ty in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            check_spilling(&[("s".into(), ty.clone())], |rng| {
                let n = 1 + rng.below(500) as usize;
                let s: StringArray = (0..n)
                    .map(|_| match rng.below(50) {
                        0 => None,
                        1 => Some(String::new()),
                        _ => Some(format!("art-{:06}", rng.below(3000))),
                    })
                    .collect();
                vec![cast(&s, &ty).unwrap()]
            });
        }
        let ints = [("a".into(), DataType::Int64)];
        check_spilling(&ints, |rng| {
            let n = 1 + rng.below(500) as usize;
            let v: Int64Array = (0..n)
                .map(|_| match rng.below(4) {
                    0 => None,
                    1 => Some(rng.below(1 << 30) as i64 - (1 << 29)),
                    _ => Some(rng.below(3000) as i64),
                })
                .collect();
            vec![Arc::new(v)]
        });
    }

    #[test]
    fn unsupported_key_types_are_named() {
        let e = KeyInterner::new(&[("f".into(), DataType::Float64)])
            .err()
            .unwrap();
        assert!(e.contains("\"f\"") && e.contains("Float64"), "{e}");
    }
}
