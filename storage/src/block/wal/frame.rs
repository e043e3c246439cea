//! The write-ahead log files: checksummed frames appended to one of two generation
//! files, made durable by one `fdatasync` per group commit.
//!
//! # Decisions
//! - **Plain files, not a redb table.** Logging 4 KiB writes as rows of a redb table cost a B-tree
//!   insert per record plus a commit that rewrites pages in several places and syncs them; with the
//!   object metadata rows updated beside it, that was ~30 % of a replica's CPU under 4K random
//!   writes. An append is one `pwrite` of the batch and one `fdatasync`.
//! - **Frame** = `magic u32 ‖ len u32 ‖ seq u64 ‖ crc32c(seq ‖ payload) u32 ‖ payload` (LE). The
//!   payload's meaning belongs to the caller ([`super::record`]).
//! - **Generations are reused from offset 0** once everything in them is checkpointed, so a file
//!   holds its current frames from offset 0 followed by leftovers of earlier uses. A scan takes
//!   frames from offset 0 while each is valid and its `seq` is its predecessor's + 1: leftovers
//!   are strictly older (lower `seq`), a torn frame fails its CRC, zero fill fails the magic, so any
//!   of them ends the chain. Sequence numbers are never reused; the store's `applied` mark says which
//!   frames a checkpoint already covers.
//! - **Grown in zero-filled steps, written in place.** An `fdatasync` after appending past the end
//!   of the file (or into a `fallocate`d, unwritten extent) must also commit the file's metadata — an
//!   ext4 journal commit per group commit. Writing zeros ahead of the head once, in
//!   [`GROW_STEP`] pieces, makes every later sync of those blocks a data-only flush.
//! - **A failed append is not retried.** After an `fdatasync` error Linux may have dropped the dirty
//!   pages and will not report the error again, so the caller must stop logging (the object store
//!   refuses writes until restarted, and the restart replays what did reach the disk).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u32 = 0x4c41_5742;
const HEADER: usize = 20;
/// The file grows by this much zero fill at a time.
const GROW_STEP: u64 = 4 << 20;
/// Upper bound on one frame's payload, so a damaged length field cannot make a scan allocate
/// gigabytes.
const MAX_PAYLOAD: u32 = 256 << 20;

/// One generation file, appended to by the object store's writer thread.
pub(crate) struct LogFile {
    file: File,
    /// Where the next frame goes.
    head: u64,
    /// Bytes of the file that exist (written, possibly with zeros).
    len: u64,
}

impl LogFile {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, head: 0, len })
    }

    /// Writes `frames` (built with [`frame`]) at the head and makes them durable.
    pub(crate) fn append(&mut self, frames: &[u8]) -> io::Result<()> {
        let end = self.head + frames.len() as u64;
        if end > self.len {
            let target = end.div_ceil(GROW_STEP) * GROW_STEP;
            let zeros = vec![0u8; (1 << 20).min(target - self.len) as usize];
            let mut pos = self.len;
            while pos < target {
                let n = zeros.len().min((target - pos) as usize);
                self.file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            self.len = target;
        }
        self.file.write_all_at(frames, self.head)?;
        self.file.sync_data()?;
        self.head = end;
        Ok(())
    }

    /// Reuse the file from offset 0: everything in it is checkpointed.
    pub(crate) fn rewind(&mut self) {
        self.head = 0;
    }

    /// Empties the file (after a replay): no leftover frame survives, not even one that a torn
    /// write left valid behind an invalid one.
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.head = 0;
        self.len = 0;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }
}

/// Appends one frame with sequence number `seq` to `out`; `payload` writes the payload.
pub(crate) fn frame(out: &mut Vec<u8>, seq: u64, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    payload(out);
    let len = (out.len() - start - HEADER) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start + 8..start + 16]),
        &out[start + HEADER..],
    );
    out[start + 16..start + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the next valid frame; `None` at the end of the file or at anything that is not one.
fn next_frame(r: &mut impl Read, remaining: &mut u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    if *remaining < HEADER as u64 {
        return Ok(None);
    }
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h)?;
    *remaining -= HEADER as u64;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let len = word(4);
    if word(0) != MAGIC || len > MAX_PAYLOAD || u64::from(len) > *remaining {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    *remaining -= u64::from(len);
    if crc32c::crc32c_append(crc32c::crc32c(&h[8..16]), &payload) != word(16) {
        return Ok(None);
    }
    let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    Ok(Some((seq, payload)))
}

/// Visits, in order, the frames with `seq > after` of the chain that starts at offset 0 of `path`
/// (see the module docs); returns the first and last sequence number visited. A missing file is
/// an empty log.
pub(crate) fn scan<E: From<io::Error>>(
    path: &Path,
    after: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<Option<(u64, u64)>, E> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut remaining = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let (mut prev, mut range) = (None::<u64>, None::<(u64, u64)>);
    while let Some((seq, payload)) = next_frame(&mut r, &mut remaining)? {
        if prev.is_some_and(|p| p.checked_add(1) != Some(seq)) {
            break;
        }
        prev = Some(seq);
        if seq > after {
            visit(seq, &payload)?;
            range = Some((range.map_or(seq, |(first, _)| first), seq));
        }
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in seqs {
            frame(&mut out, s, |p| {
                p.extend_from_slice(format!("rec{s}").as_bytes())
            });
        }
        out
    }

    type Scanned = (Vec<(u64, String)>, Option<(u64, u64)>);

    fn collect(path: &Path, after: u64) -> Scanned {
        let mut got = Vec::new();
        let range = scan::<io::Error>(path, after, |s, p| {
            got.push((s, String::from_utf8(p.to_vec()).unwrap()));
            Ok(())
        })
        .unwrap();
        (got, range)
    }

    #[test]
    fn chain_stops_at_leftovers_torn_frames_and_zero_fill() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wal0.log");
        let mut log = LogFile::open(&p).unwrap();
        // First use: seq 1..=5; checkpointed; second use from offset 0: seq 9..=10, shorter, so
        // leftovers of the first use follow them.
        log.append(&frames(1..=5)).unwrap();
        log.rewind();
        log.append(&frames(9..=10)).unwrap();
        let (got, range) = collect(&p, 0);
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![9, 10]);
        assert_eq!(got[0].1, "rec9");
        assert_eq!(range, Some((9, 10)));
        assert_eq!(
            collect(&p, 9).1,
            Some((10, 10)),
            "frames at or below `after` are skipped"
        );
        assert_eq!(collect(&p, 10).1, None);
        // The zero fill after the head ends the chain too.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), GROW_STEP);
        log.append(&frames(11..=11)).unwrap();
        assert_eq!(collect(&p, 0).1, Some((9, 11)));
        // A torn frame (one flipped payload byte) ends the chain; what follows is not visited.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let second = frames(9..=9).len() as u64;
        f.write_all_at(b"X", second + HEADER as u64).unwrap();
        assert_eq!(collect(&p, 0).1, Some((9, 9)));
        log.clear().unwrap();
        assert_eq!(collect(&p, 0).1, None);
        assert_eq!(log.head(), 0);
        assert_eq!(
            collect(&d.path().join("missing.log"), 0).1,
            None,
            "a missing file is an empty log"
        );
    }

    #[test]
    fn damaged_length_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wal1.log");
        let mut buf = frames(1..=2);
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &buf).unwrap();
        assert_eq!(collect(&p, 0).1, None);
    }
}
