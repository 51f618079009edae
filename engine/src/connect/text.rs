//! Text sources: CSV files with a header row, or JSON lines (one object a line), read in
//! name order as one partition.
//!
//! Column types come from `[source] schema` where it names them. The rest of a CSV
//! file's columns are inferred from its first 1000 records; a column that arrow infers as
//! text because a few of its values are not numbers is numeric when at least 90% of its
//! sampled values are: the others are malformed records, not a reason to stop. A JSON-lines
//! source without a schema infers one from its first 1000 lines that are objects.
//! A record with another number of fields than the header, a line that is not a JSON
//! object, or a value that is not of its column's type, goes to the dead-letter output with
//! its line and the reason ([`OnMalformed::DeadLetter`]), or stops the job naming file,
//! line and column ([`OnMalformed::Fail`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::{
    DecodeResult, Decoded, FileSequence, Malformed, Position, Source, SourceBatch, decode_ahead,
};
use crate::error::{Error, Result};
use crate::job::{OnMalformed, TextFormat, TextSource as Spec};

/// Records sampled to infer the schema.
const SAMPLE: usize = 1000;

pub(super) struct TextSource {
    /// The format, schema and handling of malformed records of every file.
    decoder: RecordDecoder,
    batch_rows: usize,
    /// Batches decoded at once, each on a thread of its own (1: on the caller's).
    decoders: usize,
    files: FileSequence<Records>,
}

impl TextSource {
    /// A source of `files`, in batches of `batch_rows` records, of which `decoders` are
    /// decoded at once.
    pub(super) fn open(
        spec: &Spec,
        files: Vec<PathBuf>,
        batch_rows: usize,
        decoders: usize,
    ) -> Result<Self> {
        let infer = |path: &PathBuf| match spec.format {
            TextFormat::Csv => csv_schema(path, &spec.schema),
            TextFormat::JsonLines => json_schema(path),
        };
        let schema = match spec.format {
            TextFormat::JsonLines if !spec.schema.is_empty() => Schema::new(
                (spec.schema.iter())
                    .map(|(name, t)| Field::new(name, t.clone(), true))
                    .collect::<Vec<_>>(),
            ),
            // From the first file that holds a record: an empty one says nothing.
            _ => files
                .iter()
                .find_map(|path| infer(path).transpose())
                .transpose()?
                .ok_or_else(|| {
                    let (first, n) = (files[0].display(), files.len());
                    let what = match n {
                        1 => format!("{first} holds no record"),
                        n => format!("none of the {n} files ({first}, ...) holds a record"),
                    };
                    Error::input(
                        first.to_string(),
                        format!(
                            "{what}, so no schema can be inferred: declare the columns \
                             with [source] schema"
                        ),
                    )
                })?,
        };
        Ok(TextSource {
            decoder: RecordDecoder {
                format: spec.format,
                schema: Arc::new(schema),
                on_malformed: spec.on_malformed,
                position_name: "line",
                event_time: None,
            },
            batch_rows,
            decoders: decoders.max(1),
            files: FileSequence::new(spec.format.name(), files),
        })
    }

    /// Makes records without a value in column `name` (the job's event time) malformed.
    pub(super) fn with_event_time(mut self, name: &str) -> Self {
        self.decoder.set_event_time(name);
        self
    }
}

impl TextFormat {
    /// As errors name it.
    fn name(self) -> &'static str {
        match self {
            TextFormat::Csv => "CSV",
            TextFormat::JsonLines => "JSON-lines",
        }
    }
}

impl Source for TextSource {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema.clone()
    }

    fn partitions(&self) -> usize {
        1
    }

    fn total_rows(&self) -> Option<u64> {
        None
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        let (decoder, batch_rows, decoders) = (&self.decoder, self.batch_rows, self.decoders);
        self.files.next(|path, skip| {
            let mut records = Records::open(path, decoder.clone(), batch_rows, decoders)?;
            // Text has no index: the records to skip are read and dropped.
            records.skip_records(skip)?;
            Ok((records, skip))
        })
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        self.files.seek(to)
    }
}

