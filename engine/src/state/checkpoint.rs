//! Checkpoints on disk: one directory `chk-NNNNNN` per checkpoint, holding Arrow IPC files
//! of state and a manifest written last.
//!
//! Each state file is synced as it is written; the manifest lists every file with its size
//! and CRC-32, is written under a temporary name, synced, renamed to `MANIFEST.json` and
//! the directory synced. A checkpoint is complete when its manifest exists and every file
//! it lists has that size and checksum; restore takes the newest complete one and reports
//! the others it skipped.
//!
//! A `dir` that is an object store URL (`s3://bucket/prefix`) keeps the same layout there
//! (`super::remote`): the manifest is put last, after every state file, and is what makes
//! a checkpoint complete; the same checks apply on restore.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::connect::Position;
use crate::connect::sink::sync_dir;
use crate::error::{Error, Result};
use crate::state::ipc;
use crate::state::remote::{self, Remote};

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.json";

/// A state file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name within the checkpoint's directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
}

/// Part files a checkpoint commits for one sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The sink's directory.
    pub dir: PathBuf,
    /// Part files staged for this checkpoint, by their published names.
    pub parts: Vec<String>,
}

/// What the window operator has counted so far (kept in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events read.
    pub events_in: u64,
    /// Events that were late for every window (sent to the late output).
    pub late_events: u64,
    /// Window result rows emitted (revisions included).
    pub rows_out: u64,
    /// Largest state (panes plus key dictionary) held, in bytes.
    pub peak_state_bytes: u64,
    /// Anomaly alerts raised.
    pub alerts: u64,
}

impl Stats {
    /// Adds the counts of `other` (the peak is the larger one): the counters of shards, or
    /// of a restored checkpoint and the run since.
    pub fn combine(mut self, other: &Stats) -> Stats {
        self.events_in += other.events_in;
        self.late_events += other.late_events;
        self.rows_out += other.rows_out;
        self.alerts += other.alerts;
        self.peak_state_bytes = self.peak_state_bytes.max(other.peak_state_bytes);
        self
    }
}

/// The operator's scalar state, kept in a checkpoint's manifest; its keyed state (key
/// dictionary, panes, revisions, sessions, baselines) goes to Arrow files beside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorState {
    /// Per source partition: largest event time seen, and whether it finished.
    pub partitions: Vec<(Option<i64>, bool)>,
    /// The job watermark.
    pub watermark: i64,
    /// Windows before this one were considered for firing.
    pub next_fire: Option<i64>,
    /// Panes before this one were evicted (session windows).
    pub first_kept: i64,
    /// Panes with data that no window has expired yet.
    pub live_panes: Vec<i64>,
    /// Keys in the dictionary.
    pub keys: usize,
    /// Counters so far.
    pub stats: Stats,
}

/// What a checkpoint holds besides its state files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Checkpoint number, from 1.
    pub id: u64,
    /// When it was taken (Unix ms).
    pub created_ms: u64,
    /// The job it belongs to (a fingerprint of what decides its state and output).
    pub job: String,
    /// The backend whose pane state it holds.
    pub backend: String,
    /// The job watermark (ms; `i64::MIN` before any).
    pub watermark: i64,
    /// Where the source resumes.
    pub position: Position,
    /// Whether the job had read all its input and fired every window.
    pub finished: bool,
    /// The operator's scalar state.
    pub operator: OperatorState,
    /// Part files committed by this checkpoint, per sink.
    pub sinks: Vec<Commit>,
    /// The state files.
    pub files: Vec<FileEntry>,
}

/// The directory of checkpoint `id` under `root` (a path, or an object store URL).
pub fn dir_of(root: &Path, id: u64) -> PathBuf {
    match remote::local(root) {
        Some(root) => root.join(dir_name(id)),
        None => PathBuf::from(format!(
            "{}/{}",
            root.to_string_lossy().trim_end_matches('/'),
            dir_name(id)
        )),
    }
}

/// The name of checkpoint `id`'s directory.
pub(crate) fn dir_name(id: u64) -> String {
    format!("chk-{id:06}")
}

