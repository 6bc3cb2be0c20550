//! Invitations (XEP-0401/XEP-0379/XEP-0445): tokens that let someone register an account
//! and/or become a contact of the inviter, stored until they expire, are used up or are
//! revoked; and the accounts made admins by an admin invitation.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Result;
use crate::addr::BareJid;

/// One invitation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The secret (random, URL-safe); also the key.
    pub token: String,
    /// The vhost an account may be registered on.
    pub domain: String,
    /// Contact invitations: the inviter, who becomes the invitee's mutual contact.
    pub inviter: Option<BareJid>,
    /// The account name reserved for the invitee, if the creator chose it.
    pub username: Option<String>,
    /// Whether the token lets the invitee register an account here.
    pub register: bool,
    /// Whether an account registered with it becomes a server admin.
    pub admin: bool,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub expires: u64,
    /// Registrations left; the invitation is deleted when the last one is used.
    pub uses_left: u32,
}

impl Invite {
    pub fn is_valid(&self, now: u64) -> bool {
        now < self.expires && self.uses_left > 0
    }
}

#[async_trait]
pub trait InviteStore: Send + Sync {
    /// Stores (or replaces) an invitation.
    async fn put_invite(&self, invite: &Invite) -> Result<()>;
    async fn invite(&self, token: &str) -> Result<Option<Invite>>;
    /// Every stored invitation (expired ones too, until `remove_expired_invites`), by token.
    async fn invites(&self) -> Result<Vec<Invite>>;
    /// `Ok(false)` if there was none.
    async fn remove_invite(&self, token: &str) -> Result<bool>;
    /// Uses one registration of a valid invitation atomically (deleting it when none is
    /// left); returns it as it was before, or `None` if unknown, expired or used up.
    async fn use_invite(&self, token: &str, now: u64) -> Result<Option<Invite>>;
    /// Deletes invitations expired at `now`; returns how many.
    async fn remove_expired_invites(&self, now: u64) -> Result<usize>;
    /// Accounts made admins by an admin invitation.
    async fn set_admin(&self, jid: &BareJid, admin: bool) -> Result<()>;
    async fn is_admin(&self, jid: &BareJid) -> Result<bool>;
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
