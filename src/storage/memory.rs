//! In-memory backend: the reference implementation of the storage traits (used by tests
//! and by servers that need no persistence). Nothing survives a restart.
//!
//! Semantics shared with the sled backend, which the conformance tests hold both to:
//! - accounts and roster items are ordered by their JID's bytes;
//! - a roster's version survives `remove_user` (bumped), so that a client caching a roster
//!   version (XEP-0237) never sees a version go backwards if the account is re-created;
//! - offline `seq` values come from one counter for the whole store, so they keep
//!   increasing for a user even after `remove_user`;
//! - archive positions never go backwards for a user (a message stamped earlier than the
//!   newest stored one is moved up to it), and their `seq` comes from one store-wide
//!   counter, so messages stored in the same microsecond keep arrival order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::archive::{collect_page, new_id};
use super::{
    AccountStore, ArchivePage, ArchivePos, ArchivePrefs, ArchiveQuery, ArchiveStamp, ArchiveStore,
    ArchivedMessage, BlockListStore, NewArchived, OfflineMessage, OfflineStore,
    OfflineStoreOutcome, PendingSubscription, PushRegistration, PushStore, Result, RoomStore,
    Roster, RosterItem, RosterStore, StorageError, StoredRoom,
};
use crate::addr::{BareJid, DomainRef, Jid};
use crate::sasl::credentials::StoredCredentials;

mod fast;
mod invites;
mod pubsub;

#[derive(Default)]
struct UserRoster {
    version: u64,
    /// Keyed by contact JID, so iteration order is the same as the sled backend's.
    items: BTreeMap<BareJid, RosterItem>,
}

#[derive(Default)]
struct Offline {
    /// Last seq handed out, for all users.
    last_seq: u64,
    /// Per user: seq -> (stored_at, stanza).
    queues: HashMap<BareJid, BTreeMap<u64, (u64, String)>>,
}

#[derive(Clone)]
struct ArchiveRecord {
    id: String,
    with: String,
    stanza: String,
}

#[derive(Default)]
struct UserArchive {
    messages: BTreeMap<ArchivePos, ArchiveRecord>,
    ids: HashMap<String, ArchivePos>,
}

#[derive(Default)]
struct Archives {
    /// Last archive seq handed out, for all users.
    last_seq: u64,
    users: HashMap<BareJid, UserArchive>,
    prefs: HashMap<BareJid, ArchivePrefs>,
}

/// The in-memory store; one instance implements every storage trait.
/// One user's push registrations by (jid, node).
type UserPush = BTreeMap<(Jid, String), PushRegistration>;

#[derive(Default)]
pub struct MemoryStore {
    accounts: Mutex<BTreeMap<BareJid, StoredCredentials>>,
    rosters: Mutex<HashMap<BareJid, UserRoster>>,
    pending: Mutex<HashMap<BareJid, BTreeMap<BareJid, PendingSubscription>>>,
    offline: Mutex<Offline>,
    archives: Mutex<Archives>,
    blocklists: Mutex<HashMap<BareJid, BTreeSet<String>>>,
    push: Mutex<HashMap<BareJid, UserPush>>,
    /// Keyed by (service domain, room JID), so listing a service is a range.
    rooms: Mutex<BTreeMap<(String, String), StoredRoom>>,
    pubsub: Mutex<pubsub::MemoryPubsub>,
    profiles: Mutex<pubsub::MemoryProfiles>,
    invites: Mutex<invites::MemoryInvites>,
    fast: Mutex<fast::MemoryFast>,
}

/// A poisoned lock means a panic happened while holding it; report it instead of
/// propagating the panic into every later caller.
fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| StorageError::Backend("memory store lock poisoned".into()))
}

