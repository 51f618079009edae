//! Sinks: the [`Sink`] trait, and its implementations: Parquet, CSV and JSON-lines files,
//! stdout and Kafka topics (`kafka_sink`) in [`FileSink`], a service's own code in
//! [`Callback`].
//!
//! Without checkpoints a sink is one file, written under a temporary name and renamed into
//! place only when complete, so a failed run never leaves a file that looks finished. JSON
//! lines can also go to stdout.
//!
//! With checkpoints a sink is a directory of part files, committed in two phases: rows go
//! to a hidden staged part (`.staged-part-NNNNNN.parquet`); a checkpoint closes and syncs it
//! and lists it in its manifest; once the manifest is durable the part is published by a
//! rename (`part-NNNNNN.parquet`, numbered by checkpoint). A restored job publishes what its
//! checkpoint lists and removes staged parts of checkpoints that never completed, and parts
//! of later checkpoints it is about to write again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{DEFAULT_MAX_ROW_GROUP_ROW_COUNT, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::job::Sink as SinkSpec;

enum Writer {
    Parquet(ArrowWriter<BufWriter<File>>),
    ParquetColumns(ColumnsWriter),
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    #[cfg(feature = "kafka")]
    Kafka(super::kafka_sink::KafkaWriter),
}

/// A Parquet file whose columns are encoded at once by `encoders` (> 1) threads, a batch
/// at a time, for jobs on many cores (one encoder is a serial stage there). The file is what
/// [`ArrowWriter`] writes (same schema and properties), except that a row group ends at
/// the first batch boundary past its 1 Mi rows, not at 1 Mi rows exactly.
struct ColumnsWriter {
    file: SerializedFileWriter<BufWriter<File>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    encoders: usize,
    /// The encoders of the row group being written, one per leaf column.
    columns: Vec<ArrowColumnWriter>,
    rows: usize,
}

/// Batches of fewer rows are encoded on the sink's thread alone.
const PARALLEL_ENCODE_ROWS: usize = 4096;

impl ColumnsWriter {
    fn new(
        w: ArrowWriter<BufWriter<File>>,
        schema: SchemaRef,
        encoders: usize,
    ) -> parquet::errors::Result<Self> {
        let (file, factory) = w.into_serialized_writer()?;
        Ok(ColumnsWriter {
            file,
            factory,
            schema,
            encoders,
            columns: Vec::new(),
            rows: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        if self.columns.is_empty() {
            let group = self.file.flushed_row_groups().len();
            self.columns = self.factory.create_column_writers(group)?;
        }
        let mut leaves = Vec::with_capacity(self.columns.len());
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        let encode = |writers: &mut [ArrowColumnWriter], leaves: &[ArrowLeafColumn]| {
            (writers.iter_mut().zip(leaves)).try_for_each(|(w, leaf)| w.write(leaf))
        };
        // A small batch is not worth the threads.
        if batch.num_rows() < PARALLEL_ENCODE_ROWS {
            encode(&mut self.columns, &leaves)?;
        } else {
            let per_thread = self.columns.len().div_ceil(self.encoders);
            std::thread::scope(|scope| {
                let threads: Vec<_> = (self.columns.chunks_mut(per_thread))
                    .zip(leaves.chunks(per_thread))
                    .map(|(writers, leaves)| scope.spawn(move || encode(writers, leaves)))
                    .collect();
                threads.into_iter().try_for_each(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(ParquetError::General("an encoding thread panicked".into()))
                    })
                })
            })?;
        }
        self.rows += batch.num_rows();
        if self.rows >= DEFAULT_MAX_ROW_GROUP_ROW_COUNT {
            self.flush()?;
        }
        Ok(())
    }

    /// Ends the row group being written.
    fn flush(&mut self) -> parquet::errors::Result<()> {
        let chunks = (std::mem::take(&mut self.columns).into_iter())
            .map(ArrowColumnWriter::close)
            .collect::<parquet::errors::Result<Vec<_>>>()?;
        if self.rows > 0 {
            let mut group = self.file.next_row_group()?;
            chunks
                .into_iter()
                .try_for_each(|c| c.append_to_row_group(&mut group))?;
            group.close()?;
        }
        self.rows = 0;
        Ok(())
    }

    fn into_inner(mut self) -> parquet::errors::Result<BufWriter<File>> {
        self.flush()?;
        self.file.into_inner()
    }
}

