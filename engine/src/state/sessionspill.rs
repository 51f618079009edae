//! Open sessions on disk, once the index of open sessions outgrew the memory budget.
//!
//! [`crate::window::session::Sessions`] spills whole keys, those whose sessions end latest first,
//! into a *segment*: a file of fixed-size records sorted by key, read in blocks of about
//! 4 KiB. In memory stay each block's first key, the segment's earliest end and earliest
//! start, and one byte per key id naming the segment that holds the key's sessions.
//! - An event of a spilled key first takes the key's sessions back (one block read).
//! - When the watermark reaches a segment's earliest end, the whole segment comes back, so
//!   its sessions fire and close exactly when they would have in memory.
//! - Checkpoints read every segment.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// One open session, as [`crate::window::session`] keeps it: first and last event time, events,
/// events at its first emission, whether it waits to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: u32,
    pub first: i64,
    pub last: i64,
    pub n: i64,
    pub base: Option<i64>,
    pub pending: bool,
}

const RECORD: usize = 4 + 8 * 4 + 2;
/// Records per block.
const PER_BLOCK: usize = 4096 / RECORD;
/// Segments at most (a key's segment is a byte; 0 is "in memory").
const SEGMENTS: usize = 255;

fn encode(out: &mut Vec<u8>, r: &Record) {
    out.extend_from_slice(&r.key.to_le_bytes());
    for x in [r.first, r.last, r.n, r.base.unwrap_or(0)] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.push(u8::from(r.base.is_some()));
    out.push(u8::from(r.pending));
}

fn decode(b: &[u8]) -> Record {
    let int = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        i64::from_le_bytes(x)
    };
    Record {
        key: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        first: int(4),
        last: int(12),
        n: int(20),
        base: (b[36] != 0).then(|| int(28)),
        pending: b[37] != 0,
    }
}

struct Segment {
    path: PathBuf,
    file: File,
    /// First key of each block.
    firsts: Vec<u32>,
    records: usize,
    /// Keys whose sessions are still here.
    keys: usize,
    /// Earliest session end (last event + gap − 1) and earliest start.
    min_end: i64,
    min_first: i64,
}

impl Segment {
    /// Reads records `from..to`.
    fn read(&self, from: usize, to: usize) -> Result<Vec<Record>> {
        let mut buf = vec![0; (to - from) * RECORD];
        self.file
            .read_exact_at(&mut buf, (from * RECORD) as u64)
            .map_err(|e| Error::io("reading spilled sessions", &self.path, e))?;
        Ok(buf.chunks_exact(RECORD).map(decode).collect())
    }
}

/// Spilled sessions. See the module docs.
pub struct SessionDisk {
    dir: PathBuf,
    segments: Vec<Option<Segment>>,
    /// Per key id: its segment's index + 1, or 0 when its sessions are in memory.
    holder: Vec<u8>,
    files: u64,
}

