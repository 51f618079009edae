//! CSV source: files with a header row, read in name order as one partition. The schema is
//! inferred from the first file's first 1000 rows.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::csv::reader::{Format, Reader, ReaderBuilder};
use arrow::datatypes::SchemaRef;

use super::{FileSequence, Position, Source, SourceBatch};
use crate::error::{Error, Result};

pub(super) struct CsvSource {
    batch_rows: usize,
    schema: SchemaRef,
    files: FileSequence<Reader<File>>,
}

impl CsvSource {
    pub(super) fn open(files: Vec<PathBuf>, batch_rows: usize) -> Result<Self> {
        let path = &files[0];
        let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let (schema, _) = Format::default()
            .with_header(true)
            .infer_schema(&mut file, Some(1000))
            .map_err(|e| {
                Error::arrow(
                    format!("inferring the schema of CSV file {}", path.display()),
                    e,
                )
            })?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("reading", path, e))?;
        Ok(CsvSource {
            batch_rows,
            schema: Arc::new(schema),
            files: FileSequence::new("CSV", files),
        })
    }
}

impl Source for CsvSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn partitions(&self) -> usize {
        1
    }

    fn total_rows(&self) -> Option<u64> {
        None
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let (schema, batch_rows) = (self.schema.clone(), self.batch_rows);
        self.files.next(|path, _skip| {
            let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
            let reader = ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(file)
                .map_err(|e| Error::arrow(format!("opening CSV file {}", path.display()), e))?;
            // CSV has no index: the sequence reads and drops the rows to skip.
            Ok((reader, 0))
        })
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        self.files.seek(to)
    }
}
