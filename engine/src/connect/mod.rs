//! Connectors: sources that yield Arrow batches by partition, and sinks that write them.

mod csv;
mod generator;
mod parquet;
pub mod sink;

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::job::Source as SourceSpec;

pub use sink::{Sink, open_sink};

/// A batch and where it came from.
pub struct SourceBatch {
    /// The source partition it belongs to.
    pub partition: usize,
    /// The events.
    pub batch: RecordBatch,
    /// Where it came from, for errors (a file, a generator).
    pub origin: String,
    /// Row number of its first row within `origin`.
    pub first_row: u64,
}

/// A bounded source of event batches.
pub trait Source: Send {
    /// Schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// Number of partitions (each has its own watermark).
    fn partitions(&self) -> usize;
    /// Total number of rows, if known up front (for progress).
    fn total_rows(&self) -> Option<u64>;
    /// The next batch, or `None` when every partition is exhausted.
    fn next_batch(&mut self) -> Result<Option<SourceBatch>>;
}

/// Opens the source of a job. `columns`: the columns to read (`None`: all of them).
pub fn open_source(
    spec: &SourceSpec,
    columns: Option<&[String]>,
    batch_rows: usize,
) -> Result<Box<dyn Source>> {
    Ok(match spec {
        SourceSpec::Parquet(path) => Box::new(parquet::ParquetSource::open(
            &files(path, "parquet")?,
            columns,
            batch_rows,
        )?),
        SourceSpec::Csv(path) => Box::new(csv::CsvSource::open(files(path, "csv")?, batch_rows)?),
        SourceSpec::Generator(g) => Box::new(generator::GeneratorSource::new(g, batch_rows)?),
    })
}

/// The files a source path names: a file, a directory's `*.ext` files, or a glob; sorted.
fn files(path: &str, ext: &str) -> Result<Vec<PathBuf>> {
    let p = PathBuf::from(path);
    let mut found: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(&p)
            .map_err(|e| Error::io("listing", &p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == ext))
            .collect()
    } else if path.contains(['*', '?', '[']) {
        glob::glob(path)
            .map_err(|e| Error::input(path, format!("bad glob pattern: {e}")))?
            .filter_map(|f| f.ok())
            .filter(|f| f.is_file())
            .collect()
    } else if p.exists() {
        vec![p]
    } else {
        return Err(Error::input(path, "no such file or directory"));
    };
    found.sort();
    if found.is_empty() {
        return Err(Error::input(path, format!("no .{ext} files found")));
    }
    Ok(found)
}

/// Files read one after another as one partition, each through its own batch reader.
pub(crate) struct FileSequence<R> {
    kind: &'static str,
    files: Vec<PathBuf>,
    next_file: usize,
    /// The open reader, its file name and the number of rows it has given.
    reader: Option<(R, String, u64)>,
}

impl<R: Iterator<Item = Result<RecordBatch, ArrowError>>> FileSequence<R> {
    /// A sequence over `files` of a `kind` ("CSV", "Parquet") named in errors.
    pub(crate) fn new(kind: &'static str, files: Vec<PathBuf>) -> Self {
        FileSequence {
            kind,
            files,
            next_file: 0,
            reader: None,
        }
    }

    /// The next batch, opening the next file with `open` when one is exhausted.
    pub(crate) fn next(
        &mut self,
        mut open: impl FnMut(&PathBuf) -> Result<R>,
    ) -> Result<Option<SourceBatch>> {
        loop {
            if let Some((reader, origin, row)) = &mut self.reader {
                match reader.next() {
                    Some(Ok(batch)) => {
                        let first_row = *row;
                        *row += batch.num_rows() as u64;
                        let origin = origin.clone();
                        return Ok(Some(SourceBatch {
                            partition: 0,
                            batch,
                            origin,
                            first_row,
                        }));
                    }
                    Some(Err(e)) => {
                        let context =
                            format!("reading {} file {origin} after data row {row}", self.kind);
                        return Err(Error::arrow(context, e));
                    }
                    None => self.reader = None,
                }
            }
            let Some(path) = self.files.get(self.next_file) else {
                return Ok(None);
            };
            self.next_file += 1;
            self.reader = Some((open(path)?, path.display().to_string(), 0));
        }
    }
}