pub(crate) fn id_of(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

/// Where an operator's state files go: a checkpoint directory, or memory ([`Snapshot`]).
pub trait StateWriter {
    /// Writes state file `name` (nothing when `batches` is empty).
    fn write(
        &mut self,
        name: &str,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
    ) -> Result<()>;
}

/// Where an operator's state files come from on restore.
pub trait StateReader {
    /// The operator's scalar state.
    fn operator(&self) -> &OperatorState;
    /// The batches of state file `name` (none when there is no such file).
    fn read(&self, name: &str) -> Result<Vec<RecordBatch>>;
    /// Where the state is, for errors.
    fn origin(&self) -> PathBuf;
}

/// An operator's state in memory: what a checkpoint holds, without files. Restoring it
/// into a fresh operator of the same job (at any thread count) continues exactly.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The job it belongs to, when a [`crate::pipeline::Pipeline`] took it.
    pub job: String,
    /// The operator's scalar state.
    pub operator: OperatorState,
    /// The state files, by name, as Arrow batches.
    pub files: Vec<(String, Vec<RecordBatch>)>,
}

impl StateWriter for Snapshot {
    fn write(
        &mut self,
        name: &str,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
    ) -> Result<()> {
        let batches = batches.into_iter().collect::<Result<Vec<_>>>()?;
        if !batches.is_empty() {
            self.files.push((name.to_string(), batches));
        }
        Ok(())
    }
}

impl StateReader for Snapshot {
    fn operator(&self) -> &OperatorState {
        &self.operator
    }

    fn read(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let file = self.files.iter().find(|f| f.0 == name);
        Ok(file.map_or(Vec::new(), |f| f.1.clone()))
    }

    fn origin(&self) -> PathBuf {
        PathBuf::from("<snapshot in memory>")
    }
}

/// Writes the files of one checkpoint; [`CheckpointWriter::commit`] makes it complete.
pub struct CheckpointWriter {
    dir: PathBuf,
    files: Vec<FileEntry>,
    /// The object store and the checkpoint's id, when it goes there.
    remote: Option<(Remote, u64)>,
}

impl CheckpointWriter {
    /// Starts checkpoint `id` under `root`, replacing what a crashed attempt left there.
    pub fn begin(root: &Path, id: u64) -> Result<Self> {
        let dir = dir_of(root, id);
        if let Some(remote) = Remote::open(root)? {
            remote.remove(id)?;
            return Ok(CheckpointWriter {
                dir,
                files: Vec::new(),
                remote: Some((remote, id)),
            });
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
        Ok(CheckpointWriter {
            dir,
            files: Vec::new(),
            remote: None,
        })
    }

    /// Writes state file `name` (Arrow IPC) from `batches`, which share a schema, and
    /// syncs it. No batches, no file.
    fn write_file(
        &mut self,
        name: &str,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
    ) -> Result<()> {
        let path = self.dir.join(name);
        let written = match &self.remote {
            None => ipc::write(&path, "writing checkpoint file", batches)?,
            Some((remote, id)) => match ipc::to_bytes(&path, batches)? {
                Some(bytes) => {
                    let entry = (bytes.len() as u64, crc32fast::hash(&bytes));
                    remote.put(*id, name, bytes)?;
                    Some(entry)
                }
                None => None,
            },
        };
        if let Some((bytes, crc32)) = written {
            self.files.push(FileEntry {
                name: name.to_string(),
                bytes,
                crc32,
            });
        }
        Ok(())
    }

    /// Writes file `name` of raw bytes into an object store checkpoint (a sink's staged
    /// rows, kept with the checkpoint).
    pub fn put_remote(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let Some((remote, id)) = &self.remote else {
            return Err(Error::Internal(format!(
                "{name}: a copy of staged rows is only for checkpoints in an object store"
            )));
        };
        let entry = FileEntry {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        };
        remote.put(*id, name, bytes)?;
        self.files.push(entry);
        Ok(())
    }

    /// Whether the checkpoint goes to an object store.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Writes the manifest last, durably: the checkpoint is complete when this returns.
    pub fn commit(self, mut manifest: Manifest) -> Result<()> {
        manifest.files = self.files;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Internal(format!("encoding a checkpoint manifest: {e}")))?;
        if let Some((remote, id)) = &self.remote {
            return remote.put(*id, MANIFEST, json);
        }
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io("writing", &tmp, e))?;
        let path = self.dir.join(MANIFEST);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming into place", &path, e))?;
        sync_dir(&self.dir)?;
        sync_dir(self.dir.parent().unwrap_or(Path::new(".")))
    }
}

