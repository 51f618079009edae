//! Connectors: sources that yield Arrow batches by partition, and sinks that write them.

#[cfg(feature = "datasets")]
mod generator;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
pub(crate) use kafka::{Commits, partitions as kafka_partitions};
#[cfg(feature = "kafka")]
pub(crate) use kafka_sink::fence;
#[cfg(feature = "kafka")]
mod kafka_sink;
mod parquet;
mod per_file;
pub mod sink;
mod text;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{Source as SourceSpec, TextFormat};

pub use sink::{Callback, Sink, open_sink};
pub use writer::SinkThread;

/// How far a source has been read: where a restored job resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// Nothing read yet.
    #[default]
    Start,
    /// Files: `rows` rows of file `index` (in name order), and every file before it.
    File {
        /// The file's index among the source's files.
        index: usize,
        /// Its path, checked on restore.
        path: String,
        /// Rows of it read.
        rows: u64,
    },
    /// Files as partitions: the position in each file.
    PerFile {
        /// Per file, in name order.
        files: Vec<Position>,
    },
    /// Kafka topics: the next offset of each partition.
    Kafka {
        /// (topic, partition, next offset), by topic and partition. The topic is empty in
        /// checkpoints written before sources read several topics (`[partition, offset]`):
        /// the source's one topic.
        #[serde(deserialize_with = "kafka_offsets")]
        offsets: Vec<(String, i32, i64)>,
    },
    /// A service's own source: whatever it needs to resume (offsets, a cursor), as text.
    Custom {
        /// The source's own record of where it is.
        at: String,
    },
    /// A generator: its first `batches` batches of `batch_rows` rows.
    Generator {
        /// Batches produced.
        batches: u64,
        /// Rows per batch, which decide how batches are dealt to partitions.
        batch_rows: usize,
    },
}

/// Kafka offsets as checkpoints hold them: `[topic, partition, offset]`, or
/// `[partition, offset]` from before topics were named.
fn kafka_offsets<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<(String, i32, i64)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Named(String, i32, i64),
        Bare(i32, i64),
    }
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok((entries.into_iter())
        .map(|e| match e {
            Entry::Named(t, p, o) => (t, p, o),
            Entry::Bare(p, o) => (String::new(), p, o),
        })
        .collect())
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Start => f.write_str("start"),
            Position::File { path, rows, .. } => write!(f, "{path} row {rows}"),
            Position::PerFile { files } => {
                let each: Vec<String> = files.iter().map(ToString::to_string).collect();
                write!(f, "{}", each.join(", "))
            }
            Position::Kafka { offsets } => {
                let each: Vec<String> = (offsets.iter())
                    .map(|(t, p, o)| format!("{t}/{p} offset {o}"))
                    .collect();
                write!(f, "{}", each.join(", "))
            }
            Position::Custom { at } => f.write_str(at),
            Position::Generator {
                batches,
                batch_rows,
            } => write!(f, "batch {batches} of {batch_rows} rows"),
        }
    }
}

/// A record that did not decode, kept for the dead-letter output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Where it is from: a file, or a Kafka topic and partition (`clicks/2`).
    pub origin: String,
    /// Where it is there: its line in a file (a CSV header is line 1), its offset in a
    /// Kafka partition.
    pub position: u64,
    /// Why it did not decode, naming the column where one is at fault.
    pub reason: String,
    /// Its text, fields re-joined as CSV.
    pub raw: String,
}

/// The schema of the dead-letter output: origin, position, reason, raw text.
pub fn dead_letter_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("origin", DataType::Utf8, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// Malformed records as a batch of [`dead_letter_schema`].
pub fn dead_letter_batch(records: &[Malformed]) -> RecordBatch {
    use arrow::array::{StringArray, UInt64Array};
    let text = |f: fn(&Malformed) -> &str| {
        std::sync::Arc::new(records.iter().map(f).map(Some).collect::<StringArray>())
    };
    let positions: UInt64Array = records.iter().map(|r| Some(r.position)).collect();
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            text(|r| &r.origin),
            std::sync::Arc::new(positions),
            text(|r| &r.reason),
            text(|r| &r.raw),
        ],
    )
    .expect("the columns match the dead-letter schema")
}

