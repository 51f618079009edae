//! The part of the key dictionary that is on disk, once it outgrew the memory budget.
//!
//! A [`crate::state::key::KeyInterner`] under a budget flushes the keys it gained since its last
//! flush here, as bytes with their ids, and keeps in memory only these files' indexes:
//! - *Runs*, to find a key's id: entries `(hash, id, key)` sorted by hash, in blocks of
//!   about 4 KiB. In memory: a Bloom filter (10 bits per key) and each block's first hash,
//!   so that a key not in a run costs no read, and one in it one block read. Each key is in
//!   exactly one run. After a flush, the newest run merges into the one before it while
//!   that one is at most twice its size, so there are about log₂ of the flushes of them.
//! - The *forward file*, to build key columns: keys in id order, in segments of up to
//!   1024 ids. In memory: each segment's first id and offset, and the last segment read.
//!
//! Keys found on disk are kept in memory until the next flush, so that a key that comes
//! back costs one read per flush.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hashbrown::{DefaultHashBuilder, HashMap};
use std::hash::BuildHasher;

use crate::error::{Error, Result};

/// Target size of a run's block.
const BLOCK: usize = 4096;
/// Keys per forward segment, at most.
const SEGMENT: usize = 1024;
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;

/// A Bloom filter over 64-bit hashes, blocked: a hash's bits all lie in one 512-bit
/// block (a cache line), picked by its high half; its low half picks the bits.
struct Bloom {
    blocks: Vec<[u64; 8]>,
}

impl Bloom {
    fn new(keys: usize) -> Bloom {
        Bloom {
            blocks: vec![[0; 8]; (keys * BLOOM_BITS_PER_KEY).div_ceil(512).max(1)],
        }
    }

    /// The block of `hash`, and its bits there (word, mask) by double hashing.
    fn probes(&self, hash: u64) -> (usize, impl Iterator<Item = (usize, u64)> + use<>) {
        let block = ((hash >> 32) * self.blocks.len() as u64) >> 32;
        let (h1, h2) = (hash as u32, (hash as u32).rotate_left(16) | 1);
        let bits = (0..BLOOM_PROBES).map(move |k| {
            let b = h1.wrapping_add(k.wrapping_mul(h2)) % 512;
            ((b / 64) as usize, 1u64 << (b % 64))
        });
        (block as usize, bits)
    }

    fn insert(&mut self, hash: u64) {
        let (block, bits) = self.probes(hash);
        let block = &mut self.blocks[block];
        bits.for_each(|(w, m)| block[w] |= m);
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (block, mut bits) = self.probes(hash);
        let block = &self.blocks[block];
        bits.all(|(w, m)| block[w] & m != 0)
    }
}

/// One run entry.
struct Entry {
    hash: u64,
    id: u32,
    key: Vec<u8>,
}

/// Appends an entry's encoding: hash, id, key length, key (little endian).
fn encode(out: &mut Vec<u8>, hash: u64, id: u32, key: &[u8]) {
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
}

/// Decodes the entry at the start of `b`: (hash, id, key, encoded length).
fn decode(b: &[u8]) -> Option<(u64, u32, &[u8], usize)> {
    let hash = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
    let id = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
    let len = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?) as usize;
    let key = b.get(16..16 + len)?;
    Some((hash, id, key, 16 + len))
}

/// A file of entries sorted by hash. See the module docs.
struct Run {
    path: PathBuf,
    file: File,
    keys: usize,
    /// First hash of each block.
    firsts: Vec<u64>,
    /// Offset of each block, and the file's length last.
    offsets: Vec<u64>,
    bloom: Bloom,
}