/// What a sink writes into.
enum Target {
    /// One file, renamed from `tmp` to `path` by [`Sink::finish`].
    File {
        tmp: PathBuf,
        path: PathBuf,
    },
    Stdout,
    /// Part files in `dir`; `next` is the checkpoint the open part belongs to; `key` names
    /// them in checkpoints (see [`parts_key`]).
    Parts {
        dir: PathBuf,
        next: u64,
        key: String,
    },
}

/// Where a checkpoint's staged parts go once it is durable: without one, they are
/// renamed into place (files); a Kafka topic sends them on.
pub(crate) trait Publish: Send {
    /// Publishes staged parts `parts` (published names) of `dir`; those already
    /// published are left alone.
    fn publish(&mut self, dir: &Path, parts: &[String]) -> Result<()>;
}

/// Where a job's batches go: window rows, late events, alerts or dead letters.
///
/// A run writes batches in order, and with `[checkpoint]` commits them in two phases:
/// [`Sink::stage`] makes what was written since the last checkpoint durable but not yet
/// visible and says what it staged; the checkpoint's manifest records that under
/// [`Sink::id`]; once the manifest is durable, [`Sink::publish`] makes it visible. A run
/// restored from that checkpoint calls `publish` again with the same list (the crash may
/// have come before it), so publishing must be idempotent. A sink that keeps the default
/// `stage` and `publish` delivers at least once: rows written after the last checkpoint
/// are written again after a restore.
pub trait Sink: Send {
    /// Names the sink in errors and in checkpoints' manifests.
    fn id(&self) -> String;
    /// Writes a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Phase one of checkpoint `checkpoint`: stages what was written since the last one
    /// and returns what to publish once the checkpoint is durable.
    fn stage(&mut self, checkpoint: u64) -> Result<Vec<String>> {
        let _ = checkpoint;
        Ok(Vec::new())
    }
    /// Phase two: publishes what a durable checkpoint listed for this sink.
    fn publish(&mut self, staged: &[String]) -> Result<()> {
        let _ = staged;
        Ok(())
    }
    /// The end of a run without checkpoints: flushes, and makes the output visible.
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A sink that hands every batch to a function: a service's own code, or a channel.
///
/// ```
/// use std::sync::mpsc;
/// use panes_engine::sinks::{Callback, Sink};
/// # use std::sync::Arc;
/// # use arrow::array::{Int64Array, RecordBatch};
/// let (tx, rx) = mpsc::channel();
/// let mut sink = Callback::new("rows", move |batch: &RecordBatch| {
///     tx.send(batch.clone()).map_err(|_| "the receiver is gone".to_string())
/// });
/// # let batch = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as _)])?;
/// sink.write(&batch)?;
/// assert_eq!(rx.recv()?.num_rows(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It delivers at least once under checkpoints (see [`Sink`]).
pub struct Callback<F> {
    name: String,
    f: F,
}

impl<F> Callback<F>
where
    F: FnMut(&RecordBatch) -> std::result::Result<(), String> + Send,
{
    /// A sink named `name` (in errors) that calls `f` with each batch; an `Err` of `f`
    /// stops the run with its text.
    pub fn new(name: &str, f: F) -> Callback<F> {
        Callback {
            name: name.to_string(),
            f,
        }
    }
}

impl<F> Sink for Callback<F>
where
    F: FnMut(&RecordBatch) -> std::result::Result<(), String> + Send,
{
    fn id(&self) -> String {
        format!("callback {}", self.name)
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        (self.f)(batch).map_err(|e| Error::Sink {
            sink: self.id(),
            message: e,
        })
    }
}

/// A sink of the job file: a file, stdout, part files committed by checkpoints, or a
/// Kafka topic. Dropping it without [`Sink::finish`] removes its temporary file.
pub struct FileSink {
    spec: SinkSpec,
    schema: SchemaRef,
    writer: Option<Writer>,
    target: Target,
    publisher: Option<Box<dyn Publish>>,
    /// Threads that encode a Parquet file's columns (see [`super::io_threads`]).
    encoders: usize,
}

/// The prefix of a staged part's file name.
pub(crate) const STAGED: &str = ".staged-";

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))
}