impl SessionDisk {
    /// No sessions on disk yet; segments go in `dir` (created).
    pub fn new(dir: PathBuf) -> Result<SessionDisk> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating spill directory", &dir, e))?;
        Ok(SessionDisk {
            dir,
            segments: Vec::new(),
            holder: Vec::new(),
            files: 0,
        })
    }

    /// Whether `n` more segments can be written.
    pub fn has_room(&self, n: usize) -> bool {
        self.segments.iter().flatten().count() + n <= SEGMENTS
    }

    /// Writes `records` (sorted by key, every session of each key) as a segment; `gap` gives
    /// session ends. Call only when [`SessionDisk::has_room`].
    pub fn write(&mut self, records: &[Record], gap: i64) -> Result<()> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        self.files += 1;
        let path = self.dir.join(format!("sessions-{}.bin", self.files));
        let io = |e| Error::io("writing spilled sessions", &path, e);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        let mut out = BufWriter::new(&file);
        let mut buf = Vec::with_capacity(RECORD);
        for r in records {
            buf.clear();
            encode(&mut buf, r);
            out.write_all(&buf).map_err(io)?;
        }
        out.flush().map_err(io)?;
        drop(out);
        file.sync_data().map_err(io)?;
        let slot = match self.segments.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.segments.push(None);
                self.segments.len() - 1
            }
        };
        let mut keys = 0;
        for r in records {
            let k = r.key as usize;
            if self.holder.len() <= k {
                self.holder.resize(k + 1, 0);
            }
            if self.holder[k] != slot as u8 + 1 {
                self.holder[k] = slot as u8 + 1;
                keys += 1;
            }
        }
        self.segments[slot] = Some(Segment {
            firsts: records.iter().step_by(PER_BLOCK).map(|r| r.key).collect(),
            records: records.len(),
            keys,
            min_end: records
                .iter()
                .map(|r| r.last + gap - 1)
                .min()
                .unwrap_or(i64::MAX),
            min_first: records.iter().map(|r| r.first).min().unwrap_or(first.first),
            path,
            file,
        });
        Ok(())
    }

    /// Whether `key`'s sessions are on disk.
    pub fn holds(&self, key: u32) -> bool {
        self.holder.get(key as usize).is_some_and(|&s| s != 0)
    }

    /// Takes `key`'s sessions back from disk.
    pub fn take(&mut self, key: u32) -> Result<Vec<Record>> {
        let Some(slot) = self
            .holder
            .get(key as usize)
            .map(|&s| s as usize)
            .filter(|&s| s != 0)
        else {
            return Ok(Vec::new());
        };
        self.holder[key as usize] = 0;
        let seg = self.segments[slot - 1]
            .as_mut()
            .ok_or_else(|| Error::Internal(format!("session segment {slot} is gone")))?;
        // The key's records start in the last block whose first key is below it, or in a
        // later one whose first key is it.
        let mut b = seg.firsts.partition_point(|&f| f < key).saturating_sub(1);
        let mut found = Vec::new();
        while b < seg.firsts.len() && seg.firsts[b] <= key {
            let from = b * PER_BLOCK;
            let block = seg.read(from, (from + PER_BLOCK).min(seg.records))?;
            found.extend(block.into_iter().filter(|r| r.key == key));
            b += 1;
        }
        seg.keys -= 1;
        if seg.keys == 0 {
            self.remove(slot - 1)?;
        }
        Ok(found)
    }

    /// The earliest end of a session on disk.
    pub fn due(&self) -> i64 {
        self.segments
            .iter()
            .flatten()
            .map(|s| s.min_end)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// The earliest start of a session on disk (or of one that was: a bound).
    pub fn oldest(&self) -> Option<i64> {
        self.segments.iter().flatten().map(|s| s.min_first).min()
    }

    /// Takes back every segment holding a session that ends by `w`.
    pub fn take_due(&mut self, w: i64) -> Result<Vec<Record>> {
        let mut back = Vec::new();
        for i in 0..self.segments.len() {
            if self.segments[i].as_ref().is_some_and(|s| s.min_end <= w) {
                let records = self.read_segment(i)?;
                for r in &records {
                    self.holder[r.key as usize] = 0;
                }
                back.extend(records);
                self.remove(i)?;
            }
        }
        Ok(back)
    }

    /// Every session on disk (for checkpoints).
    pub fn all(&self) -> Result<Vec<Record>> {
        let mut all = Vec::new();
        for i in 0..self.segments.len() {
            all.extend(self.read_segment(i)?);
        }
        Ok(all)
    }

    /// The sessions of segment `i` still held there.
    fn read_segment(&self, i: usize) -> Result<Vec<Record>> {
        let Some(seg) = &self.segments[i] else {
            return Ok(Vec::new());
        };
        let mut records = seg.read(0, seg.records)?;
        records.retain(|r| self.holder[r.key as usize] as usize == i + 1);
        Ok(records)
    }

    fn remove(&mut self, i: usize) -> Result<()> {
        if let Some(seg) = self.segments[i].take() {
            std::fs::remove_file(&seg.path)
                .map_err(|e| Error::io("removing spilled sessions", &seg.path, e))?;
        }
        Ok(())
    }

    /// Keys with sessions on disk.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.segments.iter().flatten().map(|s| s.keys).sum()
    }

    /// Bytes of memory held.
    pub fn bytes(&self) -> usize {
        self.holder.capacity()
            + self
                .segments
                .iter()
                .flatten()
                .map(|s| s.firsts.len() * 4 + 96)
                .sum::<usize>()
    }
}
