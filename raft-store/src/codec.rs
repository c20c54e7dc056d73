//! Versioned, checksummed encoding of every record the stores write:
//! one format byte, a CRC32 (little endian) of the body, then the body as JSON.
//!
//! JSON keeps records self-describing (readable with any tool, tolerant of added optional
//! fields); the leading byte lets a later build change the encoding and still read old records,
//! and makes an unknown record a clear error instead of a misparse; the checksum catches a
//! flipped bit that would still parse.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding of records written by this build.
pub const RECORD_FORMAT: u8 = 1;
const HEADER: usize = 5;

pub fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[RECORD_FORMAT, 0, 0, 0, 0]);
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decode a record; `what` names it in errors ("log entry 42", "vote").
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> std::io::Result<T> {
    let invalid = |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {detail}"));
    match bytes.first() {
        Some(&RECORD_FORMAT) if bytes.len() >= HEADER => {
            let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
            let body = &bytes[HEADER..];
            let actual = crc32fast::hash(body);
            if stored != actual {
                return Err(invalid(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})")));
            }
            serde_json::from_slice(body).map_err(|e| invalid(format!("corrupt record: {e}")))
        }
        Some(&RECORD_FORMAT) => Err(invalid("truncated record".to_string())),
        Some(other) => {
            Err(invalid(format!("record format {other} is not known to this build (reads format {RECORD_FORMAT})")))
        }
        None => Err(invalid("empty record".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_records() {
        let bytes = encode(&vec![1u64, 2, 3]).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT);
        let back: Vec<u64> = decode(&bytes, "test").unwrap();
        assert_eq!(back, vec![1, 2, 3]);

        let err = decode::<Vec<u64>>(&[7, 0, 0, 0, 0, b'[', b']'], "log entry 9").unwrap_err();
        assert!(err.to_string().contains("log entry 9: record format 7"), "{err}");
        assert!(decode::<Vec<u64>>(&[], "x").is_err());
        assert!(decode::<Vec<u64>>(&[RECORD_FORMAT, 1], "x").is_err());
    }

    #[test]
    fn a_flipped_bit_that_still_parses_is_caught() {
        let mut bytes = encode(&"value-a").unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 0x03; // 'a' -> 'b': still valid JSON
        let err = decode::<String>(&bytes, "annotation").unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }
}