fn writer(spec: &SinkSpec, path: &Path, schema: &SchemaRef, encoders: usize) -> Result<Writer> {
    let file = File::create(path).map_err(|e| Error::io("creating", path, e))?;
    Ok(match spec {
        SinkSpec::Parquet(_) => {
            // Only window bounds (timestamps, a few per row group) get a dictionary. In
            // the other columns a key appears once per window and aggregates are nearly
            // all distinct: a dictionary costs a hash per value, and zstd over the plain
            // values gave smaller files (BENCHMARKS.md, section 8).
            let bounds = schema
                .fields()
                .iter()
                .filter(|f| matches!(f.data_type(), DataType::Timestamp(..)));
            let props = bounds
                .fold(
                    WriterProperties::builder().set_dictionary_enabled(false),
                    |props, f| {
                        props.set_column_dictionary_enabled(
                            ColumnPath::from(f.name().as_str()),
                            true,
                        )
                    },
                )
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let w = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
                .map_err(|e| Error::parquet(path, e))?;
            match encoders {
                0 | 1 => Writer::Parquet(w),
                _ => Writer::ParquetColumns(
                    ColumnsWriter::new(w, schema.clone(), encoders)
                        .map_err(|e| Error::parquet(path, e))?,
                ),
            }
        }
        SinkSpec::Csv(_) => Writer::Csv(arrow::csv::Writer::new(BufWriter::new(file))),
        // A Kafka topic's rows are staged as JSON lines until a checkpoint sends them.
        SinkSpec::JsonLines(_) | SinkSpec::Kafka { .. } => {
            let out: Box<dyn Write + Send> = Box::new(BufWriter::new(file));
            Writer::Json(arrow::json::LineDelimitedWriter::new(out))
        }
    })
}

/// Flushes a writer and, for a file, syncs it to disk.
fn close(writer: Writer, target: &str) -> Result<()> {
    let file = match writer {
        Writer::Parquet(w) => Some(w.into_inner().map_err(|e| Error::parquet(target, e))?),
        Writer::ParquetColumns(w) => Some(w.into_inner().map_err(|e| Error::parquet(target, e))?),
        Writer::Csv(w) => Some(w.into_inner()),
        Writer::Json(mut w) => {
            w.finish()
                .map_err(|e| Error::arrow(format!("writing {target}"), e))?;
            let mut out = w.into_inner();
            out.flush().map_err(|e| Error::io("writing", target, e))?;
            None
        }
        #[cfg(feature = "kafka")]
        Writer::Kafka(w) => {
            w.close()?;
            None
        }
    };
    if let Some(buffered) = file {
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("writing", target, e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io("syncing", target, e))?;
    }
    Ok(())
}

/// Syncs a directory, so that the renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Opens a sink for batches of `schema`: one file, or stdout.
pub fn open_sink(spec: &SinkSpec, schema: &SchemaRef) -> Result<Box<dyn Sink>> {
    open_sink_encoding(spec, schema, 1)
}