/// Creates (or empties) a file to write and read back.
fn create(path: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn corrupt(path: &Path) -> Error {
    Error::Internal(format!(
        "key dictionary spill file {} does not decode",
        path.display()
    ))
}

impl Run {
    /// Writes `keys` entries, sorted by hash, to `path`.
    fn write(
        path: PathBuf,
        keys: usize,
        entries: impl Iterator<Item = Result<Entry>>,
    ) -> Result<Run> {
        let io = |e| Error::io("writing key dictionary spill file", &path, e);
        let file = create(&path).map_err(io)?;
        let mut out = BufWriter::new(&file);
        let (mut firsts, mut offsets, mut bloom) = (Vec::new(), vec![0u64], Bloom::new(keys));
        let mut block = Vec::with_capacity(2 * BLOCK);
        for e in entries {
            let e = e?;
            if block.is_empty() {
                firsts.push(e.hash);
            }
            bloom.insert(e.hash);
            encode(&mut block, e.hash, e.id, &e.key);
            if block.len() >= BLOCK {
                out.write_all(&block).map_err(io)?;
                offsets.push(offsets.last().unwrap_or(&0) + block.len() as u64);
                block.clear();
            }
        }
        if !block.is_empty() {
            out.write_all(&block).map_err(io)?;
            offsets.push(offsets.last().unwrap_or(&0) + block.len() as u64);
        }
        out.flush().map_err(io)?;
        drop(out);
        // Synced, as spilled panes are: a full disk is an error here, not a lost key later.
        file.sync_data().map_err(io)?;
        Ok(Run {
            path,
            file,
            keys,
            firsts,
            offsets,
            bloom,
        })
    }

    /// The id of `key`, whose hash is `hash`, if this run holds it.
    fn find(&self, hash: u64, key: &[u8]) -> Result<Option<u32>> {
        if !self.bloom.may_contain(hash) {
            return Ok(None);
        }
        // Entries with this hash start in the last block whose first hash is below it, or
        // in a later one whose first hash is it.
        let mut b = self.firsts.partition_point(|&f| f < hash).saturating_sub(1);
        let mut buf = Vec::new();
        while b < self.firsts.len() && self.firsts[b] <= hash {
            buf.resize((self.offsets[b + 1] - self.offsets[b]) as usize, 0);
            self.file
                .read_exact_at(&mut buf, self.offsets[b])
                .map_err(|e| Error::io("reading key dictionary spill file", &self.path, e))?;
            let mut at = 0;
            while at < buf.len() {
                let (h, id, k, len) = decode(&buf[at..]).ok_or_else(|| corrupt(&self.path))?;
                if h == hash && k == key {
                    return Ok(Some(id));
                }
                if h > hash {
                    return Ok(None);
                }
                at += len;
            }
            b += 1;
        }
        Ok(None)
    }

    /// Every entry, in hash order.
    fn entries(&self) -> Result<impl Iterator<Item = Result<Entry>> + '_> {
        let mut reader = BufReader::new(
            File::open(&self.path)
                .map_err(|e| Error::io("reading key dictionary spill file", &self.path, e))?,
        );
        let io = |e| Error::io("reading key dictionary spill file", &self.path, e);
        let mut encoded = Vec::new();
        Ok((0..self.keys).map(move |_| {
            encoded.resize(16, 0);
            reader.read_exact(&mut encoded).map_err(io)?;
            let len = u32::from_le_bytes([encoded[12], encoded[13], encoded[14], encoded[15]]);
            encoded.resize(16 + len as usize, 0);
            reader.read_exact(&mut encoded[16..]).map_err(io)?;
            let (hash, id, key, _) = decode(&encoded).ok_or_else(|| corrupt(&self.path))?;
            Ok(Entry {
                hash,
                id,
                key: key.to_vec(),
            })
        }))
    }

    fn bytes(&self) -> usize {
        self.bloom.blocks.len() * 64 + self.firsts.len() * 16
    }
}

/// Merges two runs' entries by hash.
fn merged<'a>(
    a: impl Iterator<Item = Result<Entry>> + 'a,
    b: impl Iterator<Item = Result<Entry>> + 'a,
) -> impl Iterator<Item = Result<Entry>> + 'a {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(Ok(x)), Some(Ok(y))) if y.hash < x.hash => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// The keys on disk, by id and by hash. See the module docs.
pub struct DiskKeys {
    dir: PathBuf,
    hasher: DefaultHashBuilder,
    runs: Vec<Run>,
    files: u64,
    forward: File,
    forward_path: PathBuf,
    forward_len: u64,
    /// First id and offset of each forward segment.
    segments: Vec<(u32, u64)>,
    /// Ids on disk: `0..len`.
    len: u32,
    /// The last segment read: its index, key bytes and each key's end.
    cached: Option<(usize, Vec<u8>, Vec<usize>)>,
    /// Keys found since the last flush, by their bytes, and their bytes in memory.
    found: HashMap<Box<[u8]>, u32>,
    found_bytes: usize,
}

