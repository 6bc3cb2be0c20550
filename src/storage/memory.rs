//! In-memory reference backend (tests, `storage.backend = "memory"`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

/// Per user: roster version and items by contact.
type Rosters = HashMap<String, (u64, BTreeMap<String, RosterItem>)>;

#[derive(Default)]
pub struct MemoryStore {
    accounts: Mutex<BTreeMap<String, StoredCredentials>>,
    rosters: Mutex<Rosters>,
    pending: Mutex<HashMap<String, BTreeMap<String, PendingSubscription>>>,
    offline: Mutex<HashMap<String, (u64, Vec<OfflineMessage>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create(&self, jid: &str, creds: &StoredCredentials) -> Result<bool> {
        let mut a = lock(&self.accounts);
        if a.contains_key(jid) {
            return Ok(false);
        }
        a.insert(jid.to_string(), creds.clone());
        Ok(true)
    }
    async fn get(&self, jid: &str) -> Result<Option<StoredCredentials>> {
        Ok(lock(&self.accounts).get(jid).cloned())
    }
    async fn set_credentials(&self, jid: &str, creds: &StoredCredentials) -> Result<bool> {
        let mut a = lock(&self.accounts);
        match a.get_mut(jid) {
            Some(slot) => {
                *slot = creds.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    async fn remove(&self, jid: &str) -> Result<bool> {
        Ok(lock(&self.accounts).remove(jid).is_some())
    }
    async fn list(&self) -> Result<Vec<String>> {
        Ok(lock(&self.accounts).keys().cloned().collect())
    }
}

#[async_trait]
impl RosterStore for MemoryStore {
    async fn roster(&self, user: &str) -> Result<Roster> {
        let r = lock(&self.rosters);
        Ok(match r.get(user) {
            Some((version, items)) => Roster {
                version: *version,
                items: items.values().cloned().collect(),
            },
            None => Roster::default(),
        })
    }
    async fn item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>> {
        Ok(lock(&self.rosters)
            .get(user)
            .and_then(|(_, items)| items.get(contact).cloned()))
    }
    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64> {
        let mut r = lock(&self.rosters);
        let entry = r.entry(user.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(item.jid.clone(), item.clone());
        Ok(entry.0)
    }
    async fn remove_item(&self, user: &str, contact: &str) -> Result<Option<u64>> {
        let mut r = lock(&self.rosters);
        let Some(entry) = r.get_mut(user) else {
            return Ok(None);
        };
        if entry.1.remove(contact).is_none() {
            return Ok(None);
        }
        entry.0 += 1;
        Ok(Some(entry.0))
    }
    async fn pending_in(&self, user: &str) -> Result<Vec<PendingSubscription>> {
        Ok(lock(&self.pending)
            .get(user)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default())
    }
    async fn add_pending_in(&self, user: &str, pending: &PendingSubscription) -> Result<()> {
        lock(&self.pending)
            .entry(user.to_string())
            .or_default()
            .insert(pending.from.clone(), pending.clone());
        Ok(())
    }
    async fn remove_pending_in(&self, user: &str, contact: &str) -> Result<bool> {
        Ok(lock(&self.pending)
            .get_mut(user)
            .is_some_and(|p| p.remove(contact).is_some()))
    }
    async fn remove_user(&self, user: &str) -> Result<()> {
        // Keep the version counter so a re-created account never reuses old versions.
        if let Some(entry) = lock(&self.rosters).get_mut(user) {
            entry.0 += 1;
            entry.1.clear();
        }
        lock(&self.pending).remove(user);
        Ok(())
    }
}

#[async_trait]
impl OfflineStore for MemoryStore {
    async fn push(&self, user: &str, stanza: &str, quota: usize) -> Result<OfflineStoreOutcome> {
        let mut o = lock(&self.offline);
        let entry = o.entry(user.to_string()).or_default();
        if entry.1.len() >= quota {
            return Ok(OfflineStoreOutcome::QuotaExceeded);
        }
        entry.0 += 1;
        let seq = entry.0;
        entry.1.push(OfflineMessage {
            seq,
            stored_at: now(),
            stanza: stanza.to_string(),
        });
        Ok(OfflineStoreOutcome::Stored)
    }
    async fn list(&self, user: &str) -> Result<Vec<OfflineMessage>> {
        Ok(lock(&self.offline)
            .get(user)
            .map(|(_, m)| m.clone())
            .unwrap_or_default())
    }
    async fn remove_up_to(&self, user: &str, up_to: u64) -> Result<()> {
        if let Some(entry) = lock(&self.offline).get_mut(user) {
            entry.1.retain(|m| m.seq > up_to);
        }
        Ok(())
    }
    async fn count(&self, user: &str) -> Result<usize> {
        Ok(lock(&self.offline).get(user).map_or(0, |(_, m)| m.len()))
    }
    async fn remove_user(&self, user: &str) -> Result<()> {
        if let Some(entry) = lock(&self.offline).get_mut(user) {
            entry.1.clear();
        }
        Ok(())
    }
}
