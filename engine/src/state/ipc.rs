//! Arrow IPC files of state on disk, for checkpoints and spill: written and synced with
//! their size and CRC-32, read back whole. A full disk is an I/O error naming the file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// A writer that counts and checksums what goes through it.
struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An Arrow error while `action` on `path`, as an I/O error where it is one.
fn error(action: &'static str, path: &Path, e: ArrowError) -> Error {
    match e {
        ArrowError::IoError(_, cause) => Error::io(action, path, cause),
        other => Error::arrow(format!("{action} {}", path.display()), other),
    }
}

/// Writes `batches` (one schema) to `path` and syncs it; returns its size and CRC-32, or
/// `None`, writing nothing, when there are no batches.
pub(crate) fn write(
    path: &Path,
    action: &'static str,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
) -> Result<Option<(u64, u32)>> {
    let mut writer = None;
    for batch in batches {
        let batch = batch?;
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let file = File::create(path).map_err(|e| Error::io(action, path, e))?;
                let out = Hashing {
                    inner: BufWriter::new(file),
                    crc: crc32fast::Hasher::new(),
                    bytes: 0,
                };
                let w = FileWriter::try_new(out, &batch.schema());
                writer.insert(w.map_err(|e| error(action, path, e))?)
            }
        };
        w.write(&batch).map_err(|e| error(action, path, e))?;
    }
    let Some(w) = writer else {
        return Ok(None);
    };
    let out = w.into_inner().map_err(|e| error(action, path, e))?;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| Error::io(action, path, e.into_error()))?;
    // A full disk shows here at the latest.
    file.sync_all().map_err(|e| Error::io(action, path, e))?;
    Ok(Some((out.bytes, out.crc.finalize())))
}

/// `batches` (one schema) as the bytes of an Arrow IPC file, for `path` (named in errors);
/// `None` when there are no batches.
pub(crate) fn to_bytes(
    path: &Path,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
) -> Result<Option<Vec<u8>>> {
    let action = "encoding checkpoint file";
    let mut writer = None;
    for batch in batches {
        let batch = batch?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(
                FileWriter::try_new(Vec::new(), &batch.schema())
                    .map_err(|e| error(action, path, e))?,
            ),
        };
        w.write(&batch).map_err(|e| error(action, path, e))?;
    }
    writer
        .map(|w| w.into_inner().map_err(|e| error(action, path, e)))
        .transpose()
}

/// The batches of an Arrow IPC file's `bytes`, read from `path` (named in errors).
pub(crate) fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    let action = "reading checkpoint file";
    let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| error(action, path, e))?;
    reader
        .map(|b| b.map_err(|e| error(action, path, e)))
        .collect()
}

/// The size and CRC-32 of the file at `path`.
pub(crate) fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut out = Hashing {
        inner: std::io::sink(),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    std::io::copy(&mut BufReader::new(File::open(path)?), &mut out)?;
    Ok((out.bytes, out.crc.finalize()))
}

/// The batches of the file at `path`.
pub(crate) fn read(path: &Path, action: &'static str) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(|e| Error::io(action, path, e))?;
    let reader =
        FileReader::try_new(BufReader::new(file), None).map_err(|e| error(action, path, e))?;
    reader
        .map(|b| b.map_err(|e| error(action, path, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(0..100_000));
        RecordBatch::try_from_iter([("x", col)]).expect("batch")
    }

    #[test]
    fn files_round_trip_with_their_size_and_checksum() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.arrow");
        let (bytes, crc) = write(&path, "writing", [Ok(batch()), Ok(batch())])
            .expect("write")
            .expect("a file");
        let on_disk = std::fs::read(&path).expect("read");
        assert_eq!(bytes, on_disk.len() as u64);
        assert_eq!(crc, crc32fast::hash(&on_disk));
        assert_eq!(
            read(&path, "reading").expect("read"),
            vec![batch(), batch()]
        );
        assert!(
            write(&dir.path().join("none"), "writing", [])
                .expect("ok")
                .is_none()
        );
        assert!(!dir.path().join("none").exists());
    }

    #[test]
    fn a_full_disk_is_an_error_naming_the_file() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let err = write(
            Path::new("/dev/full"),
            "spilling pane state to",
            [Ok(batch())],
        )
        .expect_err("the disk is full")
        .to_string();
        assert!(err.starts_with("spilling pane state to /dev/full"), "{err}");
        assert!(err.contains("No space left on device"), "{err}");
    }
}