/// The header's columns: typed as `declared` says where it names them, else inferred
/// by arrow from the first records that have the header's number of fields, with text
/// columns whose values are mostly numbers made numeric. `None` when no record has, unless
/// every column is declared.
fn csv_schema(path: &Path, declared: &[(String, DataType)]) -> Result<Option<Schema>> {
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
    // Without records, only a header whose every column is declared says anything.
    let declares = |h: &[u8]| declared.iter().any(|(name, _)| name.as_bytes() == h);
    if sample.is_empty() && (header.is_empty() || !header.iter().all(declares)) {
        return Ok(None);
    }
    let text = csv_text(std::iter::once(&header).chain(&sample));
    let (schema, _) = Format::default()
        .with_header(true)
        .infer_schema(std::io::Cursor::new(text), None)
        .map_err(|e| Error::arrow(context(), e))?;
    if let Some((name, _)) = declared
        .iter()
        .find(|(name, _)| schema.column_with_name(name).is_none())
    {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(Error::input(
            path.display().to_string(),
            format!(
                "source.schema names column {name:?}, which the header does not have (it has {})",
                have.join(", ")
            ),
        ));
    }
    let fields = schema.fields().iter().enumerate().map(|(c, f)| {
        if let Some((_, t)) = declared.iter().find(|(name, _)| name == f.name()) {
            return Field::new(f.name(), t.clone(), true);
        }
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
    Ok(Some(Schema::new(fields.collect::<Vec<_>>())))
}

/// Arrow's inference over the first lines of a JSON-lines file that are JSON objects,
/// with text fields whose values are mostly numbers made numeric (as CSV columns are).
/// `None` when the file has only blank lines.
fn json_schema(path: &Path) -> Result<Option<Schema>> {
    type Object = serde_json::Map<String, serde_json::Value>;
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let (mut text, mut sample, mut blank) = (Vec::new(), Vec::new(), true);
    for line in BufReader::new(file).split(b'\n').take(SAMPLE) {
        let line = line.map_err(|e| Error::io("reading", path, e))?;
        blank = blank && line.iter().all(u8::is_ascii_whitespace);
        if let Ok(object) = serde_json::from_slice::<Object>(&line) {
            text.extend_from_slice(&line);
            text.push(b'\n');
            sample.push(object);
        }
    }
    if blank {
        return Ok(None);
    }
    if sample.is_empty() {
        return Err(Error::input(
            path.display().to_string(),
            format!(
                "none of its first {SAMPLE} lines is a JSON object, so no schema can be \
                 inferred: is it JSON lines? Declare the columns with [source] schema"
            ),
        ));
    }
    let (schema, _) = arrow::json::reader::infer_json_schema(std::io::Cursor::new(text), None)
        .map_err(|e| {
            Error::arrow(
                format!("inferring the schema of JSON-lines file {}", path.display()),
                e,
            )
        })?;
    let fields = schema.fields().iter().map(|f| {
        if f.data_type() != &DataType::Utf8 {
            return f.as_ref().clone();
        }
        let values: Vec<&serde_json::Value> = (sample.iter())
            .filter_map(|o| o.get(f.name()).filter(|v| !v.is_null()))
            .collect();
        let share = |ok: fn(&serde_json::Value) -> bool| {
            let n = values.iter().filter(|v| ok(v)).count();
            n > 0 && n * 10 >= values.len() * 9
        };
        let numeric = if share(|v| v.is_i64()) {
            DataType::Int64
        } else if share(serde_json::Value::is_number) {
            DataType::Float64
        } else {
            return f.as_ref().clone();
        };
        Field::new(f.name(), numeric, true)
    });
    Ok(Some(Schema::new(fields.collect::<Vec<_>>())))
}

/// The csv crate's reader as panes reads: a header row, any number of fields a record.
fn csv_reader<R: Read>(file: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file)
}

/// A CSV file as the csv crate reads it, keeping the bytes read since the last record
/// began, so that a record's line is counted from the bytes: the crate's own count is one
/// short after blank lines and with CRLF line ends (rust-csv issues 208 and 395).
struct Counted {
    file: File,
    /// Bytes read; `kept[start..]` begins at byte `from` of the file.
    kept: Vec<u8>,
    start: usize,
    from: u64,
    /// Line ends before byte `from`.
    lines: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Counted {
    fn new(file: File) -> Counted {
        Counted {
            file,
            kept: Vec::new(),
            start: 0,
            from: 0,
            lines: 0,
        }
    }

    /// The line of a record that the csv crate says begins at byte `at` (no earlier than
    /// the last one): the line ends and blank lines it had not skipped yet come first.
    fn line_of(&mut self, at: u64) -> u64 {
        // Counted in bytes, 255 at a time: vectorized, 16 or 32 bytes a step.
        let newlines = |b: &[u8]| -> u64 {
            (b.chunks(255))
                .map(|c| c.iter().fold(0u8, |n, &c| n + u8::from(c == b'\n')))
                .map(u64::from)
                .sum()
        };
        let rest = &self.kept[self.start..];
        let cut =
            usize::try_from(at.saturating_sub(self.from)).map_or(rest.len(), |c| c.min(rest.len()));
        self.lines += newlines(&rest[..cut]);
        (self.start, self.from) = (self.start + cut, self.from + cut as u64);
        let rest = &self.kept[self.start..];
        let ends = rest
            .iter()
            .take_while(|&&c| c == b'\r' || c == b'\n')
            .count();
        let line = self.lines + newlines(&rest[..ends]) + 1;
        // What lies before the record is counted: drop it once it is most of the bytes.
        if self.start >= 1 << 16 && self.start * 2 >= self.kept.len() {
            self.kept.drain(..self.start);
            self.start = 0;
        }
        line
    }
}

/// Where a file's records come from.
enum Lines {
    Csv(csv::Reader<Counted>),
    /// A JSON-lines file and the number of the last line read.
    Json(BufReader<File>, u64),
}

impl Lines {
    /// The next record, read into the buffers of `into` (one already decoded, or a new
    /// one).
    fn next(&mut self, mut into: Record) -> std::result::Result<Option<Record>, ArrowError> {
        match self {
            Lines::Csv(reader) => {
                let fields = into.fields.get_or_insert_default();
                if !(reader.read_byte_record(fields))
                    .map_err(|e| ArrowError::CsvError(e.to_string()))?
                {
                    return Ok(None);
                }
                let at = fields.position().map_or(0, csv::Position::byte);
                into.line = reader.get_mut().line_of(at);
                Ok(Some(into))
            }
            Lines::Json(reader, line) => loop {
                let text = &mut into.text;
                text.clear();
                if reader
                    .read_until(b'\n', text)
                    .map_err(|e| ArrowError::JsonError(e.to_string()))?
                    == 0
                {
                    return Ok(None);
                }
                *line += 1;
                // Blank lines hold no record.
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if text.last() != Some(&b'\n') {
                    text.push(b'\n');
                }
                into.line = *line;
                return Ok(Some(into));
            },
        }
    }
}

/// The records of one file, decoded into batches of the schema: each record is checked
/// (its fields counted, its values decoded) so that one bad record costs only itself.
/// With `decoders` > 1 the records are read here, and that many batches of them are
/// decoded at once, each on a thread of its own; they come out in file order.
struct Records {
    lines: Lines,
    /// The file, as dead letters name it.
    origin: String,
    decoder: RecordDecoder,
    batch_rows: usize,
    decoders: usize,
    /// The batches being decoded, in file order (with `decoders` > 1).
    decoding: VecDeque<Receiver<DecodeResult>>,
    /// Records decoded, whose buffers the next records are read into (so that reading
    /// a record does not allocate), and those the decoding threads hand back.
    spare: Vec<Record>,
    handed_back: (Sender<Vec<Record>>, Receiver<Vec<Record>>),
    /// No record is left to read (some may still be decoding).
    exhausted: bool,
    /// Every batch, or an error, was handed on.
    done: bool,
}

/// Decodes records of one format into batches of a schema, setting aside those that do
/// not decode (or failing on the first, with [`OnMalformed::Fail`]).
#[derive(Clone)]
pub(super) struct RecordDecoder {
    pub(super) format: TextFormat,
    pub(super) schema: SchemaRef,
    pub(super) on_malformed: OnMalformed,
    /// What a record's position is, as errors name it: "line", "offset".
    pub(super) position_name: &'static str,
    /// The event-time column: a record with no value in it is malformed (where a batch
    /// would stop the job, naming a row that is no record's line).
    pub(super) event_time: Option<usize>,
}

/// One CSV record of a message at `offset` (a Kafka message holds one, without header).
pub(super) fn csv_record(payload: &[u8], offset: u64) -> Record {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(payload);
    let mut fields = csv::ByteRecord::new();
    // A payload the csv crate cannot read gives no fields: the record is then malformed.
    if !reader.read_byte_record(&mut fields).unwrap_or(false) {
        fields.clear();
    }
    Record {
        line: offset,
        text: Vec::new(),
        fields: Some(fields),
    }
}

/// One record as read: where it is (a line, an offset), and its fields (CSV) or its text
/// (a JSON object and its newline).
#[derive(Default)]
pub(super) struct Record {
    pub(super) line: u64,
    /// A JSON line's text; empty for CSV, whose text is its fields re-joined.
    pub(super) text: Vec<u8>,
    pub(super) fields: Option<csv::ByteRecord>,
}

impl Record {
    /// The record as one line of text: a CSV record's fields re-joined, quoted where they
    /// must be.
    fn text(&self) -> Cow<'_, [u8]> {
        match &self.fields {
            Some(fields) => Cow::Owned(csv_text([fields])),
            None => Cow::Borrowed(&self.text),
        }
    }
}

/// Records read: those to decode, and those already found malformed.
type Chunk = (Vec<Record>, Vec<Malformed>);

impl Records {
    fn open(
        path: &Path,
        decoder: RecordDecoder,
        batch_rows: usize,
        decoders: usize,
    ) -> Result<Records> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let lines = match decoder.format {
            TextFormat::Csv => Lines::Csv(csv_reader(Counted::new(file))),
            TextFormat::JsonLines => Lines::Json(BufReader::new(file), 0),
        };
        Ok(Records {
            lines,
            origin: path.display().to_string(),
            decoder,
            batch_rows,
            decoders,
            decoding: VecDeque::new(),
            spare: Vec::new(),
            handed_back: channel(),
            exhausted: false,
            done: false,
        })
    }

    /// Reads and drops `n` records (a restored position).
    fn skip_records(&mut self, n: u64) -> Result<()> {
        // One record's buffers serve every record skipped.
        let mut record = Record::default();
        for _ in 0..n {
            let read = (self.lines.next(record))
                .map_err(|e| Error::arrow(format!("skipping to a checkpoint's row {n}"), e))?;
            match read {
                Some(r) => record = r,
                None => break,
            }
        }
        Ok(())
    }

    /// The next `batch_rows` records: those to decode, and those whose fields the header
    /// does not match. `None` at the end of the file.
    fn read(&mut self) -> std::result::Result<Option<Chunk>, ArrowError> {
        let d = &self.decoder;
        let width = d.schema.fields().len();
        let (mut good, mut malformed) = (Vec::new(), Vec::new());
        // Up to a batch of spare records: a read takes about one batch handed back, as
        // each decoded batch gives one, so none piles up in the channel.
        while self.spare.len() < self.batch_rows
            && let Ok(records) = self.handed_back.1.try_recv()
        {
            if self.spare.is_empty() {
                self.spare = records;
            } else {
                self.spare.extend(records);
            }
        }
        while good.len() < self.batch_rows {
            let into = self.spare.pop().unwrap_or_default();
            let Some(record) = self.lines.next(into)? else {
                self.exhausted = true;
                break;
            };
            if let Some(n) = record.fields.as_ref().map(csv::ByteRecord::len)
                && n != width
            {
                let s = if n == 1 { "" } else { "s" };
                let reason = format!("{n} field{s} where the header has {width}");
                malformed.push(d.malformed(&self.origin, &record, reason)?);
                self.spare.push(record);
                continue;
            }
            good.push(record);
        }
        if good.is_empty() && malformed.is_empty() {
            return Ok(None);
        }
        Ok(Some((good, malformed)))
    }

    /// Reads records and starts decoding them until `decoders` batches are decoding or
    /// the file ends. An error reading them takes its turn after the batches before it.
    fn start(&mut self) {
        while !self.exhausted && self.decoding.len() < self.decoders {
            let decoding = match self.read() {
                Ok(None) => break,
                Ok(Some((good, malformed))) => {
                    let (decoder, origin) = (self.decoder.clone(), self.origin.clone());
                    let back = self.handed_back.0.clone();
                    decode_ahead(1, move || {
                        let decoded = decoder.decode_records(&origin, &good, malformed);
                        let _ = back.send(good);
                        std::iter::once(decoded)
                    })
                }
                Err(e) => Err(e),
            };
            let decoding = decoding.unwrap_or_else(|e| {
                self.exhausted = true;
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(e));
                rx
            });
            self.decoding.push_back(decoding);
        }
    }

    fn next_decoded(&mut self) -> std::result::Result<Option<Decoded>, ArrowError> {
        if self.decoders == 1 {
            let Some((good, malformed)) = self.read()? else {
                return Ok(None);
            };
            let decoded = self.decoder.decode_records(&self.origin, &good, malformed);
            self.spare = good;
            return decoded.map(Some);
        }
        self.start();
        let Some(decoding) = self.decoding.pop_front() else {
            return Ok(None);
        };
        let stopped = || ArrowError::ComputeError("a decoding thread stopped".into());
        decoding.recv().unwrap_or_else(|_| Err(stopped())).map(Some)
    }
}

