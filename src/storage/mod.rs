//! Storage behind one trait per concern. Modules see only these traits; the backend
//! (memory for tests, sled by default, later PostgreSQL) is chosen at start.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::sasl::credentials::StoredCredentials;

pub mod memory;
pub mod sled;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Accounts are keyed by bare JID string (`user@domain`), normalized by the caller.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account; `Ok(false)` if it already exists (nothing changed).
    async fn create(&self, jid: &str, creds: &StoredCredentials) -> Result<bool>;
    async fn get(&self, jid: &str) -> Result<Option<StoredCredentials>>;
    /// Replaces credentials; `Ok(false)` if there is no such account.
    async fn set_credentials(&self, jid: &str, creds: &StoredCredentials) -> Result<bool>;
    /// Removes the account; `Ok(false)` if there was none.
    async fn remove(&self, jid: &str) -> Result<bool>;
    /// All account JIDs, sorted.
    async fn list(&self) -> Result<Vec<String>>;
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
}

/// One roster entry (RFC 6121 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RosterItem {
    /// Contact bare JID.
    pub jid: String,
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
    pub from: String,
    /// The original `<presence type='subscribe'/>`, serialized, if kept.
    pub stanza: Option<String>,
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    async fn roster(&self, user: &str) -> Result<Roster>;
    async fn item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces an item; returns the new roster version.
    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64>;
    /// Removes an item; returns the new version, or `None` if there was no such item.
    async fn remove_item(&self, user: &str, contact: &str) -> Result<Option<u64>>;
    async fn pending_in(&self, user: &str) -> Result<Vec<PendingSubscription>>;
    async fn add_pending_in(&self, user: &str, pending: &PendingSubscription) -> Result<()>;
    /// `Ok(true)` if something was removed.
    async fn remove_pending_in(&self, user: &str, contact: &str) -> Result<bool>;
    /// Drops the whole roster and pending requests (account removal).
    async fn remove_user(&self, user: &str) -> Result<()>;
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
    /// Appends a message, durably (flushed) before returning `Stored`.
    async fn push(&self, user: &str, stanza: &str, quota: usize) -> Result<OfflineStoreOutcome>;
    /// All stored messages in arrival order (not removed).
    async fn list(&self, user: &str) -> Result<Vec<OfflineMessage>>;
    /// Removes messages with `seq <= up_to` (after they were delivered).
    async fn remove_up_to(&self, user: &str, up_to: u64) -> Result<()>;
    async fn count(&self, user: &str) -> Result<usize>;
    async fn remove_user(&self, user: &str) -> Result<()>;
    /// Makes every write so far durable (see [`AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A XEP-0357 push registration: where to publish notifications for a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app server's XMPP Push Service.
    pub jid: String,
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
    async fn enable(&self, user: &str, reg: &PushRegistration) -> Result<()>;
    /// Removes the user's registrations for `jid` (only the one with `node` if given);
    /// returns how many were removed.
    async fn disable(&self, user: &str, jid: &str, node: Option<&str>) -> Result<usize>;
    /// The user's registrations, ordered by (`jid`, `node`).
    async fn list(&self, user: &str) -> Result<Vec<PushRegistration>>;
    async fn remove_user(&self, user: &str) -> Result<()>;
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
    pub push: Arc<dyn PushStore>,
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

    /// One backend object serves every concern.
    fn from_backend<B>(backend: Arc<B>) -> Self
    where
        B: AccountStore + RosterStore + OfflineStore + PushStore + 'static,
    {
        Storage {
            accounts: backend.clone(),
            roster: backend.clone(),
            offline: backend.clone(),
            push: backend,
        }
    }

    /// Makes every write so far durable (call at shutdown). Each store is asked, since they
    /// may come from different backends; flushing an already clean sled database is cheap.
    pub async fn flush(&self) -> Result<()> {
        self.accounts.flush().await?;
        self.roster.flush().await?;
        self.offline.flush().await?;
        self.push.flush().await
    }

    /// Removes an account and everything stored for it.
    pub async fn remove_account(&self, jid: &str) -> Result<bool> {
        let existed = self.accounts.remove(jid).await?;
        self.roster.remove_user(jid).await?;
        self.offline.remove_user(jid).await?;
        self.push.remove_user(jid).await?;
        Ok(existed)
    }
}
