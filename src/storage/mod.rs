//! Storage behind one trait per concern. Modules see only these traits; the backend
//! (memory for tests, sled by default, later PostgreSQL) is chosen at start.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::addr::{BareJid, DomainRef, Jid};
use crate::sasl::credentials::StoredCredentials;

mod archive;
pub mod fast;
pub mod invites;

/// XEP-0313 `with` matching on stored (normalized) JIDs, as the backends page with it.
pub use archive::with_matches;
pub mod memory;
pub mod pubsub;
pub mod sled;

pub use fast::{FastToken, FastTokenStore, FastTokens};
pub use invites::{Invite, InviteStore};
pub use pubsub::{CreateOutcome, NodeRecord, ProfileStore, PubsubStore, StoredItem};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Accounts are keyed by bare JID (`user@domain`).
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account; `Ok(false)` if it already exists (nothing changed).
    async fn create(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool>;
    async fn get(&self, jid: &BareJid) -> Result<Option<StoredCredentials>>;
    /// Replaces credentials; `Ok(false)` if there is no such account.
    async fn set_credentials(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool>;
    /// Removes the account; `Ok(false)` if there was none.
    async fn remove(&self, jid: &BareJid) -> Result<bool>;
    /// All account JIDs, sorted.
    async fn list(&self) -> Result<Vec<BareJid>>;
    /// Makes every write so far durable. Provided (no-op) so existing implementors are
    /// unaffected; durable backends override it.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    /// After the user approved the contact's subscription.
    pub fn with_from(self) -> Self {
        if self.has_to() {
            Subscription::Both
        } else {
            Subscription::From
        }
    }
    /// After the contact approved the user's subscription.
    pub fn with_to(self) -> Self {
        if self.has_from() {
            Subscription::Both
        } else {
            Subscription::To
        }
    }
    /// After the contact's subscription was cancelled.
    pub fn without_from(self) -> Self {
        match self {
            Subscription::Both => Subscription::To,
            Subscription::From => Subscription::None,
            other => other,
        }
    }
    /// After the user's subscription was cancelled.
    pub fn without_to(self) -> Self {
        match self {
            Subscription::Both => Subscription::From,
            Subscription::To => Subscription::None,
            other => other,
        }
    }
}

/// One roster entry (RFC 6121 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    /// Contact bare JID.
    pub jid: BareJid,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Pending-out: the user sent a subscribe not yet answered (`ask='subscribe'`).
    pub ask: bool,
    /// Pending-in recorded on a roster item (the contact asked to subscribe to the user).
    pub pending_in: bool,
    /// Subscription pre-approved by the user (RFC 6121 §3.4).
    pub approved: bool,
    pub groups: Vec<String>,
}

