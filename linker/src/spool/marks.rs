//! Durable dedupe marks: which QoS >= 1 messages this region's broker has
//! acknowledged, kept on disk so that a replay reaching us after our own
//! restart (the upstream never got our acknowledgement) is recognised and
//! not delivered twice.
//!
//! The core reports each acknowledged local delivery as a mark
//! (`Event::Mark`); the spool thread appends it here in the same group
//! commit as the spool's own writes, and only after the sync does the core
//! release the message upstream. So the one window left for a duplicate
//! is a crash between the broker's PUBACK and that sync (README,
//! "Delivery guarantees").
//!
//! Files `NNNNNNNNNNNNNNNN.marks` in `spool.dir/marks/`, in the spool's
//! record format (`log.rs`): a file opens with `WINDOW` records (the whole
//! state of every dedupe window, a snapshot) followed by `MARK` records.
//! After [`ROTATE`] marks a new file is written with a fresh snapshot under
//! a temporary name, synced and renamed into place, and the old file is
//! deleted: a crash at any point leaves one complete file to read. The
//! windows hold what the core's windows hold (65,536 sequence numbers per
//! source and epoch, two epochs), so the files stay small.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use mqlink_proto::dedupe::{Dedupe, Mark, WindowState};
use mqlink_topology::{NodeName, RegionName};
use tracing::warn;

use super::{Result, SpoolError, log};

/// Marks written to one file before it is replaced by a snapshot.
pub const ROTATE: u64 = 65_536;

/// What was found at start.
#[derive(Debug, Default, Clone, Copy)]
pub struct MarksRecovered {
    /// Windows restored from the snapshot.
    pub windows: u64,
    /// Marks read after it.
    pub marks: u64,
    /// Records skipped (bad checksum, or not decodable).
    pub corrupt: u64,
}

/// The marks log.
#[derive(Debug)]
pub struct Marks {
    dir: PathBuf,
    /// Every mark written, as windows: the next snapshot.
    mirror: Dedupe,
    /// The file appended to, and its number.
    file: File,
    number: u64,
    /// Marks in the current file.
    written: u64,
    /// Whether there are writes not yet synced.
    dirty: bool,
    /// Marks added since the last sync, written in one go by it (one
    /// `write` per group commit, not one per mark).
    pending: Vec<u8>,
}

fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.marks"))
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// Encode a mark record's data: `epoch | origin | node` (names with a
/// one-byte length; region and node names are at most 63 bytes).
fn mark_data(m: &Mark) -> Vec<u8> {
    let mut d = m.epoch.to_le_bytes().to_vec();
    put_name(&mut d, m.origin.as_str());
    put_name(&mut d, m.node.as_str());
    d
}

/// Encode a window record's data: `top | origin | node | bits`.
fn window_data(w: &WindowState) -> Vec<u8> {
    let mut d = w.top.to_le_bytes().to_vec();
    put_name(&mut d, w.origin.as_str());
    put_name(&mut d, w.node.as_str());
    for b in &w.bits {
        d.extend_from_slice(&b.to_le_bytes());
    }
    d
}

/// A little reader over a record's data.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_le_bytes(<[u8; 8]>::try_from(head).ok()?))
    }

    fn name(&mut self) -> Option<&'a str> {
        let (&len, rest) = self.0.split_first()?;
        let (name, rest) = rest.split_at_checked(usize::from(len))?;
        self.0 = rest;
        std::str::from_utf8(name).ok()
    }

    fn source(&mut self) -> Option<(RegionName, NodeName)> {
        let origin = RegionName::new(self.name()?).ok()?;
        let node = NodeName::new(self.name()?).ok()?;
        Some((origin, node))
    }
}

fn parse_mark(seq: u64, data: &[u8]) -> Option<Mark> {
    let mut c = Cursor(data);
    let epoch = c.u64()?;
    let (origin, node) = c.source()?;
    c.0.is_empty().then_some(Mark {
        origin,
        node,
        epoch,
        seq,
    })
}

