//! The sled backend of [`PubsubStore`] and [`ProfileStore`]. Layout:
//!
//! | tree              | key                                   | value                   |
//! |-------------------|---------------------------------------|-------------------------|
//! | `pubsub_nodes`    | `<service>\0<node>`                   | fmt byte + `NodeRecord` |
//! | `pubsub_items`    | `<service>\0<node>\0` + seq (u64 BE)  | fmt byte + `StoredItem` |
//! | `pubsub_item_ids` | `<service>\0<node>\0<id>`             | seq (u64 BE)            |
//! | `vcards`          | `<user>`                              | fmt byte + XML string   |
//! | `private_xml`     | `<user>\0<key>`                       | fmt byte + XML string   |
//! | `last_activity`   | `<user>`                              | fmt byte + (secs, status) |
//!
//! Item sequence numbers come from sled's monotonic id generator, so a node's items are
//! one key range in publication order. Writes are serialized by one lock (pubsub writes
//! are rare next to messages) so the three trees never disagree while it is held.

use std::sync::{Mutex, MutexGuard, PoisonError};

use ::sled::{Db, Tree};
use async_trait::async_trait;

use super::{
    SEP, SledStore, backend, check_name, clear_prefix, decode, encode, keys_with_prefix,
    name_pair_key, name_prefix,
};
use crate::storage::pubsub::{CreateOutcome, NodeRecord, ProfileStore, PubsubStore, StoredItem};
use crate::storage::{Result, StorageError};

pub(super) struct SledPubsub {
    nodes: Tree,
    items: Tree,
    item_ids: Tree,
    vcards: Tree,
    private: Tree,
    last: Tree,
    write: Mutex<()>,
}