pub(crate) use crate::datetime::now_secs;

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool> {
        let mut accounts = lock(&self.accounts)?;
        if accounts.contains_key(jid) {
            return Ok(false);
        }
        accounts.insert(jid.clone(), creds.clone());
        Ok(true)
    }

    async fn get(&self, jid: &BareJid) -> Result<Option<StoredCredentials>> {
        Ok(lock(&self.accounts)?.get(jid).cloned())
    }

    async fn set_credentials(&self, jid: &BareJid, creds: &StoredCredentials) -> Result<bool> {
        match lock(&self.accounts)?.get_mut(jid) {
            Some(slot) => {
                *slot = creds.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn remove(&self, jid: &BareJid) -> Result<bool> {
        Ok(lock(&self.accounts)?.remove(jid).is_some())
    }

    async fn list(&self) -> Result<Vec<BareJid>> {
        Ok(lock(&self.accounts)?.keys().cloned().collect())
    }
}

#[async_trait]
impl RosterStore for MemoryStore {
    async fn roster(&self, user: &BareJid) -> Result<Roster> {
        Ok(match lock(&self.rosters)?.get(user) {
            Some(r) => Roster {
                version: r.version,
                items: r.items.values().cloned().collect(),
            },
            None => Roster::default(),
        })
    }

    async fn item_count(&self, user: &BareJid) -> Result<usize> {
        Ok(lock(&self.rosters)?.get(user).map_or(0, |r| r.items.len()))
    }

    async fn version(&self, user: &BareJid) -> Result<u64> {
        Ok(lock(&self.rosters)?.get(user).map_or(0, |r| r.version))
    }

    async fn item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<RosterItem>> {
        Ok(lock(&self.rosters)?
            .get(user)
            .and_then(|r| r.items.get(contact).cloned()))
    }

    async fn put_item(&self, user: &BareJid, item: &RosterItem) -> Result<u64> {
        let mut rosters = lock(&self.rosters)?;
        let r = rosters.entry(user.clone()).or_default();
        r.items.insert(item.jid.clone(), item.clone());
        r.version += 1;
        Ok(r.version)
    }

    async fn remove_item(&self, user: &BareJid, contact: &BareJid) -> Result<Option<u64>> {
        let mut rosters = lock(&self.rosters)?;
        let Some(r) = rosters.get_mut(user) else {
            return Ok(None);
        };
        if r.items.remove(contact).is_none() {
            return Ok(None);
        }
        r.version += 1;
        Ok(Some(r.version))
    }

    async fn pending_in(&self, user: &BareJid) -> Result<Vec<PendingSubscription>> {
        Ok(lock(&self.pending)?
            .get(user)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn add_pending_in(&self, user: &BareJid, pending: &PendingSubscription) -> Result<()> {
        lock(&self.pending)?
            .entry(user.clone())
            .or_default()
            .insert(pending.from.clone(), pending.clone());
        Ok(())
    }

    async fn remove_pending_in(&self, user: &BareJid, contact: &BareJid) -> Result<bool> {
        let mut pending = lock(&self.pending)?;
        let Some(p) = pending.get_mut(user) else {
            return Ok(false);
        };
        let removed = p.remove(contact).is_some();
        if p.is_empty() {
            pending.remove(user);
        }
        Ok(removed)
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        if let Some(r) = lock(&self.rosters)?.get_mut(user) {
            // Keep (and bump) the version; see the module comment.
            r.items.clear();
            r.version += 1;
        }
        lock(&self.pending)?.remove(user);
        Ok(())
    }
}

#[async_trait]
impl OfflineStore for MemoryStore {
    async fn push(
        &self,
        user: &BareJid,
        stanza: &str,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        self.push_at(user, stanza, now_secs(), quota).await
    }

    async fn push_at(
        &self,
        user: &BareJid,
        stanza: &str,
        stored_at: u64,
        quota: usize,
    ) -> Result<OfflineStoreOutcome> {
        let mut off = lock(&self.offline)?;
        let used = off.queues.get(user).map_or(0, |q| q.len());
        if used >= quota {
            return Ok(OfflineStoreOutcome::QuotaExceeded);
        }
        off.last_seq += 1;
        let seq = off.last_seq;
        off.queues
            .entry(user.clone())
            .or_default()
            .insert(seq, (stored_at, stanza.to_owned()));
        Ok(OfflineStoreOutcome::Stored)
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        let off = lock(&self.offline)?;
        Ok(off
            .queues
            .get(user)
            .map(|q| {
                q.iter()
                    .map(|(&seq, (stored_at, stanza))| OfflineMessage {
                        seq,
                        stored_at: *stored_at,
                        stanza: stanza.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let mut off = lock(&self.offline)?;
        if let Some(q) = off.queues.get_mut(user) {
            // split_off keeps seq > up_to.
            let rest = q.split_off(&up_to.saturating_add(1));
            if up_to == u64::MAX || rest.is_empty() {
                off.queues.remove(user);
            } else {
                *q = rest;
            }
        }
        Ok(())
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        Ok(lock(&self.offline)?.queues.get(user).map_or(0, |q| q.len()))
    }

    async fn total(&self) -> Result<Option<u64>> {
        let offline = lock(&self.offline)?;
        Ok(Some(offline.queues.values().map(|q| q.len() as u64).sum()))
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        lock(&self.offline)?.queues.remove(user);
        Ok(())
    }
}

fn archived(pos: ArchivePos, r: &ArchiveRecord) -> ArchivedMessage {
    ArchivedMessage {
        id: r.id.clone(),
        pos,
        with: r.with.clone(),
        stanza: r.stanza.clone(),
    }
}

impl Archives {
    fn append(&mut self, user: &BareJid, msg: &NewArchived<'_>) -> ArchiveStamp {
        self.last_seq += 1;
        let seq = self.last_seq;
        let archive = self.users.entry(user.clone()).or_default();
        let newest = archive.messages.keys().next_back().map_or(0, |p| p.micros);
        let pos = ArchivePos {
            micros: msg.micros.max(newest),
            seq,
        };
        let mut id = new_id();
        while archive.ids.contains_key(&id) {
            id = new_id();
        }
        archive.ids.insert(id.clone(), pos);
        archive.messages.insert(
            pos,
            ArchiveRecord {
                id: id.clone(),
                with: msg.with.to_owned(),
                stanza: msg.stanza.as_str().to_owned(),
            },
        );
        ArchiveStamp { id, pos }
    }
}

#[async_trait]
impl ArchiveStore for MemoryStore {
    async fn append(&self, user: &BareJid, msg: NewArchived<'_>) -> Result<ArchiveStamp> {
        Ok(lock(&self.archives)?.append(user, &msg))
    }

    async fn append_many(
        &self,
        user: &BareJid,
        msgs: &[NewArchived<'_>],
    ) -> Result<Vec<ArchiveStamp>> {
        let mut archives = lock(&self.archives)?;
        Ok(msgs.iter().map(|m| archives.append(user, m)).collect())
    }

    async fn position(&self, user: &BareJid, id: &str) -> Result<Option<ArchivePos>> {
        Ok(lock(&self.archives)?
            .users
            .get(user)
            .and_then(|a| a.ids.get(id).copied()))
    }

    async fn get(&self, user: &BareJid, id: &str) -> Result<Option<ArchivedMessage>> {
        let archives = lock(&self.archives)?;
        Ok(archives.users.get(user).and_then(|a| {
            let pos = *a.ids.get(id)?;
            a.messages.get(&pos).map(|r| archived(pos, r))
        }))
    }

    async fn query(&self, user: &BareJid, q: &ArchiveQuery) -> Result<ArchivePage> {
        let archives = lock(&self.archives)?;
        let Some(archive) = archives.users.get(user) else {
            return Ok(ArchivePage::default());
        };
        if q.from > q.to {
            return Ok(ArchivePage::default());
        }
        let scan = archive
            .messages
            .range(q.from..=q.to)
            .map(|(pos, r)| Ok(archived(*pos, r)));
        collect_page(scan, q)
    }

    async fn count(&self, user: &BareJid) -> Result<u64> {
        Ok(lock(&self.archives)?
            .users
            .get(user)
            .map_or(0, |a| a.messages.len() as u64))
    }

    async fn total(&self) -> Result<Option<u64>> {
        let archives = lock(&self.archives)?;
        Ok(Some(
            archives
                .users
                .values()
                .map(|a| a.messages.len() as u64)
                .sum(),
        ))
    }

    async fn replace(&self, user: &BareJid, id: &str, stanza: &str) -> Result<bool> {
        let mut archives = lock(&self.archives)?;
        let Some(a) = archives.users.get_mut(user) else {
            return Ok(false);
        };
        let Some(pos) = a.ids.get(id).copied() else {
            return Ok(false);
        };
        match a.messages.get_mut(&pos) {
            Some(r) => {
                r.stanza = stanza.to_string();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn remove_before(&self, user: &BareJid, micros: u64, limit: usize) -> Result<usize> {
        let mut archives = lock(&self.archives)?;
        let Some(archive) = archives.users.get_mut(user) else {
            return Ok(0);
        };
        let old: Vec<ArchivePos> = archive
            .messages
            .keys()
            .take_while(|p| p.micros < micros)
            .take(limit)
            .copied()
            .collect();
        for pos in &old {
            if let Some(r) = archive.messages.remove(pos) {
                archive.ids.remove(&r.id);
            }
        }
        Ok(old.len())
    }

    async fn prefs(&self, user: &BareJid) -> Result<Option<ArchivePrefs>> {
        Ok(lock(&self.archives)?.prefs.get(user).cloned())
    }

    async fn set_prefs(&self, user: &BareJid, prefs: &ArchivePrefs) -> Result<()> {
        lock(&self.archives)?
            .prefs
            .insert(user.clone(), prefs.clone());
        Ok(())
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        let mut archives = lock(&self.archives)?;
        archives.users.remove(user);
        archives.prefs.remove(user);
        Ok(())
    }
}

#[async_trait]
impl BlockListStore for MemoryStore {
    async fn blocklist(&self, user: &BareJid) -> Result<Vec<Jid>> {
        Ok(lock(&self.blocklists)?
            .get(user)
            .map(|l| l.iter().filter_map(|j| crate::addr::parse(j)).collect())
            .unwrap_or_default())
    }

    async fn block(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>> {
        let mut lists = lock(&self.blocklists)?;
        let list = lists.entry(user.clone()).or_default();
        Ok(jids
            .iter()
            .filter(|j| list.insert(j.to_string()))
            .cloned()
            .collect())
    }

    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> Result<Vec<Jid>> {
        let mut lists = lock(&self.blocklists)?;
        let Some(list) = lists.get_mut(user) else {
            return Ok(Vec::new());
        };
        let removed = jids
            .iter()
            .filter(|j| list.remove(j.as_str()))
            .cloned()
            .collect();
        if list.is_empty() {
            lists.remove(user);
        }
        Ok(removed)
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<Vec<Jid>> {
        Ok(lock(&self.blocklists)?
            .remove(user)
            .map(|l| l.iter().filter_map(|j| crate::addr::parse(j)).collect())
            .unwrap_or_default())
    }

    async fn is_blocked(&self, user: &BareJid, jids: &[&str]) -> Result<bool> {
        Ok(lock(&self.blocklists)?
            .get(user)
            .is_some_and(|l| jids.iter().any(|j| l.contains(*j))))
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        lock(&self.blocklists)?.remove(user);
        Ok(())
    }

    fn may_block_anyone(&self, user: &Jid) -> bool {
        lock(&self.blocklists).map_or(true, |lists| lists.contains_key(&user.to_bare()))
    }
}

#[async_trait]
impl PushStore for MemoryStore {
    async fn enable(&self, user: &BareJid, reg: &PushRegistration) -> Result<()> {
        lock(&self.push)?
            .entry(user.clone())
            .or_default()
            .insert((reg.jid.clone(), reg.node.clone()), reg.clone());
        Ok(())
    }

    async fn disable(&self, user: &BareJid, jid: &Jid, node: Option<&str>) -> Result<usize> {
        let mut push = lock(&self.push)?;
        let Some(regs) = push.get_mut(user) else {
            return Ok(0);
        };
        let before = regs.len();
        regs.retain(|(j, n), _| !(j == jid && node.is_none_or(|node| node == n)));
        let removed = before - regs.len();
        if regs.is_empty() {
            push.remove(user);
        }
        Ok(removed)
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<PushRegistration>> {
        Ok(lock(&self.push)?
            .get(user)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_user(&self, user: &BareJid) -> Result<()> {
        lock(&self.push)?.remove(user);
        Ok(())
    }
}

/// The service domain of a room JID (`room@service`).
fn room_key(jid: &BareJid) -> (String, String) {
    (jid.domain().as_str().to_string(), jid.to_string())
}

#[async_trait]
impl RoomStore for MemoryStore {
    async fn put_room(&self, room: &StoredRoom) -> Result<()> {
        lock(&self.rooms)?.insert(room_key(&room.jid), room.clone());
        Ok(())
    }

    async fn room(&self, jid: &BareJid) -> Result<Option<StoredRoom>> {
        Ok(lock(&self.rooms)?.get(&room_key(jid)).cloned())
    }

    async fn remove_room(&self, jid: &BareJid) -> Result<bool> {
        Ok(lock(&self.rooms)?.remove(&room_key(jid)).is_some())
    }

    async fn rooms(&self, service: &DomainRef, limit: usize) -> Result<Vec<StoredRoom>> {
        Ok(lock(&self.rooms)?
            .range((service.to_string(), String::new())..)
            .take_while(|((s, _), _)| s == service.as_str())
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> crate::addr::BareJid {
        crate::addr::parse_bare(s).unwrap()
    }

    #[tokio::test]
    async fn remove_up_to_keeps_later_messages() {
        let s = MemoryStore::default();
        for i in 0..3 {
            s.push(&j("u@x"), &format!("m{i}"), 10).await.unwrap();
        }
        let seqs: Vec<u64> = OfflineStore::list(&s, &j("u@x"))
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        s.remove_up_to(&j("u@x"), seqs[1]).await.unwrap();
        let left = OfflineStore::list(&s, &j("u@x")).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].seq, seqs[2]);
        s.remove_up_to(&j("u@x"), u64::MAX).await.unwrap();
        assert_eq!(OfflineStore::count(&s, &j("u@x")).await.unwrap(), 0);
    }
}
