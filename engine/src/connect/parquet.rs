//! Parquet source: files read in name order as one partition, row group by row group in
//! micro-batches (never a whole file at once, and no batch across two row groups),
//! projected to the columns the job reads.
//!
//! String columns that the job asks for as dictionaries (a key column it reads for
//! nothing else) come as Arrow dictionaries when the files store them dictionary-encoded:
//! a column chunk's distinct strings are then decoded once, not once per row, and the key
//! interner looks each up once per chunk.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::errors::ParquetError;

use super::{DecodeResult, Decoded, FileSequence, Position, Source, SourceBatch, decode_ahead};
use crate::error::{Error, Result};

/// What every file of a source is read with.
#[derive(Clone)]
struct Reading {
    /// The columns read (`None`: all).
    columns: Option<Vec<String>>,
    /// String columns read as dictionaries.
    dictionary: Vec<String>,
    batch_rows: usize,
    /// Row groups decoded at once, each on a thread of its own (1: on the caller's); at
    /// least 1.
    decoders: usize,
}

/// The batches of one file, every row decoded, a reader per row group so that no batch
/// spans two (a batch of a dictionary-encoded column then shares its chunk's dictionary).
/// With `decoders` > 1, that many row groups are decoded at once, each on a thread of its
/// own, and their batches come out in file order; once the file has no row group left to
/// start, the next files' first row groups start (see [`Ahead`]).
struct RowGroups {
    file: File,
    /// The file's path, opened again by each decoding thread (clones of `file` share its
    /// offset, and the reader seeks).
    path: PathBuf,
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    batch_rows: usize,
    /// The row groups not yet started.
    groups: Range<usize>,
    /// Rows to skip at the start of the next row group (a restored position).
    offset: usize,
    decoders: usize,
    /// The row groups being decoded, in file order.
    decoding: VecDeque<Decoding>,
    /// The files after this one, opened early (with several decoders and several files).
    ahead: Option<Arc<Mutex<Ahead>>>,
}

/// A row group's batches: decoded here, or on a thread that sends them.
enum Decoding {
    Here(ParquetRecordBatchReader),
    Ahead(Receiver<DecodeResult>),
}

/// Rows a decoding thread may hold that nobody has taken yet (in batches, at least 2):
/// about a row group as writers cut them, so that the threads decoding the next row
/// groups are not held up while the first is taken.
const DECODED_AHEAD: usize = 1 << 20;

impl RowGroups {
    /// The row groups of `path` from row `skip` on: whole row groups are skipped unread,
    /// then rows of the next one.
    fn open(path: &PathBuf, skip: u64, reading: &Reading) -> Result<RowGroups> {
        let (file, meta) = open_file(path, &reading.dictionary)?;
        let mask = projection(&meta, path, reading.columns.as_deref())?;
        let sizes: Vec<u64> = (meta.metadata().row_groups().iter())
            .map(|g| g.num_rows() as u64)
            .collect();
        let (mut groups, mut rest) = (0, skip);
        while groups < sizes.len() && sizes[groups] <= rest {
            rest -= sizes[groups];
            groups += 1;
        }
        if skip > 0 {
            tracing::info!(
                "resuming {} at row group {groups}, row {rest}",
                path.display()
            );
        }
        Ok(RowGroups {
            file,
            path: path.clone(),
            meta,
            mask,
            batch_rows: reading.batch_rows,
            groups: groups..sizes.len(),
            offset: rest as usize,
            decoders: reading.decoders,
            decoding: VecDeque::new(),
            ahead: None,
        })
    }