fn parse_window(epoch: u64, data: &[u8]) -> Option<WindowState> {
    let mut c = Cursor(data);
    let top = c.u64()?;
    let (origin, node) = c.source()?;
    if c.0.len() % 8 != 0 {
        return None;
    }
    let bits =
        c.0.chunks_exact(8)
            .filter_map(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .collect();
    Some(WindowState {
        origin,
        node,
        epoch,
        top,
        bits,
    })
}

/// Read one marks file's records into `into`.
fn load(bytes: &[u8], into: &mut Dedupe, rec: &mut MarksRecovered) -> usize {
    let parsed = log::parse(bytes);
    rec.corrupt += parsed.corrupt;
    for r in &parsed.records {
        match r.kind {
            log::WINDOW => {
                if parse_window(r.key, r.data).is_some_and(|w| into.restore(w)) {
                    rec.windows += 1;
                } else {
                    rec.corrupt += 1;
                }
            }
            log::MARK => match parse_mark(r.key, r.data) {
                Some(m) => {
                    into.check_mark(&m);
                    rec.marks += 1;
                }
                None => rec.corrupt += 1,
            },
            _ => rec.corrupt += 1,
        }
    }
    parsed.valid_len
}

impl Marks {
    /// Open (or create) the marks in `dir`: the windows they describe,
    /// for [`mqlink_proto::Agent::restore_marks`].
    pub fn open(dir: &Path) -> Result<(Self, Dedupe, MarksRecovered)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SpoolError::io(format!("creating the marks directory {}", dir.display()), e)
        })?;
        let mut numbers = Vec::new();
        for e in std::fs::read_dir(dir)
            .map_err(|e| {
                SpoolError::io(format!("reading the marks directory {}", dir.display()), e)
            })?
            .filter_map(|e| e.ok())
        {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A snapshot that was never renamed into place.
                let _ = std::fs::remove_file(e.path());
            } else if let Some(n) = name.strip_suffix(".marks").and_then(|n| n.parse().ok()) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut rec = MarksRecovered::default();
        let mut windows = Dedupe::default();
        let number = numbers.last().copied().unwrap_or(1);
        let p = path(dir, number);
        if numbers.last().is_some() {
            let bytes = std::fs::read(&p)
                .map_err(|e| SpoolError::io(format!("reading marks {}", p.display()), e))?;
            let valid = load(&bytes, &mut windows, &mut rec);
            if valid < bytes.len() {
                let f = OpenOptions::new().write(true).open(&p)?;
                f.set_len(valid as u64)?;
                f.sync_all()?;
            }
        }
        // Older files were replaced by the newest one's snapshot.
        for n in numbers.iter().filter(|n| **n != number) {
            let _ = std::fs::remove_file(path(dir, *n));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| SpoolError::io(format!("opening marks {}", p.display()), e))?;
        let marks = Marks {
            dir: dir.to_owned(),
            mirror: windows.clone(),
            file,
            number,
            written: rec.marks,
            dirty: false,
            pending: Vec::new(),
        };
        Ok((marks, windows, rec))
    }

    /// Append `mark`. Durable after [`Self::sync`].
    pub fn add(&mut self, mark: &Mark) -> Result<()> {
        if self.written >= ROTATE {
            self.rotate()?;
        }
        log::encode(log::MARK, mark.seq, &mark_data(mark), &mut self.pending);
        self.mirror.check_mark(mark);
        self.written += 1;
        self.dirty = true;
        Ok(())
    }

    /// Make every mark so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let written = self.file.write_all(&self.pending);
            self.pending.clear();
            written?;
        }
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Start a new file with a snapshot of every window.
    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        let n = self.number + 1;
        let tmp = self.dir.join(format!("{n:016}.marks.tmp"));
        let mut buf = Vec::new();
        for w in self.mirror.windows() {
            log::encode(log::WINDOW, w.epoch, &window_data(&w), &mut buf);
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path(&self.dir, n))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        if let Err(e) = std::fs::remove_file(path(&self.dir, self.number)) {
            warn!(error = %e, "removing an old marks file");
        }
        self.file = OpenOptions::new().append(true).open(path(&self.dir, n))?;
        self.number = n;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use mqlink_proto::dedupe::Seen;

    fn dir(name: &str) -> PathBuf {
        crate::scratch::dir(&format!("mqlink-marks-{name}")).unwrap()
    }

    fn mark(node: &str, epoch: u64, seq: u64) -> Mark {
        Mark {
            origin: RegionName::new("eu").unwrap(),
            node: NodeName::new(node).unwrap(),
            epoch,
            seq,
        }
    }

    #[test]
    fn marks_survive_a_reopen_and_rotations() {
        let dir = dir("rotations");
        let (mut m, d, _) = Marks::open(dir.as_path()).unwrap();
        assert!(d.is_empty());
        // More than one rotation's worth, from two sources and epochs.
        let total = ROTATE * 2 + 10;
        for s in 0..total {
            m.add(&mark(if s % 2 == 0 { "a" } else { "b" }, 1 + s / ROTATE, s))
                .unwrap();
        }
        m.sync().unwrap();
        drop(m);
        let (_, mut d, rec) = Marks::open(dir.as_path()).unwrap();
        assert!(rec.windows > 0 && rec.corrupt == 0, "{rec:?}");
        let files = std::fs::read_dir(dir.as_path()).unwrap().count();
        assert_eq!(files, 1, "one file after the rotations");
        // Recent marks of every epoch still tracked are duplicates ...
        for s in [total - 1, total - 2, ROTATE * 2 - 1, ROTATE * 2 - 2] {
            let node = if s % 2 == 0 { "a" } else { "b" };
            assert_eq!(
                d.check_mark(&mark(node, 1 + s / ROTATE, s)),
                Seen::Duplicate
            );
        }
        // ... and a message never marked is new.
        assert_eq!(d.check_mark(&mark("a", 3, total + 2)), Seen::New);
    }

    #[test]
    fn a_torn_mark_is_truncated_and_the_rest_kept() {
        let dir = dir("torn");
        let (mut m, _, _) = Marks::open(dir.as_path()).unwrap();
        for s in 1..=3 {
            m.add(&mark("a", 1, s)).unwrap();
        }
        m.sync().unwrap();
        let p = path(dir.as_path(), m.number);
        drop(m);
        let len = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 3).unwrap();
        let (mut m, mut d, rec) = Marks::open(dir.as_path()).unwrap();
        assert_eq!(rec.marks, 2);
        assert_eq!(d.check_mark(&mark("a", 1, 2)), Seen::Duplicate);
        assert_eq!(d.check_mark(&mark("a", 1, 3)), Seen::New);
        // Appending goes on after the truncated record.
        m.add(&mark("a", 1, 4)).unwrap();
        m.sync().unwrap();
        drop(m);
        let (_, _, rec) = Marks::open(dir.as_path()).unwrap();
        assert_eq!((rec.marks, rec.corrupt), (3, 0));
    }

    #[test]
    fn a_snapshot_never_renamed_is_ignored() {
        let dir = dir("snapshot");
        let (mut m, _, _) = Marks::open(dir.as_path()).unwrap();
        m.add(&mark("a", 1, 1)).unwrap();
        m.sync().unwrap();
        drop(m);
        std::fs::write(dir.as_path().join("0000000000000002.marks.tmp"), b"half").unwrap();
        let (_, mut d, rec) = Marks::open(dir.as_path()).unwrap();
        assert_eq!(rec.marks, 1);
        assert_eq!(d.check_mark(&mark("a", 1, 1)), Seen::Duplicate);
        assert!(!dir.as_path().join("0000000000000002.marks.tmp").exists());
    }
}
