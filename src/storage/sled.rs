//! sled backend (the default). Layout (see docs/storage.md, "Storage key layout"):
//!
//! | tree           | key                               | value                          |
//! |----------------|-----------------------------------|--------------------------------|
//! | `meta`         | `schema_version`                  | u32 big-endian                 |
//! | `accounts`     | `<jid>`                           | fmt byte + `StoredCredentials` |
//! | `roster`       | `<user>\0<contact>`               | fmt byte + `RosterItem`        |
//! | `roster_meta`  | `<user>`                          | fmt byte + u64 roster version  |
//! | `pending`      | `<user>\0<from>`                  | fmt byte + `PendingSubscription` |
//! | `offline`      | `<user>\0` + seq (u64 big-endian) | fmt byte + (stored_at, stanza) |
//! | `offline_meta` | `<user>`                          | fmt byte + u64 message count   |
//! | `archive`*, `archive.<n>`* | `<user>\0` + pos (16 bytes) | record, reference or chunk |
//! | `archive_ids`* | `<user>\0<id>` (older UIDs only)  | pos (16 bytes)                 |
//! | `archive_with`*| `<user>\0<with bare>\0` + pos     | empty                          |
//! | `archive_meta`*| `<user>`                          | fmt byte + u64 message count   |
//! | `archive_parts`* | see `sled/partition.rs`         |                                |
//! | `archive_prefs`| `<user>`                          | fmt byte + `ArchivePrefs`      |
//! | `blocklist`    | `<user>\0<jid>`                   | empty                          |
//! | `push`         | `<user>\0<jid>\0<node>`           | fmt byte + `PushRegistration`  |
//! | `muc_rooms`    | `<service>\0<room jid>`           | fmt byte + `StoredRoom`        |
//! | `pubsub_*`, `vcards`, `private_xml` | see `sled/pubsub.rs` |                     |
//! | `invites`, `invite_admins` | see `sled/invites.rs` |                         |
//! | `fast_tokens`  | see `sled/fast.rs`                |                                |
//!
//! An archive position is µs since the epoch then a store-wide sequence number, both
//! big-endian, so a user's archive is one contiguous, time-ordered key range (in each
//! partition, see below): the last 50
//! messages are a reverse range scan of 50 keys, a time window is a range, and `with`
//! queries scan the per-contact index range instead of the whole archive.
//!
//! \* The message archive is not in sled but in a fjall database (an LSM tree) in the
//! `archive` directory inside the sled directory, in keyspaces of the same names and
//! layout. Archiving writes four entries per chat message (record and `with` index, in
//! both parties' archives), appended at the end of many per-user key ranges at once:
//! sled rewrites and splits a B-tree leaf for each of them, which made archiving cost
//! several times the rest of a message's delivery (bench/README.md, issue 16), while an
//! LSM tree appends them to its journal and sorts them in memory. Archives written into
//! sled by earlier versions are moved into fjall when the store opens. The messages are
//! in partitions by position (`partition`), so that compaction only merges recent ones.
//!
//! A message's UID is its position encrypted under the store's `archive_id_key` (in
//! `meta`), so no index maps UIDs to positions; `archive_ids` only holds the random UIDs
//! that databases written before that scheme gave out.
//!
//! "fmt byte" is [`VALUE_FORMAT`], followed by the postcard encoding. User and contact
//! names may not contain NUL (JIDs cannot), which keeps `<user>\0` an exact prefix.
//! Semantics match the memory backend (see its module comment).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ::sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use ::sled::{Db, IVec, Transactional, Tree};
use async_trait::async_trait;
use fjall::config::{CompressionPolicy, PinningPolicy};
use fjall::{CompressionType, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

use super::archive::{PageBuilder, bare};
use super::{
    AccountStore, ArchivePage, ArchivePos, ArchivePrefs, ArchiveQuery, ArchiveStamp, ArchiveStore,
    ArchivedMessage, BlockListStore, NewArchived, OfflineMessage, OfflineStore,
    OfflineStoreOutcome, PendingSubscription, PresenceContacts, PushRegistration, PushStore,
    Result, RoomStore, Roster, RosterItem, RosterStore, SharedStanza, StorageError, StoredRoom,
};
use crate::addr::{BareJid, DomainRef, Jid};
use crate::hashing::{FastMap, FastSet};
use crate::sasl::credentials::StoredCredentials;

mod chunk;
mod fast;
mod invites;
mod partition;
mod pubsub;
mod record;

use partition::Partitions;

/// On-disk schema this code reads and writes. Opening a database marked with a newer one
/// fails rather than risk misreading or damaging it.
pub const SCHEMA_VERSION: u32 = 3;
/// Key of the schema marker in the `meta` tree. Its value is a plain big-endian u32, not
/// the versioned value encoding, so the marker stays readable whatever that becomes.
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// First byte of every stored value: the encoding of the rest (1 = postcard).
pub const VALUE_FORMAT: u8 = 1;

const SEP: u8 = 0;

/// Page cache size when none is configured (`storage.cache_mb`).
pub const DEFAULT_CACHE_MB: u64 = 64;

/// The sled store; one instance implements every storage trait.
pub struct SledStore {
    /// First, so that dropping the store first lets the writer finish.
    writer: ArchiveWriter,
    /// Newest archive micros per user, so positions are assigned without a disk read.
    newest: Mutex<FastMap<BareJid, u64>>,
    /// The writer's view, for tests that write batches directly.
    #[cfg(test)]
    trees: ArchiveTrees,
    db: Db,
    accounts: Tree,
    roster: Tree,
    roster_meta: Tree,
    pending: Tree,
    offline: Tree,
    offline_meta: Tree,
    archive: Arc<Partitions>,
    /// UIDs written before UIDs were encrypted positions (read, never written).
    archive_ids: Keyspace,
    id_cipher: ArchiveIdCipher,
    archive_with: Keyspace,
    archive_meta: Keyspace,
    archive_prefs: Tree,
    /// Users with stored archive preferences; everyone else has the defaults.
    with_prefs: UsersWithEntries,
    blocklist: Tree,
    /// Users whose block list is not empty.
    blocking: UsersWithEntries,
    push: Tree,
    muc_rooms: Tree,
    /// Pubsub nodes and items, vCards, private XML.
    pubsub: pubsub::SledPubsub,
    /// Invitations and the admins they made.
    invites: invites::SledInvites,
    /// XEP-0484 tokens.
    fast: Tree,
    /// See `ArchiveTrees::sync_writes`.
    sync_writes: Arc<std::sync::atomic::AtomicBool>,
    /// See `ArchiveTrees::partition_bytes`.
    partition_bytes: Arc<AtomicU64>,
    /// Deferred appends queued and made durable (`ArchiveStore::appended_durable`).
    append_counts: Arc<AppendCounts>,
    /// Offline pushes written but not yet known flushed (`OfflineStore::pushed_durable`).
    offline_counts: OfflineCounts,
    /// Presence contacts per user with the roster version they were read at: presence
    /// changes reuse them until the roster changes.
    presence_contacts: Mutex<HashMap<BareJid, (u64, Arc<PresenceContacts>)>>,
    /// Roster item counts per user with the roster version they are exact for: the limit
    /// check on a new contact would otherwise scan the roster each time.
    roster_counts: Mutex<HashMap<BareJid, (u64, usize)>>,
}

/// Users whose presence contacts are kept ready at most (about the online users).
const PRESENCE_CONTACTS_CACHED: usize = 100_000;
/// Users whose roster item count is kept at most (about those adding contacts).
const ROSTER_COUNTS_CACHED: usize = 100_000;

/// Archive UIDs are the message's position encrypted with the store's AES-128 key (a
/// keyed permutation of the 16 position bytes), in hex: unpredictable and revealing
/// nothing about the archive (XEP-0359 §6), yet turned back into the position without an
/// index. An index entry per message, at a random key, was a third of archiving's cost.
struct ArchiveIdCipher(aes::Aes128);

/// Key of the UID cipher's key in the `meta` tree.
const ARCHIVE_ID_KEY: &[u8] = b"archive_id_key";

impl ArchiveIdCipher {
    /// The store's key, created on first open.
    fn load_or_create(meta: &Tree) -> Result<Self> {
        use aes::cipher::KeyInit;
        let stored = match meta.get(ARCHIVE_ID_KEY).map_err(backend)? {
            Some(key) => key,
            None => {
                let fresh: [u8; 16] = rand::random();
                // Another opener cannot race us (sled locks the directory), but keep
                // whatever is there if it did.
                let _ = meta
                    .compare_and_swap(ARCHIVE_ID_KEY, None::<&[u8]>, Some(&fresh[..]))
                    .map_err(backend)?;
                // Durable before any UID is handed out with it (once per database).
                meta.flush().map_err(backend)?;
                meta.get(ARCHIVE_ID_KEY)
                    .map_err(backend)?
                    .ok_or_else(|| StorageError::Backend("archive id key vanished".into()))?
            }
        };
        let key: [u8; 16] = stored
            .as_ref()
            .try_into()
            .map_err(|_| StorageError::Corrupt("archive id key length".into()))?;
        Ok(Self(aes::Aes128::new(&key.into())))
    }

    fn id(&self, pos: ArchivePos) -> String {
        use aes::cipher::BlockEncrypt;
        let mut block = aes::Block::from(pos.to_bytes());
        self.0.encrypt_block(&mut block);
        // Bytes first: pushing chars one by one cost as much as the encryption.
        let mut hex = [0u8; 32];
        for (pair, b) in hex.chunks_exact_mut(2).zip(block) {
            pair[0] = HEX_DIGITS[usize::from(b >> 4)];
            pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
        }
        // Always ASCII, so never the empty fallback.
        String::from_utf8(hex.to_vec()).unwrap_or_default()
    }

    /// The position a UID of this scheme stands for; `None` for anything else (older
    /// random UIDs are 24 digits). Whether a message is there is the caller's check.
    fn pos(&self, id: &str) -> Option<ArchivePos> {
        use aes::cipher::BlockDecrypt;
        let digits = id.as_bytes();
        if digits.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        let mut block = aes::Block::from(bytes);
        self.0.decrypt_block(&mut block);
        ArchivePos::from_bytes(&block)
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase only: UIDs are compared as strings, so each has one spelling.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// The users with at least one entry in a tree that most users leave empty (block lists,
/// archive preferences), kept in memory because every routed message checks both: for
/// everyone else the check costs no sled lookup. Built at open; writers change the tree
/// and the set under the set's write lock, so no reader sees a user missing whose entries
/// are already in the tree.
#[derive(Default)]
struct UsersWithEntries(RwLock<FastSet<Box<str>>>);

impl UsersWithEntries {
    /// The distinct users of a tree keyed `<user>` or `<user>\0...`, skipping each
    /// user's other keys with one seek.
    fn load(tree: &Tree) -> Result<Self> {
        let mut users = FastSet::default();
        let mut next = tree.iter();
        while let Some(entry) = next.next() {
            let (key, _) = entry.map_err(backend)?;
            let user = key.split(|b| *b == SEP).next().unwrap_or(&key);
            let user = std::str::from_utf8(user)
                .map_err(|_| StorageError::Corrupt("user name is not UTF-8".into()))?;
            // `<user>\x01` sorts after every `<user>\0...` key and after `<user>` itself.
            let mut after = user.as_bytes().to_vec();
            after.push(SEP + 1);
            users.insert(user.into());
            next = tree.range(after..);
        }
        Ok(Self(RwLock::new(users)))
    }

    fn contains(&self, user: &BareJid) -> bool {
        self.contains_name(user.as_str())
    }

    fn contains_name(&self, user: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(user)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FastSet<Box<str>>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Serialize)]
struct ArchiveRecordRef<'a> {
    id: &'a str,
    with: &'a str,
    stanza: &'a str,
}

#[derive(Serialize)]
struct OfflineRecordRef<'a> {
    stored_at: u64,
    stanza: &'a str,
}

#[derive(Deserialize)]
struct OfflineRecord {
    stored_at: u64,
    stanza: String,
}

fn backend(e: ::sled::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn archive_backend(e: fjall::Error) -> StorageError {
    StorageError::Backend(format!("archive: {e}"))
}

fn tx_error(e: TransactionError<StorageError>) -> StorageError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

fn abort(e: StorageError) -> ConflictableTransactionError<StorageError> {
    ConflictableTransactionError::Abort(e)
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![VALUE_FORMAT])
        .map_err(|e| StorageError::Backend(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&VALUE_FORMAT, rest)) => match postcard::take_from_bytes(rest) {
            Ok((value, [])) => Ok(value),
            Ok(_) => Err(StorageError::Corrupt(format!("{what}: trailing bytes"))),
            Err(e) => Err(StorageError::Corrupt(format!("{what}: {e}"))),
        },
        Some((format, _)) => Err(StorageError::Corrupt(format!(
            "{what}: unknown value format {format}"
        ))),
        None => Err(StorageError::Corrupt(format!("{what}: empty value"))),
    }
}

/// A NUL would let one user's prefix match another user's keys.
fn check_name(name: &str) -> Result<()> {
    if name.as_bytes().contains(&SEP) {
        return Err(StorageError::Backend(format!(
            "invalid name {name:?}: contains NUL"
        )));
    }
    Ok(())
}

/// `<user>\0`: the prefix of all of a user's keys in the per-user trees.
fn user_prefix(user: &BareJid) -> Result<Vec<u8>> {
    name_prefix(user.as_str())
}

/// `<name>\0`, for trees keyed by a name that is not (only) an account's JID, such as a
/// pubsub service.
fn name_prefix(name: &str) -> Result<Vec<u8>> {
    check_name(name)?;
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(SEP);
    Ok(key)
}

fn pair_key(user: &BareJid, other: &str) -> Result<Vec<u8>> {
    name_pair_key(user.as_str(), other)
}

fn name_pair_key(name: &str, other: &str) -> Result<Vec<u8>> {
    check_name(other)?;
    let mut key = name_prefix(name)?;
    key.extend_from_slice(other.as_bytes());
    Ok(key)
}

