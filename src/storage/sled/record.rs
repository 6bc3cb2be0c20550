//! The value formats of the `archive` keyspace.
//!
//! - `1` (read only): postcard `(id, with, stanza)`, as written before this format.
//! - `2` (a record): varint length + `with`, varint length + stanza, then optionally the
//!   key of a reference to this record in another archive (to the end of the value). The
//!   UID is not stored: it is the encrypted position (the key).
//! - `3` (a reference): varint length + `with`, then the key of the record in another
//!   archive that holds the stanza (to the end), or of the chunk that holds it (the
//!   record in it whose copy marker is the reference's own key, see `chunk`). A message between two local users is
//!   stored once: the sender's archive holds it, the recipient's a reference to it (when
//!   both rows share one stanza, see `SharedStanza`, and reach the writer in one batch).
//!   Before a
//!   record with a copy marker is removed or replaced, the reference is turned back into a
//!   record (`materialized`), so a reference always points at a record.

use super::{Result, StorageError, VALUE_FORMAT};

const RECORD: u8 = 2;
const REFERENCE: u8 = 3;

/// One stored archive value, borrowed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RecordView<'a> {
    /// The UID as format 1 stored it; later formats derive it from the position.
    pub stored_id: Option<&'a str>,
    pub with: &'a str,
    pub body: Body<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Body<'a> {
    /// The stanza, and the key of a reference to this record elsewhere (if one was made).
    Stanza {
        stanza: &'a str,
        copy: Option<&'a [u8]>,
    },
    /// The key of the record that holds the stanza.
    Reference(&'a [u8]),
}

#[derive(serde::Deserialize)]
struct Legacy<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    with: &'a str,
    #[serde(borrow)]
    stanza: &'a str,
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("archived message: {what}"))
}

/// Appends `n` as LEB128 to a value or a `Head`.
pub(super) fn push_varint(out: &mut impl Extend<u8>, mut n: usize) {
    while n >= 0x80 {
        out.extend([(n as u8) | 0x80]);
        n >>= 7;
    }
    out.extend([n as u8]);
}

/// A LEB128 number (as postcard writes lengths).
pub(super) fn take_varint(bytes: &mut &[u8]) -> Result<usize> {
    let mut n: usize = 0;
    for shift in (0..35).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or_else(|| corrupt("truncated"))?;
        *bytes = rest;
        n |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(corrupt("length too long"))
}

/// A LEB128 length and that many bytes, bounded by what is left of `bytes`.
fn take_len<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = take_varint(bytes)?;
    if n > bytes.len() {
        return Err(corrupt("length beyond the value"));
    }
    let (field, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(field)
}

fn text(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))
}

/// A new record (format 2), without a copy marker: what the appender builds. Returns the
/// value and where its stanza starts (the stanza runs to the end until a marker is added).
pub(super) fn record(with: &str, stanza: &str) -> (Vec<u8>, usize) {
    let head = record_head(with, stanza.len());
    let mut value = Vec::with_capacity(head.len() + stanza.len());
    value.extend_from_slice(&head);
    value.extend_from_slice(stanza.as_bytes());
    (value, head.len())
}

/// A record's head, and later its copy marker or a reference's target (a key: user, NUL,
/// 16 position bytes). Inline for usual JIDs: the appenders build heads and the writer
/// thread frees them, and a heap buffer freed on another thread cost the appender's
/// allocator more than copying the bytes (bench/README.md, issue 16).
pub(super) type Head = smallvec::SmallVec<[u8; 96]>;

/// What a record (format 2) holds before a stanza of `stanza_len` bytes.
pub(super) fn record_head(with: &str, stanza_len: usize) -> Head {
    let mut head = Head::new();
    head.push(RECORD);
    push_varint(&mut head, with.len());
    head.extend_from_slice(with.as_bytes());
    push_varint(&mut head, stanza_len);
    head
}

/// Turns a record's head (`record_head`) into a reference (format 3) to the record at
/// `source`, in place.
pub(super) fn head_into_reference(head: &mut Head, source: &[u8]) -> Result<()> {
    let mut rest = match head.split_first() {
        Some((&RECORD, rest)) => rest,
        _ => return Err(corrupt("not a record")),
    };
    take_len(&mut rest)?;
    let with_end = head.len() - rest.len();
    head[0] = REFERENCE;
    head.truncate(with_end);
    head.extend_from_slice(source);
    Ok(())
}

