//! CSV source: files with a header row, read in name order as one partition.
//!
//! The schema is inferred from the first file's first 1000 records. A column that arrow
//! infers as text because a few of its values are not numbers is numeric when at least
//! 90% of its sampled values are: the others are malformed records, not a reason to stop.
//! A record with another number of fields than the header, or a value that is not of its
//! column's type, goes to the dead-letter output with its line and the reason
//! ([`OnMalformed::DeadLetter`]), or stops the job naming file, line and column
//! ([`OnMalformed::Fail`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::csv::reader::{Format, ReaderBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::{Decoded, FileSequence, Malformed, Position, Source, SourceBatch};
use crate::error::{Error, Result};
use crate::job::OnMalformed;

/// Records sampled to infer the schema.
const SAMPLE: usize = 1000;

pub(super) struct CsvSource {
    batch_rows: usize,
    schema: SchemaRef,
    on_malformed: OnMalformed,
    files: FileSequence<Records>,
}

impl CsvSource {
    pub(super) fn open(
        files: Vec<PathBuf>,
        batch_rows: usize,
        on_malformed: OnMalformed,
    ) -> Result<Self> {
        Ok(CsvSource {
            batch_rows,
            schema: Arc::new(infer_schema(&files[0])?),
            on_malformed,
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
        let (schema, batch_rows, on_malformed) =
            (self.schema.clone(), self.batch_rows, self.on_malformed);
        self.files.next(|path, skip| {
            let mut records = Records::open(path, schema.clone(), batch_rows, on_malformed)?;
            // CSV has no index: the records to skip are read and dropped.
            records.skip_records(skip)?;
            Ok((records, skip))
        })
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        self.files.seek(to)
    }
}

/// Arrow's inference over the first records that have the header's number of fields,
/// with text columns whose values are mostly numbers made numeric.
fn infer_schema(path: &Path) -> Result<Schema> {
    let context = || format!("inferring the schema of CSV file {}", path.display());
    let csv_error = |e: csv::Error| Error::arrow(context(), ArrowError::CsvError(e.to_string()));
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut reader = csv_reader(file);
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let mut sample = Vec::new();
    for record in reader.byte_records().take(SAMPLE) {
        let record = record.map_err(csv_error)?;
        if record.len() == header.len() {
            sample.push(record);
        }
    }
    let mut text = csv_text(&header.iter().collect::<Vec<_>>());
    for r in &sample {
        text.extend(csv_text(&r.iter().collect::<Vec<_>>()));
    }
    let (schema, _) = Format::default()
        .with_header(true)
        .infer_schema(std::io::Cursor::new(text), None)
        .map_err(|e| Error::arrow(context(), e))?;
    let fields = schema.fields().iter().enumerate().map(|(c, f)| {
        if f.data_type() != &DataType::Utf8 {
            return f.as_ref().clone();
        }
        let values: Vec<&[u8]> = sample
            .iter()
            .filter_map(|r| r.get(c))
            .filter(|v| !v.is_empty())
            .collect();
        let share = |ok: fn(&str) -> bool| {
            let n = values
                .iter()
                .filter(|v| std::str::from_utf8(v).is_ok_and(ok))
                .count();
            n > 0 && n * 10 >= values.len() * 9
        };
        let numeric = if share(|v| v.trim().parse::<i64>().is_ok()) {
            DataType::Int64
        } else if share(|v| v.trim().parse::<f64>().is_ok()) {
            DataType::Float64
        } else {
            return f.as_ref().clone();
        };
        Field::new(f.name(), numeric, true)
    });
    Ok(Schema::new(fields.collect::<Vec<_>>()))
}

/// The csv crate's reader as panes reads: a header row, any number of fields a record.
fn csv_reader(file: File) -> csv::Reader<File> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file)
}

/// The records of one file, decoded into batches of the schema: each record is checked
/// (its fields counted, its values decoded) so that one bad record costs only itself.
struct Records {
    reader: csv::Reader<File>,
    file: String,
    schema: SchemaRef,
    batch_rows: usize,
    on_malformed: OnMalformed,
    done: bool,
}

