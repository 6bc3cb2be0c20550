//! Archive entries that hold several messages (value format 4, a chunk), and reading and
//! editing an archive by message rather than by fjall entry.
//!
//! The writer stores the messages one batch brings to one archive as one entry, keyed
//! like the first of them: `[4] varint(n)` then, per message, its 16 position bytes,
//! a varint length and its value in format 2 or 3 (`record`). Every fjall entry costs
//! the same skiplist insert, memtable flush and compaction work whatever its size, and
//! those per-entry costs were most of archiving's (bench/README.md, issue 16). Entries
//! of one message (formats 1-3, and what the writer stores when a batch has one message
//! for an archive) are read as chunks of one.
//!
//! The invariant readers rely on: within an archive, every message of an entry keyed `k`
//! is at `k` or after it and before the next entry's key. The writer keeps it by chunking
//! only messages newer than everything stored (positions reach it in order), and by
//! merging any other message into the entry that covers its position. A chunk keeps its
//! key when its first message is removed. Entries are in the partition of their key's
//! position (`partition`), and a chunk never spans two partitions, so the entry covering
//! a message is looked for in the message's partition only.

use std::ops::Range;

use fjall::{Keyspace, OwnedWriteBatch, Slice};

use super::partition::{Partition, Partitions, UserPartitions};
use super::{ArchivePos, Result, StorageError, archive_backend, key_pos, pos_key, record};
use crate::hashing::FastMap;

const CHUNK: u8 = 4;

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("archive chunk: {what}"))
}

/// The varint at `at` in `value`; moves `at` past it.
fn take_varint(value: &[u8], at: &mut usize) -> Result<usize> {
    let mut rest = value.get(*at..).ok_or_else(|| corrupt("truncated"))?;
    let n = record::take_varint(&mut rest)?;
    *at = value.len() - rest.len();
    Ok(n)
}

pub(super) fn is_chunk(value: &[u8]) -> bool {
    value.first() == Some(&CHUNK)
}

/// A chunk of `rows` (positions ascending, values in format 2 or 3).
pub(super) fn encode<'a>(rows: impl ExactSizeIterator<Item = (ArchivePos, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, rows.map(|(pos, value)| (pos, [value])));
    out
}

