//! CSV source: files with a header row, read in name order as one partition. The schema is
//! inferred from the first file's first 1000 rows.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::csv::reader::{Format, Reader, ReaderBuilder};
use arrow::datatypes::SchemaRef;

use super::{Source, SourceBatch};
use crate::error::{Error, Result};

pub(super) struct CsvSource {
    files: Vec<PathBuf>,
    batch_rows: usize,
    schema: SchemaRef,
    next_file: usize,
    reader: Option<(Reader<File>, String, u64)>,
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
            files,
            batch_rows,
            schema: Arc::new(schema),
            next_file: 0,
            reader: None,
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
        loop {
            if let Some((reader, origin, row)) = &mut self.reader {
                match reader.next() {
                    Some(Ok(batch)) => {
                        let first_row = *row;
                        *row += batch.num_rows() as u64;
                        return Ok(Some(SourceBatch {
                            partition: 0,
                            batch,
                            origin: origin.clone(),
                            first_row,
                        }));
                    }
                    Some(Err(e)) => {
                        return Err(Error::arrow(
                            format!("reading CSV file {origin} after data row {row}"),
                            e,
                        ));
                    }
                    None => self.reader = None,
                }
            }
            let Some(path) = self.files.get(self.next_file) else {
                return Ok(None);
            };
            self.next_file += 1;
            let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
            let reader = ReaderBuilder::new(self.schema.clone())
                .with_header(true)
                .with_batch_size(self.batch_rows)
                .build(file)
                .map_err(|e| Error::arrow(format!("opening CSV file {}", path.display()), e))?;
            self.reader = Some((reader, path.display().to_string(), 0));
        }
    }
}
