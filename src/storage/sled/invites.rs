//! The sled backend of [`InviteStore`]. Layout:
//!
//! | tree            | key       | value               |
//! |-----------------|-----------|---------------------|
//! | `invites`       | `<token>` | fmt byte + `Invite` |
//! | `invite_admins` | `<jid>`   | empty               |
//!
//! Invitations are few and rarely written: every change is flushed, so that a token
//! handed out is not lost in a crash and a used one cannot be used again after it.

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Db, Tree};
use async_trait::async_trait;

use super::{SledStore, backend, decode, encode};
use crate::addr::BareJid;
use crate::storage::Result;
use crate::storage::invites::{Invite, InviteStore};

pub(super) struct SledInvites {
    invites: Tree,
    admins: Tree,
}

impl SledInvites {
    pub(super) fn open(db: &Db) -> Result<Self> {
        Ok(SledInvites {
            invites: db.open_tree("invites").map_err(backend)?,
            admins: db.open_tree("invite_admins").map_err(backend)?,
        })
    }
}

#[async_trait]
impl InviteStore for SledStore {
    async fn put_invite(&self, invite: &Invite) -> Result<()> {
        self.invites
            .invites
            .insert(invite.token.as_bytes(), encode(invite)?)
            .map_err(backend)?;
        self.flush_db().await
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>> {
        match self
            .invites
            .invites
            .get(token.as_bytes())
            .map_err(backend)?
        {
            Some(v) => Ok(Some(decode("invite", &v)?)),
            None => Ok(None),
        }
    }

    async fn invites(&self) -> Result<Vec<Invite>> {
        self.invites
            .invites
            .iter()
            .map(|r| {
                let (_, v) = r.map_err(backend)?;
                decode("invite", &v)
            })
            .collect()
    }

    async fn remove_invite(&self, token: &str) -> Result<bool> {
        let removed = self
            .invites
            .invites
            .remove(token.as_bytes())
            .map_err(backend)?
            .is_some();
        if removed {
            self.flush_db().await?;
        }
        Ok(removed)
    }

    async fn use_invite(&self, token: &str, now: u64) -> Result<Option<Invite>> {
        let key = token.as_bytes();
        // A transaction: two registrations racing for the last use cannot both get it.
        let outcome = self.invites.invites.transaction(|t| {
            let Some(v) = t.get(key)? else {
                return Ok(None);
            };
            let inv: Invite = decode("invite", &v).map_err(ConflictableTransactionError::Abort)?;
            if !inv.is_valid(now) {
                return Ok(None);
            }
            let mut after = inv.clone();
            after.uses_left -= 1;
            if after.uses_left == 0 {
                t.remove(key)?;
            } else {
                t.insert(
                    key,
                    encode(&after).map_err(ConflictableTransactionError::Abort)?,
                )?;
            }
            Ok(Some(inv))
        });
        let used = match outcome {
            Ok(used) => used,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(backend(e)),
        };
        if used.is_some() {
            self.flush_db().await?;
        }
        Ok(used)
    }

    async fn remove_expired_invites(&self, now: u64) -> Result<usize> {
        let mut expired = Vec::new();
        for r in self.invites.invites.iter() {
            let (k, v) = r.map_err(backend)?;
            let inv: Invite = decode("invite", &v)?;
            if now >= inv.expires {
                expired.push(k);
            }
        }
        for k in &expired {
            self.invites.invites.remove(k).map_err(backend)?;
        }
        if !expired.is_empty() {
            self.flush_db().await?;
        }
        Ok(expired.len())
    }

    async fn set_admin(&self, jid: &BareJid, admin: bool) -> Result<()> {
        let key = jid.as_str().as_bytes();
        match admin {
            true => self.invites.admins.insert(key, &[] as &[u8]).map(|_| ()),
            false => self.invites.admins.remove(key).map(|_| ()),
        }
        .map_err(backend)?;
        self.flush_db().await
    }

    async fn is_admin(&self, jid: &BareJid) -> Result<bool> {
        self.invites
            .admins
            .contains_key(jid.as_str().as_bytes())
            .map_err(backend)
    }

    async fn flush(&self) -> Result<()> {
        self.flush_db().await
    }
}