/// `encode` onto `out`, each value given in parts (a record's head, its stanza, its
/// copy marker) that are written one after the other.
pub(super) fn encode_into<'a, const N: usize>(
    out: &mut Vec<u8>,
    rows: impl ExactSizeIterator<Item = (ArchivePos, [&'a [u8]; N])>,
) {
    out.push(CHUNK);
    record::push_varint(out, rows.len());
    for (pos, parts) in rows {
        out.extend_from_slice(&pos.to_bytes());
        record::push_varint(out, parts.iter().map(|p| p.len()).sum());
        for part in parts {
            out.extend_from_slice(part);
        }
    }
}

/// The messages of the entry `key` = `value`: position and where its value is.
pub(super) fn rows(key: &[u8], value: &[u8]) -> Result<Vec<(ArchivePos, Range<usize>)>> {
    if !is_chunk(value) {
        return Ok(vec![(key_pos(key)?, 0..value.len())]);
    }
    let mut at = 1;
    let n = take_varint(value, &mut at)?;
    // Each message takes at least 17 bytes: a count beyond that is damage.
    if n > value.len() / 17 {
        return Err(corrupt("count beyond the value"));
    }
    let first = key_pos(key)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let pos = value
            .get(at..at + 16)
            .and_then(ArchivePos::from_bytes)
            .ok_or_else(|| corrupt("truncated position"))?;
        at += 16;
        let len = take_varint(value, &mut at)?;
        let end = at
            .checked_add(len)
            .filter(|&end| end <= value.len())
            .ok_or_else(|| corrupt("length beyond the value"))?;
        if pos < first || out.last().is_some_and(|(last, _)| *last >= pos) {
            return Err(corrupt("positions out of order"));
        }
        out.push((pos, at..end));
        at = end;
    }
    if at != value.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

/// One message as stored: its key (`<user>\0<pos>`, also inside a chunk) and value.
pub(super) struct Row {
    pub key: Vec<u8>,
    pub pos: ArchivePos,
    entry: Slice,
    at: Range<usize>,
}

impl Row {
    pub fn value(&self) -> &[u8] {
        &self.entry[self.at.clone()]
    }
}

/// The user prefix (`<user>\0`) of a message key.
fn prefix_of(key: &[u8]) -> Result<&[u8]> {
    key.len()
        .checked_sub(16)
        .map(|at| &key[..at])
        .ok_or_else(|| StorageError::Corrupt("archive key length".into()))
}

/// The entry that holds (or would hold) the message at `key`: the last entry of the
/// archive at or before it.
fn covering(archive: &Keyspace, key: &[u8]) -> Result<Option<(Slice, Slice)>> {
    let start = pos_key(prefix_of(key)?, ArchivePos::MIN);
    match archive.range(start..=key.to_vec()).next_back() {
        Some(entry) => entry.into_inner().map(Some).map_err(archive_backend),
        None => Ok(None),
    }
}

/// The key of the entry that holds (or would hold) the message at `key`.
pub(super) fn entry_key(parts: &Partitions, key: &[u8]) -> Result<Option<Slice>> {
    Ok(covering(&parts.of_key(key)?, key)?.map(|(entry_key, _)| entry_key))
}

/// The message at `key`, wherever it is stored.
pub(super) fn row_at(parts: &Partitions, key: &[u8]) -> Result<Option<Row>> {
    let archive = parts.of_key(key)?;
    // Most lookups hit an entry of their own (its filter answers without a read).
    match archive.get(key).map_err(archive_backend)? {
        Some(value) => find_row(key, key, value),
        None => within(&archive, key),
    }
}

/// The message at `key` where no entry is keyed by it: inside the chunk before it.
pub(super) fn row_within(parts: &Partitions, key: &[u8]) -> Result<Option<Row>> {
    within(&parts.of_key(key)?, key)
}

/// `row_within` in the partition `archive`.
fn within(archive: &Keyspace, key: &[u8]) -> Result<Option<Row>> {
    match covering(archive, key)? {
        Some((entry_key, value)) => find_row(key, &entry_key, value),
        None => Ok(None),
    }
}

/// The message at `key` in the entry `entry_key` = `value`.
fn find_row(key: &[u8], entry_key: &[u8], value: Slice) -> Result<Option<Row>> {
    let pos = key_pos(key)?;
    if !is_chunk(&value) {
        return Ok((entry_key == key).then(|| Row {
            key: key.to_vec(),
            pos,
            at: 0..value.len(),
            entry: value,
        }));
    }
    Ok(rows(entry_key, &value)?
        .into_iter()
        .find(|(p, _)| *p == pos)
        .map(|(_, at)| Row {
            key: key.to_vec(),
            pos,
            entry: value,
            at,
        }))
}

/// An entry's value and the messages of it still to read.
type EntryRows = (Slice, std::vec::IntoIter<(ArchivePos, Range<usize>)>);

/// The messages of one archive (`prefix` = `<user>\0`) from `from` to `to` inclusive,
/// oldest first or (`newest_first`) newest first, read lazily partition by partition
/// and entry by entry.
pub(super) struct Rows {
    /// The partitions still to read after `current`, in the iteration's order.
    next: std::vec::IntoIter<Partition>,
    current: Option<PartRows>,
    prefix: Vec<u8>,
    from: ArchivePos,
    to: ArchivePos,
    newest_first: bool,
}

impl Rows {
    pub(super) fn new(
        parts: &Partitions,
        prefix: &[u8],
        from: ArchivePos,
        to: ArchivePos,
        newest_first: bool,
    ) -> Result<Rows> {
        Ok(Rows::over(
            &parts.of_user(prefix)?,
            prefix,
            from,
            to,
            newest_first,
        ))
    }

    /// `new` in the partitions of the archive already looked up.
    pub(super) fn over(
        partitions: &UserPartitions,
        prefix: &[u8],
        from: ArchivePos,
        to: ArchivePos,
        newest_first: bool,
    ) -> Rows {
        let overlapping = partitions.overlapping(from, to).cloned();
        let found: Vec<Partition> = match newest_first {
            true => overlapping.rev().collect(),
            false => overlapping.collect(),
        };
        Rows {
            next: found.into_iter(),
            current: None,
            prefix: prefix.to_vec(),
            from,
            to,
            newest_first,
        }
    }
}

impl Iterator for Rows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(row) = self.current.as_mut().and_then(Iterator::next) {
                return Some(row);
            }
            let partition = self.next.next()?;
            // Only the partition holding `from` can have a chunk keyed before it.
            let head = self.from > partition.start;
            match PartRows::new(
                &partition.keyspace,
                &self.prefix,
                self.from,
                self.to,
                self.newest_first,
                head,
            ) {
                Ok(rows) => self.current = Some(rows),
                Err(e) => {
                    // Nothing after an error: a caller that goes on gets `None`.
                    self.next = Vec::new().into_iter();
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// `Rows` within one partition.
struct PartRows {
    prefix: Vec<u8>,
    from: ArchivePos,
    to: ArchivePos,
    newest_first: bool,
    /// The entries read. Oldest first, the chunk keyed before `from` that reaches into
    /// the range comes first (`head`, read on its own); newest first, the read runs
    /// back to the first entry keyed before `from`.
    entries: Option<Box<dyn Iterator<Item = fjall::Guard>>>,
    head: Option<(Slice, Slice)>,
    head_done: bool,
    /// The entry being read and its messages still to yield (a row's key is built only
    /// when it is yielded: a page reads a few messages of a chunk that may hold many).
    current: Option<EntryRows>,
}

impl PartRows {
    fn new(
        archive: &Keyspace,
        prefix: &[u8],
        from: ArchivePos,
        to: ArchivePos,
        newest_first: bool,
        head: bool,
    ) -> Result<PartRows> {
        if newest_first {
            // One read backwards from `to`, which ends with the first entry keyed before
            // `from` (a chunk may hold messages from `from` on): no second seek.
            let range = archive.range(pos_key(prefix, ArchivePos::MIN)..=pos_key(prefix, to));
            return Ok(PartRows {
                prefix: prefix.to_vec(),
                from,
                to,
                newest_first,
                entries: Some(Box::new(range.rev())),
                head: None,
                head_done: true,
                current: None,
            });
        }
        // A chunk keyed before `from` may hold messages from `from` on.
        let head = match head {
            true => archive
                .range(pos_key(prefix, ArchivePos::MIN)..pos_key(prefix, from))
                .next_back()
                .map(|g| g.into_inner().map_err(archive_backend))
                .transpose()?
                .filter(|(_, v)| is_chunk(v)),
            false => None,
        };
        let range = archive.range(pos_key(prefix, from)..=pos_key(prefix, to));
        Ok(PartRows {
            prefix: prefix.to_vec(),
            from,
            to,
            newest_first,
            entries: Some(Box::new(range)),
            head,
            head_done: false,
            current: None,
        })
    }

    /// The messages of one entry within the range, in the iteration's order.
    fn expand(&self, key: &[u8], value: Slice) -> Result<EntryRows> {
        let mut found = rows(key, &value)?;
        found.retain(|(pos, _)| *pos >= self.from && *pos <= self.to);
        if self.newest_first {
            found.reverse();
        }
        Ok((value, found.into_iter()))
    }

    fn next_entry(&mut self) -> Result<Option<EntryRows>> {
        if !self.newest_first && !self.head_done {
            self.head_done = true;
            if let Some((k, v)) = self.head.take() {
                return self.expand(&k, v).map(Some);
            }
        }
        if let Some(entries) = self.entries.as_mut() {
            match entries.next() {
                Some(entry) => {
                    let (k, v) = entry.into_inner().map_err(archive_backend)?;
                    // Newest first, the first entry keyed before `from` is the last one
                    // that can hold messages of the range.
                    if self.newest_first && key_pos(&k)? < self.from {
                        self.entries = None;
                    }
                    return self.expand(&k, v).map(Some);
                }
                None => self.entries = None,
            }
        }
        Ok(None)
    }
}

impl Iterator for PartRows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some((entry, rows)) = self.current.as_mut()
                && let Some((pos, at)) = rows.next()
            {
                return Some(Ok(Row {
                    key: pos_key(&self.prefix, pos),
                    pos,
                    entry: entry.clone(),
                    at,
                }));
            }
            match self.next_entry() {
                Ok(Some(entry)) => self.current = Some(entry),
                Ok(None) => return None,
                Err(e) => {
                    // Nothing after an error: a caller that goes on gets `None`.
                    self.entries = None;
                    self.head = None;
                    self.head_done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The newest message of an archive.
pub(super) fn newest(parts: &Partitions, prefix: &[u8]) -> Result<Option<Row>> {
    Rows::new(parts, prefix, ArchivePos::MIN, ArchivePos::MAX, true)?
        .next()
        .transpose()
}

/// Changes to messages inside entries, gathered so that several changes to one chunk in
/// one write all take effect, then written into the batch by [`Edits::apply`].
#[derive(Default)]
pub(super) struct Edits {
    /// Entry key → its messages as they will be.
    entries: FastMap<Vec<u8>, Vec<(ArchivePos, Vec<u8>)>>,
}

impl Edits {
    /// The key of the entry covering `key` (loaded into the edits), if any.
    fn load(&mut self, parts: &Partitions, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some((entry_key, value)) = covering(&parts.of_key(key)?, key)? else {
            return Ok(None);
        };
        let entry_key = entry_key.to_vec();
        if !self.entries.contains_key(&entry_key) {
            let loaded = rows(&entry_key, &value)?
                .into_iter()
                .map(|(pos, at)| (pos, value[at].to_vec()))
                .collect();
            self.entries.insert(entry_key.clone(), loaded);
        }
        Ok(Some(entry_key))
    }

    /// The value of the message at `key`, with the edits so far.
    pub(super) fn value(&mut self, parts: &Partitions, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let pos = key_pos(key)?;
        let Some(entry) = self.load(parts, key)? else {
            return Ok(None);
        };
        Ok(self
            .entries
            .get(&entry)
            .and_then(|rows| rows.iter().find(|(p, _)| *p == pos).map(|(_, v)| v.clone())))
    }

    /// Sets the value of the message at `key`, adding it where it is not stored yet.
    pub(super) fn set(&mut self, parts: &Partitions, key: &[u8], value: Vec<u8>) -> Result<()> {
        let pos = key_pos(key)?;
        let entry = match self.load(parts, key)? {
            Some(entry) => entry,
            None => {
                // Before every entry of the archive: an entry of its own.
                self.entries.insert(key.to_vec(), Vec::new());
                key.to_vec()
            }
        };
        let rows = self.entries.entry(entry).or_default();
        match rows.binary_search_by(|(p, _)| p.cmp(&pos)) {
            Ok(i) => rows[i].1 = value,
            Err(i) => rows.insert(i, (pos, value)),
        }
        Ok(())
    }

    /// Removes the message at `key`; `false` if it is not stored.
    pub(super) fn remove(&mut self, parts: &Partitions, key: &[u8]) -> Result<bool> {
        let pos = key_pos(key)?;
        let Some(entry) = self.load(parts, key)? else {
            return Ok(false);
        };
        let rows = self.entries.entry(entry).or_default();
        match rows.binary_search_by(|(p, _)| p.cmp(&pos)) {
            Ok(i) => {
                rows.remove(i);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Writes every edited entry: gone when empty, a plain value when it holds only the
    /// message it is keyed by, a chunk otherwise.
    pub(super) fn apply(self, write: &mut OwnedWriteBatch, parts: &Partitions) -> Result<()> {
        for (key, rows) in self.entries {
            let archive = &parts.of_key(&key)?;
            match rows.as_slice() {
                [] => write.remove(archive, key),
                [(pos, value)] if *pos == key_pos(&key)? => {
                    write.insert(archive, key, value.clone())
                }
                _ => write.insert(
                    archive,
                    key,
                    encode(rows.iter().map(|(p, v)| (*p, v.as_slice()))),
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(micros: u64) -> ArchivePos {
        ArchivePos { micros, seq: 1 }
    }

    #[test]
    fn chunks_round_trip_and_damage_is_an_error() {
        let values: [&[u8]; 3] = [b"\x02a", b"", &[7u8; 200]];
        let value = encode(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (pos(10 + i as u64), *v)),
        );
        let key = pos_key(b"u\0", pos(10));
        let decoded = rows(&key, &value).unwrap();
        assert_eq!(decoded.len(), 3);
        for (i, (p, at)) in decoded.iter().enumerate() {
            assert_eq!(*p, pos(10 + i as u64));
            assert_eq!(&value[at.clone()], values[i]);
        }
        // A plain value is one message at the key's position.
        assert_eq!(rows(&key, b"\x02x").unwrap(), vec![(pos(10), 0..2)]);
        for cut in 1..value.len() {
            assert!(rows(&key, &value[..cut]).is_err(), "cut at {cut}");
        }
        // Messages before the key, or out of order, are damage.
        assert!(rows(&pos_key(b"u\0", pos(11)), &value).is_err());
        let swapped = encode([(pos(12), &b"x"[..]), (pos(11), &b"y"[..])].into_iter());
        assert!(rows(&key, &swapped).is_err());
    }
}
