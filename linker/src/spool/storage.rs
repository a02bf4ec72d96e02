//! Where the spool's segments live: a [`Storage`] of numbered segments
//! that can be appended to, synced, read, truncated and removed. [`Dir`]
//! is the real one (files `NNNNNNNNNNNNNNNN.seg` in `spool.dir`); tests use
//! an in-memory one that forgets what was not synced, or keeps a torn
//! part of it, at a crash they choose.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// Numbered append-only segments.
pub trait Storage {
    /// The segments there are, in no particular order.
    fn list(&mut self) -> io::Result<Vec<u64>>;
    /// All of segment `n`.
    fn read_all(&mut self, n: u64) -> io::Result<Vec<u8>>;
    /// `buf.len()` bytes of segment `n` from `offset`.
    fn read_at(&mut self, n: u64, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Start segment `n`, empty (replacing any segment `n`).
    fn create(&mut self, n: u64) -> io::Result<()>;
    /// Append to segment `n`.
    fn append(&mut self, n: u64, bytes: &[u8]) -> io::Result<()>;
    /// Make every append to segment `n` durable.
    fn sync(&mut self, n: u64) -> io::Result<()>;
    /// Cut segment `n` to `len` bytes, durably.
    fn truncate(&mut self, n: u64, len: u64) -> io::Result<()>;
    /// Remove segment `n` (best effort).
    fn remove(&mut self, n: u64);
}

/// Appends buffered before they are written (one `write` per batch, not
/// per record).
const WRITE_BUFFER: usize = 256 * 1024;

/// Segments as files in a directory.
#[derive(Debug)]
pub struct Dir {
    dir: PathBuf,
    /// The segment being appended to, and appends not yet written to it.
    writer: Option<(u64, File)>,
    pending: Vec<u8>,
    /// Whether anything was created or appended since the last sync (in
    /// steady state only the dedupe marks are written: the spool's own
    /// `fdatasync` of an unchanged segment was a second one per commit).
    dirty: bool,
    /// Read handles.
    readers: BTreeMap<u64, File>,
}

impl Dir {
    /// Segments in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Dir {
            dir: dir.to_owned(),
            writer: None,
            pending: Vec::with_capacity(WRITE_BUFFER),
            dirty: false,
            readers: BTreeMap::new(),
        })
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:016}.seg"))
    }

    fn writer(&mut self, n: u64) -> io::Result<&mut File> {
        if self.writer.as_ref().is_none_or(|(w, _)| *w != n) {
            self.flush()?;
            let f = OpenOptions::new().append(true).open(self.path(n))?;
            self.writer = Some((n, f));
        }
        match &mut self.writer {
            Some((_, f)) => Ok(f),
            None => Err(io::Error::other("no writer")),
        }
    }

    /// Write the buffered appends to their segment.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.writer {
            Some((_, f)) => f.write_all(&self.pending)?,
            None => return Err(io::Error::other("appends without a segment")),
        }
        self.pending.clear();
        Ok(())
    }
}

impl Storage for Dir {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect())
    }

    fn read_all(&mut self, n: u64) -> io::Result<Vec<u8>> {
        if self.writer.as_ref().is_some_and(|(w, _)| *w == n) {
            self.flush()?;
        }
        std::fs::read(self.path(n))
    }

    fn read_at(&mut self, n: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.writer.as_ref().is_some_and(|(w, _)| *w == n) {
            self.flush()?;
        }
        if !self.readers.contains_key(&n) {
            let f = File::open(self.path(n))?;
            self.readers.insert(n, f);
        }
        match self.readers.get(&n) {
            Some(f) => f.read_exact_at(buf, offset),
            None => Err(io::Error::other("no reader")),
        }
    }

    fn create(&mut self, n: u64) -> io::Result<()> {
        self.flush()?;
        let f = File::create(self.path(n))?;
        self.readers.remove(&n);
        self.writer = Some((n, f));
        self.dirty = true;
        Ok(())
    }

    fn append(&mut self, n: u64, bytes: &[u8]) -> io::Result<()> {
        self.writer(n)?;
        self.dirty = true;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn sync(&mut self, n: u64) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.writer(n)?;
        self.flush()?;
        self.writer(n)?.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    fn truncate(&mut self, n: u64, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.path(n))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&mut self, n: u64) {
        self.readers.remove(&n);
        if self.writer.as_ref().is_some_and(|(w, _)| *w == n) {
            self.pending.clear();
            self.writer = None;
        }
        let _ = std::fs::remove_file(self.path(n));
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // Best effort: unsynced appends were never reported durable.
        let _ = self.flush();
    }
}

/// In memory, for tests: each segment's bytes and how many of them are
/// durable.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub struct Mem {
    /// Per segment: its bytes, and how many of them are durable.
    pub segments: BTreeMap<u64, (Vec<u8>, usize)>,
}

#[cfg(test)]
impl Mem {
    /// Power loss: every segment keeps what was synced plus the first
    /// `keep(unsynced)` bytes of the rest (0 = all lost; a torn write
    /// keeps part of a record).
    pub fn crash(&mut self, mut keep: impl FnMut(usize) -> usize) {
        for (data, synced) in self.segments.values_mut() {
            let unsynced = data.len() - *synced;
            let kept = keep(unsynced).min(unsynced);
            data.truncate(*synced + kept);
            *synced = data.len();
        }
    }
}

#[cfg(test)]
impl Storage for Mem {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(self.segments.keys().copied().collect())
    }

    fn read_all(&mut self, n: u64) -> io::Result<Vec<u8>> {
        self.segments
            .get(&n)
            .map(|(d, _)| d.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn read_at(&mut self, n: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (d, _) = self
            .segments
            .get(&n)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let at = offset as usize;
        let src = d
            .get(at..at + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn create(&mut self, n: u64) -> io::Result<()> {
        self.segments.insert(n, (Vec::new(), 0));
        Ok(())
    }

    fn append(&mut self, n: u64, bytes: &[u8]) -> io::Result<()> {
        self.segments
            .entry(n)
            .or_default()
            .0
            .extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self, n: u64) -> io::Result<()> {
        if let Some((d, s)) = self.segments.get_mut(&n) {
            *s = d.len();
        }
        Ok(())
    }

    fn truncate(&mut self, n: u64, len: u64) -> io::Result<()> {
        if let Some((d, s)) = self.segments.get_mut(&n) {
            d.truncate(len as usize);
            *s = d.len();
        }
        Ok(())
    }

    fn remove(&mut self, n: u64) {
        self.segments.remove(&n);
    }
}