impl RosterItem {
    /// A new item for `jid` with no subscription.
    pub fn new(jid: BareJid) -> Self {
        RosterItem {
            jid,
            name: None,
            subscription: Subscription::None,
            ask: false,
            pending_in: false,
            approved: false,
            groups: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Roster {
    /// Monotonic roster version (XEP-0237); bumped on every change.
    pub version: u64,
    pub items: Vec<RosterItem>,
}

/// A subscription request from a contact that is not (visibly) in the roster, kept so it
/// can be re-delivered at login (RFC 6121 §3.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSubscription {
    pub from: BareJid,
    /// The original `<presence type='subscribe'/>`, serialized, if kept.
    pub stanza: Option<String>,
}

/// Whom a user's presence concerns (RFC 6121 §4), from the roster: what every presence
/// change needs, without decoding the whole roster each time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresenceContacts {
    /// Contacts entitled to the user's presence (subscription `from` or `both`).
    pub subscribers: Vec<BareJid>,
    /// Contacts whose presence the user has (subscription `to` or `both`): probed at login.
    pub subscriptions: Vec<BareJid>,
}

impl PresenceContacts {
    pub fn of(items: &[RosterItem]) -> Self {
        let pick = |f: fn(Subscription) -> bool| {
            items
                .iter()
                .filter(|i| f(i.subscription))
                .map(|i| i.jid.clone())
                .collect()
        };
        PresenceContacts {
            subscribers: pick(Subscription::has_from),
            subscriptions: pick(Subscription::has_to),
        }
    }
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    async fn roster(&self, user: &BareJid) -> Result<Roster>;
    /// The presence-relevant part of the roster (backends may keep it ready).
    async fn presence_contacts(&self, user: &BareJid) -> Result<std::sync::Arc<PresenceContacts>> {
        let roster = self.roster(user).await?;
        Ok(std::sync::Arc::new(PresenceContacts::of(&roster.items)))
    }
    /// How many items the roster holds: the limit check before every new contact, which
    /// must not read the whole roster (building a roster of N contacts would read O(N²)
    /// items).
    async fn item_count(&self, user: &BareJid) -> Result<usize> {
        Ok(self.roster(user).await?.items.len())
    }
    /// The roster version alone (XEP-0237), for a push of one item.
    async fn version(&self, user: &BareJid) -> Result<u64> {
        Ok(self.roster(user).await?.version)
    }
    async fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>>;
    /// Inserts or replaces an item; returns the new roster version.
    async fn put_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64>;
    /// Removes an item; returns the new version, or `None` if there was no such item.
    async fn remove_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>>;
    async fn pending_in(&self, user: &BareJid) -> Result<Vec<PendingSubscription>>;
    async fn add_pending_in(&self, user: &BareJid, pending: &PendingSubscription) -> Result<()>;
    /// `Ok(true)` if something was removed.
    async fn remove_pending_in(&self, user: &BareJid, contact: &BareJid) -> Result<bool>;
    /// Drops the whole roster and pending requests (account removal).
    async fn remove_user(&self, user: &BareJid) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineMessage {
    /// Opaque, increasing per user; used to delete after delivery.
    pub seq: u64,
    /// Seconds since the Unix epoch when stored (for the XEP-0203 delay stamp).
    pub stored_at: u64,
    /// The message stanza, serialized.
    pub stanza: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineStoreOutcome {
    Stored,
    /// The user's quota is full; nothing was stored.
    QuotaExceeded,
}

#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Appends a message. It is durable once a later `pushed_durable` (or `flush`)
    /// returns: a sender's XEP-0198 ack waits for that, so many pushes share one fsync.
    async fn push(&self, user: &BareJid, stanza: &str, quota: usize)
    -> Result<OfflineStoreOutcome>;
    /// Waits until every push that returned `Stored` before this call is durable.
    async fn pushed_durable(&self) -> Result<()> {
        Ok(())
    }
    /// Like `push`, stored as of `stored_at` (seconds since the epoch) rather than now: an
    /// import keeps when the old server received the message (its XEP-0203 stamp). Both
    /// backends keep the time; the provided fallback (for wrappers and test doubles) does not.
    async fn push_at(
        &self,
        user: &BareJid,
        stanza: &str,
        stored_at: u64,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        let _ = stored_at;
        self.push(user, stanza, quota).await
    }
    /// All stored messages in arrival order (not removed).
    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>>;
    /// Removes messages with `seq <= up_to` (after they were delivered).
    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()>;
    async fn count(&self, user: &BareJid) -> Result<usize>;
    /// Messages stored for all users (metrics), at a cost of at most one read per
    /// account; `None` when the backend cannot tell that cheaply.
    async fn total(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Where a message sits in an archive: microseconds since the Unix epoch, then a
/// store-wide sequence number, so two messages stored in the same microsecond keep their
/// arrival order. Archives are ordered by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ArchivePos {
    pub micros: u64,
    pub seq: u64,
}

impl ArchivePos {
    pub const MIN: ArchivePos = ArchivePos { micros: 0, seq: 0 };
    pub const MAX: ArchivePos = ArchivePos {
        micros: u64::MAX,
        seq: u64::MAX,
    };

    /// The smallest position after this one (saturating at `MAX`).
    pub fn next(self) -> ArchivePos {
        match self.seq.checked_add(1) {
            Some(seq) => ArchivePos { seq, ..self },
            None => match self.micros.checked_add(1) {
                Some(micros) => ArchivePos { micros, seq: 0 },
                None => ArchivePos::MAX,
            },
        }
    }

    /// The largest position before this one (saturating at `MIN`).
    pub fn prev(self) -> ArchivePos {
        match self.seq.checked_sub(1) {
            Some(seq) => ArchivePos { seq, ..self },
            None => match self.micros.checked_sub(1) {
                Some(micros) => ArchivePos {
                    micros,
                    seq: u64::MAX,
                },
                None => ArchivePos::MIN,
            },
        }
    }

    /// 16 bytes, big-endian, so byte order is position order (sled keys).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.micros.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<ArchivePos> {
        let micros = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(ArchivePos { micros, seq })
    }
}

/// A serialized stanza on its way into one or more archives. Clones share the text: a
/// message between two local users is one buffer for the sender's and the recipient's
/// archive, and a store may keep it once when both rows share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedStanza(Arc<str>);

impl SharedStanza {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `el` serialized as a top-level stanza, in one allocation of its size.
    pub fn of(el: &crate::xml::Element) -> SharedStanza {
        el.with_stanza_text(|text| SharedStanza(text.into()))
    }