impl Records {
    fn open(
        path: &Path,
        schema: SchemaRef,
        batch_rows: usize,
        on_malformed: OnMalformed,
    ) -> Result<Records> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        Ok(Records {
            reader: csv_reader(file),
            file: path.display().to_string(),
            schema,
            batch_rows,
            on_malformed,
            done: false,
        })
    }

    /// Reads and drops `n` records (a restored position).
    fn skip_records(&mut self, n: u64) -> Result<()> {
        let mut record = csv::ByteRecord::new();
        for _ in 0..n {
            let more = self.reader.read_byte_record(&mut record).map_err(|e| {
                Error::arrow(
                    format!(
                        "skipping to a checkpoint's row {n} of CSV file {}",
                        self.file
                    ),
                    ArrowError::CsvError(e.to_string()),
                )
            })?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// A decoder of headerless CSV text into batches of `schema`.
    fn decode(
        schema: SchemaRef,
        text: &[u8],
        rows: usize,
    ) -> std::result::Result<arrow::array::RecordBatch, ArrowError> {
        let mut decoder = ReaderBuilder::new(schema.clone())
            .with_header(false)
            .with_batch_size(rows.max(1))
            .build_decoder();
        let mut at = 0;
        while at < text.len() {
            let read = decoder.decode(&text[at..])?;
            if read == 0 {
                break;
            }
            at += read;
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| arrow::array::RecordBatch::new_empty(schema)))
    }

    /// Why one record (as CSV text) does not decode: the first column whose value does not.
    fn reason(&self, fields: &csv::ByteRecord) -> String {
        for (c, f) in self.schema.fields().iter().enumerate() {
            let value = fields.get(c).unwrap_or_default();
            let one = Arc::new(Schema::new(vec![f.as_ref().clone()]));
            if Self::decode(one, &csv_text(&[value]), 1).is_err() {
                return format!(
                    "column {:?}: {:?} is not a valid {}",
                    f.name(),
                    String::from_utf8_lossy(value),
                    f.data_type()
                );
            }
        }
        "the record does not decode".into()
    }

    /// A malformed record: kept, or the error that stops the job.
    fn malformed(
        &self,
        line: u64,
        reason: String,
        raw: Vec<u8>,
    ) -> std::result::Result<Malformed, ArrowError> {
        if self.on_malformed == OnMalformed::Fail {
            return Err(ArrowError::CsvError(format!(
                "line {line}: {reason} (source.on_malformed = \"fail\"; with \"dead_letter\" \
                 such records go to [dead_letter] and the job goes on)"
            )));
        }
        let mut raw = String::from_utf8_lossy(&raw).into_owned();
        raw.truncate(raw.trim_end_matches(['\r', '\n']).len());
        Ok(Malformed {
            file: self.file.clone(),
            line,
            reason,
            raw,
        })
    }

    fn next_decoded(&mut self) -> std::result::Result<Option<Decoded>, ArrowError> {
        let width = self.schema.fields().len();
        let (mut text, mut good, mut malformed) = (Vec::new(), Vec::new(), Vec::new());
        let mut record = csv::ByteRecord::new();
        while good.len() < self.batch_rows {
            if !self
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| ArrowError::CsvError(format!("{e}")))?
            {
                self.done = true;
                break;
            }
            let line = record.position().map_or(0, |p| p.line());
            let raw = csv_text(&record.iter().collect::<Vec<_>>());
            if record.len() != width {
                let n = record.len();
                let s = if n == 1 { "" } else { "s" };
                let reason = format!("{n} field{s} where the header has {width}");
                malformed.push((line, self.malformed(line, reason, raw)?));
                continue;
            }
            let start = text.len();
            text.extend_from_slice(&raw);
            good.push((line, start..text.len(), record.clone()));
        }
        if good.is_empty() && malformed.is_empty() {
            return Ok(None);
        }
        let batch = match Self::decode(self.schema.clone(), &text, good.len()) {
            Ok(batch) => batch,
            // Some value does not decode: find which records, keep the others.
            Err(_) => {
                let mut kept = Vec::new();
                for (line, range, fields) in &good {
                    let one = &text[range.clone()];
                    if Self::decode(self.schema.clone(), one, 1).is_ok() {
                        kept.extend_from_slice(one);
                    } else {
                        let reason = self.reason(fields);
                        malformed.push((*line, self.malformed(*line, reason, one.to_vec())?));
                    }
                }
                Self::decode(self.schema.clone(), &kept, good.len())?
            }
        };
        malformed.sort_by_key(|m| m.0);
        Ok(Some(Decoded {
            batch,
            malformed: malformed.into_iter().map(|m| m.1).collect(),
        }))
    }
}

