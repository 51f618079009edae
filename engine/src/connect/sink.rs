//! Sinks: Parquet, CSV and JSON-lines files written under a temporary name and renamed
//! into place only when complete, so a failed run never leaves a file that looks finished.
//! JSON lines can also go to stdout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::job::Sink as SinkSpec;

enum Writer {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
}

/// An open sink. Dropping it without [`Sink::finish`] removes its temporary file.
pub struct Sink {
    writer: Option<Writer>,
    /// (temporary, final) paths of a file sink.
    paths: Option<(PathBuf, PathBuf)>,
}

fn create(path: &Path) -> Result<(File, PathBuf)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    Ok((file, tmp))
}

/// Opens a sink for batches of `schema`.
pub fn open_sink(spec: &SinkSpec, schema: &SchemaRef) -> Result<Sink> {
    let (writer, paths) = match spec {
        SinkSpec::Parquet(path) => {
            let (file, tmp) = create(path)?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let w = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
                .map_err(|e| Error::parquet(path.clone(), e))?;
            (Writer::Parquet(w), Some((tmp, path.clone())))
        }
        SinkSpec::Csv(path) => {
            let (file, tmp) = create(path)?;
            (
                Writer::Csv(arrow::csv::Writer::new(BufWriter::new(file))),
                Some((tmp, path.clone())),
            )
        }
        SinkSpec::JsonLines(Some(path)) => {
            let (file, tmp) = create(path)?;
            let out: Box<dyn Write + Send> = Box::new(BufWriter::new(file));
            (
                Writer::Json(arrow::json::LineDelimitedWriter::new(out)),
                Some((tmp, path.clone())),
            )
        }
        SinkSpec::JsonLines(None) => {
            let out: Box<dyn Write + Send> = Box::new(BufWriter::new(std::io::stdout()));
            (
                Writer::Json(arrow::json::LineDelimitedWriter::new(out)),
                None,
            )
        }
    };
    Ok(Sink {
        writer: Some(writer),
        paths,
    })
}

impl Sink {
    fn target(&self) -> String {
        self.paths
            .as_ref()
            .map_or("stdout".into(), |(_, p)| p.display().to_string())
    }

    /// Writes a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let target = self.target();
        match self.writer.as_mut() {
            Some(Writer::Parquet(w)) => w.write(batch).map_err(|e| Error::parquet(&target, e)),
            Some(Writer::Csv(w)) => w
                .write(batch)
                .map_err(|e| Error::arrow(format!("writing {target}"), e)),
            Some(Writer::Json(w)) => w
                .write(batch)
                .map_err(|e| Error::arrow(format!("writing {target}"), e)),
            None => Err(Error::Internal("write to a finished sink".into())),
        }
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let target = self.target();
        let file = match self.writer.take() {
            Some(Writer::Parquet(w)) => {
                let inner = w.into_inner().map_err(|e| Error::parquet(&target, e))?;
                Some(inner)
            }
            Some(Writer::Csv(w)) => Some(w.into_inner()),
            Some(Writer::Json(mut w)) => {
                w.finish()
                    .map_err(|e| Error::arrow(format!("writing {target}"), e))?;
                let mut out = w.into_inner();
                out.flush().map_err(|e| Error::io("writing", &target, e))?;
                None
            }
            None => None,
        };
        if let Some(buffered) = file {
            let file = buffered
                .into_inner()
                .map_err(|e| Error::io("writing", &target, e.into_error()))?;
            file.sync_all()
                .map_err(|e| Error::io("syncing", &target, e))?;
        }
        if let Some((tmp, path)) = self.paths.take() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming into place", &path, e))?;
        }
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.paths.take() {
            drop(self.writer.take());
            let _ = std::fs::remove_file(tmp);
        }
    }
}