impl DiskKeys {
    /// An empty dictionary on disk, in `dir` (created).
    pub fn new(dir: PathBuf) -> Result<DiskKeys> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating spill directory", &dir, e))?;
        let forward_path = dir.join("keys-by-id.bin");
        let forward = create(&forward_path)
            .map_err(|e| Error::io("creating key dictionary spill file", &forward_path, e))?;
        Ok(DiskKeys {
            dir,
            hasher: DefaultHashBuilder::default(),
            runs: Vec::new(),
            files: 0,
            forward,
            forward_path,
            forward_len: 0,
            segments: Vec::new(),
            len: 0,
            cached: None,
            found: HashMap::new(),
            found_bytes: 0,
        })
    }

    /// Ids on disk: `0..len()`.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Bytes of memory held for keys found since the last flush (a flush frees them).
    pub fn found_bytes(&self) -> usize {
        self.found_bytes
    }

    /// Bytes of memory held for the files.
    pub fn bytes(&self) -> usize {
        self.runs.iter().map(Run::bytes).sum::<usize>()
            + self.segments.len() * 16
            + self
                .cached
                .as_ref()
                .map_or(0, |(_, b, e)| b.len() + e.len() * 8)
    }

    /// The id of `key`, if it is on disk. A key found is kept in memory until the next
    /// flush.
    pub fn find(&mut self, key: &[u8]) -> Result<Option<u32>> {
        if let Some(&id) = self.found.get(key) {
            return Ok(Some(id));
        }
        let hash = self.hasher.hash_one(key);
        for run in self.runs.iter().rev() {
            if let Some(id) = run.find(hash, key)? {
                self.found_bytes += key.len() + 32;
                self.found.insert(key.into(), id);
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Adds the keys of ids `len()..`, in id order.
    pub fn flush<'a>(&mut self, keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<()> {
        self.found = HashMap::new();
        self.found_bytes = 0;
        let first = self.len;
        let n = keys.len();
        if n == 0 {
            return Ok(());
        }
        let io = |e| Error::io("writing key dictionary spill file", &self.forward_path, e);
        let mut entries = Vec::with_capacity(n);
        let mut segment = Vec::new();
        let mut lens = Vec::with_capacity(SEGMENT);
        let mut out = BufWriter::new(&self.forward);
        for (k, key) in keys.enumerate() {
            let id = first + k as u32;
            entries.push(Entry {
                hash: self.hasher.hash_one(key),
                id,
                key: key.to_vec(),
            });
            lens.push(key.len() as u32);
            segment.extend_from_slice(key);
            if lens.len() == SEGMENT || k + 1 == n {
                self.segments
                    .push((id + 1 - lens.len() as u32, self.forward_len));
                let mut head = Vec::with_capacity(4 + 4 * lens.len());
                head.extend_from_slice(&(lens.len() as u32).to_le_bytes());
                lens.drain(..)
                    .for_each(|l| head.extend_from_slice(&l.to_le_bytes()));
                out.write_all(&head).map_err(io)?;
                out.write_all(&segment).map_err(io)?;
                self.forward_len += (head.len() + segment.len()) as u64;
                segment.clear();
            }
        }
        out.flush().map_err(io)?;
        drop(out);
        self.forward.sync_data().map_err(io)?;
        self.len = first + n as u32;
        entries.sort_unstable_by_key(|e| e.hash);
        let path = self.run_path();
        self.runs
            .push(Run::write(path, n, entries.into_iter().map(Ok))?);
        while let [.., older, newer] = self.runs.as_slice()
            && older.keys <= 2 * newer.keys
        {
            let keys = older.keys + newer.keys;
            let path = self.run_path();
            let last = self.runs.len() - 1;
            let entries = merged(self.runs[last - 1].entries()?, self.runs[last].entries()?);
            let run = Run::write(path, keys, entries)?;
            for old in self.runs.drain(last - 1..) {
                std::fs::remove_file(&old.path)
                    .map_err(|e| Error::io("removing key dictionary spill file", &old.path, e))?;
            }
            self.runs.push(run);
        }
        Ok(())
    }

    fn run_path(&mut self) -> PathBuf {
        self.files += 1;
        self.dir.join(format!("keys-{}.run", self.files))
    }

    /// The key of `id`, which must be below [`DiskKeys::len`].
    pub fn key(&mut self, id: u32) -> Result<&[u8]> {
        let s = self
            .segments
            .partition_point(|&(first, _)| first <= id)
            .saturating_sub(1);
        if self.cached.as_ref().is_none_or(|c| c.0 != s) {
            let end = self.segments.get(s + 1).map_or(self.forward_len, |x| x.1);
            let mut buf = vec![0; (end - self.segments[s].1) as usize];
            self.forward
                .read_exact_at(&mut buf, self.segments[s].1)
                .map_err(|e| {
                    Error::io("reading key dictionary spill file", &self.forward_path, e)
                })?;
            let n = buf
                .get(0..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
                .ok_or_else(|| corrupt(&self.forward_path))?;
            let mut ends = Vec::with_capacity(n);
            let mut end = 0;
            for k in 0..n {
                let l = buf
                    .get(4 + 4 * k..8 + 4 * k)
                    .ok_or_else(|| corrupt(&self.forward_path))?;
                end += u32::from_le_bytes(l.try_into().unwrap_or_default()) as usize;
                ends.push(end);
            }
            if 4 + 4 * n + end != buf.len() {
                return Err(corrupt(&self.forward_path));
            }
            buf.drain(..4 + 4 * n);
            self.cached = Some((s, buf, ends));
        }
        let Some((_, buf, ends)) = &self.cached else {
            return Err(corrupt(&self.forward_path));
        };
        let k = (id - self.segments[s].0) as usize;
        let start = if k == 0 { 0 } else { ends[k - 1] };
        Ok(&buf[start..ends[k]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("key-{}", i * 7919 % 100_003).into_bytes()
    }

    #[test]
    fn flushed_keys_are_found_by_bytes_and_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DiskKeys::new(dir.path().join("keys")).unwrap();
        let mut rng = panes_datasets::rng::Rng::new(5);
        let mut n = 0u64;
        for _ in 0..40 {
            let batch: Vec<Vec<u8>> = (n..n + 1 + rng.below(3000)).map(key).collect();
            n += batch.len() as u64;
            disk.flush(batch.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(disk.len() as u64, n);
            // Runs merge by size: about log2 of the flushes of them.
            assert!(disk.runs.len() <= 7, "{} runs", disk.runs.len());
        }
        for i in (0..n).step_by(7) {
            assert_eq!(disk.find(&key(i)).unwrap(), Some(i as u32), "key {i}");
            assert_eq!(disk.key(i as u32).unwrap(), key(i).as_slice(), "id {i}");
        }
        assert_eq!(disk.find(b"key-unknown").unwrap(), None);
        assert_eq!(disk.find(b"").unwrap(), None);
        // Backwards, each segment read again.
        for i in (0..n).rev().step_by(997) {
            assert_eq!(disk.key(i as u32).unwrap(), key(i).as_slice(), "id {i}");
        }
        let files = std::fs::read_dir(dir.path().join("keys")).unwrap().count();
        assert_eq!(
            files,
            disk.runs.len() + 1,
            "merged runs leave no files behind"
        );
    }

    #[test]
    fn the_bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let mut rng = panes_datasets::rng::Rng::new(3);
        let mut bloom = Bloom::new(100_000);
        let inserted: Vec<u64> = (0..100_000).map(|_| rng.next_u64()).collect();
        inserted.iter().for_each(|&h| bloom.insert(h));
        assert!(inserted.iter().all(|&h| bloom.may_contain(h)));
        let false_positives = (0..100_000)
            .filter(|_| bloom.may_contain(rng.next_u64()))
            .count();
        assert!(false_positives < 2_500, "{false_positives} in 100 000");
    }

    #[test]
    fn keys_with_one_hash_are_told_apart_across_blocks() {
        // Entries with equal hashes on both sides of a block boundary.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        let entries: Vec<Entry> = (0..2000u32)
            .map(|i| Entry {
                hash: u64::from(i / 500),
                id: i,
                key: format!("{i:>20}").into_bytes(),
            })
            .collect();
        let run = Run::write(path, entries.len(), entries.into_iter().map(Ok)).unwrap();
        assert!(run.firsts.len() > 4);
        for i in (0..2000u32).step_by(13) {
            let found = run.find(u64::from(i / 500), format!("{i:>20}").as_bytes());
            assert_eq!(found.unwrap(), Some(i));
        }
        assert_eq!(run.find(1, format!("{:>20}", 7).as_bytes()).unwrap(), None);
        assert_eq!(run.find(9, b"x").unwrap(), None);
    }
}