impl Iterator for Records {
    type Item = std::result::Result<Decoded, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_decoded();
        if next.is_err() {
            self.done = true;
        }
        next.transpose()
    }
}

/// Fields as one line of CSV, quoted where they must be.
fn csv_text(fields: &[&[u8]]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = w.write_record(fields);
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};

    /// (first column of every decoded row, lines of every malformed record) from here on.
    fn read_rest(source: &mut CsvSource) -> (Vec<i64>, Vec<u64>, Vec<Position>) {
        let (mut rows, mut bad, mut after) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(b) = source.next_batch().expect("a batch") {
            let ts = b.batch.column(0);
            let ts = ts.as_any().downcast_ref::<Int64Array>().expect("Int64 ts");
            rows.extend(ts.values().iter());
            bad.extend(b.malformed.iter().map(|m| m.line));
            after.push(b.after);
        }
        (rows, bad, after)
    }

    /// A source resumed at any position it gave reads exactly the rest, malformed records
    /// counted as read: a checkpoint neither repeats nor drops a record.
    #[test]
    fn a_resumed_source_reads_exactly_the_rest() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("in.csv");
        let mut text = String::from("ts,x\n");
        for i in 0..40 {
            match i {
                _ if i % 7 == 3 => text.push_str(&format!("{i}\n")),
                // Few enough (2 in 34) for x to stay a float column.
                _ if i % 13 == 5 => text.push_str(&format!("{i},oops\n")),
                _ => text.push_str(&format!("{i},{i}.5\n")),
            }
        }
        std::fs::write(&path, text).expect("writing the file");
        let open = || CsvSource::open(vec![path.clone()], 4, OnMalformed::DeadLetter).unwrap();
        let (rows, bad, after) = read_rest(&mut open());
        assert_eq!(rows.len() + bad.len(), 40);
        assert_eq!(
            bad,
            [5, 7, 12, 19, 20, 26, 33, 40],
            "the lines of records 3, 5, 10, ..."
        );
        for (i, at) in after.iter().enumerate() {
            let mut resumed = open();
            resumed.seek(at).unwrap();
            let (r, b, _) = read_rest(&mut resumed);
            let Position::File { rows: read, .. } = at else {
                panic!("a file position: {at:?}")
            };
            let read = *read as i64;
            assert_eq!(
                r,
                rows.iter()
                    .copied()
                    .filter(|&t| t >= read)
                    .collect::<Vec<_>>(),
                "after batch {i}"
            );
            assert_eq!(
                b,
                bad.iter()
                    .copied()
                    .filter(|&l| l as i64 - 2 >= read)
                    .collect::<Vec<_>>(),
                "after batch {i}"
            );
        }
        let mut fail = CsvSource::open(vec![path.clone()], 4, OnMalformed::Fail).unwrap();
        let err = read_rest_err(&mut fail);
        assert!(
            err.contains("line 5: 1 field where the header has 2"),
            "{err}"
        );
    }

    fn read_rest_err(source: &mut CsvSource) -> String {
        loop {
            match source.next_batch() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(e) => return e.to_string(),
            }
        }
    }
}
