//! Account administration on the running server, whichever path asks for it (the control
//! socket, XEP-0077 in-band requests, XEP-0133 ad-hoc commands): the stores change, then
//! the sessions and modules hear of it.

use std::sync::Arc;

use super::control::AdminEvent;
use super::{AdminError, ErrorKind};
use crate::addr::BareJid;
use crate::context::Context;
use crate::stream::{StreamError, StreamErrorCondition};

/// What the server does after an account changed: a removed account or a changed
/// password ends that account's sessions, and the modules let go of what a removed
/// account kept outside the stores.
pub fn after_change(ctx: &Arc<Context>, event: &AdminEvent) {
    let (removed, jid) = match event {
        AdminEvent::Removed(jid) => (true, jid),
        AdminEvent::PasswordChanged(jid) => (false, jid),
        AdminEvent::Added(_) => return,
    };
    let Some(jid) = crate::addr::parse_bare(jid) else {
        return;
    };
    for s in ctx.sessions.resources(&jid) {
        s.control
            .kick(StreamError::new(StreamErrorCondition::NotAuthorized));
    }
    if removed {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.registry.account_removed(&ctx, &jid).await });
    }
}

/// Removes an account with all its data, as `xmppd user remove` does.
pub async fn remove_account(ctx: &Arc<Context>, jid: &BareJid) -> Result<(), AdminError> {
    let jid = super::remove_user(&ctx.storage, jid.as_str()).await?;
    after_change(ctx, &AdminEvent::Removed(jid));
    Ok(())
}

/// Sets a new password. `end_sessions`: the account's sessions end (an admin's change);
/// the owner changing their own keeps theirs.
pub async fn change_password(
    ctx: &Arc<Context>,
    jid: &BareJid,
    password: &str,
    end_sessions: bool,
) -> Result<(), AdminError> {
    let jid = super::set_password(&ctx.storage, &ctx.config, jid.as_str(), password).await?;
    if end_sessions {
        after_change(ctx, &AdminEvent::PasswordChanged(jid));
    }
    Ok(())
}

/// Creates an account, as `xmppd user add` does.
pub async fn add_account(
    ctx: &Arc<Context>,
    jid: &BareJid,
    password: &str,
) -> Result<(), AdminError> {
    super::add_user(&ctx.storage, &ctx.config, jid.as_str(), password)
        .await
        .map(|_| ())
}

/// Disables an account (XEP-0133): its password is replaced by a random one nobody
/// knows, and its sessions end; its data stays. An admin setting a new password enables
/// it again.
pub async fn disable_account(ctx: &Arc<Context>, jid: &BareJid) -> Result<(), AdminError> {
    let random = crate::stream::random_id() + &crate::stream::random_id();
    change_password(ctx, jid, &random, true).await
}

/// Whether `jid` is a server admin: listed in `server.admins`, or made one by an admin
/// invitation.
pub async fn is_admin(ctx: &Context, jid: &BareJid) -> bool {
    let listed = ctx
        .config
        .server
        .admins
        .iter()
        .any(|a| crate::addr::parse_bare(a).as_ref() == Some(jid));
    if listed {
        return true;
    }
    match ctx.storage.invites.is_admin(jid).await {
        Ok(admin) => admin,
        Err(e) => {
            tracing::warn!(error = %e, "reading admin invitations failed");
            false
        }
    }
}

/// Whether an error means "no such account".
pub fn is_no_such_user(e: &AdminError) -> bool {
    e.kind() == ErrorKind::NoSuchUser
}
