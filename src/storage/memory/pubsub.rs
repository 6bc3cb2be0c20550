//! The memory backend of [`PubsubStore`] and [`ProfileStore`].

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::{MemoryStore, lock};
use crate::storage::Result;
use crate::storage::pubsub::{CreateOutcome, NodeRecord, ProfileStore, PubsubStore, StoredItem};

#[derive(Default)]
pub(super) struct MemoryPubsub {
    /// Last item sequence number handed out (store-wide), which orders items.
    last_seq: u64,
    /// (service, node) → node, ordered so a service's nodes are a range.
    nodes: BTreeMap<(String, String), Node>,
}

struct Node {
    record: NodeRecord,
    /// seq → item, oldest first.
    items: BTreeMap<u64, StoredItem>,
    ids: HashMap<String, u64>,
}

impl Node {
    fn trim(&mut self, max_items: usize) -> Vec<String> {
        let mut dropped = Vec::new();
        while self.items.len() > max_items {
            let Some((_, item)) = self.items.pop_first() else {
                break;
            };
            self.ids.remove(&item.id);
            dropped.push(item.id);
        }
        dropped
    }
}

#[derive(Default)]
pub(super) struct MemoryProfiles {
    vcards: HashMap<String, String>,
    private: HashMap<String, BTreeMap<String, String>>,
    last: HashMap<String, (u64, String)>,
}

fn key(service: &str, node: &str) -> (String, String) {
    (service.to_owned(), node.to_owned())
}

#[async_trait]
impl PubsubStore for MemoryStore {
    async fn node(&self, service: &str, node: &str) -> Result<Option<NodeRecord>> {
        Ok(lock(&self.pubsub)?
            .nodes
            .get(&key(service, node))
            .map(|n| n.record.clone()))
    }

    async fn nodes(&self, service: &str) -> Result<Vec<(String, NodeRecord)>> {
        let ps = lock(&self.pubsub)?;
        let start = (service.to_owned(), String::new());
        Ok(ps
            .nodes
            .range(start..)
            .take_while(|((s, _), _)| s == service)
            .map(|((_, n), node)| (n.clone(), node.record.clone()))
            .collect())
    }

    async fn create_node(
        &self,
        service: &str,
        node: &str,
        record: &NodeRecord,
        max_nodes: usize,
    ) -> Result<CreateOutcome> {
        let mut ps = lock(&self.pubsub)?;
        if ps.nodes.contains_key(&key(service, node)) {
            return Ok(CreateOutcome::Exists);
        }
        let start = (service.to_owned(), String::new());
        let count = ps
            .nodes
            .range(start..)
            .take_while(|((s, _), _)| s == service)
            .count();
        if count >= max_nodes {
            return Ok(CreateOutcome::TooManyNodes);
        }
        ps.nodes.insert(
            key(service, node),
            Node {
                record: record.clone(),
                items: BTreeMap::new(),
                ids: HashMap::new(),
            },
        );
        Ok(CreateOutcome::Created)
    }

    async fn set_node(&self, service: &str, node: &str, record: &NodeRecord) -> Result<bool> {
        Ok(
            match lock(&self.pubsub)?.nodes.get_mut(&key(service, node)) {
                Some(n) => {
                    n.record = record.clone();
                    true
                }
                None => false,
            },
        )
    }

    async fn delete_node(&self, service: &str, node: &str) -> Result<bool> {
        Ok(lock(&self.pubsub)?
            .nodes
            .remove(&key(service, node))
            .is_some())
    }

