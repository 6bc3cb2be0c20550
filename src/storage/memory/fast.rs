//! The in-memory backend of [`FastTokenStore`].

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::{MemoryStore, lock};
use crate::addr::BareJid;
use crate::storage::Result;
use crate::storage::fast::{FastTokenStore, FastTokens};

pub(super) type MemoryFast = HashMap<BareJid, BTreeMap<String, FastTokens>>;

#[async_trait]
impl FastTokenStore for MemoryStore {
    async fn fast_tokens(&self, user: &BareJid, agent: &str) -> Result<Option<FastTokens>> {
        Ok(lock(&self.fast)?
            .get(user)
            .and_then(|clients| clients.get(agent))
            .cloned())
    }

    async fn set_fast_tokens(
        &self,
        user: &BareJid,
        agent: &str,
        tokens: Option<&FastTokens>,
        _durable: bool,
    ) -> Result<()> {
        let mut fast = lock(&self.fast)?;
        match tokens {
            Some(t) => {
                fast.entry(user.clone())
                    .or_default()
                    .insert(agent.to_string(), t.clone());
            }
            None => {
                if let Some(clients) = fast.get_mut(user) {
                    clients.remove(agent);
                    if clients.is_empty() {
                        fast.remove(user);
                    }
                }
            }
        }
        Ok(())
    }

    async fn fast_clients(&self, user: &BareJid) -> Result<Vec<(String, FastTokens)>> {
        Ok(lock(&self.fast)?
            .get(user)
            .map(|c| c.iter().map(|(a, t)| (a.clone(), t.clone())).collect())
            .unwrap_or_default())
    }

    async fn remove_fast_tokens(&self, user: &BareJid) -> Result<()> {
        lock(&self.fast)?.remove(user);
        Ok(())
    }
}
