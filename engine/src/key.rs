//! Key interning: key columns of a batch to dense `u32` key ids, and ids back to columns.
//!
//! One integer column takes a fast path (a hash map from `i64`). Anything else (strings,
//! several columns) is row-encoded with `arrow::row` and interned by its bytes, which are
//! stored once in an arena. A null key is a key of its own.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow::row::{RowConverter, SortField};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;

use crate::error::{Error, Result};

enum Interner {
    /// No key columns: every event is in the one global group.
    Global,
    /// One integer column, read as i64.
    /// Values in `0..DENSE_LIMIT` are looked up in a direct table (`u32::MAX`: not seen yet).
    Int {
        ty: DataType,
        dense: Vec<u32>,
        ids: HashMap<i64, u32>,
        /// The id of the null key, once seen.
        null: Option<u32>,
        /// The value of each id (0 for the null key's).
        values: Vec<i64>,
    },
    /// Row-encoded keys, bytes stored once in `arena`.
    Rows {
        converter: RowConverter,
        table: HashTable<u32>,
        hasher: DefaultHashBuilder,
        arena: Vec<u8>,
        ends: Vec<usize>,
    },
}

/// The bytes of key `id` in the arena.
fn slice<'a>(arena: &'a [u8], ends: &[usize], id: u32) -> &'a [u8] {
    let start = if id == 0 { 0 } else { ends[id as usize - 1] };
    &arena[start..ends[id as usize]]
}

/// Integer keys below this are interned through a direct table (at most 16 MiB).
const DENSE_LIMIT: i64 = 1 << 22;

/// Maps key columns to dense ids. See the module docs.
pub struct KeyInterner {
    names: Vec<String>,
    inner: Interner,
    len: u32,
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

impl KeyInterner {
    /// An interner for key columns with these names and types.
    pub fn new(fields: &[(String, DataType)]) -> Result<Self, String> {
        for (name, ty) in fields {
            if !is_key_type(ty) {
                return Err(format!(
                    "key column {name:?} has type {ty}; keys must be integers or strings"
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
        })
    }

    /// Number of distinct keys seen.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no key has been seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the dictionary (approximate).
    pub fn bytes(&self) -> usize {
        match &self.inner {
            Interner::Global => 0,
            Interner::Int {
                dense, ids, values, ..
            } => dense.capacity() * 4 + ids.capacity() * 16 + values.capacity() * 8,
            Interner::Rows {
                table, arena, ends, ..
            } => table.capacity() * 4 + arena.capacity() + ends.capacity() * 8,
        }
    }

    /// Interns the key columns of a batch of `rows` rows, writing one id per row to `out`.
    pub fn intern(&mut self, cols: &[ArrayRef], rows: usize, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        let len = &mut self.len;
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
                let mut new_id = |v: i64| {
                    values.push(v);
                    *len += 1;
                    *len - 1
                };
                let max = col.values().iter().copied().max().unwrap_or(0);
                if (0..DENSE_LIMIT).contains(&max) && dense.len() <= max as usize {
                    dense.resize(max as usize + 1, u32::MAX);
                }
                for (i, &v) in col.values().iter().enumerate() {
                    let id = if col.is_null(i) {
                        *null.get_or_insert_with(|| new_id(0))
                    } else if v >= 0 && (v as usize) < dense.len() {
                        let slot = &mut dense[v as usize];
                        if *slot == u32::MAX {
                            *slot = new_id(v);
                        }
                        *slot
                    } else {
                        *ids.entry(v).or_insert_with(|| new_id(v))
                    };
                    out.push(id);
                }
            }
            Interner::Rows {
                converter,
                table,
                hasher,
                arena,
                ends,
            } => {
                let encoded = converter
                    .convert_columns(cols)
                    .map_err(|e| Error::arrow("encoding key columns", e))?;
                for row in encoded.iter() {
                    let bytes = row.as_ref();
                    let hash = hasher.hash_one(bytes);
                    let id = match table.find(hash, |&id| slice(arena, ends, id) == bytes) {
                        Some(&id) => id,
                        None => {
                            arena.extend_from_slice(bytes);
                            ends.push(arena.len());
                            let id = *len;
                            *len += 1;
                            table.insert_unique(hash, id, |&id| {
                                hasher.hash_one(slice(arena, ends, id))
                            });
                            id
                        }
                    };
                    out.push(id);
                }
            }
        }
        Ok(())
    }

    /// The key columns for these ids, with the names and types of the input.
    pub fn columns(&self, ids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        let arrays: Vec<ArrayRef> = match &self.inner {
            Interner::Global => Vec::new(),
            Interner::Int {
                ty, values, null, ..
            } => {
                let col: Int64Array = ids
                    .iter()
                    .map(|&id| (Some(id) != *null).then(|| values[id as usize]))
                    .collect();
                vec![cast(&col, ty).map_err(|e| Error::arrow("key column", e))?]
            }
            Interner::Rows {
                converter,
                arena,
                ends,
                ..
            } => {
                let parser = converter.parser();
                let rows = ids.iter().map(|&id| parser.parse(slice(arena, ends, id)));
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
    }

    #[test]
    fn unsupported_key_types_are_named() {
        let e = KeyInterner::new(&[("f".into(), DataType::Float64)])
            .err()
            .unwrap();
        assert!(e.contains("\"f\"") && e.contains("Float64"), "{e}");
    }
}