/// What a file reader decoded: a batch, and the records that did not decode.
pub(crate) struct Decoded {
    pub(crate) batch: RecordBatch,
    pub(crate) malformed: Vec<Malformed>,
}

impl From<RecordBatch> for Decoded {
    fn from(batch: RecordBatch) -> Decoded {
        Decoded {
            batch,
            malformed: Vec::new(),
        }
    }
}

/// A file reader's next batch, or why there is none.
pub(crate) type DecodeResult = std::result::Result<Decoded, ArrowError>;

/// Runs `decode` on a thread of its own and hands its batches on through a channel that
/// holds at most `capacity` of them. The thread stops after the first error, or when the
/// receiver is dropped; a panic there arrives as an error.
pub(crate) fn decode_ahead<I>(
    capacity: usize,
    decode: impl FnOnce() -> I + Send + 'static,
) -> std::result::Result<Receiver<DecodeResult>, ArrowError>
where
    I: Iterator<Item = DecodeResult>,
{
    let (tx, rx) = sync_channel(capacity);
    std::thread::Builder::new()
        .name("panes-decode".into())
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| {
                for batch in decode() {
                    let failed = batch.is_err();
                    // A closed channel: the source went away; stop decoding.
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
            if std::panic::catch_unwind(run).is_err() {
                let panicked = ArrowError::ComputeError("a decoding thread panicked".into());
                let _ = tx.send(Err(panicked));
            }
        })
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    Ok(rx)
}

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
    /// The source's position after this batch.
    pub after: Position,
    /// Records of this stretch of the source that did not decode (CSV), in file order.
    pub malformed: Vec<Malformed>,
}

/// A source of event batches, by partition: files, a Kafka topic, a generator, or a
/// service's own (given to [`crate::run::run_job`] in [`crate::run::Connectors`]).
///
/// Each batch says where the source is after it ([`SourceBatch::after`]); a checkpoint
/// keeps that position, and a run restored from it calls [`Source::seek`] before the
/// first read. A source that cannot seek returns an error there.
pub trait Source: Send {
    /// Schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// Number of partitions (each has its own watermark).
    fn partitions(&self) -> usize;
    /// Total number of rows, if known up front (for progress).
    fn total_rows(&self) -> Option<u64>;
    /// The next batch, or `None` when every partition is exhausted.
    fn next_batch(&mut self) -> Result<Option<SourceBatch>>;
    /// Moves a source that has not been read yet to `to`, a position it gave before.
    fn seek(&mut self, to: &Position) -> Result<()>;
    /// Told that a checkpoint at `at` completed: a source that keeps offsets elsewhere
    /// too (a Kafka consumer group) records them there. Only a hint: restores read the
    /// checkpoint.
    fn checkpointed(&mut self, _at: &Position) {}
}

/// How many row groups a Parquet source (batches a CSV or JSON-lines source) decodes at
/// once, and how many threads encode a Parquet sink's columns, for a job on `threads`
/// shards: one (the reader's or the sink's thread) up to 7 shards, then one more per 4
/// shards. On a small machine the reader and sink threads already keep a spare core busy,
/// and decoding in parallel was slower end to end on 2 cores (BENCHMARKS.md, section 8).
pub fn io_threads(threads: usize) -> usize {
    (threads / 4).max(1)
}