/// Where a `with` of `len` bytes starts in a record or a reference: after the format
/// byte and its length.
pub(super) fn with_at(len: usize) -> usize {
    let mut at = 2;
    let mut n = len >> 7;
    while n > 0 {
        at += 1;
        n >>= 7;
    }
    at
}

/// The key a reference (format 3) names, without checking the rest; `None` for any
/// other value.
pub(super) fn reference_target(value: &[u8]) -> Option<&[u8]> {
    match value.split_first() {
        Some((&REFERENCE, mut rest)) => {
            take_len(&mut rest).ok()?;
            Some(rest)
        }
        _ => None,
    }
}

pub(super) fn parse(value: &[u8]) -> Result<RecordView<'_>> {
    let (&format, mut rest) = value.split_first().ok_or_else(|| corrupt("empty value"))?;
    match format {
        VALUE_FORMAT => {
            let l: Legacy<'_> = match postcard::take_from_bytes(rest) {
                Ok((l, [])) => l,
                Ok(_) => return Err(corrupt("trailing bytes")),
                Err(e) => return Err(corrupt(&e.to_string())),
            };
            Ok(RecordView {
                stored_id: Some(l.id),
                with: l.with,
                body: Body::Stanza {
                    stanza: l.stanza,
                    copy: None,
                },
            })
        }
        RECORD => {
            let with = text(take_len(&mut rest)?)?;
            let stanza = text(take_len(&mut rest)?)?;
            Ok(RecordView {
                stored_id: None,
                with,
                body: Body::Stanza {
                    stanza,
                    copy: (!rest.is_empty()).then_some(rest),
                },
            })
        }
        REFERENCE => {
            let with = text(take_len(&mut rest)?)?;
            if rest.is_empty() {
                return Err(corrupt("reference without a key"));
            }
            Ok(RecordView {
                stored_id: None,
                with,
                body: Body::Reference(rest),
            })
        }
        other => Err(corrupt(&format!("unknown value format {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_references_round_trip() {
        let with = "w".repeat(200);
        let (mut value, at) = record(&with, "<message/>");
        assert_eq!(&value[at..], b"<message/>");
        let view = parse(&value).unwrap();
        assert_eq!(view.with, with);
        assert_eq!(
            view.body,
            Body::Stanza {
                stanza: "<message/>",
                copy: None
            }
        );
        value.extend_from_slice(b"r@x\0key");
        assert_eq!(
            parse(&value).unwrap().body,
            Body::Stanza {
                stanza: "<message/>",
                copy: Some(b"r@x\0key")
            }
        );
        let at = with_at(with.len());
        assert_eq!(&value[at..at + with.len()], with.as_bytes());
        assert_eq!(with_at(3), 2);
        // Lengths whose varint takes one, two and three bytes (a JID may be 3,071).
        for len in [0, 1, 127, 128, 3071, 16_383, 16_384] {
            let long = "a".repeat(len);
            let (value, _) = record(&long, "<message/>");
            let at = with_at(len);
            assert_eq!(&value[at..at + len], long.as_bytes(), "{len}");
            let mut head = record_head(&long, 10);
            head_into_reference(&mut head, b"s@x\0pos").unwrap();
            let view = parse(&head).unwrap();
            assert_eq!(
                (view.with, view.body),
                (long.as_str(), Body::Reference(b"s@x\0pos")),
                "{len}"
            );
        }
        let mut value = Head::from_slice(&record("s@x/1", "<m/>").0);
        assert!(head_into_reference(&mut value, b"k").is_ok());
        assert!(
            head_into_reference(&mut value, b"k").is_err(),
            "already a reference"
        );
    }

    #[test]
    fn damaged_values_are_errors() {
        let (value, _) = record("a@b", "<m/>");
        for cut in 0..value.len() - 4 {
            assert!(parse(&value[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(&[RECORD, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(parse(&[REFERENCE, 1, b'a']).is_err());
        assert!(parse(&[RECORD, 1, 0xff, 0]).is_err());
        assert!(parse(&[9, 0]).is_err());
    }
}