fn offline_key(user: &BareJid, seq: u64) -> Result<Vec<u8>> {
    let mut key = user_prefix(user)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Reads a u64 counter (roster version, offline count) inside a transaction; absent = 0.
fn tx_counter(
    tree: &TransactionalTree,
    key: &[u8],
    what: &str,
) -> ConflictableTransactionResult<u64, StorageError> {
    match tree.get(key)? {
        Some(v) => decode(what, &v).map_err(abort),
        None => Ok(0),
    }
}

fn keys_with_prefix(tree: &Tree, prefix: &[u8]) -> Result<Vec<IVec>> {
    tree.scan_prefix(prefix)
        .map(|r| r.map(|(k, _)| k).map_err(backend))
        .collect()
}

impl SledStore {
    /// Size on disk at which the archive starts a new partition (see `partition`).
    pub fn set_archive_partition_mb(&self, mb: u64) {
        self.partition_bytes
            .store(mb.saturating_mul(1 << 20), Ordering::Relaxed);
    }

    /// Whether archive appends and offline pushes wait for an fsync (on by default).
    pub fn set_sync_writes(&self, on: bool) {
        self.sync_writes
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens (or creates) the database in directory `path` and checks its schema version,
    /// with the default page cache ([`DEFAULT_CACHE_MB`]).
    pub fn open(path: &Path) -> Result<SledStore> {
        Self::open_with_cache(path, DEFAULT_CACHE_MB)
    }

    /// Like [`SledStore::open`] with a page cache of `cache_mb` MiB (sled's own default,
    /// 1 GiB, lets a busy server's memory grow far beyond what it needs).
    pub fn open_with_cache(path: &Path, cache_mb: u64) -> Result<SledStore> {
        let config = ::sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024));
        // A store that was just dropped (a restart in the same process, or a previous
        // process still exiting) releases its file lock only when sled's background IO
        // finishes: wait briefly for it instead of failing.
        // Whether a database was there before: one without the schema marker then is not
        // a new database but one whose contents sled could not recover (see below).
        let existed = std::fs::metadata(path.join("db")).is_ok_and(|m| m.len() > 0);
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports it only as text (ErrorKind::Other); 0.34 is frozen, so the
                // wording is stable.
                Err(::sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 150 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(::sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    return Err(StorageError::Backend(format!(
                        "the database {} is in use by another process (is another xmppd \
                         running with this data_dir?)",
                        path.display()
                    )));
                }
                Err(e) => return Err(backend(e)),
            }
        };
        let meta = db.open_tree("meta").map_err(backend)?;
        let mut older_schema = false;
        match meta.get(SCHEMA_VERSION_KEY).map_err(backend)? {
            // sled recovers a damaged log by dropping what it cannot read, which for a
            // badly damaged file is everything: starting afresh on it would silently lose
            // every account and message.
            None if existed => {
                return Err(StorageError::Corrupt(format!(
                    "{} holds database files but no xmppd data (no schema marker): the \
                     database is damaged or not an xmppd database; refusing to start on it \
                     (move it away to start with an empty one)",
                    path.display()
                )));
            }
            None => {
                meta.insert(SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(backend)?;
                // Opening is synchronous anyway; make the marker durable right away.
                db.flush().map_err(backend)?;
            }
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("schema version: {} bytes", v.len()))
                })?;
                let found = u32::from_be_bytes(bytes);
                if found > SCHEMA_VERSION {
                    return Err(StorageError::Backend(format!(
                        "database schema version {found} is newer than supported \
                         ({SCHEMA_VERSION}); refusing to open"
                    )));
                }
                match found {
                    // Version 2 adds archive chunks (value format 4), version 3 archive
                    // partitions (`partition`): nothing to convert, but a version that
                    // cannot read them must not open the store (marked below).
                    1 | 2 => older_schema = true,
                    SCHEMA_VERSION => {}
                    // Versions before 1 never existed.
                    _ => {
                        return Err(StorageError::Corrupt(format!(
                            "unknown schema version {found}"
                        )));
                    }
                }
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let trees = open_archive(path, &db, cache_mb)?;
        if older_schema {
            // Its positions were given out by the clock, and it never recorded the
            // highest: now is past them, which is what a new partition needs (before the
            // marker, so that a store marked 3 has it).
            let now = ArchivePos {
                micros: crate::datetime::now_micros(),
                seq: 0,
            };
            trees.archive.record_high_if_missing(now)?;
            meta.insert(SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())
                .map_err(backend)?;
            db.flush().map_err(backend)?;
        }
        let id_cipher = ArchiveIdCipher::load_or_create(&meta)?;
        let archive_prefs = tree("archive_prefs")?;
        let with_prefs = UsersWithEntries::load(&archive_prefs)?;
        let blocklist = tree("blocklist")?;
        let blocking = UsersWithEntries::load(&blocklist)?;
        Ok(SledStore {
            sync_writes: trees.sync_writes.clone(),
            partition_bytes: trees.partition_bytes.clone(),
            append_counts: trees.counts.clone(),
            offline_counts: OfflineCounts::default(),
            presence_contacts: Mutex::new(HashMap::new()),
            roster_counts: Mutex::new(HashMap::new()),
            writer: ArchiveWriter::start(trees.clone())?,
            #[cfg(test)]
            trees: trees.clone(),
            newest: Mutex::new(FastMap::default()),
            accounts: tree("accounts")?,
            roster: tree("roster")?,
            roster_meta: tree("roster_meta")?,
            pending: tree("pending")?,
            offline: tree("offline")?,
            offline_meta: tree("offline_meta")?,
            push: tree("push")?,
            muc_rooms: tree("muc_rooms")?,
            pubsub: pubsub::SledPubsub::open(&db)?,
            invites: invites::SledInvites::open(&db)?,
            fast: fast::open(&db)?,
            archive: trees.archive,
            archive_ids: trees.ids,
            id_cipher,
            archive_with: trees.with,
            archive_meta: trees.meta,
            archive_prefs,
            with_prefs,
            blocklist,
            blocking,
            db,
        })
    }

    /// Flushes and fsyncs off the async runtime.
    async fn flush_db(&self) -> Result<()> {
        // sled's own flush_async runs on its private thread pool, whose completion signal
        // was seen to hang under load; tokio's blocking pool is dependable.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StorageError::Backend(format!("flush task: {e}")))?
            .map_err(backend)?;
        Ok(())
    }

    /// Removes the given offline keys of `user` and keeps its count in step.
    fn remove_offline_keys(&self, user: &BareJid, keys: &[IVec]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        (&self.offline, &self.offline_meta)
            .transaction(|(off, meta)| {
                let mut removed = 0u64;
                for key in keys {
                    if off.remove(key)?.is_some() {
                        removed += 1;
                    }
                }
                let count = tx_counter(meta, user.as_str().as_bytes(), "offline count")?;
                let left = count.saturating_sub(removed);
                if left == 0 {
                    meta.remove(user.as_str().as_bytes())?;
                } else {
                    meta.insert(user.as_str().as_bytes(), encode(&left).map_err(abort)?)?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }
}

/// The archive's keyspaces, in that order.
const ARCHIVE_KEYSPACES: [&str; 4] = ["archive", "archive_ids", "archive_with", "archive_meta"];

/// Opens the archive's fjall database in `<sled dir>/archive` and moves an archive that
/// an earlier version kept in sled's trees of the same names into it.
fn open_archive(path: &Path, db: &Db, cache_mb: u64) -> Result<ArchiveTrees> {
    let dir = path.join("archive");
    let mut attempts = 0;
    let archive_db = loop {
        let opened = fjall::Database::builder(&dir)
            // Reads are mostly the last page of one archive: a small cache suffices.
            .cache_size((cache_mb / 4).max(4).saturating_mul(1024 * 1024))
            .open();
        match opened {
            Ok(archive_db) => break archive_db,
            // As with sled: a store just dropped may still be releasing its lock.
            Err(fjall::Error::Locked) if attempts < 150 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fjall::Error::Locked) => {
                return Err(StorageError::Backend(format!(
                    "the archive {} is in use by another process (is another xmppd running \
                     with this data_dir?)",
                    dir.display()
                )));
            }
            Err(e) => return Err(archive_backend(e)),
        }
    };
    let keyspace = |name: &str, options: fn() -> KeyspaceCreateOptions| {
        archive_db.keyspace(name, options).map_err(archive_backend)
    };
    let partitions = Partitions::open(
        &archive_db,
        // A new store's first partition is made before the configured size is known;
        // a larger one only lets fjall flush (and merge) partition 0 on its own.
        keyspace(ARCHIVE_KEYSPACES[0], || {
            messages_options(DEFAULT_PARTITION_MB << 20)
        })?,
        keyspace("archive_parts", small_options)?,
        messages_options,
    )?;
    let trees = ArchiveTrees {
        archive: Arc::new(partitions),
        ids: keyspace(ARCHIVE_KEYSPACES[1], small_options)?,
        with: keyspace(ARCHIVE_KEYSPACES[2], index_options)?,
        meta: keyspace(ARCHIVE_KEYSPACES[3], small_options)?,
        db: archive_db,
        sled: db.clone(),
        sync_writes: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        partition_bytes: Arc::new(AtomicU64::new(DEFAULT_PARTITION_MB << 20)),
        counts: Arc::default(),
    };
    move_sled_archive(db, &trees)?;
    Ok(trees)
}

/// How the archive's keyspaces are made: `memtable_mb` MiB memtables, and two-level
/// index and filter blocks in every table, not only in the deepest levels (fjall's
/// default): a table's full index (~800 KB for a 70 MB table) is otherwise read from its
/// file and checksummed by every point read or range start that the small block cache
/// cannot hold it for. A reference (a recipient's copy of a local message) is a point read
/// into the sender's archive: 50 of them in older tables took 20-45 ms per page at 10 M
/// messages. Partitions are 4 KB blocks, which the cache holds. Stored with the keyspace
/// by fjall: applies to keyspaces created from now.
fn keyspace_options(memtable_bytes: u64) -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(memtable_bytes)
        .index_block_partitioning_policy(PinningPolicy::all(true))
        .filter_block_partitioning_policy(PinningPolicy::all(true))
}

/// The messages' partitions (`archive`, `archive.<n>`) of `bytes` each: a partition's
/// messages stay in its memtable until the writer closes it (see `partition`), with room
/// for twice that so that fjall does not flush it first; they are then written once, as
/// one table, compressed at every level (the first is where they stay). When leveled
/// compaction merged 8 MB memtable flushes within a partition instead, it cost about a
/// microsecond per message (bench/README.md, issue 16).
fn messages_options(bytes: u64) -> KeyspaceCreateOptions {
    keyspace_options(bytes.saturating_mul(2))
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
}

/// The `with` index.
fn index_options() -> KeyspaceCreateOptions {
    keyspace_options(4 << 20)
}

/// Old UIDs, counts, partitions.
fn small_options() -> KeyspaceCreateOptions {
    keyspace_options(1 << 20)
}

/// Bytes of messages (keys and values as written) after which the writer starts a new
/// archive partition when none is configured (`storage.archive_partition_mb`, see
/// `partition`): also about the memory the newest partition's messages take until then.
pub const DEFAULT_PARTITION_MB: u64 = 32;

/// Copies the archive trees an earlier version kept in sled into fjall, makes the copy
/// durable and only then drops the sled trees. Interrupted, it starts over on the next
/// open: copying is idempotent, and the sled trees are dropped only once all are copied.
fn move_sled_archive(db: &Db, trees: &ArchiveTrees) -> Result<()> {
    let names = db.tree_names();
    let legacy: Vec<&str> = ARCHIVE_KEYSPACES
        .into_iter()
        .filter(|name| names.iter().any(|n| &n[..] == name.as_bytes()))
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    let mut moved = 0u64;
    let first = trees.archive.first();
    for name in &legacy {
        let tree = db.open_tree(name).map_err(backend)?;
        let target = match *name {
            "archive" => &first,
            "archive_ids" => &trees.ids,
            "archive_with" => &trees.with,
            _ => &trees.meta,
        };
        let mut batch = trees.db.batch();
        for entry in tree.iter() {
            let (k, v) = entry.map_err(backend)?;
            batch.insert(target, &k[..], &v[..]);
            moved += 1;
            if batch.len() >= 10_000 {
                std::mem::replace(&mut batch, trees.db.batch())
                    .commit()
                    .map_err(archive_backend)?;
            }
        }
        batch.commit().map_err(archive_backend)?;
    }
    trees
        .db
        .persist(PersistMode::SyncAll)
        .map_err(archive_backend)?;
    for name in &legacy {
        db.drop_tree(name).map_err(backend)?;
    }
    db.flush().map_err(backend)?;
    tracing::info!(
        entries = moved,
        "moved the message archive from sled into fjall"
    );
    Ok(())
}

/// The first START or END among the index entries `entries` yields, looking past a few
/// `BOTH`s (a message that raced into a run, or entries from before runs were indexed).
fn boundary_mark<I>(
    entries: I,
    mark_at: impl Fn(fjall::Guard) -> Result<(ArchivePos, RunMark)>,
) -> Result<Option<RunMark>>
where
    I: Iterator<Item = fjall::Guard>,
{
    for entry in entries.take(16) {
        let (_, mark) = mark_at(entry)?;
        if mark != RunMark::Both {
            return Ok(Some(mark));
        }
    }
    Ok(None)
}

fn pos_key(prefix: &[u8], pos: ArchivePos) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 16);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&pos.to_bytes());
    key
}

/// `<user>\0<with bare>\0`: the prefix of one contact's entries in `archive_with`.
fn with_prefix(prefix: &[u8], with: &str) -> Result<Vec<u8>> {
    let with = bare(with);
    check_name(with)?;
    Ok(contact_prefix(prefix, with.as_bytes()))
}

/// `with_prefix` for a contact's bare JID already checked.
fn contact_prefix(prefix: &[u8], contact: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + contact.len() + 17);
    key.extend_from_slice(prefix);
    key.extend_from_slice(contact);
    key.push(SEP);
    key
}

fn id_key(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The position at the end of an archive or index key.
fn key_pos(key: &[u8]) -> Result<ArchivePos> {
    key.len()
        .checked_sub(16)
        .and_then(|at| ArchivePos::from_bytes(&key[at..]))
        .ok_or_else(|| StorageError::Corrupt("archive key length".into()))
}

/// The archive keyspaces. Reads go to them directly; every archive write goes through the
/// store's single writer thread, which is why counts and replacements need no transaction.
#[derive(Clone)]
struct ArchiveTrees {
    archive: Arc<Partitions>,
    ids: Keyspace,
    with: Keyspace,
    meta: Keyspace,
    db: fjall::Database,
    /// The rest of the store: a `Sync` waiter (an offline push) needs it flushed too.
    sled: Db,
    /// fsync each writer batch before its waiters are answered (`storage.sync_writes`);
    /// otherwise they are answered once the batch is written to the operating system,
    /// which survives a crash of the process.
    sync_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Size of the newest partition at which the writer starts the next.
    partition_bytes: Arc<AtomicU64>,
    counts: Arc<AppendCounts>,
}

/// How far deferred appends have got, so that waiting for them costs nothing when they
/// are already on disk (most SM acks on a busy server come after the batch's flush).
#[derive(Default)]
struct AppendCounts {
    /// Rows handed to the writer (counted before they are sent).
    queued: AtomicU64,
    /// Rows written and flushed (counted by the writer).
    durable: AtomicU64,
    /// A write failed: rows may be lost, so no later wait may report them durable.
    failed: std::sync::atomic::AtomicBool,
}

/// How far offline pushes have got: written (sled transaction done) and covered by a
/// flush. A push is not flushed on its own: the sender's next SM ack waits for it, so a
/// flood of messages to an offline user shares flushes as archive appends do.
#[derive(Default)]
struct OfflineCounts {
    written: AtomicU64,
    durable: AtomicU64,
}

/// A row's key (`<user>\0<position>`), inline for usual JIDs, as `record::Head` is.
type RowKey = smallvec::SmallVec<[u8; 48]>;

/// One message on its way to the writer, key and value already encoded but for the
/// stanza, which rows share (`SharedStanza`) rather than copy. Key and head are inline
/// (no allocation for usual JIDs); the `with` index prefix and the contact are slices of
/// them, built only where a run starts.
struct ArchiveRow {
    /// Length of `<user>` at the start of `key` (the per-user count's key).
    user_len: usize,
    key: RowKey,
    pos: ArchivePos,
    /// The value but for the stanza: a record's head (`record::record_head`) and, after
    /// `stanza_at`, the copy marker the writer may add; or a whole reference, which the
    /// writer may make it (`stanza` is then `None`).
    head: record::Head,
    /// Where the stanza goes in a record's value.
    stanza_at: usize,
    stanza: Option<SharedStanza>,
    /// Where `with` starts in the value (the same in a record and in its reference).
    with_at: usize,
    /// Length of the bare JID at the start of `with`: the contact.
    bare_len: usize,
    /// Set by the writer: where the row came in its batch, a hash of its user, and the
    /// index of its partition.
    batch_index: usize,
    user_hash: u64,
    partition: usize,
}

impl ArchiveRow {
    /// `with` is checked by the caller (no NUL).
    fn new(user: &str, with: &str, stanza: &SharedStanza, pos: ArchivePos) -> ArchiveRow {
        let mut key = RowKey::new();
        key.extend_from_slice(user.as_bytes());
        key.push(SEP);
        key.extend_from_slice(&pos.to_bytes());
        let head = record::record_head(with, stanza.as_str().len());
        ArchiveRow {
            user_len: user.len(),
            key,
            pos,
            stanza_at: head.len(),
            head,
            stanza: Some(stanza.clone()),
            with_at: record::with_at(with.len()),
            bare_len: bare(with).len(),
            batch_index: 0,
            user_hash: 0,
            partition: 0,
        }
    }

    /// The value as stored, in the parts it is made of.
    fn value_parts(&self) -> [&[u8]; 3] {
        match &self.stanza {
            Some(stanza) => [
                &self.head[..self.stanza_at],
                stanza.as_str().as_bytes(),
                &self.head[self.stanza_at..],
            ],
            None => [&self.head, &[], &[]],
        }
    }

    /// Bytes of the key and the value as stored.
    fn stored_len(&self) -> u64 {
        let value: usize = self.value_parts().iter().map(|part| part.len()).sum();
        (self.key.len() + value) as u64
    }

    /// Appends the value as stored to `out`.
    fn write_value(&self, out: &mut Vec<u8>) {
        for part in self.value_parts() {
            out.extend_from_slice(part);
        }
    }

    fn value(&self) -> Vec<u8> {
        let mut value = Vec::new();
        self.write_value(&mut value);
        value
    }

    /// Whether both rows are records of one shared stanza (see `share_copies`).
    fn shares_stanza_with(&self, other: &ArchiveRow) -> bool {
        match (&self.stanza, &other.stanza) {
            (Some(a), Some(b)) => a.is_shared_with(b),
            _ => false,
        }
    }

    /// The reference this row is, or `None` for a record.
    fn reference_target(&self) -> Option<&[u8]> {
        match self.stanza {
            Some(_) => None,
            None => record::reference_target(&self.head),
        }
    }

    fn set_pos(&mut self, pos: ArchivePos) {
        let at = self.key.len() - 16;
        self.key[at..].copy_from_slice(&pos.to_bytes());
        self.pos = pos;
    }

    fn user(&self) -> &[u8] {
        &self.key[..self.user_len]
    }

    /// The bare JID of `with`.
    fn contact(&self) -> &[u8] {
        &self.head[self.with_at..self.with_at + self.bare_len]
    }

    /// `<user>\0<with bare>\0`: where the message's run is indexed.
    fn with_prefix(&self) -> Vec<u8> {
        contact_prefix(&self.key[..=self.user_len], self.contact())
    }

    /// Whether `prefix` is this row's `with_prefix`, without building it.
    fn has_with_prefix(&self, prefix: &[u8]) -> bool {
        prefix
            .strip_prefix(&self.key[..=self.user_len])
            .and_then(|rest| rest.strip_suffix(&[SEP]))
            == Some(self.contact())
    }
}

/// Stores a message between two local users once (see `record`): where a row's
/// counterpart (the other party's copy: in the contact's archive, with this user as the
/// contact, sharing its stanza, see `SharedStanza`) came earlier in the same batch, that
/// row keeps the stanza and is marked with this row's key, and this row becomes a
/// reference to it. Both go into the same atomic write, so a reference never exists
/// without its record. Half the bytes of a local message, which the journal, memtable
/// flushes and compactions all pay for. Shared, not compared: the stanza bytes have not
/// been touched since the appender wrote them (out of the cache by now).
/// Returns the pairs made, as (record, reference) indexes into `rows`.
fn share_copies(rows: &mut [ArchiveRow]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    {
        // The newest row of each (user, contact) in the batch.
        let mut newest: FastMap<(&[u8], &[u8]), usize> =
            FastMap::with_capacity_and_hasher(rows.len(), Default::default());
        let mut taken = vec![false; rows.len()];
        for (i, row) in rows.iter().enumerate() {
            let (user, contact) = (row.user(), row.contact());
            if contact != user
                && let Some(&j) = newest.get(&(contact, user))
                && !taken[j]
                && rows[j].shares_stanza_with(row)
            {
                taken[j] = true;
                taken[i] = true;
                pairs.push((j, i));
            }
            newest.insert((user, contact), i);
        }
    }
    pairs.retain(|&(source, copy)| {
        if let Ok([source, copy]) = rows.get_disjoint_mut([source, copy])
            && record::head_into_reference(&mut copy.head, &source.key).is_ok()
        {
            copy.stanza = None;
            source.head.extend_from_slice(&copy.key);
            return true;
        }
        false
    });
    pairs
}

/// A reference made in this batch (`pairs` of `share_copies`, by index before the rows
/// were sorted, `sorted_at` maps them) names the entry its record goes into (`entries`,
/// by row) when that is a chunk keyed by another message: a reader then finds the record
/// with a point read of that key (see `record`).
fn name_entries_in_references(
    rows: &mut [ArchiveRow],
    entries: &[Option<usize>],
    pairs: &[(usize, usize)],
    sorted_at: &[usize],
) {
    for &(source, copy) in pairs {
        let (Some(&source), Some(&copy)) = (sorted_at.get(source), sorted_at.get(copy)) else {
            continue;
        };
        if let Some(Some(entry)) = entries.get(source)
            && *entry != source
            && let Ok([source, copy, entry]) = rows.get_disjoint_mut([source, copy, *entry])
            && copy.reference_target() == Some(source.key.as_slice())
        {
            let keep = copy.head.len() - source.key.len();
            copy.head.truncate(keep);
            copy.head.extend_from_slice(&entry.key);
        }
    }
}

/// What an `archive_with` entry marks. The index holds one run of consecutive messages
/// with the same contact as a `START` entry at its first message and an `END` entry at
/// its last (`BOTH` for a run of one), not an entry per message: a conversation costs no
/// index write until the contact changes, where a write per message was a quarter of
/// archiving's inserts. The newest run of an archive is open (no `END` yet). Entries
/// written before runs were indexed are empty values, which read as `BOTH`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunMark {
    Start,
    End,
    Both,
}