    /// Whether `other` is a clone of this very stanza, not only the same text.
    pub fn is_shared_with(&self, other: &SharedStanza) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<String> for SharedStanza {
    fn from(stanza: String) -> Self {
        SharedStanza(stanza.into())
    }
}

impl From<&str> for SharedStanza {
    fn from(stanza: &str) -> Self {
        SharedStanza(stanza.into())
    }
}

/// A message to store in a user's archive (XEP-0313).
#[derive(Clone, Debug)]
pub struct NewArchived<'a> {
    /// The other party: `to` of an outgoing message, `from` of an incoming one (a
    /// normalized JID, usually full). Must not contain NUL.
    pub with: &'a str,
    /// The message stanza, serialized.
    pub stanza: SharedStanza,
    /// When it was sent or received, µs since the epoch. The store never lets a user's
    /// archive go backwards in time: an earlier value (a clock step back) is raised to the
    /// newest stored one.
    pub micros: u64,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// The archive UID (XEP-0313 §2.1, XEP-0359 stanza-id): unpredictable, never reused.
    pub id: String,
    pub pos: ArchivePos,
    pub with: String,
    pub stanza: String,
}

/// What a store hands back for a new archive entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveStamp {
    pub id: String,
    pub pos: ArchivePos,
}

/// A range query over one archive. Bounds are inclusive positions; callers turn form
/// fields and RSM ids into them (an exclusive `after` is `pos.next()`).
#[derive(Clone, Debug)]
pub struct ArchiveQuery {
    /// Only messages with this party: a bare JID matches every resource of it, a full JID
    /// only itself.
    pub with: Option<String>,
    pub from: ArchivePos,
    pub to: ArchivePos,
    /// Page size; 0 asks only whether anything matches (`more`).
    pub max: usize,
    /// The last `max` matches instead of the first (RSM `<before/>`).
    pub from_end: bool,
}

impl Default for ArchiveQuery {
    fn default() -> Self {
        ArchiveQuery {
            with: None,
            from: ArchivePos::MIN,
            to: ArchivePos::MAX,
            max: 50,
            from_end: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    /// In archive (chronological) order, whichever end the page came from.
    pub messages: Vec<ArchivedMessage>,
    /// More matches lie beyond the page in the paging direction (after it, or before it
    /// when `from_end`).
    pub more: bool,
}

/// XEP-0441 default archiving policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ArchiveDefault {
    #[default]
    Always,
    Never,
    /// Only contacts in the roster.
    Roster,
}

/// XEP-0441 archiving preferences of one user. JIDs are normalized, bare or full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ArchivePrefs {
    pub default: ArchiveDefault,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

/// Per-user message archives (XEP-0313). Users are bare JIDs without NUL.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Stores a message and returns its UID and position. Durable before returning.
    async fn append(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp>;
    /// Like [`ArchiveStore::append`], but returns once the message is stamped and queued:
    /// reads see it at once, and it is durable when a later
    /// [`ArchiveStore::appended_durable`] returns. The message path uses it so that many
    /// messages share one flush and the sender's XEP-0198 ack waits for it, not each hop.
    async fn append_deferred(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        self.append(user, msg).await
    }
    /// Returns once every append made before the call (deferred ones included) is
    /// durable; an error if any of them may have been lost.
    async fn appended_durable(&self) -> Result<()> {
        Ok(())
    }
    /// Stores many messages at once with one flush (import, benchmarks); in order.
    async fn append_many(
        &self,
        user: &BareJid,
        msgs: &[NewArchived<'_>],
    ) -> Result<Vec<ArchiveStamp>>;
    /// The position of a UID, if it is in the archive.
    async fn position(&self, user: &BareJid, id: &str) -> Result<Option<ArchivePos>>;
    /// The message with this UID, if any.
    async fn get(&self, user: &BareJid, id: &str) -> Result<Option<ArchivedMessage>>;
    /// One page of matching messages.
    async fn query(&self, user: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage>;
    /// Number of messages in the archive.
    async fn count(&self, user: &BareJid) -> Result<u64>;
    /// Messages in all archives (metrics), at a cost of at most one read per archive;
    /// `None` when the backend cannot tell that cheaply.
    async fn total(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Replaces the stanza stored under `id` (a retraction's tombstone, XEP-0424/0425),
    /// keeping its UID, position and `with`. `Ok(false)`: no such message. Durable before
    /// returning.
    async fn replace(&self, user: &BareJid, id: &str, stanza: &str) -> Result<bool>;
    /// Removes up to `limit` of the oldest messages stored before `micros` (retention);
    /// returns how many went. Oldest first, so the archive never gets holes.
    async fn remove_before(&self, user: &BareJid, micros: u64, limit: usize) -> Result<usize>;
    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>>;
    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()>;
    /// Drops the archive and preferences (account removal).
    async fn remove_user(&self, user: &BareJid) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// XEP-0191 block lists. Entries are normalized JIDs of any form (domain, bare, full,
/// domain/resource).
#[async_trait]
pub trait BlockListStore: Send + Sync {
    /// The whole list, in byte order.
    async fn blocklist(&self, user: &BareJid) -> Result<Vec<Jid>>;
    /// Adds entries; returns those that were not there before.
    async fn block(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>>;
    /// Removes entries; returns those that were there.
    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>>;
    /// Empties the list; returns what was in it.
    async fn unblock_all(&self, user: &BareJid) -> Result<Vec<Jid>>;
    /// Whether any of `jids` is on the list (the caller expands one address into the
    /// entries that would match it). Cheap when the list is empty.
    async fn is_blocked(&self, user: &BareJid, jids: &[&str]) -> Result<bool>;
    /// `false` only if the list of `user`'s account (`user` bare or full) is certainly
    /// empty: lets the per-stanza check skip building the candidate entries. Must not block
    /// (no disk access), and is cheap: it runs for every routed stanza.
    fn may_block_anyone(&self, _user: &Jid) -> bool {
        true
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A XEP-0357 push registration: where to publish notifications for a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app server's XMPP Push Service.
    pub jid: Jid,
    /// The node on that service (one per device/app installation).
    pub node: String,
    /// The client's `publish-options` data form, serialized, sent with every publish.
    pub publish_options: Option<String>,
    /// The client asked for message bodies in notifications.
    pub include_body: bool,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    /// Adds a registration, replacing one with the same `jid` and `node`.
    async fn enable(&self, user: &BareJid, reg: &PushRegistration) -> Result<()>;
    /// Removes the user's registrations for `jid` (only the one with `node` if given);
    /// returns how many were removed.
    async fn disable(&self, user: &BareJid, jid: &Jid, node: Option<&str>) -> Result<usize>;
    /// The user's registrations, ordered by (`jid`, `node`).
    async fn list(&self, user: &BareJid) -> Result<Vec<PushRegistration>>;
    async fn remove_user(&self, user: &BareJid) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A room member's standing (XEP-0045 §5.2), kept by bare JID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum RoomAffiliation {
    Outcast,
    Member,
    Admin,
    Owner,
}

impl RoomAffiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomAffiliation::Owner => "owner",
            RoomAffiliation::Admin => "admin",
            RoomAffiliation::Member => "member",
            RoomAffiliation::Outcast => "outcast",
        }
    }
}

/// Who may send private messages through occupant JIDs (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RoomPmPolicy {
    #[default]
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

/// A room's configuration (XEP-0045 §10.2, the `muc#roomconfig` form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// The room secret; `None`: no password.
    pub password: Option<String>,
    pub max_users: u32,
    /// Real JIDs are shown to everyone (non-anonymous), else to moderators only.
    pub whois_anyone: bool,
    pub allow_pm: RoomPmPolicy,
    /// Participants may change the subject, not only moderators.
    pub change_subject: bool,
    /// Members may invite others to a members-only room, not only admins.
    pub allow_invites: bool,
    pub history_length: u32,
}

/// One affiliation on a room's lists, with the nickname registered with it (§7.10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAffiliationEntry {
    /// Bare JID (or a domain, for whole servers).
    pub jid: BareJid,
    pub affiliation: RoomAffiliation,
    pub nick: Option<String>,
    pub reason: Option<String>,
}

/// What a persistent room keeps across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoom {
    /// The room's bare JID (`room@service`).
    pub jid: BareJid,
    pub config: RoomConfig,
    /// Sorted by JID.
    pub affiliations: Vec<RoomAffiliationEntry>,
    /// The subject and the nickname that set it.
    pub subject: Option<(String, String)>,
    /// The room's key for XEP-0421 occupant ids: stable across restarts, unguessable.
    pub occupant_id_key: Vec<u8>,
}

/// Persistent chat rooms (XEP-0045), keyed by room bare JID (`node@service`).
#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Inserts or replaces the room; durable before returning.
    async fn put_room(&self, room: &StoredRoom) -> Result<()>;
    async fn room(&self, jid: &BareJid) -> Result<Option<StoredRoom>>;
    /// `Ok(false)` if there was no such room.
    async fn remove_room(&self, jid: &BareJid) -> Result<bool>;
    /// The rooms of one service domain, ordered by JID, at most `limit`.
    async fn rooms(&self, service: &DomainRef, limit: usize) -> Result<Vec<StoredRoom>>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// The set of stores a server runs with.
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub roster: Arc<dyn RosterStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub blocklist: Arc<dyn BlockListStore>,
    pub push: Arc<dyn PushStore>,
    pub rooms: Arc<dyn RoomStore>,
    pub pubsub: Arc<dyn PubsubStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub invites: Arc<dyn InviteStore>,
    pub fast: Arc<dyn FastTokenStore>,
}

impl Storage {
    /// In-memory stores (tests, throwaway servers): nothing survives a restart.
    pub fn memory() -> Self {
        Self::from_backend(Arc::new(memory::MemoryStore::default()))
    }

