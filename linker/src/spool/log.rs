//! The spool's record format, pure: encode a record, parse a segment's
//! bytes back into records. No I/O here, so torn writes and corruption are
//! tested byte by byte.
//!
//! A record is `len: u32 LE | crc32(body): u32 LE | body`, body =
//! `kind: u8 | key: u64 LE | data`. Kinds: `PUT` (data = the envelope in
//! the wire encoding) and `ACK` (no data: the record `key` is done) in
//! spool segments; `MARK` and `WINDOW` in the marks log (`marks.rs`).
//!
//! Parsing stops at the first record that does not fit in what is left
//! (a torn tail: the writer died mid-record) and reports where the valid
//! prefix ends, so the caller truncates there. A complete record whose
//! checksum does not match (corruption) is skipped and counted; the length
//! prefix still frames the next one. A length beyond [`MAX_RECORD`] cannot
//! be framed at all: the rest of the segment is reported as torn.

/// Record kind: a message in the spool.
pub const PUT: u8 = 1;
/// Record kind: the message with this key left the spool.
pub const ACK: u8 = 2;
/// Record kind (marks log): a delivered message's dedupe key; `key` is
/// its sequence number.
pub const MARK: u8 = 3;
/// Record kind (marks log): one dedupe window's state; `key` is its epoch.
pub const WINDOW: u8 = 4;
/// Largest record body accepted (a 256 MiB MQTT payload plus headroom).
pub const MAX_RECORD: usize = 257 * 1024 * 1024;
/// Bytes before the body.
pub const HEADER: usize = 8;

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// One of the kinds above (others are skipped, counted as corrupt).
    pub kind: u8,
    /// The message key.
    pub key: u64,
    /// For `PUT`: the encoded envelope.
    pub data: &'a [u8],
    /// Offset of the record in the segment.
    pub offset: usize,
    /// Its size on disk, header included.
    pub size: usize,
}

/// What a segment's bytes held.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    /// Records that passed their checksum, in order.
    pub records: Vec<Record<'a>>,
    /// Records skipped for a bad checksum or an unknown kind.
    pub corrupt: u64,
    /// Length of the prefix that holds whole records; bytes past it are a
    /// torn tail.
    pub valid_len: usize,
}

/// CRC-32 lookup tables for slicing by 8: `T[0]` is the classic
/// byte-at-a-time table, `T[k][b]` the CRC of byte `b` followed by `k`
/// zero bytes.
const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut k = 1;
        while k < 8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            k += 1;
        }
        i += 1;
    }
    t
}

static CRC: [[u32; 256]; 8] = crc_tables();

/// CRC-32 (IEEE 802.3, as zlib's `crc32`), eight bytes per step.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    let mut chunks = bytes.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = CRC[7][(lo & 0xFF) as usize]
            ^ CRC[6][((lo >> 8) & 0xFF) as usize]
            ^ CRC[5][((lo >> 16) & 0xFF) as usize]
            ^ CRC[4][(lo >> 24) as usize]
            ^ CRC[3][b[4] as usize]
            ^ CRC[2][b[5] as usize]
            ^ CRC[1][b[6] as usize]
            ^ CRC[0][b[7] as usize];
    }
    for b in chunks.remainder() {
        c = CRC[0][((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Append one record to `out`.
pub fn encode(kind: u8, key: u64, data: &[u8], out: &mut Vec<u8>) {
    let body_len = 1 + 8 + data.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
}

/// Parse a segment.
pub fn parse(bytes: &[u8]) -> Parsed<'_> {
    let mut p = Parsed::default();
    let mut at = 0usize;
    while let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) {
        let len = len as usize;
        if !(9..=MAX_RECORD).contains(&len) {
            break; // unframeable: treated as torn from here
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break; // torn: the record did not make it whole
        };
        let size = HEADER + len;
        let key = body
            .get(1..9)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes);
        match (crc32(body) == crc, body[0], key) {
            (true, kind @ (PUT | ACK | MARK | WINDOW), Some(key)) => p.records.push(Record {
                kind,
                key,
                data: &body[9..],
                offset: at,
                size,
            }),
            _ => p.corrupt += 1,
        }
        at += size;
        p.valid_len = at;
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // Every length around the 8-byte steps against a bit-by-bit CRC.
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..data.len() {
            let mut c = 0xFFFF_FFFFu32;
            for b in &data[..n] {
                c ^= u32::from(*b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            assert_eq!(crc32(&data[..n]), !c, "length {n}");
        }
    }

    fn log(records: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, key, d) in records {
            encode(*k, *key, d, &mut out);
        }
        out
    }

    fn arb_records() -> impl Strategy<Value = Vec<(u8, u64, Vec<u8>)>> {
        proptest::collection::vec(
            (
                prop_oneof![Just(PUT), Just(ACK)],
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..200),
            ),
            0..30,
        )
    }

    proptest! {
        #[test]
        fn whole_logs_read_back(records in arb_records()) {
            let bytes = log(&records);
            let p = parse(&bytes);
            prop_assert_eq!(p.corrupt, 0);
            prop_assert_eq!(p.valid_len, bytes.len());
            let back: Vec<(u8, u64, Vec<u8>)> =
                p.records.iter().map(|r| (r.kind, r.key, r.data.to_vec())).collect();
            prop_assert_eq!(back, records);
        }

        /// A crash at any byte: every record written whole before the cut
        /// reads back, nothing after it does, and the valid prefix ends at
        /// a record boundary.
        #[test]
        fn a_torn_tail_loses_only_the_torn_record(records in arb_records(), cut in any::<prop::sample::Index>()) {
            let bytes = log(&records);
            let cut = cut.index(bytes.len() + 1);
            let p = parse(&bytes[..cut]);
            let whole: Vec<usize> = {
                let mut ends = Vec::new();
                let mut at = 0;
                for (_, _, d) in &records {
                    at += HEADER + 9 + d.len();
                    ends.push(at);
                }
                ends
            };
            let n = whole.iter().filter(|e| **e <= cut).count();
            prop_assert_eq!(p.records.len(), n);
            prop_assert_eq!(p.corrupt, 0);
            prop_assert_eq!(p.valid_len, if n == 0 { 0 } else { whole[n - 1] });
        }

        /// A flipped byte inside a record's body costs that record only.
        #[test]
        fn a_corrupted_record_is_skipped_and_counted(records in arb_records(), which in any::<prop::sample::Index>(), bit in 0u8..8) {
            prop_assume!(!records.is_empty());
            let mut bytes = log(&records);
            let i = which.index(records.len());
            let start: usize = records[..i].iter().map(|(_, _, d)| HEADER + 9 + d.len()).sum();
            // Flip a bit in the body (kind, key or data), not the length.
            let body_len = 9 + records[i].2.len();
            bytes[start + HEADER + (usize::from(bit) * 7919) % body_len] ^= 1 << bit;
            let p = parse(&bytes);
            prop_assert_eq!(p.corrupt, 1);
            prop_assert_eq!(p.records.len(), records.len() - 1);
            prop_assert_eq!(p.valid_len, bytes.len());
            prop_assert!(p.records.iter().all(|r| r.offset != start));
        }
    }
}
