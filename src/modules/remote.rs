//! Stanzas for domains this server does not host go to the s2s outbound streams; without
//! federation (bare contexts) they bounce with `remote-server-not-found` (RFC 6120
//! §8.3.3.15), never dropped.

use std::sync::Arc;

use crate::addr::Addr;
use crate::context::Context;
use crate::router::route_reply;
use crate::stream::StanzaError;
use crate::xml::Element;

pub async fn route_remote(ctx: &Arc<Context>, to: Addr, stanza: Element) {
    match ctx.s2s.get() {
        Some(s2s) => s2s.clone().send(ctx, &to.domain, stanza).await,
        None => {
            tracing::debug!(domain = %to.domain, "no route to remote domain");
            route_reply(ctx, &stanza, StanzaError::remote_server_not_found()).await;
        }
    }
}