    /// Opens (or creates) the sled database in directory `path`.
    pub fn open_sled(path: &std::path::Path) -> Result<Self> {
        Ok(Self::from_backend(Arc::new(self::sled::SledStore::open(
            path,
        )?)))
    }

    /// Opens the sled database with a page cache of `cache_mb` MiB (`storage.cache_mb`).
    pub fn open_sled_with_cache(path: &std::path::Path, cache_mb: u64) -> Result<Self> {
        Self::open_sled_configured(path, cache_mb, true, self::sled::DEFAULT_PARTITION_MB)
    }

    /// Like [`Storage::open_sled_with_cache`]; `sync_writes` is `storage.sync_writes`,
    /// `archive_partition_mb` is `storage.archive_partition_mb`.
    pub fn open_sled_configured(
        path: &std::path::Path,
        cache_mb: u64,
        sync_writes: bool,
        archive_partition_mb: u64,
    ) -> Result<Self> {
        let store = self::sled::SledStore::open_with_cache(path, cache_mb)?;
        store.set_sync_writes(sync_writes);
        store.set_archive_partition_mb(archive_partition_mb);
        Ok(Self::from_backend(Arc::new(store)))
    }

    /// One backend object serves every concern.
    fn from_backend<B>(backend: Arc<B>) -> Self
    where
        B: AccountStore
            + RosterStore
            + OfflineStore
            + ArchiveStore
            + BlockListStore
            + PushStore
            + RoomStore
            + PubsubStore
            + ProfileStore
            + InviteStore
            + FastTokenStore
            + 'static,
    {
        Storage {
            accounts: backend.clone(),
            roster: backend.clone(),
            offline: backend.clone(),
            archive: backend.clone(),
            blocklist: backend.clone(),
            push: backend.clone(),
            rooms: backend.clone(),
            pubsub: backend.clone(),
            profiles: backend.clone(),
            invites: backend.clone(),
            fast: backend,
        }
    }

