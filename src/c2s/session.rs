//! A bound client session: stanzas from the client are stamped and routed in order;
//! stanzas for the client arrive on a bounded queue and are written in batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::negotiate::Bound;
use super::{Connection, Ending};
use crate::addr::Addr;
use crate::context::Context;
use crate::modules::presence::{self, PresenceState};
use crate::router::{SessionCommand, route, route_reply};
use crate::stream::{StanzaError, StreamErrorCondition};
use crate::xml::{Element, StreamEvent, ns};

/// Outbound stanzas written in one go before the socket is flushed.
const WRITE_BATCH: usize = 64;

pub(crate) async fn run(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    mut bound: Bound,
    shutdown: CancellationToken,
) -> Ending {
    let mut st = PresenceState::new(&bound.bare, &bound.resource, bound.conn_id);
    let ending = serve_bound(ctx, conn, &mut bound, &mut st, &shutdown).await;
    // The session is gone for the router before its unavailable presence goes out.
    ctx.sessions
        .unbind(&bound.bare, &bound.resource, bound.conn_id);
    if st.available || !st.directed.is_empty() {
        presence::broadcast_unavailable(ctx, &mut st, None).await;
    }
    ending
}

async fn serve_bound(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    bound: &mut Bound,
    st: &mut PresenceState,
    shutdown: &CancellationToken,
) -> Ending {
    let idle = Duration::from_secs(ctx.config.limits.idle_timeout_secs);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let control = bound.control.clone();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                return Ending::from(StreamErrorCondition::SystemShutdown);
            }
            _ = control.token().cancelled() => {
                return match control.take_reason() {
                    Some(reason) => Ending::Error(reason),
                    None => Ending::from(StreamErrorCondition::PolicyViolation),
                };
            }
            cmd = bound.rx.recv() => {
                let Some(SessionCommand::Stanza(el)) = cmd else {
                    return Ending::from(StreamErrorCondition::InternalServerError);
                };
                conn.queue(&el);
                // Drain what else is queued so one TLS record and syscall carry many stanzas.
                for _ in 1..WRITE_BATCH {
                    match bound.rx.try_recv() {
                        Ok(SessionCommand::Stanza(el)) => conn.queue(&el),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                if let Err(e) = conn.flush().await {
                    return e;
                }
            }
            read = conn.io.read(&mut conn.read_buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return Ending::Gone,
                    Ok(n) => n,
                };
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                if let Err(e) = conn.parser.feed(&conn.read_buf[..n]) {
                    return super::xml_ending(e);
                }
                loop {
                    match conn.parser.next_event() {
                        Ok(None) => break,
                        Ok(Some(StreamEvent::Stanza(el))) => {
                            if let Err(e) = handle_stanza(ctx, bound, st, el).await {
                                return e;
                            }
                        }
                        Ok(Some(StreamEvent::Close)) => return Ending::PeerClosed,
                        Ok(Some(StreamEvent::Open(_))) => {
                            return Ending::from(StreamErrorCondition::NotWellFormed);
                        }
                        Err(e) => return super::xml_ending(e),
                    }
                }
            }
            _ = &mut idle_timer => {
                debug!("idle timeout");
                return Ending::from(StreamErrorCondition::ConnectionTimeout);
            }
        }
    }
}

/// Validates addressing, stamps `from` and hands the stanza on (RFC 6120 §8.1).
async fn handle_stanza(
    ctx: &Arc<Context>,
    bound: &Bound,
    st: &mut PresenceState,
    mut el: Element,
) -> Result<(), Ending> {
    if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
        return Err(StreamErrorCondition::UnsupportedStanzaType.into());
    }
    if let Some(from) = el.attr("from") {
        let ok =
            Addr::parse(from).is_some_and(|a| a.full() == bound.full || a.full() == bound.bare);
        if !ok {
            return Err(StreamErrorCondition::InvalidFrom.into());
        }
    }
    el.set_attr("from", bound.full.clone());
    if let Some(to) = el.attr("to") {
        match Addr::parse(to) {
            Some(addr) => el.set_attr("to", addr.full()),
            None => {
                route_reply(ctx, &el, StanzaError::jid_malformed()).await;
                return Ok(());
            }
        }
    }
    match el.name.as_str() {
        "presence" => presence::outbound(ctx, st, el).await,
        "iq" => {
            let kind = el.attr("type").unwrap_or("");
            let valid = el.attr("id").is_some()
                && match kind {
                    "get" | "set" => el.elements().count() == 1,
                    "result" => el.elements().count() <= 1,
                    "error" => true,
                    _ => false,
                };
            if !valid {
                if kind != "error" {
                    route_reply(ctx, &el, StanzaError::bad_request()).await;
                }
                return Ok(());
            }
            if el.attr("to").is_none() {
                // Addressed to the user's own account (RFC 6120 §10.3.3).
                el.set_attr("to", bound.bare.clone());
            }
            route(ctx, el).await;
        }
        _ => {
            if el.attr("to").is_none() {
                el.set_attr("to", bound.bare.clone());
            }
            if crate::modules::hooks::outbound_message(ctx, &mut el).await {
                route(ctx, el).await;
            }
        }
    }
    Ok(())
}
