//! The archive's messages live in partitions: fjall keyspaces that each hold one range
//! of positions, `archive` from the start, then `archive.1`, `archive.2`, ...
//!
//! Why: in one keyspace holding every message, each memtable flush spans all users' key
//! ranges, so leveled compaction merged new messages into tables of old ones over and
//! over, and archiving a message cost more the larger the archive was (+28 % at 10 M
//! messages, bench/README.md, issue 16). New messages only go into the newest partition,
//! which the writer closes once it has written a size into it
//! (`storage.archive_partition_mb`). Until then the partition's messages stay in its
//! memtable (room for twice the size, so fjall does not flush it first); closing it
//! writes them out once, as one compressed table, which nothing merges again: a message
//! is written to the journal and to its table, and never rewritten by compaction.
//!
//! Keys stay `<user>\0<pos>`; a key's partition follows from its position. Partition n
//! holds the positions from its start up to the next partition's start, and a chunk
//! never spans two partitions (the writer splits them), so an entry and every message it
//! covers are in the same partition.
//!
//! `archive_parts` holds:
//!
//! | key                          | value                                           |
//! |------------------------------|-------------------------------------------------|
//! | `\0` + n (u32 big-endian)    | start of partition n ≥ 1 (16 position bytes)    |
//! | `\0high`                     | the highest position written (16 bytes)         |
//! | `<user>\0` + n               | empty: the user has messages in partition n ≥ 1 |
//!
//! User names are not empty and hold no NUL, so the two kinds of key never meet. Reads
//! of an archive visit partition 0 and those its user has entries for, not every
//! partition. A new partition starts after the highest position ever written, so no
//! stored message falls into a partition other than the one it is in.

use std::sync::{Arc, RwLock};

use fjall::{Keyspace, KeyspaceCreateOptions};

use super::{ArchivePos, PersistMode, Result, StorageError, archive_backend, key_pos};

/// Key of the highest position written.
const HIGH_KEY: &[u8] = b"\0high";

fn start_key(number: u32) -> [u8; 5] {
    let mut key = [0; 5];
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

/// `<user>\0` + n: where partition n is recorded for a user (`prefix` = `<user>\0`).
pub(super) fn user_key(prefix: &[u8], number: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 4);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// The partition number that ends a key of `archive_parts`, from `at`.
fn number_at(key: &[u8], at: usize) -> Result<u32> {
    key.get(at..)
        .and_then(|n| <[u8; 4]>::try_from(n).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("key"))
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("archive partitions: {what}"))
}

/// One partition: the keyspace holding positions from `start` to the next one's start.
#[derive(Clone)]
pub(super) struct Partition {
    pub number: u32,
    pub start: ArchivePos,
    pub keyspace: Keyspace,
}

/// The partitions in order (`list[n].number == n`), shared by the readers and the
/// writer; only the writer adds to them.
pub(super) struct Partitions {
    list: RwLock<Arc<[Partition]>>,
    parts: Keyspace,
    db: fjall::Database,
    /// Creates a partition's keyspace, for partitions of the given size in bytes.
    options: fn(u64) -> KeyspaceCreateOptions,
}

/// The index of the partition holding `pos` in `list` (ascending by start, the first
/// starting at `ArchivePos::MIN`).
pub(super) fn index_of(list: &[Partition], pos: ArchivePos) -> usize {
    // Nearly every lookup is for the newest partition.
    match list.last() {
        Some(last) if pos >= last.start => list.len() - 1,
        _ => list.partition_point(|p| p.start <= pos).saturating_sub(1),
    }
}

/// The partitions one archive may have messages in, oldest first, each with the last
/// position it can hold.
pub(super) struct UserPartitions(Vec<(Partition, ArchivePos)>);

impl UserPartitions {
    /// Those that may hold positions in `from..=to`, oldest first.
    pub(super) fn overlapping(
        &self,
        from: ArchivePos,
        to: ArchivePos,
    ) -> impl DoubleEndedIterator<Item = &Partition> {
        self.0
            .iter()
            .filter(move |(p, end)| p.start <= to && *end >= from)
            .map(|(p, _)| p)
    }
}

