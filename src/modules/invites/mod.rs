//! Invitations seen from XMPP: XEP-0379 pre-authenticated roster subscription (a
//! subscription request carrying an invitation token of the contact is approved, and the
//! contact subscribes back) and the mutual contacts an invitation makes; the landing
//! pages live in [`page`]. Tokens are created through `crate::admin::invites` (CLI,
//! ad-hoc commands) and redeemed for accounts by the `register` module (XEP-0445).

pub mod page;

use std::sync::Arc;

use async_trait::async_trait;

use crate::addr::{BareJid, Jid};
use crate::context::Context;
use crate::registry::{Module, Registrar, RouteFilter};
use crate::storage::{RosterItem, StorageError, Subscription};
use crate::xml::Element;

use super::register::NS_PARS;

pub struct Invites;

impl Module for Invites {
    fn name(&self) -> &'static str {
        "invites"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        if r.config().invites.enabled {
            r.route_filter(Arc::new(PreAuthSubscription));
            r.task(Box::new(|ctx, shutdown| Box::pin(sweep(ctx, shutdown))));
        }
    }
}

/// Deletes expired invitations now and then, so the store holds only live ones.
async fn sweep(ctx: Arc<Context>, shutdown: tokio_util::sync::CancellationToken) {
    let every = std::time::Duration::from_secs(3600);
    loop {
        let now = crate::admin::invites::now_secs();
        match ctx.storage.invites.remove_expired_invites(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired invitations removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired invitations failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Makes `a` and `b` (local accounts) mutual contacts: both roster items `both`, pushed to
/// their sessions, and each one's presence probed for the other.
pub async fn make_mutual(ctx: &Arc<Context>, a: &BareJid, b: &BareJid) -> Result<(), StorageError> {
    for user in [a, b] {
        if super::roster::roster_full(ctx, user).await? {
            tracing::info!(%user, "roster full: the invitation makes no contacts");
            return Ok(());
        }
    }
    for (user, contact) in [(a, b), (b, a)] {
        let mut item = ctx
            .storage
            .roster
            .item(user, contact)
            .await?
            .unwrap_or_else(|| RosterItem::new(contact.clone()));
        item.subscription = Subscription::Both;
        item.ask = false;
        item.pending_in = false;
        item.approved = false;
        super::roster::save_and_push(ctx, user, &item).await?;
        ctx.storage.roster.remove_pending_in(user, contact).await?;
    }
    for (user, contact) in [(a, b), (b, a)] {
        if ctx.sessions.is_online(user) {
            super::presence::send_subscription(ctx, user, contact, "probe").await;
        }
    }
    tracing::info!(%a, %b, "invitation made mutual contacts");
    Ok(())
}

/// XEP-0379 §3.4: `<presence type='subscribe'>` with `<preauth token/>` to a local
/// account whose valid invitation that is: the account pre-approves the subscription
/// (RFC 6121 §3.4, so the presence module approves it as it arrives) and subscribes back.
struct PreAuthSubscription;

fn preauth_token(stanza: &Element) -> Option<&str> {
    stanza.child("preauth", NS_PARS)?.attr("token")
}

#[async_trait]
impl RouteFilter for PreAuthSubscription {
    fn concerns(&self, ctx: &Context, _from: &Jid, to: &Jid, stanza: &Element) -> bool {
        stanza.name == "presence"
            && stanza.attr("type") == Some("subscribe")
            && ctx.is_local_domain(to.domain().as_str())
            && preauth_token(stanza).is_some()
    }

    async fn may_route(&self, ctx: &Arc<Context>, from: &Jid, to: &Jid, stanza: &Element) -> bool {
        let Some(token) = preauth_token(stanza) else {
            return true;
        };
        if to.node().is_none() {
            return true;
        }
        let inviter = to.to_bare();
        let invitee = from.to_bare();
        if invitee == inviter || !crate::admin::invites::is_token(token) {
            return true;
        }
        // The inviter's own invitation, used once; any other token is ignored and the
        // request goes on as an ordinary one.
        let now = crate::admin::invites::now_secs();
        match ctx.storage.invites.invite(token).await {
            Ok(Some(i)) if i.inviter.as_ref() == Some(&inviter) && i.is_valid(now) => {}
            _ => return true,
        }
        match ctx.storage.invites.use_invite(token, now).await {
            Ok(Some(_)) => {}
            _ => return true,
        }
        if let Err(e) = approve(ctx, &inviter, &invitee).await {
            tracing::warn!(error = %e, "pre-approving an invited contact failed");
        }
        true
    }
}

async fn approve(
    ctx: &Arc<Context>,
    inviter: &BareJid,
    invitee: &BareJid,
) -> Result<(), StorageError> {
    let mut item = ctx
        .storage
        .roster
        .item(inviter, invitee)
        .await?
        .unwrap_or_else(|| RosterItem::new(invitee.clone()));
    if !item.subscription.has_from() {
        item.approved = true;
    }
    let subscribe = !item.subscription.has_to();
    if subscribe {
        item.ask = true;
    }
    super::roster::save_and_push(ctx, inviter, &item).await?;
    if subscribe {
        super::presence::send_subscription(ctx, inviter, invitee, "subscribe").await;
    }
    tracing::info!(%inviter, %invitee, "invitation approved a subscription");
    Ok(())
}