/// [`open_sink`], with a Parquet file's columns encoded by `encoders` threads.
pub fn open_sink_encoding(
    spec: &SinkSpec,
    schema: &SchemaRef,
    encoders: usize,
) -> Result<Box<dyn Sink>> {
    if let SinkSpec::Kafka { bootstrap, topic } = spec {
        #[cfg(feature = "kafka")]
        return Ok(Box::new(FileSink {
            spec: spec.clone(),
            schema: schema.clone(),
            writer: Some(Writer::Kafka(super::kafka_sink::KafkaWriter::open(
                bootstrap, topic,
            )?)),
            target: Target::Stdout,
            publisher: None,
            encoders: 1,
        }));
        #[cfg(not(feature = "kafka"))]
        return Err(Error::Internal(format!(
            "kafka sink {topic} at {bootstrap} in a build without the kafka feature"
        )));
    }
    let (writer, target) = match spec.path() {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_dir(dir)?;
            }
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".{}.tmp", std::process::id()));
            let tmp = path.with_file_name(name);
            let w = writer(spec, &tmp, schema, encoders)?;
            let path = path.to_path_buf();
            (Some(w), Target::File { tmp, path })
        }
        None => {
            let out: Box<dyn Write + Send> = Box::new(BufWriter::new(std::io::stdout()));
            let w = Writer::Json(arrow::json::LineDelimitedWriter::new(out));
            (Some(w), Target::Stdout)
        }
    };
    Ok(Box::new(FileSink {
        spec: spec.clone(),
        schema: schema.clone(),
        writer,
        target,
        publisher: None,
        encoders,
    }))
}

/// The directory of a sink's part files: its path, or for a Kafka topic a staging
/// directory in the checkpoint directory `checkpoints`. Checkpoints in an object store
/// stage a Kafka sink's rows in a directory of this machine's temporary directory, and
/// keep a copy of each checkpoint's staged rows in the checkpoint itself (see
/// [`staged_copy`]), so that a job resumed on another machine still sends them.
pub fn parts_dir(spec: &SinkSpec, checkpoints: &Path) -> Option<PathBuf> {
    match spec {
        SinkSpec::Kafka { topic, .. } => {
            let name = format!("kafka-sink-{topic}");
            Some(match crate::state::remote::local(checkpoints) {
                Some(local) => local.join(name),
                None => {
                    let root: String = (checkpoints.to_string_lossy().chars())
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    std::env::temp_dir()
                        .join("panes-staging")
                        .join(root)
                        .join(name)
                }
            })
        }
        _ => spec.path().map(Path::to_path_buf),
    }
}

/// What names a Kafka sink's parts wherever its job runs: the checkpoints' root (a path or
/// an object store URL, as the job file gives it) and the topic.
pub fn parts_identity(topic: &str, checkpoints: &Path) -> String {
    checkpoints
        .join(format!("kafka-sink-{topic}"))
        .display()
        .to_string()
}

/// What a checkpoint's manifest names a sink's parts by: the directory of a file sink's
/// parts; a Kafka sink's [`parts_identity`], the same on every machine (its staging
/// directory is not: see [`parts_dir`]). For a local checkpoint directory both are the
/// staging directory.
pub fn parts_key(spec: &SinkSpec, checkpoints: &Path) -> Option<String> {
    match spec {
        SinkSpec::Kafka { topic, .. } => Some(parts_identity(topic, checkpoints)),
        _ => Some(spec.path()?.display().to_string()),
    }
}

/// The name under which a checkpoint in an object store keeps a copy of staged part `part`
/// of the Kafka sink whose parts are in `dir`.
pub fn staged_copy(dir: &Path, part: &str) -> String {
    let sink = dir.file_name().unwrap_or_default().to_string_lossy();
    format!("{sink}-{part}")
}

