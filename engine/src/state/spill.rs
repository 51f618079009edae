//! Spilling pane state to disk under a memory budget.
//!
//! When the state held (panes, the window being combined, the key dictionary) exceeds the
//! budget after a batch, the operator writes whole closed panes (no on-time event can reach
//! them any more), oldest first, to Arrow IPC files here and frees them; if that is not
//! enough, the key dictionary moves its keys to a [`Spill::subdir`] (see `keyspill`). A spilled pane is
//! read back one at a time while a window that needs it is combined, and for good when a
//! late event updates it. Its file goes when the pane is evicted, and the directory when
//! the job ends.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::state::ipc;

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

    /// Writes pane `j`'s state to its file (synced: a full disk is an error here, before
    /// the pane's memory is freed).
    pub fn write(&mut self, j: i64, state: &RecordBatch) -> Result<()> {
        self.create()?;
        let path = self.dir.join(format!("pane-{j}.arrow"));
        let written = ipc::write(&path, "spilling pane state to", [Ok(state.clone())])?;
        self.bytes += written.map_or(0, |(bytes, _)| bytes);
        self.written += 1;
        self.panes.insert(j, path);
        Ok(())
    }

    /// Creates the spill directory, once.
    fn create(&mut self) -> Result<()> {
        if !self.created {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io("creating spill directory", &self.dir, e))?;
            self.created = true;
        }
        Ok(())
    }

    /// A directory named `name` in the spill directory, for other state that spills: it
    /// goes when the spill directory goes.
    pub fn subdir(&mut self, name: &str) -> Result<PathBuf> {
        self.create()?;
        Ok(self.dir.join(name))
    }

    /// Reads pane `j` back, keeping its file.
    pub fn read(&self, j: i64) -> Result<RecordBatch> {
        let path = self
            .panes
            .get(&j)
            .ok_or_else(|| Error::Internal(format!("pane {j} is not spilled")))?;
        let mut batches = ipc::read(path, "reading spilled pane")?;
        match batches.len() {
            1 => Ok(batches.remove(0)),
            _ => Err(Error::Internal(format!(
                "spill file {} holds {} batches, not 1",
                path.display(),
                batches.len()
            ))),
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
}

/// Removes the spill directories under `parent` left by panes processes that are gone (a
/// crashed job's spill files are never read again: its checkpoints hold every pane).
pub fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("panes-spill-"))
            .and_then(|p| p.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
        if gone && Path::new("/proc/self").exists() {
            tracing::info!(
                "removing {}, left by a job that stopped",
                entry.path().display()
            );
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
