//! Generator source: a built-in dataset of `panes-datasets`, its batches dealt round-robin
//! to the configured number of partitions.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::{Position, Source, SourceBatch};
use crate::error::{Error, Result};
use crate::job::GeneratorSpec;

pub(super) struct GeneratorSource {
    name: String,
    schema: SchemaRef,
    partitions: usize,
    total: u64,
    batch_rows: usize,
    batches: Box<dyn Iterator<Item = RecordBatch> + Send>,
    index: u64,
    row: u64,
}

impl GeneratorSource {
    pub(super) fn new(spec: &GeneratorSpec, batch_rows: usize) -> Result<Self> {
        let config = panes_datasets::GenConfig {
            batch_rows,
            ..spec.config.clone()
        };
        let batches = panes_datasets::generate(spec.dataset, &config)
            .map_err(|e| Error::input("generator", e))?;
        Ok(GeneratorSource {
            name: format!("generator {:?}", spec.dataset),
            schema: panes_datasets::schema(spec.dataset),
            partitions: spec.partitions as usize,
            total: config.events,
            batch_rows,
            batches,
            index: 0,
            row: 0,
        })
    }
}

impl Source for GeneratorSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn partitions(&self) -> usize {
        self.partitions
    }

    fn total_rows(&self) -> Option<u64> {
        Some(self.total)
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let Some(batch) = self.batches.next() else {
            return Ok(None);
        };
        let partition = (self.index % self.partitions as u64) as usize;
        let first_row = self.row;
        self.index += 1;
        self.row += batch.num_rows() as u64;
        Ok(Some(SourceBatch {
            partition,
            batch,
            origin: self.name.clone(),
            first_row,
            after: Position::Generator {
                batches: self.index,
                batch_rows: self.batch_rows,
            },
            malformed: Vec::new(),
        }))
    }

    /// Generators are deterministic: resuming regenerates the batches before `to` and
    /// drops them.
    fn seek(&mut self, to: &Position) -> Result<()> {
        match *to {
            Position::Start => Ok(()),
            Position::Generator {
                batches,
                batch_rows,
            } if batch_rows == self.batch_rows => {
                for _ in 0..batches {
                    let Some(b) = self.batches.next() else { break };
                    self.index += 1;
                    self.row += b.num_rows() as u64;
                }
                Ok(())
            }
            Position::Generator { batch_rows, .. } => Err(Error::input(
                &self.name,
                format!(
                    "the checkpoint was taken with batches of {batch_rows} rows, which decide \
                     the partition of each event; resume with --batch-rows {batch_rows}"
                ),
            )),
            Position::File { .. }
            | Position::PerFile { .. }
            | Position::Kafka { .. }
            | Position::Custom { .. } => Err(Error::input(
                &self.name,
                "the checkpoint resumes another kind of source, not a generator: the job \
                     changed; run with --fresh",
            )),
        }
    }
}