/// A checkpoint found on disk: complete, or why not.
#[derive(Debug)]
pub struct Found {
    /// Its id.
    pub id: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// The manifest of a complete checkpoint, or what is wrong with it.
    pub status: std::result::Result<Manifest, String>,
    /// Bytes of its files on disk.
    pub bytes: u64,
}

/// Every checkpoint under `root`, oldest first (none when `root` does not exist).
pub fn list(root: &Path) -> Result<Vec<Found>> {
    if let Some(remote) = Remote::open(root)? {
        let mut found = Vec::new();
        for id in remote.ids()? {
            found.push(Found {
                id,
                dir: remote.dir(id),
                status: verify_remote(&remote, id),
                bytes: remote.size(id)?,
            });
        }
        return Ok(found);
    }
    let mut found = Vec::new();
    for (id, dir) in dirs(root)? {
        let bytes = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let status = verify(&dir, id);
        found.push(Found {
            id,
            dir,
            status,
            bytes,
        });
    }
    Ok(found)
}

/// The checkpoint directories under `root` with their ids, oldest first (none when `root`
/// does not exist).
fn dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = &remote::local(root).unwrap_or_else(|| root.to_path_buf());
    if !root.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(root).map_err(|e| Error::io("listing", root, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| Error::io("listing", root, e))?.path();
        if let Some(id) = dir.file_name().and_then(|n| n.to_str()).and_then(id_of) {
            found.push((id, dir));
        }
    }
    found.sort_by_key(|f| f.0);
    Ok(found)
}

/// Removes every checkpoint under `root` (`--fresh`).
pub fn remove_all(root: &Path) -> Result<()> {
    if let Some(remote) = Remote::open(root)? {
        return remote
            .ids()?
            .into_iter()
            .try_for_each(|id| remote.remove(id));
    }
    for (_, dir) in dirs(root)? {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
    }
    Ok(())
}

/// Reads and checks a checkpoint: its manifest, then each file's size and checksum.
fn verify(dir: &Path, id: u64) -> std::result::Result<Manifest, String> {
    let text = match std::fs::read(dir.join(MANIFEST)) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {MANIFEST}: {e}")),
    };
    check(id, text, |name| {
        ipc::checksum(&dir.join(name)).map_err(|e| e.to_string())
    })
}

/// [`verify`] for a checkpoint in an object store.
fn verify_remote(remote: &Remote, id: u64) -> std::result::Result<Manifest, String> {
    let text = remote.get(id, MANIFEST).map_err(|e| e.to_string())?;
    check(id, text, |name| match remote.get(id, name) {
        Ok(Some(bytes)) => Ok((bytes.len() as u64, crc32fast::hash(&bytes))),
        Ok(None) => Err("missing".into()),
        Err(e) => Err(e.to_string()),
    })
}

/// Checks checkpoint `id` from its manifest (`None`: there is none) and the size and
/// CRC-32 of each file it lists, as `checksum` finds them.
fn check(
    id: u64,
    manifest: Option<Vec<u8>>,
    checksum: impl Fn(&str) -> std::result::Result<(u64, u32), String>,
) -> std::result::Result<Manifest, String> {
    let Some(text) = manifest else {
        return Err("incomplete: no manifest (the job stopped while writing it)".into());
    };
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("corrupt {MANIFEST}: {e}"))?;
    if manifest.id != id {
        return Err(format!("{MANIFEST} names checkpoint {}", manifest.id));
    }
    for f in &manifest.files {
        let (bytes, crc) = checksum(&f.name).map_err(|e| format!("file {}: {e}", f.name))?;
        if bytes != f.bytes {
            return Err(format!(
                "file {} has {bytes} bytes, the manifest says {}",
                f.name, f.bytes
            ));
        }
        if crc != f.crc32 {
            return Err(format!("file {} fails its checksum", f.name));
        }
    }
    Ok(manifest)
}

impl StateWriter for CheckpointWriter {
    /// Writes state file `name`, synced, and lists it for the manifest.
    fn write(
        &mut self,
        name: &str,
        batches: impl IntoIterator<Item = Result<RecordBatch>>,
    ) -> Result<()> {
        self.write_file(name, batches)
    }
}

