//! The fixed points where c2s and the router hand messages to modules, one call each, so
//! that neither knows which XEPs act there: blocking (XEP-0191), archiving (XEP-0313,
//! XEP-0359) and carbons (XEP-0280).

use std::sync::Arc;

use super::{blocking, carbons, mam};
use crate::addr::{Addr, bare_of};
use crate::context::Context;
use crate::xml::Element;

/// A message from a local client (`from` stamped, `to` set), before it is routed.
/// Returns `false` if it must not be routed (it was refused and the sender told).
pub async fn outbound_message(ctx: &Arc<Context>, el: &mut Element) -> bool {
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return true;
    };
    let (from, to) = (from.to_string(), to.to_string());
    let user = bare_of(&from).to_string();
    if blocking::refuse_if_blocked(ctx, &user, &to, el).await {
        return false;
    }
    // Only this server may say where a message sits in the user's archive.
    mam::strip_own_stanza_ids(&user, el);
    let archived = mam::archive_outbound(ctx, &user, &to, el).await;
    if bare_of(&to) == user
        && let Some(a) = &archived
    {
        // To another resource of the same account: archived once, and that resource may
        // see where (the inbound side skips archiving for it).
        mam::add_stanza_id(el, &user, &a.id);
    }
    carbons::sent(ctx, &from, &to, el, archived.as_ref());
    true
}

/// A message accepted for delivery to the local account `user`: to its full JID
/// (`resource`), or to the bare JID (available resources or offline storage). Archives
/// it, stamps its stanza-id and sends carbons.
pub async fn inbound_message(
    ctx: &Arc<Context>,
    user: &str,
    resource: Option<&str>,
    el: &mut Element,
) {
    let own = el.attr("from").map(bare_of) == Some(user);
    if !own {
        mam::strip_own_stanza_ids(user, el);
        mam::archive_inbound(ctx, user, el).await;
        carbons::received(ctx, user, resource, el);
    }
    carbons::strip_private(el);
}

/// Every routed stanza with a `from` passes here first. `false`: dropped (and answered
/// where the XEPs say so).
pub async fn may_route(ctx: &Arc<Context>, to: &Addr, stanza: &Element) -> bool {
    blocking::may_route(ctx, to, stanza).await
}