    /// Starts decoding the next row group; whether there was one.
    fn start_next(&mut self) -> Result<bool, ArrowError> {
        let Some(group) = self.groups.clone().next() else {
            return Ok(false);
        };
        let (meta, mask, batch_rows, offset) = (
            self.meta.clone(),
            self.mask.clone(),
            self.batch_rows,
            self.offset,
        );
        let read = move |file: File| {
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta)
                .with_projection(mask)
                .with_batch_size(batch_rows)
                .with_row_groups(vec![group])
                .with_offset(offset)
                .build()
        };
        if self.decoders == 1 {
            let reader = read(self.file.try_clone().map_err(ParquetError::from)?)?;
            self.decoding.push_back(Decoding::Here(reader));
        } else {
            let path = self.path.clone();
            let capacity = (DECODED_AHEAD / batch_rows.max(1)).max(2);
            let rx = decode_ahead(capacity, move || {
                let opened = File::open(&path).map_err(ParquetError::from).and_then(read);
                let (reader, failed) = match opened {
                    Ok(reader) => (Some(reader), None),
                    Err(e) => (None, Some(Err(e.into()))),
                };
                let batches = reader.into_iter().flatten();
                failed
                    .into_iter()
                    .chain(batches.map(|b| b.map(Decoded::from)))
            })?;
            self.decoding.push_back(Decoding::Ahead(rx));
        }
        self.groups.start += 1;
        self.offset = 0;
        Ok(true)
    }
}

impl Iterator for RowGroups {
    type Item = DecodeResult;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while self.decoding.len() < self.decoders {
                match self.start_next() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Some(Err(e)),
                }
            }
            if let Some(ahead) = &self.ahead {
                lock(ahead).fill(self.decoders - self.decoding.len());
            }
            let next = match self.decoding.front_mut()? {
                Decoding::Here(reader) => reader.next().map(|b| b.map(Decoded::from)),
                Decoding::Ahead(rx) => rx.recv().ok(),
            };
            match next {
                Some(batch) => return Some(batch),
                None => drop(self.decoding.pop_front()),
            }
        }
    }
}

/// The files after the one being read, opened before their turn so that their first row
/// groups decode while it ends: a job over many small files decodes several at once.
struct Ahead {
    files: Vec<PathBuf>,
    /// The next file to open early.
    next: usize,
    /// The files opened early, in order, some of their row groups decoding.
    opened: VecDeque<RowGroups>,
    reading: Reading,
}

impl Ahead {
    /// Starts row groups of the next files while fewer than `room` of theirs are
    /// decoding. A file that does not open is left to its turn, which says why.
    fn fill(&mut self, room: usize) {
        let mut busy: usize = self.opened.iter().map(|g| g.decoding.len()).sum();
        while busy < room {
            if let Some(last) = self.opened.back_mut() {
                match last.start_next() {
                    Ok(true) => {
                        busy += 1;
                        continue;
                    }
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
            let Some(path) = self.files.get(self.next) else {
                return;
            };
            match RowGroups::open(path, 0, &self.reading) {
                Ok(groups) => {
                    self.opened.push_back(groups);
                    self.next += 1;
                }
                Err(_) => {
                    self.next = self.files.len();
                    return;
                }
            }
        }
    }

    /// File `path`, read from row `skip`, if it was opened early (only ever from its
    /// start). If not, what was opened early is dropped, and the files after `path` are
    /// opened early from now on.
    fn take(&mut self, path: &PathBuf, skip: u64) -> Option<RowGroups> {
        match self.opened.pop_front() {
            Some(groups) if skip == 0 && groups.path == *path => Some(groups),
            _ => {
                self.opened.clear();
                self.next =
                    (self.files.iter().position(|f| f == path)).map_or(self.files.len(), |i| i + 1);
                None
            }
        }
    }
}

fn lock(ahead: &Mutex<Ahead>) -> MutexGuard<'_, Ahead> {
    ahead.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) struct ParquetSource {
    reading: Reading,
    schema: SchemaRef,
    total: u64,
    files: FileSequence<RowGroups>,
    /// The files opened early, with several decoders and several files.
    ahead: Option<Arc<Mutex<Ahead>>>,
}

/// A file and its footer.
fn footer(path: &PathBuf) -> Result<(File, ArrowReaderMetadata)> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|e| Error::parquet(path.clone(), e))?;
    Ok((file, meta))
}

/// Whether `ty` can be read as a dictionary of strings.
fn stringy(ty: &DataType) -> bool {
    matches!(ty, DataType::Utf8 | DataType::LargeUtf8)
}

