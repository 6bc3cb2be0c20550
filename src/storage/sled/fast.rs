//! The sled backend of [`FastTokenStore`]. Layout:
//!
//! | tree          | key                   | value                   |
//! |---------------|-----------------------|-------------------------|
//! | `fast_tokens` | `<jid>\0<agent id>`   | fmt byte + `FastTokens` |
//!
//! Written at logins that issue or rotate a token, and flushed each time: a token the
//! client was given must still work after a crash. A token's first use only retires the
//! one before it; that write is left to sled's periodic flush (lost in a crash, the older
//! token merely stays valid a little longer).

use ::sled::{Db, Tree};
use async_trait::async_trait;

use super::{SledStore, backend, check_name, clear_prefix, decode, encode, user_prefix};
use crate::addr::BareJid;
use crate::storage::Result;
use crate::storage::fast::{FastTokenStore, FastTokens};

pub(super) fn open(db: &Db) -> Result<Tree> {
    db.open_tree("fast_tokens").map_err(backend)
}

fn key(user: &BareJid, agent: &str) -> Result<Vec<u8>> {
    check_name(agent)?;
    let mut key = user_prefix(user)?;
    key.extend_from_slice(agent.as_bytes());
    Ok(key)
}

#[async_trait]
impl FastTokenStore for SledStore {
    async fn fast_tokens(&self, user: &BareJid, agent: &str) -> Result<Option<FastTokens>> {
        match self.fast.get(key(user, agent)?).map_err(backend)? {
            Some(v) => Ok(Some(decode("FAST tokens", &v)?)),
            None => Ok(None),
        }
    }

    async fn set_fast_tokens(
        &self,
        user: &BareJid,
        agent: &str,
        tokens: Option<&FastTokens>,
        durable: bool,
    ) -> Result<()> {
        let key = key(user, agent)?;
        match tokens {
            Some(t) => self.fast.insert(key, encode(t)?).map(drop),
            None => self.fast.remove(key).map(drop),
        }
        .map_err(backend)?;
        if !durable {
            return Ok(());
        }
        self.flush_db().await
    }

    async fn fast_clients(&self, user: &BareJid) -> Result<Vec<(String, FastTokens)>> {
        let prefix = user_prefix(user)?;
        self.fast
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, v) = r.map_err(backend)?;
                let agent = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((agent, decode("FAST tokens", &v)?))
            })
            .collect()
    }

    async fn remove_fast_tokens(&self, user: &BareJid) -> Result<()> {
        clear_prefix(&self.fast, &user_prefix(user)?)?;
        self.flush_db().await
    }
}