/// A complete checkpoint to restore from.
pub struct Restore {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The object store it is in, if it is in one.
    remote: Option<Remote>,
}

impl Restore {
    /// The newest complete checkpoint under `root`; the newer ones it skips are reported.
    pub fn newest(root: &Path) -> Result<Option<Restore>> {
        let remote = Remote::open(root)?;
        for found in list(root)?.into_iter().rev() {
            match found.status {
                Ok(manifest) => {
                    return Ok(Some(Restore {
                        dir: found.dir,
                        manifest,
                        remote,
                    }));
                }
                Err(why) => tracing::warn!(
                    "skipping checkpoint {} ({}): {why}",
                    found.id,
                    found.dir.display()
                ),
            }
        }
        Ok(None)
    }

    /// The checkpoint in directory `dir` (or at that object store URL), which must be
    /// complete.
    pub fn at(dir: &Path) -> Result<Restore> {
        let text = dir.to_string_lossy();
        let text = text.trim_end_matches('/');
        let (root, name) = text.rsplit_once('/').unwrap_or((".", text));
        let id = id_of(name).ok_or_else(|| Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "not a checkpoint directory (chk-NNNNNN)".into(),
        })?;
        let remote = Remote::open(Path::new(root))?;
        let manifest = match &remote {
            Some(remote) => verify_remote(remote, id),
            None => verify(dir, id),
        }
        .map_err(|message| Error::Checkpoint {
            path: dir.to_path_buf(),
            message,
        })?;
        Ok(Restore {
            dir: dir.to_path_buf(),
            manifest,
            remote,
        })
    }

    /// Raw file `name` of a checkpoint in an object store (see
    /// [`CheckpointWriter::put_remote`]); `None` when the manifest does not list it or the
    /// checkpoint is on a disk.
    pub fn get_remote(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.remote {
            Some(remote) if self.manifest.files.iter().any(|f| f.name == name) => {
                remote.get(self.manifest.id, name)
            }
            _ => Ok(None),
        }
    }
}

impl StateReader for Restore {
    fn operator(&self) -> &OperatorState {
        &self.manifest.operator
    }

    fn read(&self, name: &str) -> Result<Vec<RecordBatch>> {
        if !self.manifest.files.iter().any(|f| f.name == name) {
            return Ok(Vec::new());
        }
        let path = self.dir.join(name);
        match &self.remote {
            None => ipc::read(&path, "reading checkpoint file"),
            Some(remote) => match remote.get(self.manifest.id, name)? {
                Some(bytes) => ipc::from_bytes(&path, bytes),
                None => Err(Error::Checkpoint {
                    path,
                    message: "listed in the manifest, but not there".into(),
                }),
            },
        }
    }

    fn origin(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// Removes complete checkpoints beyond the newest `keep`, and incomplete ones older than
/// the newest complete one. (Complete here means it has a manifest: these are checkpoints
/// this run wrote; restore checks the files.)
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    if let Some(remote) = Remote::open(root)? {
        let mut found = Vec::new();
        for id in remote.ids()? {
            found.push((id, remote.get(id, MANIFEST)?.is_some()));
        }
        for id in stale(&found, keep) {
            remote.remove(id)?;
        }
        return Ok(());
    }
    let found: Vec<(u64, PathBuf, bool)> = dirs(root)?
        .into_iter()
        .map(|(id, dir)| {
            let complete = dir.join(MANIFEST).exists();
            (id, dir, complete)
        })
        .collect();
    let complete: Vec<(u64, bool)> = found.iter().map(|f| (f.0, f.2)).collect();
    let stale = stale(&complete, keep);
    for (id, dir, _) in found {
        if stale.contains(&id) {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
    }
    Ok(())
}

/// The checkpoints that [`prune`] removes, of `found` (id, whether it has a manifest),
/// ascending.
fn stale(found: &[(u64, bool)], keep: usize) -> Vec<u64> {
    let complete: Vec<u64> = found.iter().filter(|f| f.1).map(|f| f.0).collect();
    let Some(&newest) = complete.last() else {
        return Vec::new();
    };
    let oldest_kept = complete[complete.len().saturating_sub(keep)];
    (found.iter())
        .filter(|&&(id, complete)| id < oldest_kept || (id < newest && !complete))
        .map(|f| f.0)
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