/// Of the string columns `wanted`, those that most row groups of `files` store with a
/// dictionary page (reading a plain-encoded chunk as a dictionary would build one, at a
/// cost). Reads only the footers.
pub(super) fn dictionary_encoded(files: &[PathBuf], wanted: &[String]) -> Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let footers = (files.iter())
        .map(|path| Ok(footer(path)?.1))
        .collect::<Result<Vec<_>>>()?;
    let groups: usize = footers.iter().map(|m| m.metadata().num_row_groups()).sum();
    // The row groups that store string column `name` with a dictionary page.
    let encoded = |name: &String| -> usize {
        let encoded_in = |m: &ArrowReaderMetadata| {
            let string = (m.schema().field_with_name(name)).is_ok_and(|f| stringy(f.data_type()));
            let schema = m.parquet_schema();
            let leaf = (0..schema.num_columns())
                .find(|&i| schema.column(i).path().parts() == std::slice::from_ref(name));
            leaf.filter(|_| string).map_or(0, |leaf| {
                (m.metadata().row_groups().iter())
                    .filter(|g| g.column(leaf).dictionary_page_offset().is_some())
                    .count()
            })
        };
        footers.iter().map(encoded_in).sum()
    };
    Ok((wanted.iter())
        .filter(|c| groups > 0 && encoded(c) * 2 >= groups)
        .cloned()
        .collect())
}

/// A file and its footer, with string columns `dictionary` to be read as dictionaries.
fn open_file(path: &PathBuf, dictionary: &[String]) -> Result<(File, ArrowReaderMetadata)> {
    let (file, meta) = footer(path)?;
    let meta = if dictionary.is_empty() {
        meta
    } else {
        let fields = meta.schema().fields().iter().map(|f| match f.data_type() {
            ty if stringy(ty) && dictionary.contains(f.name()) => {
                Arc::new(f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(ty.clone()),
                )))
            }
            _ => f.clone(),
        });
        let schema =
            Schema::new_with_metadata(fields.collect::<Vec<_>>(), meta.schema().metadata().clone());
        let options = ArrowReaderOptions::new().with_schema(Arc::new(schema));
        ArrowReaderMetadata::try_new(meta.metadata().clone(), options)
            .map_err(|e| Error::parquet(path.clone(), e))?
    };
    Ok((file, meta))
}

fn projection(
    b: &ArrowReaderMetadata,
    path: &Path,
    columns: Option<&[String]>,
) -> Result<ProjectionMask> {
    let Some(columns) = columns else {
        return Ok(ProjectionMask::all());
    };
    let schema = b.schema();
    let mut roots = Vec::new();
    for name in columns {
        let i = schema.index_of(name).map_err(|_| {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::input(
                path.display().to_string(),
                format!(
                    "column {name:?} does not exist; the file has {}",
                    have.join(", ")
                ),
            )
        })?;
        roots.push(i);
    }
    Ok(ProjectionMask::roots(b.parquet_schema(), roots))
}