impl RunMark {
    fn encode(self) -> &'static [u8] {
        match self {
            RunMark::Start => &[1],
            RunMark::End => &[2],
            RunMark::Both => &[],
        }
    }

    fn decode(value: &[u8]) -> RunMark {
        match value {
            [1] => RunMark::Start,
            [2] => RunMark::End,
            _ => RunMark::Both,
        }
    }
}

/// The newest run of one archive, as the writer last left it.
struct OpenRun {
    with_prefix: Vec<u8>,
    /// Position of the newest message, and the index entry stored there, if any.
    last: ArchivePos,
    last_mark: Option<RunMark>,
}

// Nearly every operation is an `Append`, whose row is large because it keeps its bytes
// inline (see `RowKey`); boxing it would bring back an allocation freed on another thread.
#[allow(clippy::large_enum_variant)]
enum WriterOp {
    /// A message to write; the last row of an append carries the appender's reply,
    /// answered once the batch holding it is on disk.
    Append(ArchiveRow, Option<oneshot::Sender<Result<()>>>),
    /// Answered once every archive row queued before it is on disk: rides on the flush
    /// of the current batch.
    SyncArchive(oneshot::Sender<Result<()>>),
    /// Like `SyncArchive`, and everything written to the sled database before it (an
    /// offline push) is on disk too.
    Sync(oneshot::Sender<Result<()>>),
    /// Answered once everything queued before it is written: reads send one first so
    /// they see every message archived before them.
    Barrier(oneshot::Sender<Result<()>>),
    /// Replaces a stored record's stanza, if the record is there; durable when answered.
    Replace {
        key: Vec<u8>,
        stanza: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    RemoveBefore {
        user: BareJid,
        micros: u64,
        limit: usize,
        reply: oneshot::Sender<Result<usize>>,
    },
    RemoveUser {
        user: BareJid,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Operations queued for the writer; a full queue makes appenders wait (never drops).
const WRITER_QUEUE: usize = 1024;
/// Most messages written in one batch.
const WRITER_BATCH: usize = 4096;
/// How long the writer lets deferred appends gather before writing and flushing them
/// when nobody waits for them yet, and how long it sleeps between looks at the queue.
/// A waiter arriving meanwhile waits at most one step longer. The longer the batch, the
/// more messages per archive share one fjall entry (`chunk`): 12 ms instead of 4 took
/// a tenth to a sixth off archiving's CPU per message (bench/README.md, issue 16).
const LINGER: std::time::Duration = std::time::Duration::from_millis(12);
const LINGER_STEP: std::time::Duration = std::time::Duration::from_millis(1);
/// How often the per-user counts (`archive_meta`) are updated: a read-modify-write per
/// user, which per batch cost as much as the messages with one message per user in a
/// batch. Reads and removals get them exact (saved before each); a crash can leave a
/// count short by what arrived since the last save.
const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Open runs the writer keeps in memory at most (about the users archiving right now).
const RUNS_KEPT: usize = 100_000;
/// Most entries, and about the most bytes, removed in one write batch when a whole
/// archive goes.
const REMOVE_CHUNK: usize = 10_000;
const REMOVE_BYTES: usize = 16 << 20;

/// Messages collected for one write.
#[derive(Default)]
struct PendingBatch {
    rows: Vec<ArchiveRow>,
}

impl ArchiveTrees {
    /// Writes a batch: records and indexes in one atomic write. Empties `rows`, keeping
    /// its room for the next batch.
    fn write(&self, rows: &mut Vec<ArchiveRow>, round: &mut Round) -> Result<()> {
        self.write_hashed(rows, round, &foldhash::fast::RandomState::default())
    }

    /// `write`, with the users' hashes from `hasher`.
    fn write_hashed(
        &self,
        rows: &mut Vec<ArchiveRow>,
        round: &mut Round,
        hasher: &impl BuildHasher,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let pairs = share_copies(rows);
        // Each archive's messages together and oldest first: one entry per archive and
        // partition. Sorted by numbers held in the rows, not by their keys: comparing
        // keys reads memory the appenders wrote long ago, n log n times. A hash shared
        // by two users only splits their entries (see `first` below).
        let partitions = self.archive.list();
        let mut high = round.high;
        let newest = partitions.len() - 1;
        for (i, row) in rows.iter_mut().enumerate() {
            row.batch_index = i;
            row.user_hash = hasher.hash_one(row.user());
            row.partition = partition::index_of(&partitions, row.pos);
            if row.partition == newest {
                round.newest_bytes += row.stored_len();
            }
            high = high.max(row.pos);
        }
        rows.sort_unstable_by_key(|r| (r.user_hash, r.pos));
        let mut sorted_at = vec![0; rows.len()];
        for (i, row) in rows.iter().enumerate() {
            sorted_at[row.batch_index] = i;
        }
        let mut write = self.db.batch();
        if high > round.high {
            // With the messages: a new partition must start after all of them.
            self.archive.record_high(&mut write, high);
            round.high = high;
        }
        // The entry each row goes into: the first new row of its archive and partition
        // in the batch (`None`: behind the archive's newest).
        let mut entries: Vec<Option<usize>> = Vec::with_capacity(rows.len());
        let mut first: Option<usize> = None;
        for (i, row) in rows.iter().enumerate() {
            // Looked up by slice first: a key is copied once per user, not once per row.
            let user = &row.key[..row.user_len];
            match round.counts.get_mut(user) {
                Some(count) => *count += 1,
                None => {
                    round.counts.insert(user.to_vec(), 1);
                }
            }
            let behind = match self.index_run(&mut write, &mut round.runs, row, &partitions) {
                Ok(behind) => behind,
                Err(e) => {
                    // As with a failed commit: the batch is dropped, not retried.
                    round.runs.clear();
                    rows.clear();
                    return Err(e);
                }
            };
            if behind {
                entries.push(None);
                continue;
            }
            if first
                .is_none_or(|f| rows[f].user() != row.user() || rows[f].partition != row.partition)
            {
                first = Some(i);
            }
            entries.push(first);
        }
        name_entries_in_references(rows, &entries, &pairs, &sorted_at);
        let mut edits = chunk::Edits::default();
        let mut group: Vec<ArchiveRow> = Vec::new();
        let mut group_entry = None;
        let mut value = Vec::new();
        for (row, entry) in rows.drain(..).zip(entries) {
            if entry.is_none() {
                // Older than what the archive holds (positions reach the writer in
                // order, so this is a safeguard): into the entry covering it.
                if let Err(e) = edits.set(&self.archive, &row.key, row.value()) {
                    round.runs.clear();
                    return Err(e);
                }
                continue;
            }
            if group_entry != entry {
                self.put_group(&mut write, &mut group, &mut value, &partitions);
                group_entry = entry;
            }
            group.push(row);
        }
        self.put_group(&mut write, &mut group, &mut value, &partitions);
        if let Err(e) = edits.apply(&mut write, &self.archive) {
            round.runs.clear();
            return Err(e);
        }
        write.commit().map_err(|e| {
            // The runs in memory describe writes that did not happen.
            round.runs.clear();
            archive_backend(e)
        })
    }

    /// One archive's new messages of a batch in one partition, oldest first and newer
    /// than all it holds: one entry (a chunk when there are several, see `chunk`).
    /// Empties `group`. `value` is scratch space (the batch copies what it is given).
    fn put_group(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        group: &mut Vec<ArchiveRow>,
        value: &mut Vec<u8>,
        partitions: &[partition::Partition],
    ) {
        let Some(archive) = group.first().map(|row| &partitions[row.partition].keyspace) else {
            return;
        };
        value.clear();
        if group.len() == 1 {
            if let Some(row) = group.pop() {
                row.write_value(value);
                write.insert(archive, &row.key[..], value.as_slice());
            }
            return;
        }
        chunk::encode_into(value, group.iter().map(|r| (r.pos, r.value_parts())));
        write.insert(archive, &group[0].key[..], value.as_slice());
        group.clear();
    }

    /// Adds the `archive_with` entries a new message needs (see `RunMark`), and records
    /// its partition for the user where that is new; `true` when the message is behind
    /// the archive's newest.
    fn index_run(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        runs: &mut FastMap<Vec<u8>, Option<OpenRun>>,
        row: &ArchiveRow,
        partitions: &[partition::Partition],
    ) -> Result<bool> {
        let user = &row.key[..=row.user_len];
        let run = match runs.get_mut(user) {
            Some(run) => run,
            None => {
                // Bounded: a dropped run is read back from the store when needed.
                if runs.len() >= RUNS_KEPT {
                    runs.clear();
                }
                let loaded = self.load_run(user)?;
                runs.entry(user.to_vec()).or_insert(loaded)
            }
        };
        // The partition of the archive's newest message is recorded (by the write that
        // put it there), and that of any message since: only a change needs a write.
        let newest_partition = run
            .as_ref()
            .map(|open| partition::index_of(partitions, open.last));
        if row.partition > 0 && newest_partition != Some(row.partition) {
            let number = partitions[row.partition].number;
            write.insert(
                self.archive.parts(),
                partition::user_key(user, number),
                [0u8; 0],
            );
        }
        let mut mark = |prefix: &[u8], pos: ArchivePos, mark: RunMark| {
            write.insert(&self.with, pos_key(prefix, pos), mark.encode());
        };
        match run {
            // Behind the newest message: indexed on its own, which any scan of a run
            // around it skips.
            Some(open) if row.pos <= open.last => {
                mark(&row.with_prefix(), row.pos, RunMark::Both);
                return Ok(true);
            }
            Some(open) if row.has_with_prefix(&open.with_prefix) => {
                match open.last_mark {
                    Some(RunMark::Both) => mark(&open.with_prefix, open.last, RunMark::Start),
                    Some(RunMark::End) => {
                        write.remove(&self.with, pos_key(&open.with_prefix, open.last))
                    }
                    Some(RunMark::Start) | None => {}
                }
                open.last = row.pos;
                open.last_mark = None;
            }
            _ => {
                if let Some(open) = run.as_ref() {
                    match open.last_mark {
                        None => mark(&open.with_prefix, open.last, RunMark::End),
                        Some(RunMark::Start) => mark(&open.with_prefix, open.last, RunMark::Both),
                        Some(RunMark::End | RunMark::Both) => {}
                    }
                }
                let with_prefix = row.with_prefix();
                mark(&with_prefix, row.pos, RunMark::Start);
                *run = Some(OpenRun {
                    with_prefix,
                    last: row.pos,
                    last_mark: Some(RunMark::Start),
                });
            }
        }
        Ok(false)
    }

    /// The newest run of an archive as stored (`None`: the archive is empty).
    fn load_run(&self, user: &[u8]) -> Result<Option<OpenRun>> {
        let Some(newest) = chunk::newest(&self.archive, user)? else {
            return Ok(None);
        };
        let pos = newest.pos;
        let prefix = with_prefix(user, record::parse(newest.value())?.with)?;
        let stored = self
            .with
            .get(pos_key(&prefix, pos))
            .map_err(archive_backend)?;
        Ok(Some(OpenRun {
            with_prefix: prefix,
            last: pos,
            last_mark: stored.map(|v| RunMark::decode(&v)),
        }))
    }

    fn stored_count(&self, user: &[u8]) -> Result<u64> {
        match self.meta.get(user).map_err(archive_backend)? {
            Some(v) => decode("archive count", &v),
            None => Ok(0),
        }
    }

    /// Adds the counts of written messages to the stored per-user counts. `stored`
    /// remembers what this writer last stored (only it writes counts), so a user's count
    /// is read from disk once, not at every save.
    fn store_counts(
        &self,
        counts: &mut FastMap<Vec<u8>, u64>,
        stored: &mut FastMap<Vec<u8>, u64>,
    ) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        if stored.len() >= RUNS_KEPT {
            stored.clear();
        }
        let mut meta = self.db.batch();
        for (user, n) in counts.drain() {
            let count = match stored.get_mut(&user) {
                Some(count) => count,
                None => {
                    let count = self.stored_count(&user)?;
                    stored.entry(user.clone()).or_insert(count)
                }
            };
            *count += n;
            meta.insert(&self.meta, user, encode(&*count)?);
        }
        meta.commit().map_err(archive_backend)
    }

    fn replace(&self, key: &[u8], stanza: &str) -> Result<bool> {
        let mut edits = chunk::Edits::default();
        let Some(raw) = edits.value(&self.archive, key)? else {
            return Ok(false);
        };
        let old = record::parse(&raw)?;
        // The other party keeps the stanza it got.
        self.materialize_copy(&mut edits, key, &old)?;
        let value = match old.stored_id {
            // A UID of its own (format 1) must stay.
            Some(id) => encode(&ArchiveRecordRef {
                id,
                with: old.with,
                stanza,
            })?,
            None => record::record(old.with, stanza).0,
        };
        edits.set(&self.archive, key, value)?;
        let mut write = self.db.batch();
        edits.apply(&mut write, &self.archive)?;
        write.commit().map_err(archive_backend)?;
        self.persist(PersistMode::SyncAll)?;
        Ok(true)
    }

    /// Before the record at `key` (`view`) goes or changes: a reference to it in another
    /// archive becomes a record of its own (in the same atomic write).
    fn materialize_copy(
        &self,
        edits: &mut chunk::Edits,
        key: &[u8],
        view: &record::RecordView<'_>,
    ) -> Result<()> {
        let record::Body::Stanza {
            stanza,
            copy: Some(copy),
        } = view.body
        else {
            return Ok(());
        };
        let Some(raw) = edits.value(&self.archive, copy)? else {
            // The copy went already (removed or expired in that archive).
            return Ok(());
        };
        let other = record::parse(&raw)?;
        // Positions are never reused, so only this record's reference can point here;
        // a copy made a record already (replaced) is left alone. A reference names the
        // record or the chunk holding it.
        let names_this = match other.body {
            record::Body::Reference(target) => {
                target == key || chunk::entry_key(&self.archive, key)?.as_deref() == Some(target)
            }
            record::Body::Stanza { .. } => false,
        };
        if names_this {
            let value = record::record(other.with, stanza).0;
            edits.set(&self.archive, copy, value)?;
        }
        Ok(())
    }

    fn persist(&self, mode: PersistMode) -> Result<()> {
        self.db.persist(mode).map_err(archive_backend)
    }

    fn remove_before(&self, user: &BareJid, micros: u64, limit: usize) -> Result<usize> {
        let prefix = user_prefix(user)?;
        let mut write = self.db.batch();
        let mut edits = chunk::Edits::default();
        let mut removed = 0u64;
        let mut last_removed = None;
        let before = match micros {
            0 => None,
            micros => Some(ArchivePos { micros, seq: 0 }.prev()),
        };
        let rows = match before {
            Some(to) => chunk::Rows::new(&self.archive, &prefix, ArchivePos::MIN, to, false)?,
            None => return Ok(0),
        };
        for row in rows.take(limit) {
            let row = row?;
            let m = record::parse(row.value())?;
            if let Some(id) = m.stored_id {
                write.remove(&self.ids, id_key(&prefix, id));
            }
            write.remove(&self.with, pos_key(&with_prefix(&prefix, m.with)?, row.pos));
            self.materialize_copy(&mut edits, &row.key, &m)?;
            edits.remove(&self.archive, &row.key)?;
            last_removed = Some(row.pos);
            removed += 1;
        }
        let Some(last_removed) = last_removed else {
            return Ok(0);
        };
        // The oldest message left may be in the middle of a run whose start went: it
        // becomes the run's start.
        let mut left = chunk::Rows::new(
            &self.archive,
            &prefix,
            last_removed.next(),
            ArchivePos::MAX,
            false,
        )?;
        if let Some(first) = left.next().transpose()? {
            let key = pos_key(
                &with_prefix(&prefix, record::parse(first.value())?.with)?,
                first.pos,
            );
            let stored = self.with.get(&key).map_err(archive_backend)?;
            match stored.map(|v| RunMark::decode(&v)) {
                None => write.insert(&self.with, key, RunMark::Start.encode()),
                Some(RunMark::End) => write.insert(&self.with, key, RunMark::Both.encode()),
                Some(RunMark::Start | RunMark::Both) => {}
            }
        }
        let key = user.as_str().as_bytes();
        match self.stored_count(key)?.saturating_sub(removed) {
            0 => write.remove(&self.meta, key),
            left => write.insert(&self.meta, key, encode(&left)?),
        }
        edits.apply(&mut write, &self.archive)?;
        write.commit().map_err(archive_backend)?;
        self.persist(PersistMode::SyncAll)?;
        Ok(removed as usize)
    }

    fn remove_user(&self, user: &BareJid) -> Result<()> {
        let prefix = user_prefix(user)?;
        // Records first, then indexes (readers skip index entries without a record), then
        // where the records were, the count last; in bounded batches, since an archive
        // can be large. Only records can be shared with another archive (see
        // `materialize_copy`).
        let mut keyspaces: Vec<(Keyspace, bool)> = self
            .archive
            .of_user(&prefix)?
            .overlapping(ArchivePos::MIN, ArchivePos::MAX)
            .map(|records| (records.keyspace.clone(), true))
            .collect();
        keyspaces.extend([
            (self.ids.clone(), false),
            (self.with.clone(), false),
            (self.archive.parts().clone(), false),
        ]);
        for (keyspace, records) in &keyspaces {
            loop {
                // Bounded in bytes too: an archive entry may hold many messages.
                let mut entries = Vec::new();
                let mut bytes = 0;
                for g in keyspace.prefix(&prefix) {
                    let (key, value) = g.into_inner().map_err(archive_backend)?;
                    bytes += key.len() + value.len();
                    entries.push((key, value));
                    if entries.len() >= REMOVE_CHUNK || bytes >= REMOVE_BYTES {
                        break;
                    }
                }
                if entries.is_empty() {
                    break;
                }
                let mut write = self.db.batch();
                let mut edits = chunk::Edits::default();
                for (key, value) in entries {
                    if *records {
                        for (pos, at) in chunk::rows(&key, &value)? {
                            let row_key = pos_key(&prefix, pos);
                            let view = record::parse(&value[at])?;
                            self.materialize_copy(&mut edits, &row_key, &view)?;
                        }
                    }
                    write.remove(keyspace, key);
                }
                // Only other archives' entries: this one's go whole.
                edits.apply(&mut write, &self.archive)?;
                write.commit().map_err(archive_backend)?;
            }
        }
        self.meta
            .remove(user.as_str().as_bytes())
            .map_err(archive_backend)?;
        self.persist(PersistMode::SyncAll)
    }

    fn handle(&self, op: WriterOp, failed: &mut Option<String>) {
        // A receiver that went away (its task was cancelled) needs no answer.
        match op {
            WriterOp::Append(..) | WriterOp::Sync(_) | WriterOp::SyncArchive(_) => {}
            WriterOp::Barrier(reply) => {
                let _ = reply.send(match failed.take() {
                    Some(e) => Err(StorageError::Backend(e)),
                    None => Ok(()),
                });
            }
            WriterOp::Replace { key, stanza, reply } => {
                let _ = reply.send(self.replace(&key, &stanza));
            }
            WriterOp::RemoveBefore {
                user,
                micros,
                limit,
                reply,
            } => {
                let _ = reply.send(self.remove_before(&user, micros, limit));
            }
            WriterOp::RemoveUser { user, reply } => {
                let _ = reply.send(self.remove_user(&user));
            }
        }
    }

    fn flush_pending(&self, batch: &mut PendingBatch, round: &mut Round) {
        let rows = batch.rows.len() as u64;
        match self.write(&mut batch.rows, round) {
            Ok(()) => round.written += rows,
            Err(e) => round.write_failed(&self.counts, e),
        }
    }

    /// Stores the counts gathered since the last time (see `COUNTS_EVERY`).
    fn save_counts(&self, round: &mut Round) {
        if let Err(e) = self.store_counts(&mut round.counts, &mut round.stored_counts) {
            // What is on disk is unknown now: read it again.
            round.stored_counts.clear();
            round.write_failed(&self.counts, e);
        }
        round.counts_saved = Some(std::time::Instant::now());
    }
}

impl ArchiveTrees {
    /// The highest position written, for a new partition to start after: none yet in a
    /// new store (a store from before partitions is given one when it opens).
    fn initial_high(&self) -> ArchivePos {
        match self.archive.stored_high() {
            Ok(Some(high)) => high,
            Ok(None) => ArchivePos::MIN,
            Err(e) => {
                // Only delays the next partition (see `close_full_partition`).
                tracing::error!(error = %e, "reading the archive's highest position failed");
                ArchivePos::MAX
            }
        }
    }

    /// Starts a new partition once `partition_bytes` of messages went into the newest.
    fn close_full_partition(&self, round: &mut Round) {
        let limit = self.partition_bytes.load(Ordering::Relaxed);
        if round.newest_bytes < limit || round.high == ArchivePos::MAX {
            return;
        }
        let written = std::mem::take(&mut round.newest_bytes);
        match self.archive.start_next(round.high.next(), limit) {
            Ok(next) => tracing::info!(
                partition = next.number,
                closed_bytes = written,
                "started a new archive partition"
            ),
            // Messages keep going into the current one, and the next try is as many
            // bytes later.
            Err(e) => tracing::error!(error = %e, "starting a new archive partition failed"),
        }
    }
}

impl Round {
    fn write_failed(&mut self, counts: &AppendCounts, e: StorageError) {
        counts.failed.store(true, Ordering::SeqCst);
        // The appenders of this round get the error; the next barrier (read or
        // flush) reports it too.
        tracing::error!(error = %e, "writing archived messages failed");
        let e = format!("archive write failed: {e}");
        self.error.get_or_insert_with(|| e.clone());
        self.failed = Some(e);
    }
}

impl ArchiveTrees {
    /// Makes the round's writes durable with one fsync for all its waiters (and for the
    /// deferred appends in it, waited for or not: one flush per batch), and answers them.
    fn sync(&self, round: &mut Round) {
        let written = std::mem::take(&mut round.written);
        let sync_sled = std::mem::take(&mut round.sync_sled);
        if round.waiters.is_empty() && written == 0 {
            return;
        }
        let mut flushed = match self.sync_writes.load(Ordering::Relaxed) {
            true => self.persist(PersistMode::SyncData),
            // Written to the operating system: survives a crash of the process.
            false => self.persist(PersistMode::Buffer),
        };
        if sync_sled && flushed.is_ok() && self.sync_writes.load(Ordering::Relaxed) {
            flushed = self.sled.flush().map(drop).map_err(backend);
        }
        round.durable += written;
        match &flushed {
            // Everything written before the flush is covered, earlier rounds included.
            Ok(()) => self.counts.durable.store(round.durable, Ordering::SeqCst),
            Err(e) => tracing::error!(error = %e, "flushing the database failed"),
        }
        if round.waiters.is_empty() {
            // A write error is kept for the next waiters.
            return;
        }
        let result = match (round.error.take(), flushed) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(())) => Ok(()),
        };
        for waiter in round.waiters.drain(..) {
            let _ = waiter.send(result.clone().map_err(StorageError::Backend));
        }
    }
}