impl Partitions {
    /// The partitions recorded in `parts`; `first` is partition 0. `options` creates the
    /// keyspace of a partition (fjall keeps the options a keyspace was created with).
    pub(super) fn open(
        db: &fjall::Database,
        first: Keyspace,
        parts: Keyspace,
        options: fn(u64) -> KeyspaceCreateOptions,
    ) -> Result<Partitions> {
        let mut list = vec![Partition {
            number: 0,
            start: ArchivePos::MIN,
            keyspace: first,
        }];
        for entry in parts.prefix([0u8]) {
            let (key, value) = entry.into_inner().map_err(archive_backend)?;
            if key.as_ref() == HIGH_KEY {
                continue;
            }
            let number = number_at(&key, 1)?;
            let start = ArchivePos::from_bytes(&value).ok_or_else(|| corrupt("start"))?;
            let previous = list.last().map_or(ArchivePos::MIN, |p| p.start);
            if number as usize != list.len() || start <= previous {
                return Err(corrupt("partitions out of order"));
            }
            // The options apply only if the keyspace were missing (it is created first).
            let keyspace = db
                .keyspace(&format!("archive.{number}"), || {
                    options(super::DEFAULT_PARTITION_MB << 20)
                })
                .map_err(archive_backend)?;
            list.push(Partition {
                number,
                start,
                keyspace,
            });
        }
        Ok(Partitions {
            list: RwLock::new(list.into()),
            parts,
            db: db.clone(),
            options,
        })
    }

    /// The partitions as they are now.
    pub(super) fn list(&self) -> Arc<[Partition]> {
        self.list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The keyspace holding the message at `pos`.
    pub(super) fn of_pos(&self, pos: ArchivePos) -> Keyspace {
        let list = self.list();
        list[index_of(&list, pos)].keyspace.clone()
    }

    /// The keyspace holding the message (or entry) at `key`.
    pub(super) fn of_key(&self, key: &[u8]) -> Result<Keyspace> {
        Ok(self.of_pos(key_pos(key)?))
    }

    /// The newest partition, where new messages go.
    pub(super) fn current(&self) -> Partition {
        let list = self.list();
        list[list.len() - 1].clone()
    }

    /// Partition 0: the archive as it was before partitions.
    pub(super) fn first(&self) -> Keyspace {
        self.list()[0].keyspace.clone()
    }

    /// The keyspace of `archive_parts`.
    pub(super) fn parts(&self) -> &Keyspace {
        &self.parts
    }

    /// The partitions one archive (`prefix` = `<user>\0`) may have messages in.
    pub(super) fn of_user(&self, prefix: &[u8]) -> Result<UserPartitions> {
        let list = self.list();
        let with_end = |n: usize| {
            let end = list
                .get(n + 1)
                .map_or(ArchivePos::MAX, |next| next.start.prev());
            (list[n].clone(), end)
        };
        let mut found = vec![with_end(0)];
        if list.len() == 1 {
            return Ok(UserPartitions(found));
        }
        for entry in self.parts.prefix(prefix) {
            let key = entry.key().map_err(archive_backend)?;
            let number = number_at(&key, prefix.len())? as usize;
            // A partition recorded but not yet published (being started) has no
            // messages yet.
            if number > 0 && number < list.len() {
                found.push(with_end(number));
            }
        }
        Ok(UserPartitions(found))
    }

    /// The highest position written, as last recorded (`None`: never recorded).
    pub(super) fn stored_high(&self) -> Result<Option<ArchivePos>> {
        match self.parts.get(HIGH_KEY).map_err(archive_backend)? {
            Some(v) => ArchivePos::from_bytes(&v)
                .map(Some)
                .ok_or_else(|| corrupt("highest position")),
            None => Ok(None),
        }
    }

    /// Records `high` as the highest position written where none is recorded (a store
    /// from before partitions), durably.
    pub(super) fn record_high_if_missing(&self, high: ArchivePos) -> Result<()> {
        if self.stored_high()?.is_some() {
            return Ok(());
        }
        self.parts
            .insert(HIGH_KEY, high.to_bytes())
            .map_err(archive_backend)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(archive_backend)
    }

    /// Records the highest position written, in the batch that writes it.
    pub(super) fn record_high(&self, write: &mut fjall::OwnedWriteBatch, high: ArchivePos) {
        write.insert(&self.parts, HIGH_KEY, high.to_bytes());
    }

    /// Starts partition n+1 at `start` (after every position written), for `bytes` of
    /// messages: its keyspace is created and its start made durable before any message
    /// can go into it. The closed partition's memtable is flushed (into its one table).
    pub(super) fn start_next(&self, start: ArchivePos, bytes: u64) -> Result<Partition> {
        let list = self.list();
        let current = &list[list.len() - 1];
        if start <= current.start {
            return Err(corrupt("new partition before the current one"));
        }
        let number = u32::try_from(list.len()).map_err(|_| corrupt("too many"))?;
        let keyspace = self
            .db
            .keyspace(&format!("archive.{number}"), || (self.options)(bytes))
            .map_err(archive_backend)?;
        self.parts
            .insert(start_key(number), start.to_bytes())
            .map_err(archive_backend)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(archive_backend)?;
        current
            .keyspace
            .rotate_memtable()
            .map_err(archive_backend)?;
        let next = Partition {
            number,
            start,
            keyspace,
        };
        let mut grown = list.to_vec();
        grown.push(next.clone());
        *self
            .list
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = grown.into();
        Ok(next)
    }
}