    /// Makes every write so far durable (call at shutdown). Each store is asked, since they
    /// may come from different backends; flushing an already clean sled database is cheap.
    pub async fn flush(&self) -> Result<()> {
        self.accounts.flush().await?;
        self.roster.flush().await?;
        self.offline.flush().await?;
        self.archive.flush().await?;
        self.blocklist.flush().await?;
        self.push.flush().await?;
        self.rooms.flush().await?;
        self.pubsub.flush().await?;
        self.invites.flush().await?;
        self.profiles.flush().await
    }

    /// Removes an account and everything stored for it.
    pub async fn remove_account(&self, jid: &BareJid) -> Result<bool> {
        let existed = self.accounts.remove(jid).await?;
        self.roster.remove_user(jid).await?;
        self.offline.remove_user(jid).await?;
        self.archive.remove_user(jid).await?;
        self.blocklist.remove_user(jid).await?;
        self.push.remove_user(jid).await?;
        self.fast.remove_fast_tokens(jid).await?;
        // The account's PEP service is keyed by its bare JID.
        self.pubsub.remove_service(jid.as_str()).await?;
        self.profiles.remove_user(jid.as_str()).await?;
        self.invites.set_admin(jid, false).await?;
        // Its invitations would make a removed account the contact of their invitees.
        for invite in self.invites.invites().await? {
            if invite.inviter.as_ref() == Some(jid) {
                self.invites.remove_invite(&invite.token).await?;
            }
        }
        Ok(existed)
    }
}