/// Opens the source of a job. `columns`: the columns to read (`None`: all of them), of
/// which string columns `dictionary` may come dictionary-encoded (from Parquet files that
/// mostly store them so: all files or none, so that they share one schema). File sources
/// decode `decoders` row groups or batches at once (see [`io_threads`]). A text record
/// (a CSV or JSON-lines file's, a Kafka message) without a value in column `event_time`
/// is malformed.
pub fn open_source(
    spec: &SourceSpec,
    event_time: &str,
    columns: Option<&[String]>,
    dictionary: &[String],
    batch_rows: usize,
    decoders: usize,
) -> Result<Box<dyn Source>> {
    type Open<'a> = &'a dyn Fn(Vec<PathBuf>, usize) -> Result<Box<dyn Source>>;
    // Files as partitions share the decoders, so that many files do not each start as
    // many threads, each holding rows ahead.
    let per_file = |files: Vec<PathBuf>, open: Open| {
        let share = (decoders / files.len().max(1)).max(1);
        let sources = (files.into_iter())
            .map(|f| Ok((open(vec![f.clone()], share)?, f.display().to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(per_file::PerFile::new(sources)?) as Box<dyn Source>)
    };
    match spec {
        SourceSpec::Parquet(p) => {
            let files = files(&p.path, "parquet")?;
            let dictionary = parquet::dictionary_encoded(&files, dictionary)?;
            let open = |files: Vec<PathBuf>, decoders| -> Result<Box<dyn Source>> {
                Ok(Box::new(parquet::ParquetSource::open(
                    &files,
                    columns,
                    &dictionary,
                    batch_rows,
                    decoders,
                )?))
            };
            if p.per_file {
                per_file(files, &open)
            } else {
                open(files, decoders)
            }
        }
        SourceSpec::Text(t) => {
            let ext = match t.format {
                TextFormat::Csv => "csv",
                TextFormat::JsonLines => "jsonl",
            };
            let open = |files: Vec<PathBuf>, decoders| -> Result<Box<dyn Source>> {
                let source = text::TextSource::open(t, files, batch_rows, decoders)?;
                Ok(Box::new(source.with_event_time(event_time)))
            };
            let files = files(&t.path, ext)?;
            if t.per_file {
                per_file(files, &open)
            } else {
                open(files, decoders)
            }
        }
        #[cfg(feature = "kafka")]
        SourceSpec::Kafka(k) => {
            let source = kafka::KafkaSource::open(k, batch_rows, None)?;
            Ok(Box::new(source.with_event_time(event_time)))
        }
        #[cfg(not(feature = "kafka"))]
        SourceSpec::Kafka(_) => Err(Error::Internal(
            "a kafka source in a build without the kafka feature".into(),
        )),
        #[cfg(feature = "datasets")]
        SourceSpec::Generator(g) => Ok(Box::new(generator::GeneratorSource::new(g, batch_rows)?)),
    }
}

/// A partition's own Kafka source under scale-out (the spec names the partition): the
/// offsets of its completed checkpoints go to `commits`, for the group member to commit.
/// A message without a value in column `event_time` is malformed.
#[cfg(feature = "kafka")]
pub(crate) fn kafka_partition(
    spec: &crate::job::KafkaSpec,
    event_time: &str,
    batch_rows: usize,
    commits: kafka::Commits,
) -> Result<Box<dyn Source>> {
    let source = kafka::KafkaSource::open(spec, batch_rows, Some(commits))?;
    Ok(Box::new(source.with_event_time(event_time)))
}

/// The files a source path names: a file, a directory's `*.ext` files, or a glob; sorted.
/// Each must be a regular file (see [`regular`]).
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
            .filter(|f| !f.is_dir())
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
    found.iter().try_for_each(|f| regular(f))?;
    Ok(found)
}

/// Refuses a path that is not a regular file (a named pipe, a device, a socket, a
/// directory). A file source reads a file more than once: its schema, then its records,
/// and again from a checkpoint's position; a stream would lose what the first read took.
fn regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(Error::input(
        path.display().to_string(),
        format!(
            "{what}: a file source reads its files more than once (the schema, the \
             records, again after a restart), which a stream cannot give; write the \
             stream to a file, or send it to a Kafka topic"
        ),
    ))
}

/// Files read one after another as one partition, each through its own batch reader.
pub(crate) struct FileSequence<R> {
    kind: &'static str,
    files: Vec<PathBuf>,
    next_file: usize,
    /// Rows to skip at the start of the next file opened (a restored position).
    skip: u64,
    /// Rows the open reader still has to drop before its first batch.
    discard: u64,
    /// The open reader, its file name and the number of rows it has consumed (decoded
    /// or malformed).
    reader: Option<(R, String, u64)>,
}

impl<R: Iterator<Item = Result<Decoded, ArrowError>>> FileSequence<R> {
    /// A sequence over `files` of a `kind` ("CSV", "Parquet") named in errors.
    pub(crate) fn new(kind: &'static str, files: Vec<PathBuf>) -> Self {
        FileSequence {
            kind,
            files,
            next_file: 0,
            skip: 0,
            discard: 0,
            reader: None,
        }
    }