/// Opens a sink of part files in `dir` (see [`parts_dir`]), after checkpoint `committed`
/// (0: none) whose manifest lists `staged` for this sink: those parts are published, other
/// staged parts and parts after `committed` are removed. Parquet parts have their
/// columns encoded by `encoders` threads.
pub fn open_parts(
    spec: &SinkSpec,
    schema: &SchemaRef,
    (committed, staged): (u64, &[String]),
    dir: PathBuf,
    checkpoints: &Path,
    encoders: usize,
) -> Result<Box<dyn Sink>> {
    create_dir(&dir)?;
    let mut publisher: Option<Box<dyn Publish>> = match spec {
        #[cfg(feature = "kafka")]
        SinkSpec::Kafka { bootstrap, topic } => Some(Box::new(super::kafka_sink::Publisher::open(
            bootstrap,
            topic,
            &parts_identity(topic, checkpoints),
        )?)),
        _ => None,
    };
    match publisher.as_mut() {
        Some(p) => p.publish(&dir, staged)?,
        None => publish(&dir, staged)?,
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io("listing", &dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(id) = part_id(name.strip_prefix(STAGED).unwrap_or(name)) else {
            continue;
        };
        if name.starts_with(STAGED) || id > committed {
            tracing::info!(
                "removing {}: not covered by checkpoint {committed}",
                path.display()
            );
            std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        }
    }
    sync_dir(&dir)?;
    Ok(Box::new(FileSink {
        spec: spec.clone(),
        schema: schema.clone(),
        writer: None,
        target: Target::Parts {
            key: parts_key(spec, checkpoints).unwrap_or_else(|| dir.display().to_string()),
            dir,
            next: committed + 1,
        },
        publisher,
        encoders,
    }))
}

/// The checkpoint id of a part file name `part-NNNNNN.ext`.
fn part_id(name: &str) -> Option<u64> {
    let (stem, _) = name.strip_prefix("part-")?.split_once('.')?;
    stem.parse().ok()
}

/// Publishes staged parts of `dir` (names without the staging prefix). A part already
/// published (a restore after a crash in the middle of publishing) is left as it is.
pub fn publish(dir: &Path, parts: &[String]) -> Result<()> {
    for name in parts {
        let (from, to) = (dir.join(format!("{STAGED}{name}")), dir.join(name));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|e| Error::io("publishing", &to, e))?;
        } else if !to.exists() {
            return Err(Error::io(
                "publishing",
                &from,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the checkpoint lists this staged part, but it is gone",
                ),
            ));
        }
    }
    if !parts.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

impl SinkSpec {
    /// The sink's file (or directory, with checkpoints); `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SinkSpec::Parquet(p) | SinkSpec::Csv(p) | SinkSpec::JsonLines(Some(p)) => Some(p),
            SinkSpec::JsonLines(None) | SinkSpec::Kafka { .. } => None,
        }
    }

    fn extension(&self) -> &'static str {
        match self {
            SinkSpec::Parquet(_) => "parquet",
            SinkSpec::Csv(_) => "csv",
            SinkSpec::JsonLines(_) | SinkSpec::Kafka { .. } => "jsonl",
        }
    }
}

impl FileSink {
    fn name(&self) -> String {
        match (&self.spec, self.spec.path()) {
            (SinkSpec::Kafka { topic, .. }, _) => format!("kafka topic {topic}"),
            (_, Some(p)) => p.display().to_string(),
            (_, None) => "stdout".into(),
        }
    }
}