/// `schema` with its integer columns as text, for a JSON decoder (see [`integers`]).
fn integers_as_text(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = (schema.fields().iter())
        .map(|f| match f.data_type().is_integer() {
            true => f.as_ref().clone().with_data_type(DataType::Utf8),
            false => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `batch`, whose integer columns of `schema` were read as text, with those columns
/// parsed. A JSON decoder would take `1.5` for an integer column and truncate it to 1;
/// here a value is an integer only when it is one (`7`, `"7"`, `7.0`, `7e3`), and any
/// other is an error that names the column and the value.
fn integers(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    for (c, field) in schema.fields().iter().enumerate() {
        if !field.data_type().is_integer() {
            continue;
        }
        let text = columns[c].as_string::<i32>();
        let parse = |s: &str| {
            s.parse::<i64>().ok().or_else(|| {
                // Whole and within i64 ([-2^63, 2^63)): then the float's value is the
                // integer's.
                let f = s.parse::<f64>().ok().filter(|f| f.fract() == 0.0)?;
                (i64::MIN as f64..-(i64::MIN as f64))
                    .contains(&f)
                    .then_some(f as i64)
            })
        };
        let values = (text.iter())
            .map(|v| match v {
                None => Ok(None),
                Some(s) => parse(s).map(Some).ok_or_else(|| {
                    ArrowError::JsonError(format!(
                        "column {:?}: {s:?} is not a valid {}",
                        field.name(),
                        field.data_type()
                    ))
                }),
            })
            .collect::<std::result::Result<Int64Array, ArrowError>>()?;
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        columns[c] = cast_with_options(&values, field.data_type(), &strict).map_err(|_| {
            ArrowError::JsonError(format!(
                "column {:?}: a value is out of range of {}",
                field.name(),
                field.data_type()
            ))
        })?;
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// `batch`, decoded from JSON, unless a float column holds an infinity. JSON has none: it
/// is a number beyond the column's range (`1e400` in a Float64 column), which the decoder
/// takes as infinite, and which would make every sum over it infinite.
fn finite(batch: RecordBatch) -> std::result::Result<RecordBatch, ArrowError> {
    use arrow::datatypes::{Float32Type, Float64Type};
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let infinite = match field.data_type() {
            DataType::Float64 => {
                (col.as_primitive::<Float64Type>().values().iter()).any(|v| v.is_infinite())
            }
            DataType::Float32 => {
                (col.as_primitive::<Float32Type>().values().iter()).any(|v| v.is_infinite())
            }
            _ => false,
        };
        if infinite {
            return Err(ArrowError::JsonError(format!(
                "column {:?}: a number beyond the range of {}",
                field.name(),
                field.data_type()
            )));
        }
    }
    Ok(batch)
}

impl RecordDecoder {
    /// Makes records without a value in column `name` malformed (when the schema has it).
    pub(super) fn set_event_time(&mut self, name: &str) {
        self.event_time = self.schema.index_of(name).ok();
    }

    /// Decodes `records` records of headerless CSV, or JSON lines, into a batch of
    /// `schema`: an error unless every byte decodes and every record gives one row.
    fn decode(
        format: TextFormat,
        schema: SchemaRef,
        text: &[u8],
        records: usize,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        fn feed(
            text: &[u8],
            mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, ArrowError>,
        ) -> std::result::Result<(), ArrowError> {
            let mut at = 0;
            while at < text.len() {
                match decode(&text[at..])? {
                    0 => return Err(ArrowError::ParseError("the text does not decode".into())),
                    read => at += read,
                }
            }
            Ok(())
        }
        let batch = match format {
            TextFormat::Csv => {
                let mut decoder = arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_batch_size(records.max(1))
                    .build_decoder();
                feed(text, |t| decoder.decode(t))?;
                decoder.flush()?
            }
            TextFormat::JsonLines => {
                // A number or boolean where a text column is takes its text: inference
                // makes a column of mixed values text. Integer columns are read as their
                // text too, and parsed here (see [`integers`]); a float beyond its range
                // is an error (see [`finite`]).
                let mut decoder = arrow::json::ReaderBuilder::new(integers_as_text(&schema))
                    .with_coerce_primitive(true)
                    .with_batch_size(records.max(1))
                    .build_decoder()?;
                feed(text, |t| decoder.decode(t))?;
                (decoder.flush()?)
                    .map(|b| integers(b, &schema).and_then(finite))
                    .transpose()?
            }
        };
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(schema));
        if batch.num_rows() != records {
            return Err(ArrowError::ParseError(format!(
                "{records} records gave {} rows",
                batch.num_rows()
            )));
        }
        Ok(batch)
    }

    /// Why one record does not decode: for CSV the first column whose value does not;
    /// for JSON lines what the decoder says (it names the field).
    fn reason(&self, record: &Record) -> String {
        let Some(fields) = &record.fields else {
            // (Values unread: a number beyond f64 is still JSON.)
            type Object = std::collections::HashMap<String, serde::de::IgnoredAny>;
            if serde_json::from_slice::<Object>(&record.text).is_err() {
                return "the line is not a JSON object".into();
            }
            return match Self::decode(self.format, self.schema.clone(), &record.text, 1) {
                Err(e) => e.to_string(),
                Ok(_) => "the line does not decode".into(),
            };
        };
        let width = self.schema.fields().len();
        if fields.len() != width {
            let s = if fields.len() == 1 { "" } else { "s" };
            return format!("{} field{s} where the schema has {width}", fields.len());
        }
        for (c, f) in self.schema.fields().iter().enumerate() {
            let value = fields.get(c).unwrap_or_default();
            let one = Arc::new(Schema::new(vec![f.as_ref().clone()]));
            if Self::decode(TextFormat::Csv, one, &csv_text([[value]]), 1).is_err() {
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
    pub(super) fn malformed(
        &self,
        origin: &str,
        record: &Record,
        reason: String,
    ) -> std::result::Result<Malformed, ArrowError> {
        let at = record.line;
        if self.on_malformed == OnMalformed::Fail {
            return Err(ArrowError::ParseError(format!(
                "{} {at}: {reason} (source.on_malformed = \"fail\"; with \"dead_letter\" \
                 such records go to [dead_letter] and the job goes on)",
                self.position_name
            )));
        }
        let raw = String::from_utf8_lossy(&record.text()).into_owned();
        Ok(Malformed {
            origin: origin.to_string(),
            position: at,
            reason,
            raw: raw.trim_end_matches(['\r', '\n']).to_string(),
        })
    }

    /// Decodes `good` (records that passed the reader's own checks) into a batch; the
    /// records that do not decode join `malformed`, in position order.
    pub(super) fn decode_records(
        &self,
        origin: &str,
        good: &[Record],
        mut malformed: Vec<Malformed>,
    ) -> std::result::Result<Decoded, ArrowError> {
        let text = match self.format {
            TextFormat::Csv => csv_text(good.iter().filter_map(|r| r.fields.as_ref())),
            TextFormat::JsonLines => good
                .iter()
                .map(|r| &r.text[..])
                .collect::<Vec<_>>()
                .concat(),
        };
        // The batch, and the record of each of its rows where some did not decode.
        let (batch, rows) = match Self::decode(self.format, self.schema.clone(), &text, good.len())
        {
            Ok(batch) => (batch, None),
            // Some record does not decode: find which, keep the others.
            Err(_) => {
                let (mut kept, mut rows) = (Vec::new(), Vec::new());
                for (i, record) in good.iter().enumerate() {
                    let text = record.text();
                    match Self::decode(self.format, self.schema.clone(), &text, 1) {
                        Ok(_) => {
                            kept.extend_from_slice(&text);
                            rows.push(i);
                        }
                        Err(_) => {
                            malformed.push(self.malformed(origin, record, self.reason(record))?)
                        }
                    }
                }
                let batch = Self::decode(self.format, self.schema.clone(), &kept, rows.len())?;
                (batch, Some(rows))
            }
        };
        // An event needs an event time: a record without one is malformed as well.
        let batch = match self.event_time.map(|c| (c, batch.column(c).clone())) {
            Some((c, times)) if times.null_count() > 0 => {
                let name = self.schema.field(c).name();
                for row in (0..times.len()).filter(|&r| times.is_null(r)) {
                    let record = &good[rows.as_ref().map_or(row, |rows| rows[row])];
                    let reason = format!("no event time: column {name:?} is empty");
                    malformed.push(self.malformed(origin, record, reason)?);
                }
                let keep = arrow::compute::is_not_null(&times)?;
                arrow::compute::filter_record_batch(&batch, &keep)?
            }
            _ => batch,
        };
        malformed.sort_by_key(|m| m.position);
        Ok(Decoded { batch, malformed })
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

/// Records, each given by its fields, as lines of CSV, quoted where they must be.
fn csv_text<'a, R: IntoIterator<Item = &'a [u8]>>(records: impl IntoIterator<Item = R>) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    for fields in records {
        // Writing to memory cannot fail.
        let _ = w.write_record(fields);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};

    fn spec(on_malformed: OnMalformed) -> Spec {
        Spec {
            format: TextFormat::Csv,
            path: String::new(),
            schema: Vec::new(),
            on_malformed,
            per_file: false,
        }
    }

    /// (first column of every decoded row, lines of every malformed record) from here on.
    fn read_rest(source: &mut TextSource) -> (Vec<i64>, Vec<u64>, Vec<Position>) {
        let (mut rows, mut bad, mut after) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(b) = source.next_batch().expect("a batch") {
            let ts = b.batch.column(0);
            let ts = ts.as_any().downcast_ref::<Int64Array>().expect("Int64 ts");
            rows.extend(ts.values().iter());
            bad.extend(b.malformed.iter().map(|m| m.position));
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
        let dead_letter = spec(OnMalformed::DeadLetter);
        let open = |decoders| TextSource::open(&dead_letter, vec![path.clone()], 4, decoders);
        let (rows, bad, after) = read_rest(&mut open(1).unwrap());
        // Decoded on 3 threads: the same batches, positions and malformed records.
        assert_eq!(
            read_rest(&mut open(3).unwrap()),
            (rows.clone(), bad.clone(), after.clone())
        );
        assert_eq!(rows.len() + bad.len(), 40);
        assert_eq!(
            bad,
            [5, 7, 12, 19, 20, 26, 33, 40],
            "the lines of records 3, 5, 10, ..."
        );
        for (i, at) in after.iter().enumerate() {
            let mut resumed = open(1 + i % 3).unwrap();
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
        for decoders in [1, 3] {
            let fail = spec(OnMalformed::Fail);
            let mut fail = TextSource::open(&fail, vec![path.clone()], 4, decoders).unwrap();
            let err = read_rest_err(&mut fail);
            assert!(
                err.contains("line 5: 1 field where the header has 2"),
                "{err}"
            );
        }
    }

    /// A dead letter names the line its record begins on, after blank lines, quoted
    /// fields that span lines and CRLF line ends alike (the csv crate's own count is off
    /// after the first two and with the third).
    #[test]
    fn malformed_records_name_their_lines() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let lines = [
            "ts,x,note",
            "1,1.5,a",
            "",
            "2,2.5",
            "3,3.5,\"two",
            "lines\"",
            "4,4.5,b",
            "",
            "",
            "5",
            "6,6.5,\"x",
            "y\"",
            "7",
        ];
        for end in ["\n", "\r\n"] {
            let path = dir.path().join("in.csv");
            std::fs::write(&path, lines.join(end) + end).expect("writing the file");
            for decoders in [1, 3] {
                let dead_letter = spec(OnMalformed::DeadLetter);
                let mut source =
                    TextSource::open(&dead_letter, vec![path.clone()], 2, decoders).unwrap();
                let (rows, bad, _) = read_rest(&mut source);
                assert_eq!(rows, [1, 3, 4, 6], "line ends {end:?}");
                assert_eq!(bad, [4, 10, 13], "line ends {end:?}, {decoders} decoders");
            }
        }
    }

    /// The schema comes from the first file that holds a record; with none, the error
    /// says so. A JSON field of mixed types (inferred as text) takes numbers as text.
    #[test]
    fn schemas_come_from_the_first_file_with_a_record() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("writing a file");
            path
        };
        let csv = spec(OnMalformed::Fail);
        let (empty, header) = (write("a.csv", ""), write("b.csv", "ts,x\n"));
        let full = write("c.csv", "ts,x\n1,1.5\n2,2.5\n");
        let files = vec![empty.clone(), header.clone(), full];
        let mut source = TextSource::open(&csv, files, 10, 1).unwrap();
        assert_eq!(source.schema().field(1).data_type(), &DataType::Float64);
        assert_eq!(read_rest(&mut source).0, [1, 2]);
        let Err(e) = TextSource::open(&csv, vec![empty, header.clone()], 10, 1) else {
            panic!("no record, yet a schema")
        };
        assert!(e.to_string().contains("none of the 2 files"), "{e}");
        let declared = Spec {
            schema: vec![
                ("ts".into(), DataType::Int64),
                ("x".into(), DataType::Float64),
            ],
            ..spec(OnMalformed::Fail)
        };
        let mut source = TextSource::open(&declared, vec![header], 10, 1).unwrap();
        assert_eq!(source.schema().field(1).data_type(), &DataType::Float64);
        assert_eq!(read_rest(&mut source).0, Vec::<i64>::new());

        let json = Spec {
            format: TextFormat::JsonLines,
            ..spec(OnMalformed::Fail)
        };
        let lines = write(
            "d.jsonl",
            "{\"ts\":1,\"x\":\"a\",\"y\":[1,\"x\"]}\n\
             {\"ts\":2,\"x\":3,\"y\":[]}\n\
             {\"ts\":3,\"x\":true}\n",
        );
        let files = vec![write("e.jsonl", "\n"), lines];
        let mut source = TextSource::open(&json, files, 10, 1).unwrap();
        assert_eq!(read_rest(&mut source).0, [1, 2, 3]);
    }

    /// A JSON number in an integer column is an integer only when it is one: `1.5` is a
    /// malformed record naming its column, not 1.
    #[test]
    fn a_fraction_in_an_integer_column_is_malformed() {
        use arrow::datatypes::{Int32Type, Int64Type};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("in.jsonl");
        let lines = [
            r#"{"ts": 1, "n": 7}"#,
            r#"{"ts": 2, "n": 1.5}"#,
            r#"{"ts": 3.0, "n": "8"}"#,
            r#"{"ts": 4, "n": 9e3}"#,
            r#"{"ts": 5, "n": 2147483648}"#,
            r#"{"ts": 6.25, "n": 1}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").expect("writing");
        let json = |on_malformed, schema| Spec {
            format: TextFormat::JsonLines,
            schema,
            ..spec(on_malformed)
        };
        let declared = vec![
            ("ts".to_string(), DataType::Int64),
            ("n".to_string(), DataType::Int32),
        ];
        for batch_rows in [1, 4, 10] {
            let open = |on_malformed| {
                TextSource::open(
                    &json(on_malformed, declared.clone()),
                    vec![path.clone()],
                    batch_rows,
                    1,
                )
                .expect("the source")
            };
            let mut source = open(OnMalformed::DeadLetter);
            let (mut rows, mut ns, mut bad) = (Vec::<i64>::new(), Vec::<i32>::new(), Vec::new());
            while let Some(b) = source.next_batch().expect("a batch") {
                let column = |c| b.batch.column(c).clone();
                rows.extend(column(0).as_primitive::<Int64Type>().values());
                ns.extend(column(1).as_primitive::<Int32Type>().values());
                bad.extend(b.malformed.iter().map(|m| (m.position, m.reason.clone())));
            }
            assert_eq!(rows, [1, 3, 4], "{batch_rows} rows a batch");
            assert_eq!(ns, [7, 8, 9000], "{batch_rows} rows a batch");
            let lines: Vec<u64> = bad.iter().map(|b| b.0).collect();
            assert_eq!(lines, [2, 5, 6], "{bad:?}");
            assert!(
                bad[0]
                    .1
                    .contains(r#"column "n": "1.5" is not a valid Int32"#),
                "{bad:?}"
            );
            assert!(
                bad[1]
                    .1
                    .contains(r#"column "n": a value is out of range of Int32"#),
                "{bad:?}"
            );
            assert!(
                bad[2]
                    .1
                    .contains(r#"column "ts": "6.25" is not a valid Int64"#),
                "{bad:?}"
            );
            let err = read_rest_err(&mut open(OnMalformed::Fail));
            assert!(err.contains("line 2: "), "{err}");
        }
        // An integer column as the sampled lines infer it, then a fraction.
        let inferred = dir.path().join("inferred.jsonl");
        let mut text: String = (1..=SAMPLE).map(|t| format!("{{\"ts\": {t}}}\n")).collect();
        text += "{\"ts\": 1000.5}\n{\"ts\": 1001}\n";
        std::fs::write(&inferred, text).expect("writing");
        let spec = json(OnMalformed::DeadLetter, Vec::new());
        let source = TextSource::open(&spec, vec![inferred], 64, 1);
        let (rows, bad, _) = read_rest(&mut source.expect("the source"));
        assert_eq!((rows.len(), rows.last()), (SAMPLE + 1, Some(&1001)));
        assert_eq!(bad, [SAMPLE as u64 + 1]);
    }

    /// A JSON number beyond a float column's range is a malformed record naming its
    /// column, not an infinity.
    #[test]
    fn a_number_beyond_a_float_column_is_malformed() {
        use arrow::datatypes::{Float32Type, Float64Type};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("in.jsonl");
        let lines = [
            r#"{"ts": 1, "v": 1.5, "w": 1}"#,
            r#"{"ts": 2, "v": 1e400, "w": 1}"#,
            r#"{"ts": 3, "v": -1e309, "w": 1}"#,
            r#"{"ts": 4, "v": 2, "w": 1e39}"#,
            r#"{"ts": 5, "v": 1e300, "w": 3e38}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").expect("writing");
        let spec = Spec {
            format: TextFormat::JsonLines,
            schema: vec![
                ("ts".to_string(), DataType::Int64),
                ("v".to_string(), DataType::Float64),
                ("w".to_string(), DataType::Float32),
            ],
            ..spec(OnMalformed::DeadLetter)
        };
        for batch_rows in [1, 10] {
            let mut source =
                TextSource::open(&spec, vec![path.clone()], batch_rows, 1).expect("the source");
            let (mut vs, mut ws, mut bad) = (Vec::<f64>::new(), Vec::<f32>::new(), Vec::new());
            while let Some(b) = source.next_batch().expect("a batch") {
                vs.extend(b.batch.column(1).as_primitive::<Float64Type>().values());
                ws.extend(b.batch.column(2).as_primitive::<Float32Type>().values());
                bad.extend(b.malformed.iter().map(|m| (m.position, m.reason.clone())));
            }
            assert_eq!(vs, [1.5, 1e300], "{batch_rows} rows a batch");
            assert_eq!(ws, [1.0, 3e38], "{batch_rows} rows a batch");
            let lines: Vec<u64> = bad.iter().map(|b| b.0).collect();
            assert_eq!(lines, [2, 3, 4], "{bad:?}");
            for (b, column) in bad.iter().zip([r#""v""#, r#""v""#, r#""w""#]) {
                let want = format!("column {column}: a number beyond the range");
                assert!(b.1.contains(&want), "{bad:?}");
            }
        }
    }

    /// A record without an event time is malformed, named by its line, whatever the
    /// batch size.
    #[test]
    fn a_record_without_an_event_time_is_malformed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "ts,x\n1,1.5\n,2.5\n,3.5\n4,4.5\n").expect("writing");
        let json = dir.path().join("in.jsonl");
        let lines = "{\"ts\":1}\n{\"x\":2}\n{\"ts\":null}\n{\"ts\":4}\n";
        std::fs::write(&json, lines).expect("writing");
        let json_spec = |on_malformed| Spec {
            format: TextFormat::JsonLines,
            ..spec(on_malformed)
        };
        for (path, format, bad) in [
            (&csv, spec as fn(OnMalformed) -> Spec, vec![3, 4]),
            (&json, json_spec, vec![2, 3]),
        ] {
            for batch_rows in [1, 2, 10] {
                let open = |on_malformed| {
                    let source =
                        TextSource::open(&format(on_malformed), vec![path.clone()], batch_rows, 1);
                    source.unwrap().with_event_time("ts")
                };
                let (rows, lines, _) = read_rest(&mut open(OnMalformed::DeadLetter));
                assert_eq!((rows, lines), (vec![1, 4], bad.clone()), "{path:?}");
                let err = read_rest_err(&mut open(OnMalformed::Fail));
                let want = format!("line {}: no event time: column \"ts\" is empty", bad[0]);
                assert!(err.contains(&want), "{err}");
            }
        }
    }

    fn read_rest_err(source: &mut TextSource) -> String {
        loop {
            match source.next_batch() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(e) => return e.to_string(),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any bytes, as a CSV or JSON-lines file, with or without a declared schema, in
        /// batches of any size: errors or batches, never a panic; and with dead letters,
        /// every record is either decoded or malformed.
        #[test]
        fn any_text_is_decoded_or_refused_never_a_panic(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("[0-9a-z,.\" -]{0,20}").unwrap(),
                    proptest::string::string_regex("\\{\"ts\": ?[0-9a-z\"]{0,6}(, \"x\": ?[0-9.a-z\"]{0,5})?\\}").unwrap(),
                ],
                0..40,
            ),
            json in proptest::bool::ANY,
            declared in proptest::bool::ANY,
            batch_rows in 1usize..8,
            decoders in 2usize..5,
        ) {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let path = dir.path().join("in.txt");
            let header = if json { "" } else { "ts,x\n" };
            std::fs::write(&path, format!("{header}{}\n", lines.join("\n"))).unwrap();
            let schema = match declared {
                true => vec![
                    ("ts".to_string(), DataType::Int64),
                    ("x".to_string(), DataType::Float64),
                ],
                false => Vec::new(),
            };
            let spec = Spec {
                format: if json { TextFormat::JsonLines } else { TextFormat::Csv },
                path: String::new(),
                schema,
                on_malformed: OnMalformed::DeadLetter,
                per_file: false,
            };
            // Every batch, its malformed records' lines and its position, until the end
            // or an error.
            let read = |decoders| {
                let mut source = TextSource::open(&spec, vec![path.clone()], batch_rows, decoders)
                    .map_err(|e| (Vec::new(), e.to_string()))?;
                let mut batches = Vec::new();
                loop {
                    match source.next_batch() {
                        Ok(Some(b)) => {
                            let lines: Vec<u64> = b.malformed.iter().map(|m| m.position).collect();
                            batches.push((b.batch, lines, b.after));
                        }
                        Ok(None) => return Ok(batches),
                        Err(e) => return Err((batches, e.to_string())),
                    }
                }
            };
            let serial = read(1);
            // Decoded on several threads: the same batches, and the same error after them.
            proptest::prop_assert_eq!(&read(decoders), &serial);
            let Ok(batches) = serial else {
                return Ok(());
            };
            let seen: usize = batches.iter().map(|(b, lines, _)| b.num_rows() + lines.len()).sum();
            // A JSON line is a record; a CSV quote may span lines.
            if json {
                let records = lines.iter().filter(|l| !l.trim().is_empty()).count();
                proptest::prop_assert_eq!(seen, records);
            }
        }
    }
}