impl ParquetSource {
    /// A source of `files`, reading `columns` (`None`: all), of which the string columns
    /// `dictionary` come as dictionaries (see [`dictionary_encoded`]), `decoders` row
    /// groups decoded at once.
    pub(super) fn open(
        files: &[PathBuf],
        columns: Option<&[String]>,
        dictionary: &[String],
        batch_rows: usize,
        decoders: usize,
    ) -> Result<Self> {
        let mut schema = None;
        let mut total = 0;
        for path in files {
            // Reads only the footer: checks every file before the first event is processed.
            let (file, meta) = open_file(path, dictionary)?;
            let mask = projection(&meta, path, columns)?;
            total += meta.metadata().file_metadata().num_rows() as u64;
            let projected = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta)
                .with_projection(mask)
                .build()
                .map_err(|e| Error::parquet(path.clone(), e))?;
            let projected = arrow::record_batch::RecordBatchReader::schema(&projected);
            match &schema {
                None => schema = Some(projected),
                Some(first) if first.fields() != projected.fields() => {
                    return Err(Error::input(
                        path.display().to_string(),
                        format!(
                            "schema differs from the first file {}: {projected} vs {first}",
                            files[0].display()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let schema =
            schema.ok_or_else(|| Error::Internal("a Parquet source with no files".into()))?;
        let reading = Reading {
            columns: columns.map(<[String]>::to_vec),
            dictionary: dictionary.to_vec(),
            batch_rows,
            decoders: decoders.max(1),
        };
        let ahead = (reading.decoders > 1 && files.len() > 1).then(|| {
            Arc::new(Mutex::new(Ahead {
                files: files.to_vec(),
                next: 1,
                opened: VecDeque::new(),
                reading: reading.clone(),
            }))
        });
        Ok(ParquetSource {
            reading,
            schema,
            total,
            files: FileSequence::new("Parquet", files.to_vec()),
            ahead,
        })
    }
}

impl Source for ParquetSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn partitions(&self) -> usize {
        1
    }

    fn total_rows(&self) -> Option<u64> {
        Some(self.total)
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let (reading, ahead) = (&self.reading, &self.ahead);
        self.files.next(|path, skip| {
            let early = ahead.as_ref().and_then(|a| lock(a).take(path, skip));
            let mut groups = match early {
                Some(groups) => groups,
                None => RowGroups::open(path, skip, reading)?,
            };
            groups.ahead = ahead.clone();
            Ok((groups, skip))
        })
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        self.files.seek(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::compute::cast;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// 2,500 rows of a string key (nulls among them) and a value (from `first` on), in row
    /// groups of 1,000.
    fn write(path: &std::path::Path, dictionary: bool, first: i64) -> (ArrayRef, ArrayRef) {
        let keys: ArrayRef =
            Arc::new(StringArray::from_iter((0..2_500).map(|i: i64| {
                (i % 7 != 3).then(|| format!("key-{}", i * 31 % 97))
            })));
        let values: ArrayRef = Arc::new(Int64Array::from_iter_values(first..first + 2_500));
        let batch = RecordBatch::try_from_iter([("k", keys.clone()), ("v", values.clone())])
            .expect("a batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1_000))
            .set_dictionary_enabled(dictionary)
            .build();
        let file = File::create(path).expect("a file");
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).expect("a writer");
        w.write(&batch).expect("written");
        w.close().expect("closed");
        (keys, values)
    }

    fn read(path: &std::path::Path, dictionary: &[String]) -> (SchemaRef, Vec<RecordBatch>) {
        read_from(&[path.to_path_buf()], dictionary, 1, &Position::Start)
    }

    /// A source of `files`, read from position `at`, `decoders` row groups decoded at once.
    fn source(
        files: &[PathBuf],
        dictionary: &[String],
        decoders: usize,
        at: &Position,
    ) -> ParquetSource {
        let dictionary = dictionary_encoded(files, dictionary).expect("the footers");
        let mut source =
            ParquetSource::open(files, None, &dictionary, 300, decoders).expect("the source");
        source.seek(at).expect("a position of the files");
        source
    }

    /// The batches of `files` from position `at`, `decoders` row groups decoded at once.
    fn read_from(
        files: &[PathBuf],
        dictionary: &[String],
        decoders: usize,
        at: &Position,
    ) -> (SchemaRef, Vec<RecordBatch>) {
        let mut source = source(files, dictionary, decoders, at);
        let mut batches = Vec::new();
        while let Some(b) = source.next_batch().expect("a batch") {
            batches.push(b.batch);
        }
        (source.schema(), batches)
    }

    #[test]
    fn a_dictionary_encoded_key_comes_as_a_dictionary_one_per_row_group() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("keys.parquet");
        let (keys, values) = write(&path, true, 0);
        let (schema, batches) = read(&path, &["k".to_string()]);
        assert!(matches!(
            schema.field(0).data_type(),
            DataType::Dictionary(..)
        ));
        // Batches of at most 300 rows, none across a row group: 300, 300, 300, 100, ...
        let lengths: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(
            lengths,
            [300, 300, 300, 100]
                .repeat(2)
                .into_iter()
                .chain([300, 200])
                .collect::<Vec<_>>()
        );
        // The batches of a row group share its dictionary.
        let dict = |b: &RecordBatch| b.column(0).as_any_dictionary().values().clone();
        assert!(Arc::ptr_eq(&dict(&batches[0]), &dict(&batches[3])));
        assert!(!Arc::ptr_eq(&dict(&batches[3]), &dict(&batches[4])));
        // The same rows as written.
        let plain: Vec<ArrayRef> = batches
            .iter()
            .map(|b| cast(b.column(0), &DataType::Utf8).unwrap())
            .collect();
        let plain =
            arrow::compute::concat(&plain.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).unwrap();
        assert_eq!(plain.as_ref(), keys.as_ref());
        let v: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(
            v,
            values
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        );

        // Not asked for, or not stored as a dictionary: plain strings.
        assert_eq!(read(&path, &[]).0.field(0).data_type(), &DataType::Utf8);
        let plain_path = dir.path().join("plain.parquet");
        write(&plain_path, false, 0);
        assert_eq!(
            read(&plain_path, &["k".to_string()]).0.field(0).data_type(),
            &DataType::Utf8
        );
    }

    #[test]
    fn row_groups_decoded_at_once_come_in_file_order_and_resume_mid_file() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("keys.parquet");
        write(&path, true, 0);
        let k = ["k".to_string()];
        let files = [path.clone()];
        let serial = read(&path, &k).1;
        for decoders in [2, 3, 8] {
            assert_eq!(read_from(&files, &k, decoders, &Position::Start).1, serial);
        }
        // From row 1,450: the rest of the second row group, then the third.
        let at = Position::File {
            index: 0,
            path: path.display().to_string(),
            rows: 1_450,
        };
        let rest = read_from(&files, &[], 3, &at).1;
        let all = arrow::compute::concat_batches(&rest[0].schema(), &read(&path, &[]).1).unwrap();
        let rest = arrow::compute::concat_batches(&rest[0].schema(), &rest).unwrap();
        assert_eq!(rest, all.slice(1_450, 1_050));
    }

    #[test]
    fn files_decoded_at_once_come_in_name_order_resume_and_fail_in_turn() {
        let dir = tempfile::tempdir().expect("a directory");
        let files: Vec<PathBuf> = (["a", "b", "c"].iter())
            .map(|name| dir.path().join(format!("{name}.parquet")))
            .collect();
        for (i, file) in files.iter().enumerate() {
            write(file, true, i as i64 * 10_000);
        }
        let k = ["k".to_string()];
        let serial = read_from(&files, &k, 1, &Position::Start).1;
        assert_eq!(serial.len(), 30);
        for decoders in [2, 3, 8] {
            assert_eq!(read_from(&files, &k, decoders, &Position::Start).1, serial);
        }

        // Once a's last row group decodes, b's first two do too (3 decoders).
        let mut early = source(&files, &k, 3, &Position::Start);
        for _ in 0..9 {
            early.next_batch().expect("a batch").expect("a's batch");
        }
        let ahead = lock(early.ahead.as_ref().expect("several files"));
        let opened: Vec<_> = ahead
            .opened
            .iter()
            .map(|g| (&g.path, g.decoding.len()))
            .collect();
        assert_eq!(opened, [(&files[1], 2)]);
        drop(ahead);

        // From row 1,450 of b: its rest, then c.
        let at = Position::File {
            index: 1,
            path: files[1].display().to_string(),
            rows: 1_450,
        };
        let rest = read_from(&files, &[], 3, &at).1;
        let schema = rest[0].schema();
        let all = read_from(&files, &[], 1, &Position::Start).1;
        let all = arrow::compute::concat_batches(&schema, &all).unwrap();
        let rest = arrow::compute::concat_batches(&schema, &rest).unwrap();
        assert_eq!(rest, all.slice(2_500 + 1_450, 1_050 + 2_500));

        // A file gone before its turn: every batch before it comes, then an error naming it.
        let mut gone = source(&files, &k, 3, &Position::Start);
        std::fs::remove_file(&files[2]).expect("removed");
        let mut batches = Vec::new();
        let error = loop {
            match gone.next_batch() {
                Ok(Some(b)) => batches.push(b.batch),
                Ok(None) => panic!("c.parquet was read"),
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(batches, serial[..20]);
        assert!(error.contains("c.parquet"), "{error}");
    }
}