    async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &StoredItem,
        max_items: usize,
    ) -> Result<Vec<String>> {
        let mut ps = lock(&self.pubsub)?;
        ps.last_seq += 1;
        let seq = ps.last_seq;
        let Some(n) = ps.nodes.get_mut(&key(service, node)) else {
            return Ok(Vec::new());
        };
        if let Some(old) = n.ids.insert(item.id.clone(), seq) {
            n.items.remove(&old);
        }
        n.items.insert(seq, item.clone());
        Ok(n.trim(max_items))
    }

    async fn items(&self, service: &str, node: &str, max: usize) -> Result<Vec<StoredItem>> {
        Ok(lock(&self.pubsub)?
            .nodes
            .get(&key(service, node))
            .map(|n| n.items.values().rev().take(max).cloned().collect())
            .unwrap_or_default())
    }

    async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>> {
        let ps = lock(&self.pubsub)?;
        let Some(n) = ps.nodes.get(&key(service, node)) else {
            return Ok(None);
        };
        Ok(n.ids.get(id).and_then(|seq| n.items.get(seq)).cloned())
    }

    async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool> {
        let mut ps = lock(&self.pubsub)?;
        let Some(n) = ps.nodes.get_mut(&key(service, node)) else {
            return Ok(false);
        };
        Ok(match n.ids.remove(id) {
            Some(seq) => n.items.remove(&seq).is_some(),
            None => false,
        })
    }

    async fn trim(&self, service: &str, node: &str, max_items: usize) -> Result<Vec<String>> {
        Ok(
            match lock(&self.pubsub)?.nodes.get_mut(&key(service, node)) {
                Some(n) => n.trim(max_items),
                None => Vec::new(),
            },
        )
    }

    async fn purge(&self, service: &str, node: &str) -> Result<()> {
        if let Some(n) = lock(&self.pubsub)?.nodes.get_mut(&key(service, node)) {
            n.items.clear();
            n.ids.clear();
        }
        Ok(())
    }

    async fn remove_service(&self, service: &str) -> Result<()> {
        lock(&self.pubsub)?.nodes.retain(|(s, _), _| s != service);
        Ok(())
    }
}

#[async_trait]
impl ProfileStore for MemoryStore {
    async fn vcard(&self, user: &str) -> Result<Option<String>> {
        Ok(lock(&self.profiles)?.vcards.get(user).cloned())
    }

    async fn set_vcard(&self, user: &str, vcard: Option<&str>) -> Result<()> {
        let mut p = lock(&self.profiles)?;
        match vcard {
            Some(v) => p.vcards.insert(user.to_owned(), v.to_owned()),
            None => p.vcards.remove(user),
        };
        Ok(())
    }

    async fn private(&self, user: &str, key: &str) -> Result<Option<String>> {
        Ok(lock(&self.profiles)?
            .private
            .get(user)
            .and_then(|m| m.get(key))
            .cloned())
    }

    async fn private_all(&self, user: &str) -> Result<Vec<(String, String)>> {
        Ok(lock(&self.profiles)?
            .private
            .get(user)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn set_private(
        &self,
        user: &str,
        key: &str,
        xml: Option<&str>,
        max_entries: usize,
    ) -> Result<bool> {
        let mut p = lock(&self.profiles)?;
        let entries = p.private.entry(user.to_owned()).or_default();
        match xml {
            Some(xml) => {
                if !entries.contains_key(key) && entries.len() >= max_entries {
                    return Ok(false);
                }
                entries.insert(key.to_owned(), xml.to_owned());
            }
            None => {
                entries.remove(key);
                if entries.is_empty() {
                    p.private.remove(user);
                }
            }
        }
        Ok(true)
    }

    async fn last_activity(&self, user: &str) -> Result<Option<(u64, String)>> {
        Ok(lock(&self.profiles)?.last.get(user).cloned())
    }

    async fn set_last_activity(&self, user: &str, secs: u64, status: &str) -> Result<()> {
        lock(&self.profiles)?
            .last
            .insert(user.to_owned(), (secs, status.to_owned()));
        Ok(())
    }

    async fn remove_user(&self, user: &str) -> Result<()> {
        let mut p = lock(&self.profiles)?;
        p.vcards.remove(user);
        p.private.remove(user);
        p.last.remove(user);
        Ok(())
    }
}
