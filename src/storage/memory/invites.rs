//! The memory backend of [`InviteStore`].

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::{MemoryStore, lock};
use crate::addr::BareJid;
use crate::storage::Result;
use crate::storage::invites::{Invite, InviteStore};

#[derive(Default)]
pub(super) struct MemoryInvites {
    invites: BTreeMap<String, Invite>,
    admins: BTreeSet<BareJid>,
}

#[async_trait]
impl InviteStore for MemoryStore {
    async fn put_invite(&self, invite: &Invite) -> Result<()> {
        let mut m = lock(&self.invites)?;
        m.invites.insert(invite.token.clone(), invite.clone());
        Ok(())
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>> {
        Ok(lock(&self.invites)?.invites.get(token).cloned())
    }

    async fn invites(&self) -> Result<Vec<Invite>> {
        Ok(lock(&self.invites)?.invites.values().cloned().collect())
    }

    async fn remove_invite(&self, token: &str) -> Result<bool> {
        Ok(lock(&self.invites)?.invites.remove(token).is_some())
    }

    async fn use_invite(&self, token: &str, now: u64) -> Result<Option<Invite>> {
        let mut m = lock(&self.invites)?;
        let Some(inv) = m.invites.get_mut(token) else {
            return Ok(None);
        };
        if !inv.is_valid(now) {
            return Ok(None);
        }
        let before = inv.clone();
        inv.uses_left -= 1;
        if inv.uses_left == 0 {
            m.invites.remove(token);
        }
        Ok(Some(before))
    }

    async fn remove_expired_invites(&self, now: u64) -> Result<usize> {
        let mut m = lock(&self.invites)?;
        let before = m.invites.len();
        m.invites.retain(|_, i| now < i.expires);
        Ok(before - m.invites.len())
    }

    async fn set_admin(&self, jid: &BareJid, admin: bool) -> Result<()> {
        let mut m = lock(&self.invites)?;
        match admin {
            true => m.admins.insert(jid.clone()),
            false => m.admins.remove(jid),
        };
        Ok(())
    }

    async fn is_admin(&self, jid: &BareJid) -> Result<bool> {
        Ok(lock(&self.invites)?.admins.contains(jid))
    }
}