    /// Resumes at `to`: the file it names, less the rows already read.
    pub(crate) fn seek(&mut self, to: &Position) -> Result<()> {
        match to {
            Position::Start => Ok(()),
            Position::File { index, path, rows } => {
                let here = self.files.get(*index).map(|f| f.display().to_string());
                if here.as_deref() != Some(path.as_str()) {
                    return Err(Error::input(
                        path,
                        format!(
                            "the checkpoint resumes {} file {index} {path:?}, but the source \
                             now has {}: the input changed; run with --fresh",
                            self.kind,
                            here.map_or("no such file".into(), |h| format!("{h:?} there")),
                        ),
                    ));
                }
                self.next_file = *index;
                self.skip = *rows;
                Ok(())
            }
            other => Err(Error::input(
                self.files
                    .first()
                    .map_or(String::new(), |f| f.display().to_string()),
                format!(
                    "the checkpoint resumes a {} source at {other}, not at one file position: \
                     the source changed; run with --fresh",
                    self.kind
                ),
            )),
        }
    }

    /// The next batch, opening the next file with `open(path, skip)` when one is
    /// exhausted; `open` returns the reader and how many of the `skip` rows it skipped.
    pub(crate) fn next(
        &mut self,
        mut open: impl FnMut(&PathBuf, u64) -> Result<(R, u64)>,
    ) -> Result<Option<SourceBatch>> {
        loop {
            if let Some((reader, origin, row)) = &mut self.reader {
                // Only readers that decode every row (Parquet) leave rows to discard.
                match reader.next() {
                    Some(Ok(d))
                        if self.discard > 0 && (d.batch.num_rows() as u64) <= self.discard =>
                    {
                        self.discard -= d.batch.num_rows() as u64;
                        continue;
                    }
                    Some(Ok(Decoded { batch, malformed })) => {
                        let batch = batch.slice(
                            self.discard as usize,
                            batch.num_rows() - self.discard as usize,
                        );
                        self.discard = 0;
                        let first_row = *row;
                        *row += (batch.num_rows() + malformed.len()) as u64;
                        return Ok(Some(SourceBatch {
                            partition: 0,
                            batch,
                            origin: origin.clone(),
                            first_row,
                            after: Position::File {
                                index: self.next_file - 1,
                                path: origin.clone(),
                                rows: *row,
                            },
                            malformed,
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
            let skip = std::mem::take(&mut self.skip);
            let (reader, skipped) = open(path, skip)?;
            self.discard = skip - skipped.min(skip);
            self.reader = Some((reader, path.display().to_string(), skip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Position;

    /// A named pipe among a source's files is refused, named, before anything reads
    /// from it (reading its head for a schema would take records the job never sees).
    #[test]
    fn a_named_pipe_is_refused_not_half_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("a.csv"), "ts\n1\n").expect("writing");
        let pipe = dir.path().join("b.csv");
        let made = std::process::Command::new("mkfifo").arg(&pipe).status();
        assert!(made.expect("mkfifo runs").success());
        let whole = dir.path().to_str().expect("a UTF-8 path").to_string();
        for path in [
            pipe.to_str().expect("a UTF-8 path").to_string(),
            whole.clone(),
        ] {
            let err = super::files(&path, "csv")
                .expect_err("a named pipe")
                .to_string();
            assert!(
                err.contains("b.csv") && err.contains("a named pipe"),
                "{err}"
            );
        }
        let glob = format!("{whole}/*.csv");
        let err = super::files(&glob, "csv")
            .expect_err("a named pipe")
            .to_string();
        assert!(err.contains("a named pipe"), "{err}");
        std::fs::remove_file(&pipe).expect("removing the pipe");
        assert_eq!(super::files(&whole, "csv").expect("a file").len(), 1);
    }

    #[test]
    fn kafka_positions_name_their_topics_and_older_ones_still_read() {
        let now = Position::Kafka {
            offsets: vec![("clicks".into(), 0, 5), ("views".into(), 1, 7)],
        };
        let text = serde_json::to_string(&now).unwrap();
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), now);
        let before: Position =
            serde_json::from_str(r#"{"kind": "kafka", "offsets": [[0, 5], [1, 7]]}"#).unwrap();
        let want = vec![(String::new(), 0, 5), (String::new(), 1, 7)];
        assert_eq!(before, Position::Kafka { offsets: want });
    }
}