/// What one pass of the writer collected: who waits for durability, and what failed.
#[derive(Default)]
struct Round {
    waiters: Vec<oneshot::Sender<Result<()>>>,
    /// A waiter needs the sled database flushed too.
    sync_sled: bool,
    /// A write of this round failed: its waiters get this instead of a flush.
    error: Option<String>,
    /// Reported to the next barrier (reads see that earlier appends were lost).
    failed: Option<String>,
    /// Rows written into the database since the last flush.
    written: u64,
    /// Rows written before the last flush (all rounds; the writer's running total).
    durable: u64,
    /// New messages per user written but not yet in `archive_meta`.
    counts: FastMap<Vec<u8>, u64>,
    /// The counts in `archive_meta` as this writer last stored or read them.
    stored_counts: FastMap<Vec<u8>, u64>,
    counts_saved: Option<std::time::Instant>,
    /// The open run of every archive written to since the start (or the last removal),
    /// keyed by `<user>\0`; loaded from the store on a user's first append.
    runs: FastMap<Vec<u8>, Option<OpenRun>>,
    /// The highest position written (see `partition`).
    high: ArchivePos,
    /// Bytes of messages written into the newest partition (those on disk when the
    /// writer started, and since).
    newest_bytes: u64,
}

/// The writer thread: takes whatever is queued, writes it as one batch, flushes once for
/// everyone waiting on it (group commit), repeats.
fn run_writer(trees: &ArchiveTrees, mut rx: mpsc::Receiver<WriterOp>) {
    let mut batch = PendingBatch::default();
    let mut round = Round {
        high: trees.initial_high(),
        newest_bytes: trees.archive.current().keyspace.disk_space(),
        ..Round::default()
    };
    while let Some(first) = rx.blocking_recv() {
        // Nobody waits for an append that carries no reply: let appends gather into one
        // batch. Anything else (an offline push's `Sync`, a read's barrier) has a waiter.
        if !trees.sync_writes.load(Ordering::Relaxed) && matches!(first, WriterOp::Append(_, None))
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let started = std::time::Instant::now();
        let mut next = Some(first);
        loop {
            while let Some(op) = next {
                match op {
                    WriterOp::Append(row, reply) => {
                        batch.rows.push(row);
                        round.waiters.extend(reply);
                        if batch.rows.len() >= WRITER_BATCH {
                            trees.flush_pending(&mut batch, &mut round);
                        }
                    }
                    WriterOp::SyncArchive(reply) => round.waiters.push(reply),
                    WriterOp::Sync(reply) => {
                        round.sync_sled = true;
                        round.waiters.push(reply);
                    }
                    other => {
                        trees.flush_pending(&mut batch, &mut round);
                        // Removals and reads (after their barrier) see exact counts.
                        trees.save_counts(&mut round);
                        if matches!(
                            other,
                            WriterOp::RemoveBefore { .. } | WriterOp::RemoveUser { .. }
                        ) {
                            // Removals change where runs end, and the counts: read
                            // them again.
                            round.runs.clear();
                            round.stored_counts.clear();
                        }
                        trees.handle(other, &mut round.failed);
                    }
                }
                // Bounded, so that a steady stream of work cannot postpone the fsync
                // that the first waiters of this round wait for.
                next = match round.waiters.len() < WRITER_BATCH {
                    true => rx.try_recv().ok(),
                    false => None,
                };
            }
            // Only deferred appends so far, which nobody waits for yet: let more
            // gather, so that one write and one flush cover many messages. A waiter (an
            // SM ack, a durable append) ends the wait at once; while sleeping, the
            // thread also costs the appenders no wake-up.
            if round.waiters.is_empty() && !batch.rows.is_empty() && started.elapsed() < LINGER {
                std::thread::sleep(LINGER_STEP);
                next = rx.try_recv().ok();
                continue;
            }
            break;
        }
        trees.flush_pending(&mut batch, &mut round);
        if round
            .counts_saved
            .is_none_or(|t| t.elapsed() >= COUNTS_EVERY)
        {
            trees.save_counts(&mut round);
        }
        trees.sync(&mut round);
        trees.close_full_partition(&mut round);
    }
    // The queue closed (the store is dropped): the last counts, durable.
    trees.save_counts(&mut round);
    if let Err(e) = trees.persist(PersistMode::SyncAll) {
        tracing::error!(error = %e, "flushing the archive at shutdown failed");
    }
}

/// The handle on the writer thread, owned by the store.
struct ArchiveWriter {
    tx: Option<mpsc::Sender<WriterOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn writer_stopped() -> StorageError {
    StorageError::Backend("archive writer stopped".into())
}

impl ArchiveWriter {
    fn start(trees: ArchiveTrees) -> Result<ArchiveWriter> {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let thread = std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || run_writer(&trees, rx))
            .map_err(|e| StorageError::Backend(format!("archive writer thread: {e}")))?;
        Ok(ArchiveWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    async fn send(&self, op: WriterOp) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(writer_stopped)?;
        tx.send(op).await.map_err(|_| writer_stopped())
    }

