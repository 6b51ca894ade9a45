//! On-disk encoding of the embedded store's records.
//!
//! Written by hand rather than with a serialization crate: the records are a fixed
//! 24-byte header followed by raw bytes, and values (up to megabytes) must be copied
//! once, not walked element by element as serde would do for a `Vec<u8>`.
//!
//! - a key record (table `kv`): `create_revision i64 | mod_revision i64 | version i64 |
//!   value bytes...`, all integers little-endian;
//! - a log record (table `log`, keyed by `(revision, sub)`): `kind u8 | key_len u32 |
//!   key | [kv_len u32 | key record] (Put only) | has_prev u8 | [prev_len u32 | key record]`.

use bytes::Bytes;

use crate::error::{Result, StoreError};
use crate::types::{Event, EventKind, KeyValue};

const HEADER: usize = 24;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// Encodes the stored form of a key's current value.
pub(super) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    put_kv(&mut out, kv);
    out
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
}

/// Decodes a key record stored under `key`.
pub(super) fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    if bytes.len() < HEADER {
        return Err(corrupt(key, "key record shorter than its header"));
    }
    let int = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        i64::from_le_bytes(b)
    };
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: int(0),
        mod_revision: int(8),
        version: int(16),
        value: Bytes::copy_from_slice(&bytes[HEADER..]),
    })
}

/// Reads just the mod revision of a key record (for compares), without copying the value.
pub(super) fn mod_revision_of(key: &str, bytes: &[u8]) -> Result<i64> {
    let field = bytes
        .get(8..16)
        .ok_or_else(|| corrupt(key, "key record shorter than its header"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(field);
    Ok(i64::from_le_bytes(b))
}

/// Encodes one watch-history entry.
pub(super) fn encode_event(event: &Event) -> Result<Vec<u8>> {
    let key = event.kv.key.as_bytes();
    let len = |n: usize| {
        u32::try_from(n)
            .map_err(|_| StoreError::invalid(format!("record of {n} bytes is too large")))
    };
    let mut out = Vec::with_capacity(
        16 + key.len()
            + event.kv.value.len()
            + event
                .prev
                .as_ref()
                .map_or(0, |p| HEADER + 4 + p.value.len()),
    );
    match event.kind {
        EventKind::Put => out.push(KIND_PUT),
        EventKind::Delete => out.push(KIND_DELETE),
    }
    out.extend_from_slice(&len(key.len())?.to_le_bytes());
    out.extend_from_slice(key);
    if event.kind == EventKind::Put {
        out.extend_from_slice(&len(HEADER + event.kv.value.len())?.to_le_bytes());
        put_kv(&mut out, &event.kv);
    }
    match &event.prev {
        Some(prev) => {
            out.push(1);
            out.extend_from_slice(&len(HEADER + prev.value.len())?.to_le_bytes());
            put_kv(&mut out, prev);
        }
        None => out.push(0),
    }
    Ok(out)
}

/// Decodes one watch-history entry written at `revision`.
pub(super) fn decode_event(revision: i64, bytes: &[u8]) -> Result<Event> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        revision,
    };
    let kind = match cursor.u8()? {
        KIND_PUT => EventKind::Put,
        KIND_DELETE => EventKind::Delete,
        other => return Err(cursor.corrupt(&format!("unknown event kind {other}"))),
    };
    let key_len = cursor.u32()? as usize;
    let key = std::str::from_utf8(cursor.take(key_len)?)
        .map_err(|_| cursor.corrupt("key is not UTF-8"))?
        .to_string();
    let kv = match kind {
        EventKind::Put => {
            let n = cursor.u32()? as usize;
            decode_kv(&key, cursor.take(n)?)?
        }
        EventKind::Delete => KeyValue {
            key: key.clone(),
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
    };
    let prev = match cursor.u8()? {
        0 => None,
        _ => {
            let n = cursor.u32()? as usize;
            Some(decode_kv(&key, cursor.take(n)?)?)
        }
    };
    Ok(Event { kind, kv, prev })
}

/// Reads only the key of a log record, for prefix filtering without decoding values.
pub(super) fn event_key(revision: i64, bytes: &[u8]) -> Result<&str> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        revision,
    };
    cursor.u8()?;
    let key_len = cursor.u32()? as usize;
    let key = cursor.take(key_len)?;
    std::str::from_utf8(key).map_err(|_| cursor.corrupt("key is not UTF-8"))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    revision: i64,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, message: &str) -> StoreError {
        corrupt(&format!("log@{}", self.revision), message)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.corrupt("record is truncated"));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
}

fn corrupt(key: &str, message: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
        }
    }

    #[test]
    fn key_records_round_trip() {
        let original = kv("/a", "hello", 7);
        let bytes = encode_kv(&original);
        assert_eq!(decode_kv("/a", &bytes).unwrap(), original);
        assert_eq!(mod_revision_of("/a", &bytes).unwrap(), 7);
    }

    #[test]
    fn events_round_trip_with_and_without_prev() {
        let put = Event {
            kind: EventKind::Put,
            kv: kv("/k", "new", 9),
            prev: Some(kv("/k", "old", 8)),
        };
        let bytes = encode_event(&put).unwrap();
        assert_eq!(decode_event(9, &bytes).unwrap(), put);
        assert_eq!(event_key(9, &bytes).unwrap(), "/k");

        let delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "/k".into(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: 10,
                version: 0,
            },
            prev: Some(kv("/k", "new", 9)),
        };
        assert_eq!(
            decode_event(10, &encode_event(&delete).unwrap()).unwrap(),
            delete
        );
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let bytes = encode_event(&Event {
            kind: EventKind::Put,
            kv: kv("/k", "value", 3),
            prev: None,
        })
        .unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_event(3, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_kv("/k", &[0u8; 10]).is_err());
    }
}
