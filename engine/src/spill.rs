//! Spilling pane state to disk under a memory budget.
//!
//! When the state held (panes, the window being combined, the key dictionary) exceeds the
//! budget after a batch, the operator writes whole closed panes (no on-time event can reach
//! them any more), oldest first, to Arrow IPC files here and frees them. A spilled pane is
//! read back one at a time while a window that needs it is combined, and for good when a
//! late event updates it. Its file goes when the pane is evicted, and the directory when
//! the job ends.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow::compute::concat_batches;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// Spilled panes and where they are. See the module docs.
pub struct Spill {
    /// Bytes of state to stay within.
    pub budget: u64,
    dir: PathBuf,
    created: bool,
    panes: BTreeMap<i64, PathBuf>,
    /// Panes written so far.
    pub written: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

impl Spill {
    /// Spill files will go in `dir` (created when first needed).
    pub fn new(budget: u64, dir: PathBuf) -> Spill {
        Spill {
            budget,
            dir,
            created: false,
            panes: BTreeMap::new(),
            written: 0,
            bytes: 0,
        }
    }

    /// Spilled panes in `range`, ascending.
    pub fn within(&self, range: Range<i64>) -> Vec<i64> {
        self.panes.range(range).map(|(&j, _)| j).collect()
    }

    /// All spilled panes, ascending.
    pub fn panes(&self) -> Vec<i64> {
        self.panes.keys().copied().collect()
    }

    /// Whether no pane is on disk.
    pub fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }

    /// Whether pane `j` is on disk.
    pub fn holds(&self, j: i64) -> bool {
        self.panes.contains_key(&j)
    }

    /// Writes pane `j`'s state to its file.
    pub fn write(&mut self, j: i64, state: &RecordBatch) -> Result<()> {
        if !self.created {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io("creating spill directory", &self.dir, e))?;
            self.created = true;
        }
        let path = self.dir.join(format!("pane-{j}.arrow"));
        let io = |e: std::io::Error| Error::io("spilling pane state to", &path, e);
        let arrow = |e: arrow::error::ArrowError| match e {
            arrow::error::ArrowError::IoError(_, cause) => io(cause),
            other => Error::arrow(format!("spilling pane state to {}", path.display()), other),
        };
        let file = File::create(&path).map_err(io)?;
        let mut w = FileWriter::try_new(BufWriter::new(file), &state.schema()).map_err(arrow)?;
        w.write(state).map_err(arrow)?;
        let file = w
            .into_inner()
            .map_err(arrow)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        // A full disk shows here at the latest, before the pane's memory is freed.
        file.sync_all().map_err(io)?;
        self.bytes += file.metadata().map_err(io)?.len();
        self.written += 1;
        self.panes.insert(j, path);
        Ok(())
    }

    /// Reads pane `j` back, keeping its file.
    pub fn read(&self, j: i64) -> Result<RecordBatch> {
        let path = self
            .panes
            .get(&j)
            .ok_or_else(|| Error::Internal(format!("pane {j} is not spilled")))?;
        let arrow = |e| Error::arrow(format!("reading spilled pane {}", path.display()), e);
        let file = File::open(path).map_err(|e| Error::io("reading spilled pane", path, e))?;
        let reader = FileReader::try_new(BufReader::new(file), None).map_err(arrow)?;
        let schema = reader.schema();
        let mut batches = reader.collect::<Result<Vec<_>, _>>().map_err(arrow)?;
        match batches.len() {
            1 => Ok(batches.remove(0)),
            _ => concat_batches(&schema, &batches).map_err(arrow),
        }
    }

    /// Forgets pane `j` and removes its file.
    pub fn remove(&mut self, j: i64) -> Result<()> {
        match self.panes.remove(&j) {
            Some(path) => std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e)),
            None => Ok(()),
        }
    }

    /// Removes the panes before `j`.
    pub fn evict_before(&mut self, j: i64) -> Result<()> {
        for pane in self.within(i64::MIN..j) {
            self.remove(pane)?;
        }
        Ok(())
    }

    /// The spill directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
