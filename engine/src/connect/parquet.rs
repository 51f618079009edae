//! Parquet source: files read in name order as one partition, row group by row group in
//! micro-batches (never a whole file at once), projected to the columns the job reads.

use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{Decoded, FileSequence, Position, Source, SourceBatch};
use crate::error::{Error, Result};

/// The batches of one file, every row decoded.
type Batches = std::iter::Map<
    ParquetRecordBatchReader,
    fn(std::result::Result<RecordBatch, ArrowError>) -> std::result::Result<Decoded, ArrowError>,
>;

fn decoded(
    b: std::result::Result<RecordBatch, ArrowError>,
) -> std::result::Result<Decoded, ArrowError> {
    b.map(Decoded::from)
}

pub(super) struct ParquetSource {
    columns: Option<Vec<String>>,
    batch_rows: usize,
    schema: SchemaRef,
    total: u64,
    files: FileSequence<Batches>,
}

fn builder(path: &PathBuf) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path.clone(), e))
}

fn projection(
    b: &ParquetRecordBatchReaderBuilder<File>,
    path: &PathBuf,
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
    pub(super) fn open(
        files: &[PathBuf],
        columns: Option<&[String]>,
        batch_rows: usize,
    ) -> Result<Self> {
        let mut schema = None;
        let mut total = 0;
        for path in files {
            // Reads only the footer: checks every file before the first event is processed.
            let b = builder(path)?;
            let mask = projection(&b, path, columns)?;
            total += b.metadata().file_metadata().num_rows() as u64;
            let projected = b
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
        Ok(ParquetSource {
            columns: columns.map(<[String]>::to_vec),
            batch_rows,
            schema,
            total,
            files: FileSequence::new("Parquet", files.to_vec()),
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
        let (columns, batch_rows) = (self.columns.as_deref(), self.batch_rows);
        self.files.next(|path, skip| {
            let b = builder(path)?;
            let mask = projection(&b, path, columns)?;
            // Resuming: whole row groups are skipped unread, then rows of the next one.
            let sizes: Vec<u64> = (b.metadata().row_groups().iter())
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
            let reader = b
                .with_projection(mask)
                .with_batch_size(batch_rows)
                .with_row_groups((groups..sizes.len()).collect())
                .with_offset(rest as usize)
                .build()
                .map_err(|e| Error::parquet(path.clone(), e))?;
            Ok((reader.map(decoded as fn(_) -> _), skip))
        })
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        self.files.seek(to)
    }
}