impl SledPubsub {
    pub(super) fn open(db: &Db) -> Result<Self> {
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(SledPubsub {
            nodes: tree("pubsub_nodes")?,
            items: tree("pubsub_items")?,
            item_ids: tree("pubsub_item_ids")?,
            vcards: tree("vcards")?,
            private: tree("private_xml")?,
            last: tree("last_activity")?,
            write: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `<service>\0<node>\0`: the prefix of a node's items and item ids.
    fn node_prefix(service: &str, node: &str) -> Result<Vec<u8>> {
        let mut key = name_pair_key(service, node)?;
        key.push(SEP);
        Ok(key)
    }

    fn seq_of(bytes: &[u8]) -> Result<u64> {
        let arr: [u8; 8] = bytes
            .try_into()
            .map_err(|_| StorageError::Corrupt("pubsub item seq".into()))?;
        Ok(u64::from_be_bytes(arr))
    }

    /// Removes the oldest items beyond `max_items` (lock held by the caller).
    fn trim_locked(&self, prefix: &[u8], max_items: usize) -> Result<Vec<String>> {
        let keys = keys_with_prefix(&self.items, prefix)?;
        let excess = keys.len().saturating_sub(max_items);
        let mut dropped = Vec::new();
        for key in keys.into_iter().take(excess) {
            if let Some(v) = self.items.remove(&key).map_err(backend)? {
                let item: StoredItem = decode("pubsub item", &v)?;
                let mut id_key = prefix.to_vec();
                id_key.extend_from_slice(item.id.as_bytes());
                self.item_ids.remove(id_key).map_err(backend)?;
                dropped.push(item.id);
            }
        }
        Ok(dropped)
    }

    fn clear_node_items(&self, prefix: &[u8]) -> Result<()> {
        clear_prefix(&self.items, prefix)?;
        clear_prefix(&self.item_ids, prefix)
    }
}

impl SledStore {
    /// Pubsub and profile writes are durable before the client's result when
    /// `storage.sync_writes` is on (OMEMO keys lost in a crash break encryption for
    /// contacts until the client republishes); off, sled writes them within half a second.
    async fn flush_pubsub(&self) -> Result<()> {
        if self.sync_writes.load(std::sync::atomic::Ordering::Relaxed) {
            self.flush_db().await
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl PubsubStore for SledStore {
    async fn node(&self, service: &str, node: &str) -> Result<Option<NodeRecord>> {
        match self
            .pubsub
            .nodes
            .get(name_pair_key(service, node)?)
            .map_err(backend)?
        {
            Some(v) => Ok(Some(decode("pubsub node", &v)?)),
            None => Ok(None),
        }
    }

    async fn nodes(&self, service: &str) -> Result<Vec<(String, NodeRecord)>> {
        let prefix = name_prefix(service)?;
        self.pubsub
            .nodes
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, v) = r.map_err(backend)?;
                let name = std::str::from_utf8(&k[prefix.len()..])
                    .map_err(|_| StorageError::Corrupt("pubsub node name".into()))?;
                Ok((name.to_owned(), decode("pubsub node", &v)?))
            })
            .collect()
    }

    async fn create_node(
        &self,
        service: &str,
        node: &str,
        record: &NodeRecord,
        max_nodes: usize,
    ) -> Result<CreateOutcome> {
        let key = name_pair_key(service, node)?;
        {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            if ps.nodes.contains_key(&key).map_err(backend)? {
                return Ok(CreateOutcome::Exists);
            }
            let count = ps.nodes.scan_prefix(name_prefix(service)?).count();
            if count >= max_nodes {
                return Ok(CreateOutcome::TooManyNodes);
            }
            ps.nodes.insert(key, encode(record)?).map_err(backend)?;
        }
        self.flush_pubsub().await?;
        Ok(CreateOutcome::Created)
    }

    async fn set_node(&self, service: &str, node: &str, record: &NodeRecord) -> Result<bool> {
        let key = name_pair_key(service, node)?;
        {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            if !ps.nodes.contains_key(&key).map_err(backend)? {
                return Ok(false);
            }
            ps.nodes.insert(key, encode(record)?).map_err(backend)?;
        }
        self.flush_pubsub().await?;
        Ok(true)
    }

    async fn delete_node(&self, service: &str, node: &str) -> Result<bool> {
        let key = name_pair_key(service, node)?;
        let prefix = SledPubsub::node_prefix(service, node)?;
        let existed = {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            let existed = ps.nodes.remove(&key).map_err(backend)?.is_some();
            ps.clear_node_items(&prefix)?;
            existed
        };
        self.flush_pubsub().await?;
        Ok(existed)
    }

    async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &StoredItem,
        max_items: usize,
    ) -> Result<Vec<String>> {
        check_name(&item.id)?;
        let prefix = SledPubsub::node_prefix(service, node)?;
        let dropped = {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            if !ps
                .nodes
                .contains_key(&prefix[..prefix.len() - 1])
                .map_err(backend)?
            {
                return Ok(Vec::new());
            }
            let mut id_key = prefix.clone();
            id_key.extend_from_slice(item.id.as_bytes());
            if let Some(old) = ps.item_ids.get(&id_key).map_err(backend)? {
                let mut old_key = prefix.clone();
                old_key.extend_from_slice(&old);
                ps.items.remove(old_key).map_err(backend)?;
            }
            let seq = self.db.generate_id().map_err(backend)?;
            let mut item_key = prefix.clone();
            item_key.extend_from_slice(&seq.to_be_bytes());
            ps.items.insert(item_key, encode(item)?).map_err(backend)?;
            ps.item_ids
                .insert(id_key, &seq.to_be_bytes())
                .map_err(backend)?;
            ps.trim_locked(&prefix, max_items)?
        };
        self.flush_pubsub().await?;
        Ok(dropped)
    }

    async fn items(&self, service: &str, node: &str, max: usize) -> Result<Vec<StoredItem>> {
        let prefix = SledPubsub::node_prefix(service, node)?;
        self.pubsub
            .items
            .scan_prefix(&prefix)
            .rev()
            .take(max)
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("pubsub item", &v)
            })
            .collect()
    }

    async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>> {
        check_name(id)?;
        let prefix = SledPubsub::node_prefix(service, node)?;
        let mut id_key = prefix.clone();
        id_key.extend_from_slice(id.as_bytes());
        let Some(seq) = self.pubsub.item_ids.get(&id_key).map_err(backend)? else {
            return Ok(None);
        };
        let mut key = prefix;
        key.extend_from_slice(&SledPubsub::seq_of(&seq)?.to_be_bytes());
        match self.pubsub.items.get(key).map_err(backend)? {
            Some(v) => Ok(Some(decode("pubsub item", &v)?)),
            None => Ok(None),
        }
    }

    async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool> {
        check_name(id)?;
        let prefix = SledPubsub::node_prefix(service, node)?;
        let removed = {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            let mut id_key = prefix.clone();
            id_key.extend_from_slice(id.as_bytes());
            match ps.item_ids.remove(&id_key).map_err(backend)? {
                Some(seq) => {
                    let mut key = prefix;
                    key.extend_from_slice(&SledPubsub::seq_of(&seq)?.to_be_bytes());
                    ps.items.remove(key).map_err(backend)?.is_some()
                }
                None => false,
            }
        };
        if removed {
            self.flush_pubsub().await?;
        }
        Ok(removed)
    }

