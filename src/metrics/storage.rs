//! Storage latency: the stores of the hot paths (roster, offline, archive) wrapped so
//! that every call site is timed without knowing it. Each wrapper forwards every trait
//! method, the provided ones too (a backend may override them, as sled does
//! `presence_contacts`): a method added to one of these traits must be forwarded here.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::histogram::LatencyHistogram;
use crate::addr::BareJid;
use crate::storage::{
    ArchivePage, ArchivePos, ArchivePrefs, ArchiveQuery, ArchiveStamp, ArchiveStore,
    ArchivedMessage, NewArchived, OfflineMessage, OfflineStore, OfflineStoreOutcome,
    PendingSubscription, PresenceContacts, Result, Roster, RosterItem, RosterStore, Storage,
};

/// One histogram per timed operation (the `op` label).
#[derive(Clone, Debug)]
pub struct StorageTimings {
    pub roster_get: LatencyHistogram,
    pub presence_contacts: LatencyHistogram,
    pub offline_store: LatencyHistogram,
    pub offline_fetch: LatencyHistogram,
    pub archive_append: LatencyHistogram,
    pub archive_query: LatencyHistogram,
}

impl StorageTimings {
    /// `storage` with its roster, offline and archive stores timed.
    pub fn instrument(&self, mut storage: Storage) -> Storage {
        storage.roster = Arc::new(TimedRoster {
            inner: storage.roster,
            t: self.clone(),
        });
        storage.offline = Arc::new(TimedOffline {
            inner: storage.offline,
            t: self.clone(),
        });
        storage.archive = Arc::new(TimedArchive {
            inner: storage.archive,
            t: self.clone(),
        });
        storage
    }
}

/// Awaits `f`, recording how long it took (errors included: a slow failure is slow).
async fn timed<T>(h: &LatencyHistogram, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    h.observe(start.elapsed());
    out
}

struct TimedRoster {
    inner: Arc<dyn RosterStore>,
    t: StorageTimings,
}

#[async_trait]
impl RosterStore for TimedRoster {
    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        timed(&self.t.roster_get, self.inner.roster(user)).await
    }
    async fn presence_contacts(&self, user: &BareJid) -> Result<Arc<PresenceContacts>> {
        timed(
            &self.t.presence_contacts,
            self.inner.presence_contacts(user),
        )
        .await
    }
    async fn item_count(&self, user: &BareJid) -> Result<usize> {
        self.inner.item_count(user).await
    }
    async fn version(&self, user: &BareJid) -> Result<u64> {
        self.inner.version(user).await
    }
    async fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        self.inner.item(user, contact).await
    }
    async fn put_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        self.inner.put_item(user, item).await
    }
    async fn remove_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        self.inner.remove_item(user, contact).await
    }
    async fn pending_in(&self, user: &BareJid) -> Result<Vec<PendingSubscription>> {
        self.inner.pending_in(user).await
    }
    async fn add_pending_in(&self, user: &BareJid, pending: &PendingSubscription) -> Result<()> {
        self.inner.add_pending_in(user, pending).await
    }
    async fn remove_pending_in(&self, user: &BareJid, contact: &BareJid) -> Result<bool> {
        self.inner.remove_pending_in(user, contact).await
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        self.inner.remove_user(user).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

struct TimedOffline {
    inner: Arc<dyn OfflineStore>,
    t: StorageTimings,
}

#[async_trait]
impl OfflineStore for TimedOffline {
    async fn push(
        &self,
        user: &BareJid,
        stanza: &str,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        timed(&self.t.offline_store, self.inner.push(user, stanza, quota)).await
    }
    async fn push_at(
        &self,
        user: &BareJid,
        stanza: &str,
        stored_at: u64,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        let push = self.inner.push_at(user, stanza, stored_at, quota);
        timed(&self.t.offline_store, push).await
    }
    async fn pushed_durable(&self) -> Result<()> {
        self.inner.pushed_durable().await
    }
    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        timed(&self.t.offline_fetch, self.inner.list(user)).await
    }
    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        self.inner.remove_up_to(user, up_to).await
    }
    async fn count(&self, user: &BareJid) -> Result<usize> {
        self.inner.count(user).await
    }
    async fn total(&self) -> Result<Option<u64>> {
        self.inner.total().await
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        self.inner.remove_user(user).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

struct TimedArchive {
    inner: Arc<dyn ArchiveStore>,
    t: StorageTimings,
}

#[async_trait]
impl ArchiveStore for TimedArchive {
    async fn append(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        timed(&self.t.archive_append, self.inner.append(user, msg)).await
    }
    async fn append_deferred(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        timed(
            &self.t.archive_append,
            self.inner.append_deferred(user, msg),
        )
        .await
    }
    async fn appended_durable(&self) -> Result<()> {
        self.inner.appended_durable().await
    }
    async fn append_many(
        &self,
        user: &BareJid,
        msgs: &[NewArchived<'_>],
    ) -> Result<Vec<ArchiveStamp>> {
        self.inner.append_many(user, msgs).await
    }
    async fn position(&self, user: &BareJid, id: &str) -> Result<Option<ArchivePos>> {
        self.inner.position(user, id).await
    }
    async fn get(&self, user: &BareJid, id: &str) -> Result<Option<ArchivedMessage>> {
        self.inner.get(user, id).await
    }
    async fn query(&self, user: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        timed(&self.t.archive_query, self.inner.query(user, q)).await
    }
    async fn count(&self, user: &BareJid) -> Result<u64> {
        self.inner.count(user).await
    }
    async fn total(&self) -> Result<Option<u64>> {
        self.inner.total().await
    }
    async fn replace(&self, user: &BareJid, id: &str, stanza: &str) -> Result<bool> {
        self.inner.replace(user, id, stanza).await
    }
    async fn remove_before(&self, user: &BareJid, micros: u64, limit: usize) -> Result<usize> {
        self.inner.remove_before(user, micros, limit).await
    }
    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>> {
        self.inner.prefs(user).await
    }
    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        self.inner.set_prefs(user, prefs).await
    }
    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        self.inner.remove_user(user).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}