    /// Room for one operation in the queue, taken before what goes in it is decided.
    async fn reserve(&self) -> Result<mpsc::Permit<'_, WriterOp>> {
        let tx = self.tx.as_ref().ok_or_else(writer_stopped)?;
        tx.reserve().await.map_err(|_| writer_stopped())
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterOp) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.send(op(reply)).await?;
        answer.await.map_err(|_| writer_stopped())?
    }

    /// Waits until everything queued so far is written.
    async fn barrier(&self) -> Result<()> {
        self.call(WriterOp::Barrier).await
    }

    /// Waits until everything written to the database so far is durable, sharing the
    /// fsync with whatever else the writer is flushing.
    async fn sync(&self) -> Result<()> {
        self.call(WriterOp::Sync).await
    }

    /// Waits until every archive row queued so far is durable.
    async fn sync_archive(&self) -> Result<()> {
        self.call(WriterOp::SyncArchive).await
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        // Closing the queue lets the thread write what is left and end; waiting for it
        // releases its handles on the database, so the directory can be reopened at once.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SledStore {
    /// The message stored at `key`: its UID (stored, or the encrypted position) and its
    /// stanza (from the record a reference points at).
    fn archived(&self, key: &[u8], view: record::RecordView<'_>) -> Result<ArchivedMessage> {
        let pos = key_pos(key)?;
        let id = match view.stored_id {
            Some(id) => id.to_owned(),
            None => self.id_cipher.id(pos),
        };
        let stanza = match view.body {
            record::Body::Stanza { stanza, .. } => stanza.to_owned(),
            record::Body::Reference(source) => self.referenced(key, source)?,
        };
        Ok(ArchivedMessage {
            id,
            pos,
            with: view.with.to_owned(),
            stanza,
        })
    }

    fn decode_archived(&self, key: &[u8], value: &[u8]) -> Result<ArchivedMessage> {
        self.archived(key, record::parse(value)?)
    }

    /// The stanza of the record at `source`, which the reference at `key` points at.
    fn referenced(&self, key: &[u8], source: &[u8]) -> Result<String> {
        if let Some(stanza) = self.source_stanza(key, source)? {
            return Ok(stanza);
        }
        // The writer removed the source after this read began, turning the reference
        // into a record first (`materialize_copy`): read that.
        if let Some(row) = chunk::row_at(&self.archive, key)?
            && let record::Body::Stanza { stanza, .. } = record::parse(row.value())?.body
        {
            return Ok(stanza.to_owned());
        }
        Err(StorageError::Corrupt(
            "archived message: reference to a missing record".into(),
        ))
    }

    /// The stanza of the record that the reference at `key` names by `target`: the
    /// record's own key, or the key of the chunk holding it, where it is the record whose
    /// copy marker is `key`.
    fn source_stanza(&self, key: &[u8], target: &[u8]) -> Result<Option<String>> {
        let stanza = |value: &[u8]| -> Result<Option<String>> {
            Ok(match record::parse(value)?.body {
                record::Body::Stanza { stanza, .. } => Some(stanza.to_owned()),
                record::Body::Reference(_) => None,
            })
        };
        let Some(value) = self
            .archive
            .of_key(target)?
            .get(target)
            .map_err(archive_backend)?
        else {
            // A record inside a chunk, named by its own key.
            return match chunk::row_within(&self.archive, target)? {
                Some(row) => stanza(row.value()),
                None => Ok(None),
            };
        };
        if !chunk::is_chunk(&value) {
            return stanza(&value);
        }
        let rows = chunk::rows(target, &value)?;
        // The marker ends the record: compare that before parsing anything.
        for (_, at) in &rows {
            let row = &value[at.clone()];
            if row.ends_with(key)
                && let record::Body::Stanza {
                    stanza,
                    copy: Some(copy),
                } = record::parse(row)?.body
                && copy == key
            {
                return Ok(Some(stanza.to_owned()));
            }
        }
        let pos = key_pos(target)?;
        match rows.into_iter().find(|(p, _)| *p == pos) {
            Some((_, at)) => stanza(&value[at]),
            None => Ok(None),
        }
    }

    /// One page of `q` (which has a `with`) from the runs `archive_with` lists for the
    /// contact (see `RunMark`): each run is a range of the archive, read in the query's
    /// direction until the page is full.
    fn with_page(&self, prefix: &[u8], with: &str, q: &ArchiveQuery) -> Result<ArchivePage> {
        let wp = with_prefix(prefix, with)?;
        let contact = bare(with);
        let mark_at = |entry: fjall::Guard| -> Result<(ArchivePos, RunMark)> {
            let (k, v) = entry.into_inner().map_err(archive_backend)?;
            Ok((key_pos(&k)?, RunMark::decode(&v)))
        };
        let mut page = PageBuilder::new(q);
        let partitions = self.archive.of_user(prefix)?;
        // Offers the contact's messages in `from..=to` in the query's direction; `false`
        // once the page is full. Others (a message that raced into a run) are skipped.
        let mut scan = |from: ArchivePos, to: ArchivePos| -> Result<bool> {
            if from > to {
                return Ok(true);
            }
            for row in chunk::Rows::over(&partitions, prefix, from, to, q.from_end) {
                let row = row?;
                let view = record::parse(row.value())?;
                if bare(view.with) != contact {
                    continue;
                }
                if !page.offer(self.archived(&row.key, view)?) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let entries = self
            .archive_with
            .range(pos_key(&wp, q.from)..=pos_key(&wp, q.to));
        if q.from_end {
            // Newest first: an END opens a run, its START closes it. A run that ends
            // after `to` opens at `to`.
            let mut open_to = None;
            if q.to < ArchivePos::MAX {
                let later = self
                    .archive_with
                    .range(pos_key(&wp, q.to.next())..=pos_key(&wp, ArchivePos::MAX));
                if boundary_mark(later, mark_at)? == Some(RunMark::End) {
                    open_to = Some(q.to);
                }
            }
            for entry in entries.rev() {
                let (pos, mark) = mark_at(entry)?;
                let more = match mark {
                    RunMark::End => {
                        open_to.get_or_insert(pos);
                        true
                    }
                    // Without an END: the newest run, open to the end of the archive.
                    RunMark::Start => scan(pos, open_to.take().unwrap_or(q.to))?,
                    RunMark::Both if open_to.is_none() => scan(pos, pos)?,
                    RunMark::Both => true,
                };
                if !more {
                    return Ok(page.finish());
                }
            }
            if let Some(to) = open_to {
                scan(q.from, to)?;
            }
        } else {
            // Oldest first: a START opens a run, its END closes it. A run that started
            // before `from` opens at `from`.
            let mut open_from = None;
            let earlier = self
                .archive_with
                .range(pos_key(&wp, ArchivePos::MIN)..pos_key(&wp, q.from))
                .rev();
            if boundary_mark(earlier, mark_at)? == Some(RunMark::Start) {
                open_from = Some(q.from);
            }
            for entry in entries {
                let (pos, mark) = mark_at(entry)?;
                let more = match mark {
                    RunMark::Start => {
                        open_from.get_or_insert(pos);
                        true
                    }
                    RunMark::End => scan(open_from.take().unwrap_or(q.from), pos)?,
                    RunMark::Both if open_from.is_none() => scan(pos, pos)?,
                    RunMark::Both => true,
                };
                if !more {
                    return Ok(page.finish());
                }
            }
            if let Some(from) = open_from {
                scan(from, q.to)?;
            }
        }
        Ok(page.finish())
    }

    /// The newest micros stored for a user (0 if none): new entries never go below it.
    fn newest_micros(&self, prefix: &[u8]) -> Result<u64> {
        Ok(chunk::newest(&self.archive, prefix)?.map_or(0, |row| row.pos.micros))
    }

    /// Assigns a position in memory: each user's archive never goes back in time, and
    /// the sequence (sled's `generate_id`, monotonic across restarts) orders equal micros.
    /// `queue` gets it under the same lock, so that positions reach the writer in the
    /// order they are given (what chunking relies on, see `chunk`).
    fn next_position(
        &self,
        user: &BareJid,
        micros: u64,
        queue: impl FnOnce(ArchivePos),
    ) -> Result<ArchivePos> {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let last = match newest.get_mut(user) {
            Some(last) => last,
            // Only here is the user's newest read from disk: afterwards every append of
            // the user passes this map, so queued writes never make it stale.
            None => {
                let stored = self.newest_micros(&user_prefix(user)?)?;
                newest.entry(user.clone()).or_insert(stored)
            }
        };
        *last = (*last).max(micros);
        let seq = self.db.generate_id().map_err(backend)?;
        let pos = ArchivePos { micros: *last, seq };
        queue(pos);
        Ok(pos)
    }

    /// Stamps messages (UID, position), queues them for the writer and returns once the
    /// batch holding them is flushed to disk (`wait`), or at once. `stamped` gets each
    /// message's stamp, in order (no vector for the single message of most appends).
    async fn append_rows(
        &self,
        user: &BareJid,
        msgs: &[NewArchived<'_>],
        wait: bool,
        mut stamped: impl FnMut(ArchiveStamp) + Send,
    ) -> Result<()> {
        check_name(user.as_str())?;
        for m in msgs {
            check_name(m.with)?;
        }
        // Without sync_writes the append is queued, not awaited (the writer batches).
        let sync = wait && self.sync_writes.load(Ordering::Relaxed);
        let (mut reply, written) = match sync {
            true => {
                let (reply, written) = oneshot::channel();
                (Some(reply), Some(written))
            }
            false => (None, None),
        };
        let last = msgs.len().saturating_sub(1);
        for (i, msg) in msgs.iter().enumerate() {
            let mut row = ArchiveRow::new(user.as_str(), msg.with, &msg.stanza, ArchivePos::MIN);
            // The writer keeps the order, so the last row's flush covers all of them.
            let reply = if i == last { reply.take() } else { None };
            let permit = self.writer.reserve().await?;
            let pos = self.next_position(user, msg.micros, |pos| {
                row.set_pos(pos);
                // Counted before it is sent: see `appended_durable`.
                self.append_counts.queued.fetch_add(1, Ordering::SeqCst);
                permit.send(WriterOp::Append(row, reply));
            })?;
            // Positions are unique store-wide, so their encryptions are too.
            stamped(ArchiveStamp {
                id: self.id_cipher.id(pos),
                pos,
            });
        }
        if let Some(written) = written
            && reply.is_none()
        {
            written.await.map_err(|_| writer_stopped())??;
        }
        Ok(())
    }

    /// `append_rows` for one message.
    async fn append_one(
        &self,
        user: &BareJid,
        msg: NewArchived<'_>,
        wait: bool,
    ) -> Result<ArchiveStamp> {
        let mut stamp = None;
        self.append_rows(user, std::slice::from_ref(&msg), wait, |s| stamp = Some(s))
            .await?;
        stamp.ok_or_else(|| StorageError::Backend("archive append wrote nothing".into()))
    }
}

/// Removes every key with `prefix` from `tree` in one atomic batch.
/// The sum of a tree of per-user counters (`offline_meta`, `archive_meta`).
fn sum_counts(tree: &Tree, what: &str) -> Result<u64> {
    add_counts(
        tree.iter().map(|e| e.map(|(_, v)| v).map_err(backend)),
        what,
    )
}

/// `sum_counts` for the archive's counters.
fn sum_archive_counts(keyspace: &Keyspace) -> Result<u64> {
    let values = keyspace
        .iter()
        .map(|e| e.into_inner().map(|(_, v)| v).map_err(archive_backend));
    add_counts(values, "archive count")
}

fn add_counts<V: AsRef<[u8]>>(values: impl Iterator<Item = Result<V>>, what: &str) -> Result<u64> {
    let mut total = 0u64;
    for v in values {
        total = total.saturating_add(decode::<u64>(what, v?.as_ref())?);
    }
    Ok(total)
}

fn clear_prefix(tree: &Tree, prefix: &[u8]) -> Result<()> {
    let mut batch = ::sled::Batch::default();
    for key in keys_with_prefix(tree, prefix)? {
        batch.remove(key);
    }
    tree.apply_batch(batch).map_err(backend)
}

/// `<user>\0<jid>\0`: the prefix of a user's registrations with one push service.
fn push_prefix(user: &BareJid, jid: &Jid) -> Result<Vec<u8>> {
    let mut key = pair_key(user, jid.as_str())?;
    key.push(SEP);
    Ok(key)
}

#[async_trait]
impl ArchiveStore for SledStore {
    // Appends are stamped in memory and written by the writer thread in batches, with
    // one fsync per batch: an append returns only once it is on disk, so the sender's
    // XEP-0198 ack (sent after its stanza was handled) never covers a message a crash
    // can take from the archive, yet concurrent senders share the cost of the fsync.
    async fn append(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        self.append_one(user, msg, true).await
    }

    async fn append_deferred(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        self.append_one(user, msg, false).await
    }

    async fn appended_durable(&self) -> Result<()> {
        let counts = &self.append_counts;
        // Once a write failed, an earlier append may be gone: never vouch for it.
        if counts.failed.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(
                "an archive write failed earlier; appends are not known to be durable".into(),
            ));
        }
        if !self.sync_writes.load(Ordering::Relaxed) {
            return Ok(());
        }
        // `queued` first: the writer takes rows in order and flushes whole batches, so
        // while any row queued before this call is not durable, `durable` stays below
        // this reading (every row flushed before it was counted in it, and this caller's
        // rows are among those counted but not yet durable).
        let queued = counts.queued.load(Ordering::SeqCst);
        if counts.durable.load(Ordering::SeqCst) >= queued {
            return Ok(());
        }
        // Behind every row queued so far: answered with the flush that covers them.
        self.writer.sync_archive().await?;
        match counts.failed.load(Ordering::SeqCst) {
            true => Err(StorageError::Backend("an archive write failed".into())),
            false => Ok(()),
        }
    }

    async fn append_many(
        &self,
        user: &BareJid,
        msgs: &[NewArchived<'_>],
    ) -> Result<Vec<ArchiveStamp>> {
        let mut stamps = Vec::with_capacity(msgs.len());
        self.append_rows(user, msgs, true, |s| stamps.push(s))
            .await?;
        Ok(stamps)
    }

    async fn position(&self, user: &BareJid, id: &str) -> Result<Option<ArchivePos>> {
        let prefix = user_prefix(user)?;
        self.writer.barrier().await?;
        let pos = match self.id_cipher.pos(id) {
            Some(pos) => pos,
            None => {
                let Some(v) = self
                    .archive_ids
                    .get(id_key(&prefix, id))
                    .map_err(archive_backend)?
                else {
                    return Ok(None);
                };
                ArchivePos::from_bytes(&v)
                    .ok_or_else(|| StorageError::Corrupt("archive id index value".into()))?
            }
        };
        // A UID decrypts to some position whatever it is, and an index entry may have
        // lost its record in a crash: only a stored record makes it a message.
        let present = chunk::row_at(&self.archive, &pos_key(&prefix, pos))?.is_some();
        Ok(present.then_some(pos))
    }

    async fn get(&self, user: &BareJid, id: &str) -> Result<Option<ArchivedMessage>> {
        let Some(pos) = self.position(user, id).await? else {
            return Ok(None);
        };
        let key = pos_key(&user_prefix(user)?, pos);
        match chunk::row_at(&self.archive, &key)? {
            Some(row) => self.decode_archived(&row.key, row.value()).map(Some),
            None => Ok(None),
        }
    }

    async fn replace(&self, user: &BareJid, id: &str, stanza: &str) -> Result<bool> {
        let Some(pos) = self.position(user, id).await? else {
            return Ok(false);
        };
        let key = pos_key(&user_prefix(user)?, pos);
        // On the writer, so that a prune or removal in between wins.
        let stanza = stanza.to_owned();
        self.writer
            .call(|reply| WriterOp::Replace { key, stanza, reply })
            .await
    }

    async fn query(&self, user: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        let prefix = user_prefix(user)?;
        if q.from > q.to {
            return Ok(ArchivePage::default());
        }
        self.writer.barrier().await?;
        match &q.with {
            // The per-contact index yields that contact's runs in order; each is then one
            // range read, so a `with` page costs O(page + runs), not O(archive).
            Some(with) => self.with_page(&prefix, with, q),
            None => {
                let mut page = PageBuilder::new(q);
                for row in chunk::Rows::new(&self.archive, &prefix, q.from, q.to, q.from_end)? {
                    let row = row?;
                    if !page.offer(self.decode_archived(&row.key, row.value())?) {
                        break;
                    }
                }
                Ok(page.finish())
            }
        }
    }

    async fn count(&self, user: &BareJid) -> Result<u64> {
        check_name(user.as_str())?;
        self.writer.barrier().await?;
        match self
            .archive_meta
            .get(user.as_str())
            .map_err(archive_backend)?
        {
            Some(v) => decode("archive count", &v),
            None => Ok(0),
        }
    }

    async fn total(&self) -> Result<Option<u64>> {
        // One counter per archive; the barrier stores the counts the writer holds.
        self.writer.barrier().await?;
        sum_archive_counts(&self.archive_meta).map(Some)
    }

    async fn remove_before(&self, user: &BareJid, micros: u64, limit: usize) -> Result<usize> {
        check_name(user.as_str())?;
        let user = user.clone();
        self.writer
            .call(|reply| WriterOp::RemoveBefore {
                user,
                micros,
                limit,
                reply,
            })
            .await
    }

    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>> {
        check_name(user.as_str())?;
        if !self.with_prefs.contains(user) {
            return Ok(None);
        }
        match self.archive_prefs.get(user.as_str()).map_err(backend)? {
            Some(v) => decode("archive prefs", &v).map(Some),
            None => Ok(None),
        }
    }

    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        check_name(user.as_str())?;
        let value = encode(prefs)?;
        {
            let mut with_prefs = self.with_prefs.write();
            self.archive_prefs
                .insert(user.as_str(), value)
                .map_err(backend)?;
            with_prefs.insert(user.as_str().into());
        }
        self.flush_db().await
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        check_name(user.as_str())?;
        let name = user.clone();
        self.writer
            .call(|reply| WriterOp::RemoveUser { user: name, reply })
            .await?;
        self.newest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(user);
        let mut with_prefs = self.with_prefs.write();
        self.archive_prefs.remove(user.as_str()).map_err(backend)?;
        with_prefs.remove(user.as_str());
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.writer.barrier().await?;
        self.flush_db().await
    }
}

#[async_trait]
impl BlockListStore for SledStore {
    async fn blocklist(&self, user: &BareJid) -> Result<Vec<Jid>> {
        let prefix = user_prefix(user)?;
        self.blocklist
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                std::str::from_utf8(&k[prefix.len()..])
                    .ok()
                    .and_then(crate::addr::parse)
                    .ok_or_else(|| StorageError::Corrupt("blocklist entry is not a JID".into()))
            })
            .collect()
    }

    async fn block(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>> {
        let mut added = Vec::new();
        {
            let mut blocking = self.blocking.write();
            // Listed before the first insert: a user listed with no entries only costs a
            // lookup.
            blocking.insert(user.as_str().into());
            for jid in jids {
                let key = pair_key(user, jid.as_str())?;
                if self
                    .blocklist
                    .insert(key, &[][..])
                    .map_err(backend)?
                    .is_none()
                {
                    added.push(jid.clone());
                }
            }
        }
        // A block that a crash forgets would silently let the contact through again.
        self.flush_db().await?;
        Ok(added)
    }

    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>> {
        let mut removed = Vec::new();
        {
            let mut blocking = self.blocking.write();
            for jid in jids {
                let key = pair_key(user, jid.as_str())?;
                if self.blocklist.remove(key).map_err(backend)?.is_some() {
                    removed.push(jid.clone());
                }
            }
            if self
                .blocklist
                .scan_prefix(user_prefix(user)?)
                .next()
                .is_none()
            {
                blocking.remove(user.as_str());
            }
        }
        self.flush_db().await?;
        Ok(removed)
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<Vec<Jid>> {
        let all = self.blocklist(user).await?;
        BlockListStore::remove_user(self, user).await?;
        self.flush_db().await?;
        Ok(all)
    }

    async fn is_blocked(&self, user: &BareJid, jids: &[&str]) -> Result<bool> {
        // Most users block nobody.
        if !self.blocking.contains(user) {
            return Ok(false);
        }
        let prefix = user_prefix(user)?;
        for jid in jids {
            if jid.as_bytes().contains(&SEP) {
                continue;
            }
            if self
                .blocklist
                .contains_key(id_key(&prefix, jid))
                .map_err(backend)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        let mut blocking = self.blocking.write();
        clear_prefix(&self.blocklist, &user_prefix(user)?)?;
        blocking.remove(user.as_str());
        Ok(())
    }

    fn may_block_anyone(&self, user: &Jid) -> bool {
        self.blocking.contains_name(crate::addr::bare_str(user))
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

#[async_trait]
impl AccountStore for SledStore {
    async fn create(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool> {
        let value = encode(creds)?;
        let swapped = self
            .accounts
            .compare_and_swap(jid.as_str(), None::<&[u8]>, Some(value))
            .map_err(backend)?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.flush_db().await?;
        Ok(true)
    }

    async fn get(&self, jid: &BareJid) -> Result<Option<StoredCredentials>> {
        match self.accounts.get(jid.as_str()).map_err(backend)? {
            Some(v) => decode("account", &v).map(Some),
            None => Ok(None),
        }
    }

    async fn set_credentials(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool> {
        let value = encode(creds)?;
        // Replaces only an existing value; an absent key stays absent.
        let previous = self
            .accounts
            .fetch_and_update(jid.as_str(), |old| old.map(|_| value.clone()))
            .map_err(backend)?;
        if previous.is_none() {
            return Ok(false);
        }
        self.flush_db().await?;
        Ok(true)
    }

    async fn remove(&self, jid: &BareJid) -> Result<bool> {
        if self
            .accounts
            .remove(jid.as_str())
            .map_err(backend)?
            .is_none()
        {
            return Ok(false);
        }
        self.flush_db().await?;
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<BareJid>> {
        // Keys iterate in byte order, which for UTF-8 is the order of `String`.
        self.accounts
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                std::str::from_utf8(&k)
                    .ok()
                    .and_then(crate::addr::parse_bare)
                    .ok_or_else(|| StorageError::Corrupt("account key is not a JID".into()))
            })
            .collect()
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

impl SledStore {
    fn roster_version(&self, user: &BareJid) -> Result<u64> {
        match self.roster_meta.get(user.as_str()).map_err(backend)? {
            Some(v) => decode("roster version", &v),
            None => Ok(0),
        }
    }

    fn roster_counts(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, (u64, usize)>> {
        // Each critical section is one map operation; a poisoned map is consistent.
        self.roster_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The change that made roster `version` added `added` items (-1, 0 or 1): a count
    /// exact for the version before follows it; any other is dropped, as it may miss a
    /// change.
    fn roster_count_changed(&self, user: &BareJid, version: u64, added: isize) {
        let mut counts = self.roster_counts();
        if let Some((v, n)) = counts.get_mut(user) {
            if *v + 1 == version {
                *v = version;
                *n = n.saturating_add_signed(added);
            } else {
                counts.remove(user);
            }
        }
    }
}

#[async_trait]
impl RosterStore for SledStore {
    async fn presence_contacts(&self, user: &BareJid) -> Result<Arc<PresenceContacts>> {
        let version = self.roster_version(user)?;
        let lock = || {
            self.presence_contacts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some((v, contacts)) = lock().get(user)
            && *v == version
        {
            return Ok(contacts.clone());
        }
        // Read at `version` or later: a later change only makes the entry miss next time.
        let roster = self.roster(user).await?;
        let contacts = Arc::new(PresenceContacts::of(&roster.items));
        let mut cache = lock();
        if cache.len() >= PRESENCE_CONTACTS_CACHED {
            cache.clear();
        }
        cache.insert(user.clone(), (roster.version, contacts.clone()));
        Ok(contacts)
    }

    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        let prefix = user_prefix(user)?;
        // Version first: a concurrent change may then show up in the items before the
        // version, which only makes the client see that change once more in a roster
        // push; the other order could hand out a version whose change is missing.
        let version = self.roster_version(user)?;
        let items = self
            .roster
            .scan_prefix(&prefix)
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("roster item", &v)
            })
            .collect::<Result<Vec<RosterItem>>>()?;
        Ok(Roster { version, items })
    }

    async fn item_count(&self, user: &BareJid) -> Result<usize> {
        let version = self.roster_version(user)?;
        if let Some(&(v, n)) = self.roster_counts().get(user)
            && v == version
        {
            return Ok(n);
        }
        let mut n = 0;
        for key in self.roster.scan_prefix(user_prefix(user)?).keys() {
            key.map_err(backend)?;
            n += 1;
        }
        // Kept only when no change came in during the scan: exact for `version`.
        if self.roster_version(user)? == version {
            let mut counts = self.roster_counts();
            if counts.len() >= ROSTER_COUNTS_CACHED {
                counts.clear();
            }
            counts.insert(user.clone(), (version, n));
        }
        Ok(n)
    }

    async fn version(&self, user: &BareJid) -> Result<u64> {
        self.roster_version(user)
    }

    async fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        match self
            .roster
            .get(pair_key(user, contact.as_str())?)
            .map_err(backend)?
        {
            Some(v) => decode("roster item", &v).map(Some),
            None => Ok(None),
        }
    }

    async fn put_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        let key = pair_key(user, item.jid.as_str())?;
        let value = encode(item)?;
        let (version, added) = (&self.roster, &self.roster_meta)
            .transaction(|(roster, meta)| {
                let version = tx_counter(meta, user.as_str().as_bytes(), "roster version")? + 1;
                let added = roster.insert(key.as_slice(), value.as_slice())?.is_none();
                meta.insert(user.as_str().as_bytes(), encode(&version).map_err(abort)?)?;
                Ok((version, added))
            })
            .map_err(tx_error)?;
        self.roster_count_changed(user, version, isize::from(added));
        Ok(version)
    }

    async fn remove_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        let key = pair_key(user, contact.as_str())?;
        let version = (&self.roster, &self.roster_meta)
            .transaction(|(roster, meta)| {
                if roster.remove(key.as_slice())?.is_none() {
                    return Ok(None);
                }
                let version = tx_counter(meta, user.as_str().as_bytes(), "roster version")? + 1;
                meta.insert(user.as_str().as_bytes(), encode(&version).map_err(abort)?)?;
                Ok(Some(version))
            })
            .map_err(tx_error)?;
        if let Some(version) = version {
            self.roster_count_changed(user, version, -1);
        }
        Ok(version)
    }

    async fn pending_in(&self, user: &BareJid) -> Result<Vec<PendingSubscription>> {
        self.pending
            .scan_prefix(user_prefix(user)?)
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("pending subscription", &v)
            })
            .collect()
    }

    async fn add_pending_in(&self, user: &BareJid, pending: &PendingSubscription) -> Result<()> {
        let key = pair_key(user, pending.from.as_str())?;
        self.pending
            .insert(key, encode(pending)?)
            .map_err(backend)?;
        Ok(())
    }

    async fn remove_pending_in(&self, user: &BareJid, contact: &BareJid) -> Result<bool> {
        let key = pair_key(user, contact.as_str())?;
        Ok(self.pending.remove(key).map_err(backend)?.is_some())
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        // A new account of the same name starts at version 0 again.
        self.presence_contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
        self.roster_counts().remove(user);
        let prefix = user_prefix(user)?;
        // sled transactions cannot scan, so the keys are collected first; an item written
        // concurrently with an account removal may survive it.
        let items = keys_with_prefix(&self.roster, &prefix)?;
        let pending = keys_with_prefix(&self.pending, &prefix)?;
        (&self.roster, &self.roster_meta, &self.pending)
            .transaction(|(roster, meta, pend)| {
                for key in &items {
                    roster.remove(key)?;
                }
                for key in &pending {
                    pend.remove(key)?;
                }
                // Keep (and bump) the version so it never goes backwards for this JID.
                if meta.get(user.as_str().as_bytes())?.is_some() {
                    let version = tx_counter(meta, user.as_str().as_bytes(), "roster version")? + 1;
                    meta.insert(user.as_str().as_bytes(), encode(&version).map_err(abort)?)?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

#[async_trait]
impl OfflineStore for SledStore {
    async fn push(
        &self,
        user: &BareJid,
        stanza: &str,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        self.push_at(user, stanza, super::memory::now_secs(), quota)
            .await
    }

    async fn push_at(
        &self,
        user: &BareJid,
        stanza: &str,
        stored_at: u64,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        // generate_id is monotonic across restarts (sled persists it ahead of use), so seq
        // keeps increasing per user; +1 so that seqs start at 1 as in the memory store.
        let seq = self.db.generate_id().map_err(backend)?.saturating_add(1);
        let key = offline_key(user, seq)?;
        let value = encode(&OfflineRecordRef { stored_at, stanza })?;
        let quota = u64::try_from(quota).unwrap_or(u64::MAX);
        // The count lives beside the messages and changes in the same transaction, so
        // concurrent pushes cannot overrun the quota and `count` needs no scan.
        let outcome = (&self.offline, &self.offline_meta)
            .transaction(|(off, meta)| {
                let count = tx_counter(meta, user.as_str().as_bytes(), "offline count")?;
                if count >= quota {
                    return Ok(OfflineStoreOutcome::QuotaExceeded);
                }
                off.insert(key.as_slice(), value.as_slice())?;
                meta.insert(
                    user.as_str().as_bytes(),
                    encode(&(count + 1)).map_err(abort)?,
                )?;
                Ok(OfflineStoreOutcome::Stored)
            })
            .map_err(tx_error)?;
        if outcome == OfflineStoreOutcome::Stored {
            self.offline_counts.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(outcome)
    }

    async fn pushed_durable(&self) -> Result<()> {
        let counts = &self.offline_counts;
        // Read before the flush is asked for: every push counted here had finished its
        // transaction, so the flush that answers covers it.
        let written = counts.written.load(Ordering::SeqCst);
        if counts.durable.load(Ordering::SeqCst) >= written {
            return Ok(());
        }
        // Shares the fsync with the archive writer's current batch and other waiters.
        self.writer.sync().await?;
        counts.durable.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        let prefix = user_prefix(user)?;
        self.offline
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, v) = r.map_err(backend)?;
                let seq_bytes: [u8; 8] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("offline key length".into()))?;
                let record: OfflineRecord = decode("offline message", &v)?;
                Ok(OfflineMessage {
                    seq: u64::from_be_bytes(seq_bytes),
                    stored_at: record.stored_at,
                    stanza: record.stanza,
                })
            })
            .collect()
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let start = user_prefix(user)?;
        let end = offline_key(user, up_to)?;
        let keys = self
            .offline
            .range(start..=end)
            .map(|r| r.map(|(k, _)| k).map_err(backend))
            .collect::<Result<Vec<IVec>>>()?;
        if keys.is_empty() {
            return Ok(());
        }
        self.remove_offline_keys(user, &keys)?;
        // Durable, so that a crash does not deliver these messages a second time.
        self.writer.sync().await
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        check_name(user.as_str())?;
        let count: u64 = match self.offline_meta.get(user.as_str()).map_err(backend)? {
            Some(v) => decode("offline count", &v)?,
            None => 0,
        };
        usize::try_from(count).map_err(|_| StorageError::Corrupt("offline count".into()))
    }

    async fn total(&self) -> Result<Option<u64>> {
        sum_counts(&self.offline_meta, "offline count").map(Some)
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        let keys = keys_with_prefix(&self.offline, &user_prefix(user)?)?;
        self.remove_offline_keys(user, &keys)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

#[async_trait]
impl PushStore for SledStore {
    async fn enable(&self, user: &BareJid, reg: &PushRegistration) -> Result<()> {
        check_name(&reg.node)?;
        let mut key = push_prefix(user, &reg.jid)?;
        key.extend_from_slice(reg.node.as_bytes());
        self.push.insert(key, encode(reg)?).map_err(backend)?;
        // Rare and small; a registration lost in a crash would silently stop pushes.
        self.flush_db().await
    }

    async fn disable(&self, user: &BareJid, jid: &Jid, node: Option<&str>) -> Result<usize> {
        let mut key = push_prefix(user, jid)?;
        let keys = match node {
            Some(node) => {
                check_name(node)?;
                key.extend_from_slice(node.as_bytes());
                match self.push.contains_key(&key).map_err(backend)? {
                    true => vec![IVec::from(key)],
                    false => Vec::new(),
                }
            }
            None => keys_with_prefix(&self.push, &key)?,
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let mut batch = ::sled::Batch::default();
        for k in &keys {
            batch.remove(k);
        }
        self.push.apply_batch(batch).map_err(backend)?;
        self.flush_db().await?;
        Ok(keys.len())
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<PushRegistration>> {
        self.push
            .scan_prefix(user_prefix(user)?)
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("push registration", &v)
            })
            .collect()
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        clear_prefix(&self.push, &user_prefix(user)?)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

/// `<service>\0<room jid>`: a service's rooms are one prefix.
fn room_key(jid: &BareJid) -> Result<Vec<u8>> {
    pair_key(&BareJid::from(jid.domain()), jid.as_str())
}

#[async_trait]
impl RoomStore for SledStore {
    async fn put_room(&self, room: &StoredRoom) -> Result<()> {
        self.muc_rooms
            .insert(room_key(&room.jid)?, encode(room)?)
            .map_err(backend)?;
        // Rare and small; a room configuration lost in a crash would reopen it to anyone.
        self.flush_db().await
    }

    async fn room(&self, jid: &BareJid) -> Result<Option<StoredRoom>> {
        match self.muc_rooms.get(room_key(jid)?).map_err(backend)? {
            Some(v) => Ok(Some(decode("room", &v)?)),
            None => Ok(None),
        }
    }

    async fn remove_room(&self, jid: &BareJid) -> Result<bool> {
        let removed = self
            .muc_rooms
            .remove(room_key(jid)?)
            .map_err(backend)?
            .is_some();
        if removed {
            self.flush_db().await?;
        }
        Ok(removed)
    }

    async fn rooms(&self, service: &DomainRef, limit: usize) -> Result<Vec<StoredRoom>> {
        self.muc_rooms
            .scan_prefix(user_prefix(&BareJid::from(service))?)
            .take(limit)
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("room", &v)
            })
            .collect()
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> crate::addr::BareJid {
        crate::addr::parse_bare(s).unwrap()
    }

    #[test]
    fn decode_rejects_bad_values() {
        assert!(matches!(
            decode::<u64>("x", &[]),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<u64>("x", &[9, 1]),
            Err(StorageError::Corrupt(_))
        ));
        let mut v = encode(&5u64).unwrap();
        assert_eq!(decode::<u64>("x", &v).unwrap(), 5);
        v.push(0);
        assert!(matches!(
            decode::<u64>("x", &v),
            Err(StorageError::Corrupt(_))
        ));
        // A truncated string must be an error, not a panic.
        let s = encode("hello").unwrap();
        assert!(matches!(
            decode::<String>("x", &s[..3]),
            Err(StorageError::Corrupt(_))
        ));
    }

    thread_local! {
        static SHARED: std::cell::RefCell<HashMap<String, SharedStanza>> = Default::default();
    }

    /// One buffer per text, as the MAM hooks share a message's stanza between the
    /// sender's and the recipient's archive when both serialize to the same text.
    fn shared(stanza: &str) -> SharedStanza {
        SHARED.with_borrow_mut(|texts| {
            texts
                .entry(stanza.to_owned())
                .or_insert_with(|| stanza.into())
                .clone()
        })
    }

    fn archived<'a>(with: &'a str, stanza: &str, micros: u64) -> NewArchived<'a> {
        NewArchived {
            with,
            stanza: shared(stanza),
            micros,
        }
    }

    fn row(user: &str, with: &str, stanza: &str, seq: u64) -> ArchiveRow {
        let pos = ArchivePos { micros: 1, seq };
        let row = ArchiveRow::new(j(user).as_str(), with, &shared(stanza), pos);
        let prefix = user_prefix(&j(user)).unwrap();
        assert_eq!(row.key[..], pos_key(&prefix, pos)[..]);
        assert_eq!(row.with_prefix(), with_prefix(&prefix, with).unwrap());
        assert!(row.has_with_prefix(&with_prefix(&prefix, with).unwrap()));
        assert!(!row.has_with_prefix(&with_prefix(&prefix, "other@x").unwrap()));
        row
    }

    fn is_reference(value: &[u8]) -> bool {
        matches!(
            record::parse(value).unwrap().body,
            record::Body::Reference(_)
        )
    }

    #[test]
    fn only_the_counterpart_of_a_row_becomes_a_reference() {
        let mut rows = vec![
            row("s@x", "r@x", "<m>1</m>", 1),
            row("s@x", "t@x", "<m>1</m>", 2),
            // The recipient's copy of the first message: a reference to it.
            row("r@x", "s@x/a", "<m>1</m>", 3),
            // Another identical one: its counterpart is taken.
            row("r@x", "s@x/a", "<m>1</m>", 4),
            // A different stanza (hooks changed it): stored in full.
            row("t@x", "s@x/a", "<m>2</m>", 5),
            // In one archive with itself as the contact: never shared.
            row("u@x", "u@x/a", "<m>1</m>", 6),
            row("u@x", "u@x/b", "<m>1</m>", 7),
            // The counterpart of a message to t@x with the same text, but not the same
            // stanza (not shared by the hooks): stored in full, never compared.
            row("t@x", "s@x/a", "<m>3</m>", 8),
            row("s@x", "t@x", "<m>3</m>", 9),
        ];
        rows[8].stanza = Some("<m>3</m>".into());
        share_copies(&mut rows);
        let refs: Vec<bool> = rows.iter().map(|r| is_reference(&r.value())).collect();
        assert_eq!(
            refs,
            [false, false, true, false, false, false, false, false, false]
        );
        let source_value = rows[0].value();
        let source = record::parse(&source_value).unwrap();
        assert_eq!(
            source.body,
            record::Body::Stanza {
                stanza: "<m>1</m>",
                copy: Some(&rows[2].key[..])
            }
        );
        assert_eq!(
            record::parse(&rows[2].value()).unwrap().body,
            record::Body::Reference(&rows[0].key)
        );
    }

    fn at(micros: u64, seq: u64) -> ArchivePos {
        ArchivePos { micros, seq }
    }

    fn chat(user: &str, with: &str, stanza: &str, pos: ArchivePos) -> ArchiveRow {
        ArchiveRow::new(j(user).as_str(), with, &shared(stanza), pos)
    }

    /// Writes rows as one writer batch does.
    fn write_batch(store: &SledStore, round: &mut Round, mut rows: Vec<ArchiveRow>) {
        store.trees.write(&mut rows, round).unwrap();
        store.trees.save_counts(round);
    }

    /// The values of a user's entries, oldest first, in every partition.
    fn entries(store: &SledStore, user: &str) -> Vec<Vec<u8>> {
        let prefix = user_prefix(&j(user)).unwrap();
        let partitions = store.archive.of_user(&prefix).unwrap();
        partitions
            .overlapping(ArchivePos::MIN, ArchivePos::MAX)
            .flat_map(|p| p.keyspace.prefix(&prefix))
            .map(|g| g.into_inner().unwrap().1.to_vec())
            .collect()
    }

    async fn page(store: &SledStore, user: &str, q: ArchiveQuery) -> (Vec<String>, bool) {
        let page = ArchiveStore::query(store, &j(user), &q).await.unwrap();
        let texts = page.messages.into_iter().map(|m| m.stanza).collect();
        (texts, page.more)
    }

    fn texts(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|i| format!("<m>{i}</m>")).collect()
    }

    /// A batch's messages for one archive are one entry (a chunk), read message by
    /// message: pages from either end, ranges starting and ending inside chunks, across
    /// chunks, by contact and by UID.
    #[tokio::test]
    async fn a_batch_is_one_entry_per_archive_read_message_by_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut round = Round::default();
        let with = |i: u64| if i % 2 == 1 { "a@x/r" } else { "b@x/r" };
        let mut rows: Vec<ArchiveRow> = (1..=7)
            .map(|i| chat("u@x", with(i), &format!("<m>{i}</m>"), at(10, i)))
            .collect();
        rows.push(chat("v@x", "a@x/r", "<m>v</m>", at(10, 8)));
        write_batch(&store, &mut round, rows);
        let stored = entries(&store, "u@x");
        assert_eq!(stored.len(), 1);
        assert!(chunk::is_chunk(&stored[0]));
        // One message for an archive: a plain record, as before chunks.
        assert!(!chunk::is_chunk(&entries(&store, "v@x")[0]));
        // The next batch: a second chunk.
        let rows = (8..=9)
            .map(|i| chat("u@x", with(i), &format!("<m>{i}</m>"), at(10, i)))
            .collect();
        write_batch(&store, &mut round, rows);
        assert_eq!(entries(&store, "u@x").len(), 2);

        let q = |from: u64, to: u64, max: usize, from_end: bool| ArchiveQuery {
            from: at(10, from),
            to: at(10, to),
            max,
            from_end,
            ..ArchiveQuery::default()
        };
        assert_eq!(
            page(&store, "u@x", q(0, 99, 3, false)).await,
            (texts(1..=3), true)
        );
        assert_eq!(
            page(&store, "u@x", q(0, 99, 3, true)).await,
            (texts(7..=9), true)
        );
        assert_eq!(
            page(&store, "u@x", q(0, 99, 20, false)).await,
            (texts(1..=9), false)
        );
        // Inside the first chunk, and across the two, both ways.
        assert_eq!(
            page(&store, "u@x", q(3, 5, 20, false)).await,
            (texts(3..=5), false)
        );
        assert_eq!(
            page(&store, "u@x", q(3, 5, 20, true)).await,
            (texts(3..=5), false)
        );
        assert_eq!(
            page(&store, "u@x", q(6, 8, 20, false)).await,
            (texts(6..=8), false)
        );
        assert_eq!(
            page(&store, "u@x", q(6, 8, 2, true)).await,
            (texts(7..=8), true)
        );
        let by_contact = ArchiveQuery {
            with: Some("a@x".into()),
            max: 20,
            ..ArchiveQuery::default()
        };
        let odd: Vec<String> = [1, 3, 5, 7, 9]
            .iter()
            .map(|i| format!("<m>{i}</m>"))
            .collect();
        assert_eq!(
            page(&store, "u@x", by_contact.clone()).await,
            (odd.clone(), false)
        );
        let newest_two = ArchiveQuery {
            max: 2,
            from_end: true,
            ..by_contact
        };
        assert_eq!(
            page(&store, "u@x", newest_two).await,
            (odd[3..].to_vec(), true)
        );
        let id = store.id_cipher.id(at(10, 4));
        let got = ArchiveStore::get(&store, &j("u@x"), &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.id, got.stanza), (id, "<m>4</m>".to_string()));
        let missing = store.id_cipher.id(at(10, 10));
        assert!(
            ArchiveStore::get(&store, &j("u@x"), &missing)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Messages on both sides of partition starts read as one archive: pages both ways
    /// and across the starts, by contact and by UID; a batch split between partitions;
    /// a reference from one partition into another; edits and removals in a closed
    /// partition; and all of it again after reopening.
    #[tokio::test]
    async fn an_archive_reads_the_same_across_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let u = j("u@x");
        let with = |i: u64| if i % 2 == 1 { "a@x/r" } else { "b@x/r" };
        let batch = |range: std::ops::RangeInclusive<u64>| -> Vec<ArchiveRow> {
            range
                .map(|i| chat("u@x", with(i), &format!("<m>{i}</m>"), at(i, 0)))
                .collect()
        };
        let q = |from: u64, to: u64, max: usize, from_end: bool| ArchiveQuery {
            from: at(from, 0),
            to: at(to, 0),
            max,
            from_end,
            ..ArchiveQuery::default()
        };
        let by_contact = ArchiveQuery {
            with: Some("a@x".into()),
            max: 20,
            ..ArchiveQuery::default()
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            let mut round = Round::default();
            write_batch(&store, &mut round, batch(1..=4));
            store.archive.start_next(at(5, 0), 1 << 20).unwrap();
            store.archive.start_next(at(8, 0), 1 << 20).unwrap();
            // One batch across the start of partition 2, with a message from v to w
            // whose record (v's) is in partition 1 and reference (w's) in 2.
            let mut rows = batch(5..=10);
            rows.push(chat("v@x", "w@x/r", "<m>vw</m>", at(7, 1)));
            rows.push(chat("w@x", "v@x/r", "<m>vw</m>", at(8, 1)));
            write_batch(&store, &mut round, rows);
            write_batch(&store, &mut round, batch(11..=12));
            let parts = |user: &str| {
                let prefix = user_prefix(&j(user)).unwrap();
                store
                    .archive
                    .of_user(&prefix)
                    .unwrap()
                    .overlapping(ArchivePos::MIN, ArchivePos::MAX)
                    .map(|p| p.keyspace.name().to_string())
                    .collect::<Vec<_>>()
            };
            assert_eq!(parts("u@x"), ["archive", "archive.1", "archive.2"]);
            assert_eq!(parts("v@x"), ["archive", "archive.1"]);
            assert_eq!(parts("w@x"), ["archive", "archive.2"]);
            // u: 1-4 in partition 0, 5-7 in 1, 8-12 in 2, two entries in 2.
            assert_eq!(entries(&store, "u@x").len(), 4);
            assert!(is_reference(&entries(&store, "w@x")[0]));
            assert_eq!(store.archive.stored_high().unwrap(), Some(at(12, 0)));
            // Partitions start after each other only.
            assert!(store.archive.start_next(at(8, 0), 1 << 20).is_err());

            // Edited in a closed partition: read back from there.
            let id = store.id_cipher.id(at(6, 0));
            assert!(
                ArchiveStore::replace(&store, &u, &id, "<m>six</m>")
                    .await
                    .unwrap()
            );
            let got = ArchiveStore::get(&store, &u, &id).await.unwrap().unwrap();
            assert_eq!(got.stanza, "<m>six</m>");
            assert!(
                ArchiveStore::replace(&store, &u, &id, "<m>6</m>")
                    .await
                    .unwrap()
            );
            // w's copy outlives v's archive.
            ArchiveStore::remove_user(&store, &j("v@x")).await.unwrap();
            assert_eq!(parts("v@x"), ["archive"]);
            assert_eq!(
                page(&store, "w@x", ArchiveQuery::default()).await,
                (vec!["<m>vw</m>".to_string()], false)
            );
        }
        // Read with the partitions as loaded from the store.
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.archive.list().len(), 3);
            let all = (texts(1..=12), false);
            assert_eq!(page(&store, "u@x", q(0, 99, 20, false)).await, all);
            assert_eq!(page(&store, "u@x", q(0, 99, 20, true)).await, all);
            assert_eq!(
                page(&store, "u@x", q(0, 99, 3, true)).await,
                (texts(10..=12), true)
            );
            for from_end in [false, true] {
                assert_eq!(
                    page(&store, "u@x", q(3, 9, 20, from_end)).await,
                    (texts(3..=9), false)
                );
            }
            // Pages that end or start at a partition's start.
            assert_eq!(
                page(&store, "u@x", q(0, 8, 2, true)).await,
                (texts(7..=8), true)
            );
            assert_eq!(
                page(&store, "u@x", q(5, 99, 2, false)).await,
                (texts(5..=6), true)
            );
            let odd: Vec<String> = (1..=12)
                .filter(|i| i % 2 == 1)
                .map(|i| format!("<m>{i}</m>"))
                .collect();
            assert_eq!(page(&store, "u@x", by_contact.clone()).await, (odd, false));
            for i in [2, 6, 9] {
                let id = store.id_cipher.id(at(i, 0));
                let got = ArchiveStore::get(&store, &u, &id).await.unwrap().unwrap();
                assert_eq!(got.stanza, format!("<m>{i}</m>"));
            }
            assert_eq!(
                page(&store, "w@x", ArchiveQuery::default()).await,
                (vec!["<m>vw</m>".to_string()], false)
            );
            assert_eq!(ArchiveStore::count(&store, &u).await.unwrap(), 12);
        }
        let store = SledStore::open(dir.path()).unwrap();
        // Across partitions 0 and 1.
        assert_eq!(
            ArchiveStore::remove_before(&store, &u, 6, 100)
                .await
                .unwrap(),
            5
        );
        assert_eq!(
            page(&store, "u@x", q(0, 99, 20, false)).await,
            (texts(6..=12), false)
        );
        ArchiveStore::remove_user(&store, &u).await.unwrap();
        assert!(entries(&store, "u@x").is_empty());
        let prefix = user_prefix(&u).unwrap();
        assert_eq!(store.archive.parts().prefix(&prefix).count(), 0);
    }

    /// The writer starts a partition once the newest one has grown to the configured
    /// size, after every position written; new messages go there, and the archive reads
    /// as one before and after reopening.
    #[tokio::test]
    async fn the_writer_starts_a_partition_when_the_newest_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let u = j("u@x");
        let mut appended = 0;
        async fn append(store: &SledStore, user: &BareJid, i: u64) -> ArchivePos {
            let stanza = format!("<m>{i}</m>");
            let micros = crate::datetime::now_micros();
            let msg = archived("a@x/r", &stanza, micros);
            ArchiveStore::append(store, user, msg).await.unwrap().pos
        }
        let partitions = {
            let store = SledStore::open(dir.path()).unwrap();
            for _ in 0..3 {
                appended += 1;
                append(&store, &u, appended).await;
            }
            assert_eq!(store.archive.list().len(), 1);
            let first = store.archive.current().keyspace;
            // Nothing on disk yet: the partition's messages are in its memtable.
            assert_eq!(first.table_count(), 0);
            store.partition_bytes.store(1, Ordering::Relaxed);
            // The writer looks after a round (after answering it): append until it has.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while store.archive.list().len() < 2 {
                assert!(std::time::Instant::now() < deadline, "no new partition");
                appended += 1;
                append(&store, &u, appended).await;
            }
            // Settled: the writer checks the size after each round, and a barrier is a
            // round of its own after those of the appends.
            store.set_archive_partition_mb(1024);
            store.writer.barrier().await.unwrap();
            let parts = store.archive.list();
            let started = store.archive.current();
            // The closed partition is written out as one table.
            while first.table_count() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "partition 0 not written"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(first.table_count(), 1);
            // The next starts only when this one is full, which it never is here.
            appended += 1;
            let pos = append(&store, &u, appended).await;
            assert!(pos >= started.start);
            store.writer.barrier().await.unwrap();
            assert_eq!(store.archive.list().len(), parts.len());
            // Every message is in the partition of its position.
            let prefix = user_prefix(&u).unwrap();
            let mut stored = 0;
            for (n, part) in parts.iter().enumerate() {
                let end = parts.get(n + 1).map_or(ArchivePos::MAX, |next| next.start);
                for entry in part.keyspace.prefix(&prefix) {
                    let (key, value) = entry.into_inner().unwrap();
                    for (pos, _) in chunk::rows(&key, &value).unwrap() {
                        assert!(part.start <= pos && pos < end, "{pos:?} in {n}");
                        stored += 1;
                    }
                }
            }
            assert_eq!(stored, appended);
            parts.len()
        };
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.archive.list().len(), partitions);
        let all = ArchiveQuery {
            max: 10_000,
            ..ArchiveQuery::default()
        };
        assert_eq!(page(&store, "u@x", all).await, (texts(1..=appended), false));
    }

    /// Every user's hash the same (as if they collided): the batch still writes each
    /// archive's messages in order, references included; only more entries.
    #[tokio::test]
    async fn users_whose_hashes_collide_get_their_own_entries() {
        #[derive(Default)]
        struct Same;
        impl std::hash::Hasher for Same {
            fn finish(&self) -> u64 {
                7
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut round = Round::default();
        // Interleaved by position: u, v, u, v, ... with v's the recipient's copies.
        let mut rows = Vec::new();
        for i in 1..=4 {
            let text = format!("<m>{i}</m>");
            rows.push(chat("u@x", "v@x/r", &text, at(10, 2 * i - 1)));
            rows.push(chat("v@x", "u@x/r", &text, at(10, 2 * i)));
        }
        rows.reverse();
        let same = std::hash::BuildHasherDefault::<Same>::default();
        store
            .trees
            .write_hashed(&mut rows, &mut round, &same)
            .unwrap();
        store.trees.save_counts(&mut round);
        let all = ArchiveQuery {
            max: 20,
            ..ArchiveQuery::default()
        };
        for user in ["u@x", "v@x"] {
            assert_eq!(page(&store, user, all.clone()).await, (texts(1..=4), false));
        }
        // Reversed, u's copies came second: u's archive holds the references.
        let mut references = 0;
        for entry in store
            .archive
            .first()
            .prefix(user_prefix(&j("u@x")).unwrap())
        {
            let (key, value) = entry.into_inner().unwrap();
            for (_, range) in chunk::rows(&key, &value).unwrap() {
                references += usize::from(is_reference(&value[range]));
            }
        }
        assert_eq!(references, 4);
    }

    /// Replacing and expiring messages inside chunks, and a message that reaches the
    /// writer behind the archive's newest: each changes only its own message.
    #[tokio::test]
    async fn messages_inside_chunks_change_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut round = Round::default();
        let rows = (1..=6)
            .filter(|i| *i != 4)
            .map(|i| chat("u@x", "a@x/r", &format!("<m>{i}</m>"), at(i, i)))
            .collect();
        write_batch(&store, &mut round, rows);
        // Behind the newest: merged into the chunk that covers it.
        write_batch(
            &store,
            &mut round,
            vec![chat("u@x", "a@x/r", "<m>4</m>", at(4, 4))],
        );
        assert_eq!(entries(&store, "u@x").len(), 1);
        let all = ArchiveQuery {
            max: 20,
            ..ArchiveQuery::default()
        };
        assert_eq!(page(&store, "u@x", all.clone()).await.0, texts(1..=6));

        let id = store.id_cipher.id(at(3, 3));
        assert!(
            ArchiveStore::replace(&store, &j("u@x"), &id, "<m>x</m>")
                .await
                .unwrap()
        );
        let mut expected = texts(1..=6);
        expected[2] = "<m>x</m>".into();
        assert_eq!(page(&store, "u@x", all.clone()).await.0, expected);

        // Expiry takes the oldest two (the chunk's key message among them)...
        assert_eq!(
            ArchiveStore::remove_before(&store, &j("u@x"), 3, 100)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            page(&store, "u@x", all.clone()).await.0,
            expected[2..].to_vec()
        );
        assert_eq!(ArchiveStore::count(&store, &j("u@x")).await.unwrap(), 4);
        // ...and, with a limit, no more than it.
        assert_eq!(
            ArchiveStore::remove_before(&store, &j("u@x"), 100, 1)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            page(&store, "u@x", all.clone()).await.0,
            expected[3..].to_vec()
        );
        let newest = ArchiveQuery {
            max: 1,
            from_end: true,
            ..all.clone()
        };
        assert_eq!(page(&store, "u@x", newest).await, (texts(6..=6), true));
        assert_eq!(
            ArchiveStore::remove_before(&store, &j("u@x"), 100, 100)
                .await
                .unwrap(),
            3
        );
        assert!(page(&store, "u@x", all).await.0.is_empty());
        assert!(entries(&store, "u@x").is_empty());
    }

    /// A store marked with schema 1 (before chunks) or 2 (before partitions) opens and
    /// is marked 3, so that a build that cannot read them refuses it from then on, with
    /// the highest position recorded for the next partition to start after.
    #[test]
    fn older_schemas_are_marked_3_on_open() {
        for older in [1u32, 2] {
            let dir = tempfile::tempdir().unwrap();
            let before = crate::datetime::now_micros();
            {
                let store = SledStore::open(dir.path()).unwrap();
                // A new store has written nothing, so partitions may start anywhere.
                assert_eq!(store.archive.stored_high().unwrap(), None);
                let meta = store.db.open_tree("meta").unwrap();
                meta.insert(SCHEMA_VERSION_KEY, &older.to_be_bytes())
                    .unwrap();
                store.db.flush().unwrap();
            }
            let store = SledStore::open(dir.path()).unwrap();
            let meta = store.db.open_tree("meta").unwrap();
            let marked = meta.get(SCHEMA_VERSION_KEY).unwrap().unwrap();
            assert_eq!(marked.as_ref(), &3u32.to_be_bytes(), "from {older}");
            // Its messages' positions came from the clock: partitions start after now.
            let high = store.archive.stored_high().unwrap().unwrap();
            assert!(high.micros >= before, "from {older}");
        }
    }

    /// References into chunks resolve, and survive their records' archive going: the
    /// references of one chunk all become records in the same write.
    #[tokio::test]
    async fn references_into_chunks_outlive_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut round = Round::default();
        let mut rows = Vec::new();
        for i in 1..=4 {
            let stanza = format!("<m>{i}</m>");
            rows.push(chat("s@x", "r@x/a", &stanza, at(i, 2 * i)));
            rows.push(chat("r@x", "s@x/a", &stanza, at(i, 2 * i + 1)));
        }
        write_batch(&store, &mut round, rows);
        let stored = entries(&store, "r@x");
        assert_eq!(stored.len(), 1);
        let prefix = user_prefix(&j("r@x")).unwrap();
        let references = chunk::rows(&pos_key(&prefix, at(1, 3)), &stored[0])
            .unwrap()
            .into_iter()
            .filter(|(_, range)| is_reference(&stored[0][range.clone()]))
            .count();
        assert_eq!(references, 4);
        // Each names the sender's chunk, which a point read finds.
        let chunk_key = pos_key(&user_prefix(&j("s@x")).unwrap(), at(1, 2));
        for (_, range) in chunk::rows(&pos_key(&prefix, at(1, 3)), &stored[0]).unwrap() {
            let target = record::reference_target(&stored[0][range]).unwrap();
            assert_eq!(target, chunk_key.as_slice());
        }
        let all = ArchiveQuery {
            max: 20,
            ..ArchiveQuery::default()
        };
        assert_eq!(page(&store, "r@x", all.clone()).await.0, texts(1..=4));
        // A correction in the sender's archive: the recipient keeps what it got.
        let id = store.id_cipher.id(at(3, 6));
        assert!(
            ArchiveStore::replace(&store, &j("s@x"), &id, "<m>x</m>")
                .await
                .unwrap()
        );
        let mut corrected = texts(1..=4);
        corrected[2] = "<m>x</m>".into();
        assert_eq!(page(&store, "s@x", all.clone()).await.0, corrected);
        assert_eq!(page(&store, "r@x", all.clone()).await.0, texts(1..=4));
        ArchiveStore::remove_user(&store, &j("s@x")).await.unwrap();
        assert!(entries(&store, "s@x").is_empty());
        assert_eq!(page(&store, "r@x", all).await.0, texts(1..=4));
    }

    async fn read(store: &SledStore, user: BareJid) -> Vec<String> {
        let all = ArchiveQuery {
            max: 100,
            ..ArchiveQuery::default()
        };
        let page = ArchiveStore::query(store, &user, &all).await.unwrap();
        page.messages.into_iter().map(|m| m.stanza).collect()
    }

    /// Messages between two local users, as the MAM hooks archive them (the sender's
    /// copy, then the recipient's, deferred): each archive reads the stanza whatever
    /// happens to the other's copy (replaced, expired, the account removed, a restart).
    #[tokio::test]
    async fn a_message_stored_once_for_two_users_outlives_either_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        let (s, r) = (j("s@x"), j("r@x"));
        let stanza = |i: u32| format!("<message to='r@x'><body>{i}</body></message>");
        let mut sent = Vec::new();
        for i in 0..20 {
            let text = stanza(i);
            let a = store
                .append_deferred(&s, archived("r@x", &text, 10 + u64::from(i)))
                .await
                .unwrap();
            let b = store
                .append_deferred(&r, archived("s@x/1", &text, 10 + u64::from(i)))
                .await
                .unwrap();
            sent.push((a, b));
        }
        store.appended_durable().await.unwrap();
        let r_prefix = user_prefix(&r).unwrap();
        let shared = sent
            .iter()
            .filter(|(_, b)| {
                let row = chunk::row_at(&store.archive, &pos_key(&r_prefix, b.pos))
                    .unwrap()
                    .unwrap();
                is_reference(row.value())
            })
            .count();
        assert!(shared > 0, "no message was stored once");
        let texts = |page: ArchivePage| -> Vec<String> {
            page.messages.into_iter().map(|m| m.stanza).collect()
        };
        let expected: Vec<String> = (0..20).map(stanza).collect();
        assert_eq!(read(&store, r.clone()).await, expected);
        assert_eq!(read(&store, s.clone()).await, expected);
        let q = ArchiveQuery {
            with: Some("s@x".into()),
            max: 100,
            ..ArchiveQuery::default()
        };
        assert_eq!(
            texts(ArchiveStore::query(&store, &r, &q).await.unwrap()),
            expected
        );
        let got = ArchiveStore::get(&store, &r, &sent[0].1.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.id, got.stanza), (sent[0].1.id.clone(), stanza(0)));

        // Either side's copy replaced: the other keeps what it had.
        assert!(
            ArchiveStore::replace(&store, &s, &sent[0].0.id, "<s/>")
                .await
                .unwrap()
        );
        assert!(
            ArchiveStore::replace(&store, &r, &sent[1].1.id, "<r/>")
                .await
                .unwrap()
        );
        let mut s_now = expected.clone();
        s_now[0] = "<s/>".into();
        let mut r_now = expected.clone();
        r_now[1] = "<r/>".into();
        assert_eq!(read(&store, s.clone()).await, s_now);
        assert_eq!(read(&store, r.clone()).await, r_now);

        // The sender's oldest expire, then the account goes: the recipient keeps all.
        let cut = sent[5].0.pos.micros;
        assert_eq!(
            ArchiveStore::remove_before(&store, &s, cut, 100)
                .await
                .unwrap(),
            5
        );
        assert_eq!(read(&store, s.clone()).await, s_now[5..].to_vec());
        assert_eq!(read(&store, r.clone()).await, r_now);
        ArchiveStore::remove_user(&store, &s).await.unwrap();
        assert!(read(&store, s.clone()).await.is_empty());
        assert_eq!(read(&store, r.clone()).await, r_now);
        drop(store);
        store = SledStore::open(dir.path()).unwrap();
        assert_eq!(read(&store, r.clone()).await, r_now);
        assert_eq!(ArchiveStore::count(&store, &r).await.unwrap(), 20);

        // The recipient's copies going first leave the sender's records alone.
        let t = j("t@x");
        let text = stanza(99);
        store
            .append_deferred(&t, archived("r@x", &text, 100))
            .await
            .unwrap();
        store
            .append_deferred(&r, archived("t@x/1", &text, 100))
            .await
            .unwrap();
        store.appended_durable().await.unwrap();
        ArchiveStore::remove_user(&store, &r).await.unwrap();
        assert_eq!(read(&store, t.clone()).await, vec![text]);
        ArchiveStore::remove_user(&store, &t).await.unwrap();
    }

    /// Records written before format 2 (postcard, with their UID) read and change as before.
    #[tokio::test]
    async fn format_1_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let prefix = user_prefix(&j("u@x")).unwrap();
        let pos = ArchivePos { micros: 5, seq: 1 };
        let legacy = ArchiveRecordRef {
            id: "0123456789abcdef01234567",
            with: "c@y/r",
            stanza: "<message/>",
        };
        store
            .archive
            .first()
            .insert(pos_key(&prefix, pos), encode(&legacy).unwrap())
            .unwrap();
        store
            .archive_ids
            .insert(id_key(&prefix, legacy.id), &pos.to_bytes()[..])
            .unwrap();
        let page = ArchiveStore::query(&store, &j("u@x"), &ArchiveQuery::default())
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(
            (page.messages[0].id.as_str(), page.messages[0].with.as_str()),
            (legacy.id, legacy.with)
        );
        assert!(
            ArchiveStore::replace(&store, &j("u@x"), legacy.id, "<m/>")
                .await
                .unwrap()
        );
        let m = ArchiveStore::get(&store, &j("u@x"), legacy.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((m.id.as_str(), m.stanza.as_str()), (legacy.id, "<m/>"));
        assert_eq!(
            ArchiveStore::remove_before(&store, &j("u@x"), 6, 10)
                .await
                .unwrap(),
            1
        );
        assert!(
            store
                .archive_ids
                .get(id_key(&prefix, legacy.id))
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn archive_uids_are_encrypted_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = SledStore::open(dir.path()).unwrap();
            let a = ArchiveStore::append(&store, &j("u@x"), archived("c@y", "m1", 7))
                .await
                .unwrap();
            let b = ArchiveStore::append(&store, &j("u@x"), archived("c@y", "m2", 7))
                .await
                .unwrap();
            (a, b)
        };
        for stamp in [&a, &b] {
            assert_eq!(stamp.id.len(), 32, "{stamp:?}");
            assert!(
                stamp
                    .id
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            );
        }
        // Neighbouring positions give unrelated UIDs: nothing about the archive shows.
        assert_eq!(a.pos.micros, b.pos.micros);
        let common = a.id.bytes().zip(b.id.bytes()).take_while(|(x, y)| x == y);
        assert!(common.count() < 8, "{a:?} {b:?}");
        // The key survives a restart, so old UIDs still resolve.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.position(&j("u@x"), &a.id).await.unwrap(), Some(a.pos));
        let got = ArchiveStore::get(&store, &j("u@x"), &b.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.id.as_str(), got.stanza.as_str()),
            (b.id.as_str(), "m2")
        );
        // Another user's UID, a made-up one, and other spellings are no message.
        assert_eq!(store.position(&j("v@x"), &a.id).await.unwrap(), None);
        assert_eq!(
            store.position(&j("u@x"), &"0".repeat(32)).await.unwrap(),
            None
        );
        let upper = a.id.to_ascii_uppercase();
        assert_eq!(store.position(&j("u@x"), &upper).await.unwrap(), None);
        assert_eq!(store.position(&j("u@x"), &a.id[..31]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn older_random_uids_still_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let stamp = ArchiveStore::append(&store, &j("u@x"), archived("c@y", "m1", 7))
            .await
            .unwrap();
        // What a database from before encrypted UIDs holds for a message.
        let legacy = "0123456789abcdef01234567";
        let prefix = user_prefix(&j("u@x")).unwrap();
        store
            .archive_ids
            .insert(id_key(&prefix, legacy), &stamp.pos.to_bytes()[..])
            .unwrap();
        assert_eq!(
            store.position(&j("u@x"), legacy).await.unwrap(),
            Some(stamp.pos)
        );
        assert_eq!(
            store
                .position(&j("u@x"), "0123456789abcdef0123456f")
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_archive_kept_in_sled_moves_into_fjall() {
        let dir = tempfile::tempdir().unwrap();
        let pos = ArchivePos {
            micros: 1_000,
            seq: 3,
        };
        {
            // What an earlier version wrote: the archive trees inside sled.
            let store = SledStore::open(dir.path()).unwrap();
            let id = store.id_cipher.id(pos);
            let prefix = user_prefix(&j("u@x")).unwrap();
            let archive = store.db.open_tree("archive").unwrap();
            let record = ArchiveRecordRef {
                id: &id,
                with: "c@y/r",
                stanza: "<message/>",
            };
            archive
                .insert(pos_key(&prefix, pos), encode(&record).unwrap())
                .unwrap();
            let with = store.db.open_tree("archive_with").unwrap();
            let with_key = pos_key(&with_prefix(&prefix, "c@y/r").unwrap(), pos);
            with.insert(with_key, &[][..]).unwrap();
            let meta = store.db.open_tree("archive_meta").unwrap();
            meta.insert("u@x", encode(&1u64).unwrap()).unwrap();
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let names = store.db.tree_names();
        assert!(
            ARCHIVE_KEYSPACES
                .iter()
                .all(|name| !names.iter().any(|n| &n[..] == name.as_bytes())),
            "sled trees left: {names:?}"
        );
        assert_eq!(ArchiveStore::count(&store, &j("u@x")).await.unwrap(), 1);
        let q = ArchiveQuery {
            with: Some("c@y".into()),
            ..ArchiveQuery::default()
        };
        let page = ArchiveStore::query(&store, &j("u@x"), &q).await.unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].pos, pos);
        assert_eq!(page.messages[0].stanza, "<message/>");
        // Still there after another restart, with nothing to move any more.
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(ArchiveStore::count(&store, &j("u@x")).await.unwrap(), 1);
    }

    /// The run index (`RunMark`) against the memory store, which filters every message:
    /// random conversations with three contacts, restarts in between (runs read back from
    /// disk), retention cuts, and `with` pages from both ends over random windows.
    #[tokio::test]
    async fn with_pages_from_runs_match_a_full_scan() {
        use crate::storage::memory::MemoryStore;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let dir = tempfile::tempdir().unwrap();
        let memory = MemoryStore::default();
        let mut sled = SledStore::open(dir.path()).unwrap();
        let user = j("u@x");
        let contacts = ["a@y/1", "a@y/2", "b@y", "c@z/r"];
        let mut micros = 1_000u64;
        let mut contact = 0;
        for round in 0..6 {
            for i in 0..150 {
                // Mostly runs: the contact changes about once in five messages.
                if rng.random_range(0..5) == 0 {
                    contact = rng.random_range(0..contacts.len());
                }
                micros += rng.random_range(0..3);
                let stanza = format!("m{round}-{i}");
                let msg = || archived(contacts[contact], &stanza, micros);
                ArchiveStore::append(&memory, &user, msg()).await.unwrap();
                ArchiveStore::append_deferred(&sled, &user, msg())
                    .await
                    .unwrap();
            }
            if round % 2 == 1 {
                // Round 3 keeps only the newest message(s): the open run loses its start.
                let (cut, limit) = match round {
                    3 => (micros, usize::MAX),
                    _ => (micros - rng.random_range(0..200), rng.random_range(1..100)),
                };
                let a = ArchiveStore::remove_before(&memory, &user, cut, limit)
                    .await
                    .unwrap();
                let b = ArchiveStore::remove_before(&sled, &user, cut, limit)
                    .await
                    .unwrap();
                assert_eq!(a, b);
            }
            if round % 3 == 2 {
                drop(sled);
                sled = SledStore::open(dir.path()).unwrap();
            }
            for _ in 0..60 {
                let from = rng.random_range(900..micros + 10);
                let q = ArchiveQuery {
                    with: Some(
                        ["a@y", "a@y/2", "b@y", "c@z", "d@z"][rng.random_range(0..5)].into(),
                    ),
                    from: ArchivePos {
                        micros: from,
                        seq: 0,
                    },
                    to: match rng.random_range(0..3) {
                        0 => ArchivePos::MAX,
                        _ => ArchivePos {
                            micros: rng.random_range(from..micros + 10),
                            seq: u64::MAX,
                        },
                    },
                    max: rng.random_range(0..40),
                    from_end: rng.random(),
                };
                let want = ArchiveStore::query(&memory, &user, &q).await.unwrap();
                let got = ArchiveStore::query(&sled, &user, &q).await.unwrap();
                let stanzas = |p: &ArchivePage| {
                    p.messages
                        .iter()
                        .map(|m| (m.stanza.clone(), m.with.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(stanzas(&got), stanzas(&want), "{q:?}");
                assert_eq!(got.more, want.more, "{q:?}");
            }
        }
    }

    #[test]
    fn offline_keys_sort_by_seq() {
        let a = offline_key(&j("u@x"), 255).unwrap();
        let b = offline_key(&j("u@x"), 256).unwrap();
        assert!(a < b);
        assert!(a.starts_with(&user_prefix(&j("u@x")).unwrap()));
    }

    #[test]
    fn nul_in_names_is_rejected() {
        // A JID cannot hold NUL (nodeprep); other names can.
        assert!(crate::addr::parse_bare("a\0b@x").is_none());
        assert!(pair_key(&j("a@x"), "b\0c").is_err());
    }

    #[tokio::test]
    async fn corrupt_value_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.roster.insert(b"u@x\0c@y", &[1u8, 0xff][..]).unwrap();
        store.accounts.insert(b"u@x", &[7u8][..]).unwrap();
        assert!(matches!(
            store.roster(&j("u@x")).await,
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(
            AccountStore::get(&store, &j("u@x")).await,
            Err(StorageError::Corrupt(_))
        ));
    }
}
