//! TEMPORARY STUBS — DELETE THIS FILE AND ITS `mod premerge_stub;` LINE IN admin/mod.rs AT
//! MERGE. They stand in for `StoredCredentials::from_password` (sasl branch) and
//! `Storage::open_sled` (storage branch) so this branch compiles and its tests run alone.
//! Once the real ones are merged these inherent methods are duplicate definitions, so the
//! build fails until this file is deleted: it cannot silently survive the merge.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::sasl::credentials::{ScramCredentials, StoredCredentials};
use crate::storage::*;

impl StoredCredentials {
    /// STUB: not SCRAM, not secure; only distinct per call.
    pub fn from_password(password: &str, iterations: u32) -> std::result::Result<Self, String> {
        if password.is_empty() || iterations == 0 {
            return Err("stub: empty password".into());
        }
        let salt: [u8; 16] = rand::random();
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password.as_bytes());
        let c = ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: h.finalize().to_vec(),
            server_key: Vec::new(),
        };
        Ok(StoredCredentials {
            sha1: c.clone(),
            sha256: c,
        })
    }
}

impl Storage {
    /// STUB: accounts only, in one sled tree; rosters and offline messages are not kept.
    pub fn open_sled(path: &Path) -> Result<Storage> {
        let db = sled::open(path).map_err(|e| StorageError::Backend(e.to_string()))?;
        let tree = db
            .open_tree("stub_accounts")
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        Ok(Storage {
            accounts: Arc::new(StubAccounts(tree)),
            roster: Arc::new(StubNothing),
            offline: Arc::new(StubNothing),
        })
    }
}

struct StubAccounts(sled::Tree);
struct StubNothing;

fn be(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

#[async_trait]
impl AccountStore for StubAccounts {
    async fn create(&self, jid: &str, creds: &StoredCredentials) -> Result<bool> {
        let v = postcard::to_stdvec(creds).map_err(be)?;
        let r = self
            .0
            .compare_and_swap(jid, None as Option<&[u8]>, Some(v))
            .map_err(be)?;
        self.0.flush().map_err(be)?;
        Ok(r.is_ok())
    }
    async fn get(&self, jid: &str) -> Result<Option<StoredCredentials>> {
        match self.0.get(jid).map_err(be)? {
            None => Ok(None),
            Some(v) => Ok(Some(postcard::from_bytes(&v).map_err(be)?)),
        }
    }
    async fn set_credentials(&self, jid: &str, creds: &StoredCredentials) -> Result<bool> {
        if self.0.get(jid).map_err(be)?.is_none() {
            return Ok(false);
        }
        let v = postcard::to_stdvec(creds).map_err(be)?;
        self.0.insert(jid, v).map_err(be)?;
        self.0.flush().map_err(be)?;
        Ok(true)
    }
    async fn remove(&self, jid: &str) -> Result<bool> {
        let r = self.0.remove(jid).map_err(be)?.is_some();
        self.0.flush().map_err(be)?;
        Ok(r)
    }
    async fn list(&self) -> Result<Vec<String>> {
        self.0
            .iter()
            .keys()
            .map(|k| {
                k.map_err(be)
                    .and_then(|k| String::from_utf8(k.to_vec()).map_err(be))
            })
            .collect()
    }
}

#[async_trait]
impl RosterStore for StubNothing {
    async fn roster(&self, _: &str) -> Result<Roster> {
        Ok(Roster::default())
    }
    async fn item(&self, _: &str, _: &str) -> Result<Option<RosterItem>> {
        Ok(None)
    }
    async fn put_item(&self, _: &str, _: &RosterItem) -> Result<u64> {
        Ok(0)
    }
    async fn remove_item(&self, _: &str, _: &str) -> Result<Option<u64>> {
        Ok(None)
    }
    async fn pending_in(&self, _: &str) -> Result<Vec<PendingSubscription>> {
        Ok(Vec::new())
    }
    async fn add_pending_in(&self, _: &str, _: &PendingSubscription) -> Result<()> {
        Ok(())
    }
    async fn remove_pending_in(&self, _: &str, _: &str) -> Result<bool> {
        Ok(false)
    }
    async fn remove_user(&self, _: &str) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl OfflineStore for StubNothing {
    async fn push(&self, _: &str, _: &str, _: usize) -> Result<OfflineStoreOutcome> {
        Ok(OfflineStoreOutcome::QuotaExceeded)
    }
    async fn list(&self, _: &str) -> Result<Vec<OfflineMessage>> {
        Ok(Vec::new())
    }
    async fn remove_up_to(&self, _: &str, _: u64) -> Result<()> {
        Ok(())
    }
    async fn count(&self, _: &str) -> Result<usize> {
        Ok(0)
    }
    async fn remove_user(&self, _: &str) -> Result<()> {
        Ok(())
    }
}
