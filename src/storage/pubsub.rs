//! Storage for publish-subscribe nodes (XEP-0060, PEP per XEP-0163) and for per-user XML
//! documents (vCard per XEP-0054, private XML per XEP-0049).
//!
//! A pubsub *service* is a string key: an account's bare JID for its PEP service, a
//! domain for a generic service. Node names, item ids and keys come from XML attributes,
//! so they cannot contain NUL, which the sled layout relies on.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Result;

/// A node as stored: its configuration and affiliations as name/value pairs, which the
/// pubsub module interprets. Pairs rather than a typed struct so that new options need no
/// change of the stored format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `pubsub#…` option → value (multi-valued options joined with `\n`).
    pub config: Vec<(String, String)>,
    /// Bare JID → affiliation (`owner`, `publisher`, `member`, `outcast`, …).
    pub affiliations: Vec<(String, String)>,
    /// Subscribed JID (bare or full) → subscription state (`subscribed`); explicit
    /// subscriptions of a generic service (PEP subscribes contacts implicitly).
    pub subscriptions: Vec<(String, String)>,
}

/// One published item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredItem {
    pub id: String,
    /// Bare JID of the publisher.
    pub publisher: String,
    /// The payload element, serialized.
    pub payload: String,
    /// Seconds since the Unix epoch when published (the XEP-0203 stamp of a last item).
    pub published_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// A node with this name exists already; nothing changed.
    Exists,
    /// The service holds `max_nodes` nodes already; nothing changed.
    TooManyNodes,
}

/// Nodes and items per service. Items are kept in publication order; publishing an id
/// that exists replaces it and makes it the newest.
#[async_trait]
pub trait PubsubStore: Send + Sync {
    async fn node(&self, service: &str, node: &str) -> Result<Option<NodeRecord>>;
    /// Every node of the service, ordered by name.
    async fn nodes(&self, service: &str) -> Result<Vec<(String, NodeRecord)>>;
    async fn create_node(
        &self,
        service: &str,
        node: &str,
        record: &NodeRecord,
        max_nodes: usize,
    ) -> Result<CreateOutcome>;
    /// Replaces a node's record; `Ok(false)` if there is no such node.
    async fn set_node(&self, service: &str, node: &str, record: &NodeRecord) -> Result<bool>;
    /// Removes the node and its items; `Ok(false)` if there was none.
    async fn delete_node(&self, service: &str, node: &str) -> Result<bool>;
    /// Stores an item in an existing node, then drops the oldest beyond `max_items`;
    /// returns the ids dropped.
    async fn publish(
        &self,
        service: &str,
        node: &str,
        item: &StoredItem,
        max_items: usize,
    ) -> Result<Vec<String>>;
    /// The newest `max` items, newest first.
    async fn items(&self, service: &str, node: &str, max: usize) -> Result<Vec<StoredItem>>;
    async fn item(&self, service: &str, node: &str, id: &str) -> Result<Option<StoredItem>>;
    /// `Ok(false)` if there was no such item.
    async fn retract(&self, service: &str, node: &str, id: &str) -> Result<bool>;
    /// Drops the oldest items beyond `max_items`; returns their ids.
    async fn trim(&self, service: &str, node: &str, max_items: usize) -> Result<Vec<String>>;
    /// Removes every item of the node.
    async fn purge(&self, service: &str, node: &str) -> Result<()>;
    /// Removes every node and item of the service (account removal).
    async fn remove_service(&self, service: &str) -> Result<()>;
    /// Makes every write so far durable (see [`super::AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Per-user XML documents: the vCard (XEP-0054) and private XML (XEP-0049), each stored
/// serialized.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    async fn vcard(&self, user: &str) -> Result<Option<String>>;
    /// Stores the vCard, or removes it with `None`.
    async fn set_vcard(&self, user: &str, vcard: Option<&str>) -> Result<()>;
    /// The private element stored under `key` (the module makes it from the element's
    /// name and namespace).
    async fn private(&self, user: &str, key: &str) -> Result<Option<String>>;
    /// Every private element of the user as (key, XML), ordered by key (export).
    async fn private_all(&self, user: &str) -> Result<Vec<(String, String)>>;
    /// Stores (or removes, with `None`) the element under `key`. A new key while the user
    /// has `max_entries` already is refused: `Ok(false)`, nothing changed.
    async fn set_private(
        &self,
        user: &str,
        key: &str,
        xml: Option<&str>,
        max_entries: usize,
    ) -> Result<bool>;
    /// When the account's last session went offline (seconds since the epoch) and the
    /// status it left with (XEP-0012).
    async fn last_activity(&self, user: &str) -> Result<Option<(u64, String)>>;
    async fn set_last_activity(&self, user: &str, secs: u64, status: &str) -> Result<()>;
    /// Removes the vCard, every private element and the last activity (account removal).
    async fn remove_user(&self, user: &str) -> Result<()>;
    /// Makes every write so far durable (see [`super::AccountStore::flush`]).
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