    async fn trim(&self, service: &str, node: &str, max_items: usize) -> Result<Vec<String>> {
        let prefix = SledPubsub::node_prefix(service, node)?;
        let dropped = {
            let _guard = self.pubsub.lock();
            self.pubsub.trim_locked(&prefix, max_items)?
        };
        if !dropped.is_empty() {
            self.flush_pubsub().await?;
        }
        Ok(dropped)
    }

    async fn purge(&self, service: &str, node: &str) -> Result<()> {
        let prefix = SledPubsub::node_prefix(service, node)?;
        {
            let _guard = self.pubsub.lock();
            self.pubsub.clear_node_items(&prefix)?;
        }
        self.flush_pubsub().await
    }

    async fn remove_service(&self, service: &str) -> Result<()> {
        let prefix = name_prefix(service)?;
        let ps = &self.pubsub;
        let _guard = ps.lock();
        // Items first: a crash in between leaves nodes without items, not the reverse.
        clear_prefix(&ps.items, &prefix)?;
        clear_prefix(&ps.item_ids, &prefix)?;
        clear_prefix(&ps.nodes, &prefix)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}

#[async_trait]
impl ProfileStore for SledStore {
    async fn vcard(&self, user: &str) -> Result<Option<String>> {
        check_name(user)?;
        match self.pubsub.vcards.get(user).map_err(backend)? {
            Some(v) => Ok(Some(decode("vcard", &v)?)),
            None => Ok(None),
        }
    }

    async fn set_vcard(&self, user: &str, vcard: Option<&str>) -> Result<()> {
        check_name(user)?;
        match vcard {
            Some(v) => self.pubsub.vcards.insert(user, encode(v)?).map(drop),
            None => self.pubsub.vcards.remove(user).map(drop),
        }
        .map_err(backend)?;
        self.flush_pubsub().await
    }

    async fn private(&self, user: &str, key: &str) -> Result<Option<String>> {
        match self
            .pubsub
            .private
            .get(name_pair_key(user, key)?)
            .map_err(backend)?
        {
            Some(v) => Ok(Some(decode("private xml", &v)?)),
            None => Ok(None),
        }
    }

    async fn private_all(&self, user: &str) -> Result<Vec<(String, String)>> {
        let prefix = name_prefix(user)?;
        let mut out = Vec::new();
        for kv in self.pubsub.private.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(backend)?;
            let key = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| StorageError::Corrupt("private xml key is not UTF-8".into()))?;
            out.push((key, decode("private xml", &v)?));
        }
        Ok(out)
    }

    async fn set_private(
        &self,
        user: &str,
        key: &str,
        xml: Option<&str>,
        max_entries: usize,
    ) -> Result<bool> {
        let k = name_pair_key(user, key)?;
        {
            let ps = &self.pubsub;
            let _guard = ps.lock();
            match xml {
                Some(xml) => {
                    if !ps.private.contains_key(&k).map_err(backend)?
                        && ps.private.scan_prefix(name_prefix(user)?).count() >= max_entries
                    {
                        return Ok(false);
                    }
                    ps.private.insert(k, encode(xml)?).map_err(backend)?;
                }
                None => {
                    ps.private.remove(k).map_err(backend)?;
                }
            }
        }
        self.flush_pubsub().await?;
        Ok(true)
    }

    async fn last_activity(&self, user: &str) -> Result<Option<(u64, String)>> {
        check_name(user)?;
        match self.pubsub.last.get(user).map_err(backend)? {
            Some(v) => Ok(Some(decode("last activity", &v)?)),
            None => Ok(None),
        }
    }

    /// Not flushed: a logout time lost in a crash is harmless, and every logout writes one.
    async fn set_last_activity(&self, user: &str, secs: u64, status: &str) -> Result<()> {
        check_name(user)?;
        self.pubsub
            .last
            .insert(user, encode(&(secs, status))?)
            .map_err(backend)?;
        Ok(())
    }

    async fn remove_user(&self, user: &str) -> Result<()> {
        check_name(user)?;
        self.pubsub.last.remove(user).map_err(backend)?;
        self.pubsub.vcards.remove(user).map_err(backend)?;
        clear_prefix(&self.pubsub.private, &name_prefix(user)?)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}