impl Sink for FileSink {
    /// With checkpoints, what names its parts in them (see [`parts_key`]); else its file,
    /// topic or stdout.
    fn id(&self) -> String {
        match &self.target {
            Target::Parts { key, .. } => key.clone(),
            _ => self.name(),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let target = self.name();
        if let (None, Target::Parts { dir, next, .. }) = (&self.writer, &self.target) {
            let name = format!("{STAGED}part-{next:06}.{}", self.spec.extension());
            let part = dir.join(name);
            self.writer = Some(writer(&self.spec, &part, &self.schema, self.encoders)?);
        }
        match self.writer.as_mut() {
            Some(Writer::Parquet(w)) => w.write(batch).map_err(|e| Error::parquet(&target, e)),
            Some(Writer::ParquetColumns(w)) => {
                w.write(batch).map_err(|e| Error::parquet(&target, e))
            }
            Some(Writer::Csv(w)) => w
                .write(batch)
                .map_err(|e| Error::arrow(format!("writing {target}"), e)),
            Some(Writer::Json(w)) => w
                .write(batch)
                .map_err(|e| Error::arrow(format!("writing {target}"), e)),
            #[cfg(feature = "kafka")]
            Some(Writer::Kafka(w)) => w.write(batch),
            None => Err(Error::Internal("write to a finished sink".into())),
        }
    }

    /// Closes and syncs the part written since the last checkpoint, for checkpoint `id`;
    /// returns its published name, none when no row was written.
    fn stage(&mut self, id: u64) -> Result<Vec<String>> {
        let target = self.name();
        let Target::Parts { next, .. } = &mut self.target else {
            return Err(Error::Internal("staging a sink without parts".into()));
        };
        if *next != id {
            return Err(Error::Internal(format!(
                "staging part {next} of {target} for checkpoint {id}"
            )));
        }
        *next += 1;
        let Some(w) = self.writer.take() else {
            return Ok(Vec::new());
        };
        close(w, &target)?;
        Ok(vec![format!("part-{id:06}.{}", self.spec.extension())])
    }

    fn publish(&mut self, parts: &[String]) -> Result<()> {
        let Target::Parts { dir, .. } = &self.target else {
            return Ok(());
        };
        match self.publisher.as_mut() {
            Some(p) => p.publish(dir, parts),
            None => publish(dir, parts),
        }
    }

    /// Flushes, syncs and renames a single file into place.
    fn finish(mut self: Box<Self>) -> Result<()> {
        let target = self.name();
        if let Some(w) = self.writer.take() {
            close(w, &target)?;
        }
        match std::mem::replace(&mut self.target, Target::Stdout) {
            Target::File { tmp, path } => {
                std::fs::rename(&tmp, &path)
                    .map_err(|e| Error::io("renaming into place", &path, e))?;
            }
            Target::Stdout | Target::Parts { .. } => {}
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Target::File { tmp, .. } = &self.target {
            drop(self.writer.take());
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::Encoding;
    use std::sync::Arc;

    /// Writes `n` rows (window bounds, keys, sums with nulls) in batches of `batch` rows
    /// with `encoders` threads, and checks that they read back as written; returns
    /// whether each column has a dictionary in the first row group, and the row groups.
    fn write_and_read(n: i64, batch: i64, encoders: usize) -> (Vec<bool>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("article_id", DataType::Int64, false),
            Field::new("scroll_sum", DataType::Float64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n).map(|i| i / 1000 * 60_000),
                )),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 1000))),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then_some(i as f64 * 0.37)),
                )),
            ],
        )
        .unwrap();
        let spec = SinkSpec::Parquet(path.clone());
        let mut sink = open_sink_encoding(&spec, &schema, encoders).unwrap();
        for start in (0..n).step_by(batch as usize) {
            let len = batch.min(n - start) as usize;
            sink.write(&rows.slice(start as usize, len)).unwrap();
        }
        sink.finish().unwrap();

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata().clone();
        let dictionary = (meta.row_group(0).columns().iter())
            .map(|c| c.encodings().any(|e| e == Encoding::RLE_DICTIONARY))
            .collect();
        let back: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let back = arrow::compute::concat_batches(&schema, &back).unwrap();
        assert_eq!(back, rows, "{encoders} encoders");
        (dictionary, meta.num_row_groups())
    }

    #[test]
    fn parquet_output_keeps_a_dictionary_for_window_bounds_only_and_its_rows() {
        let (dictionary, groups) = write_and_read(5_000, 1_200, 1);
        assert_eq!(dictionary, [true, false, false]);
        assert_eq!(groups, 1);
    }

    #[test]
    fn parquet_columns_encoded_by_several_threads_give_the_same_rows_and_row_groups() {
        // Past 1 Mi rows, a second row group, as with one encoder.
        let n = DEFAULT_MAX_ROW_GROUP_ROW_COUNT as i64 + 150_000;
        for encoders in [1, 2, 3] {
            let (dictionary, groups) = write_and_read(n, 100_000, encoders);
            assert_eq!((dictionary, groups), (vec![true, false, false], 2));
        }
    }
}
