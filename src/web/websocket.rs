//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`, on tokio-tungstenite over hyper's
//! connection upgrade: frames, masking, fragments, pings and the close handshake are the
//! library's. What is left here is the upgrade's few checks and RFC 7395's mapping onto a
//! client stream: inbound, `<open/>` becomes a stream header and `<close/>` the stream's
//! end tag, and every other message goes to the stream parser as is (messages are
//! complete elements carrying their namespaces); outbound, each element is a text message
//! of its own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{Instrument, debug, info, info_span};

use super::{ConnInfo, Transports};
use crate::net::link::{self, Inbound, LinkEnd, Outbound};
use crate::stream::{STREAM_CLOSE, StreamErrorCondition};
use crate::xml::escape::escape_attr;

/// RFC 7395 §3.3.1.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The path web clients are usually set up with (as Prosody's and ejabberd's).
pub const PATH: &str = "/xmpp-websocket";

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Answers an upgrade request: `101 Switching Protocols` with the `xmpp` subprotocol, or
/// an HTTP error. Pages of sites not allowed are refused with 403.
pub async fn upgrade(
    State(web): State<Arc<Transports>>,
    Extension(conn): Extension<ConnInfo>,
    mut req: Request<Body>,
) -> Response {
    let accept = match check_upgrade(req.headers()) {
        Ok(accept) => accept,
        Err((status, why)) => {
            return (status, [(header::SEC_WEBSOCKET_VERSION, "13")], why).into_response();
        }
    };
    if !web.origin_ok(req.headers()) {
        info!(peer = %conn.peer, "WebSocket upgrade from a page of another site refused");
        return StatusCode::FORBIDDEN.into_response();
    }
    let upgraded = hyper::upgrade::on(&mut req);
    let max = web.ctx.config.limits.max_stanza_bytes;
    tokio::spawn(async move {
        let upgraded = match upgraded.await {
            Ok(upgraded) => upgraded,
            Err(e) => return debug!(error = %e, "WebSocket upgrade failed"),
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max);
        config.max_frame_size = Some(max);
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let conn_id = conn.conn_id;
        let span = info_span!("websocket", conn = conn_id, peer = %conn.peer);
        let (link, end) = link::pair(conn.peer.ip(), conn.secure, conn.bindings.clone());
        let session = crate::c2s::serve_link(
            web.ctx.clone(),
            web.tls.clone(),
            link,
            crate::metrics::Transport::Websocket,
            conn_id,
            conn.shutdown.clone(),
            conn.permit.clone(),
        );
        let write_timeout = Duration::from_secs(web.ctx.config.limits.write_timeout_secs);
        // The connection's slot under the limits stays taken while either side runs.
        let _permit = conn.permit.clone();
        tokio::join!(session, relay(socket, end, write_timeout).instrument(span));
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("xmpp"),
    );
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The `Sec-WebSocket-Accept` for a valid XMPP upgrade request (RFC 6455 §4.2.1,
/// RFC 7395 §3.1), or the status to refuse it with.
fn check_upgrade(headers: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade is required\n",
        ));
    }
    if !has_token(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required\n",
        ));
    }
    // Only `xmpp` is spoken here, and it must be asked for.
    if !has_token(header::SEC_WEBSOCKET_PROTOCOL, "xmpp") {
        return Err((
            StatusCode::BAD_REQUEST,
            "the xmpp subprotocol is required\n",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().trim_ascii())
        .filter(|k| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|nonce| nonce.len() == 16)
        })
        .ok_or((StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n"))?;
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// Carries messages between the socket and the c2s task until the task ends. When the
/// client's side ends first, the task is told (its input closes) and its last words (a
/// stream error, say) still go out.
async fn relay(mut socket: Socket, end: LinkEnd, write_timeout: Duration) {
    let LinkEnd {
        inbound,
        mut outbound,
    } = end;
    let mut inbound = Some(inbound);
    loop {
        tokio::select! {
            incoming = socket.next(), if inbound.is_some() => {
                let (item, last) = match incoming {
                    Some(Ok(Message::Text(text))) => (Inbound::Stream(translate(text.as_str())), false),
                    Some(Ok(Message::Binary(_))) => (
                        Inbound::Fault(
                            StreamErrorCondition::NotWellFormed,
                            "binary WebSocket messages are not XMPP (RFC 7395 §3.2)",
                        ),
                        true,
                    ),
                    // Answered by the library; activity all the same, for the stream's idle
                    // timer.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => (Inbound::Stream(Vec::new()), false),
                    // The close handshake ends the stream as `<close/>` would (§3.6).
                    Some(Ok(Message::Close(_))) => (Inbound::Stream(STREAM_CLOSE.to_vec()), true),
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Err(tungstenite::Error::Capacity(_))) => (
                        Inbound::Fault(
                            StreamErrorCondition::PolicyViolation,
                            "WebSocket message larger than the stanza size limit",
                        ),
                        true,
                    ),
                    Some(Err(e)) => {
                        debug!(error = %e, "WebSocket error");
                        inbound = None;
                        continue;
                    }
                    None => {
                        inbound = None;
                        continue;
                    }
                };
                let delivered = match &inbound {
                    Some(tx) => tx.send(item).await.is_ok(),
                    None => false,
                };
                // Nothing more is read after the client's last word (queued items still
                // reach the task before it sees its input close).
                if last || !delivered {
                    inbound = None;
                }
            }
            batch = outbound.recv() => {
                let Some(batch) = batch else { break };
                for item in batch {
                    let (message, last) = match item {
                        Outbound::Header { from, id } => (open_element(&from, &id), false),
                        Outbound::Element(xml) | Outbound::StreamError(xml) => (xml, false),
                        Outbound::Close => (close_element(), true),
                    };
                    let sent = tokio::time::timeout(
                        write_timeout,
                        socket.send(Message::text(message)),
                    );
                    if !matches!(sent.await, Ok(Ok(()))) {
                        debug!("client stopped reading");
                        return;
                    }
                    if last {
                        return close(socket, write_timeout).await;
                    }
                }
            }
        }
    }
    close(socket, write_timeout).await;
}

/// Sends the close frame, then reads (and discards) what the client still sends for a
/// moment: closing with unread input would reset the connection before the client reads
/// our last messages (a stream error, say).
async fn close(mut socket: Socket, write_timeout: Duration) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(write_timeout, socket.send(Message::Close(Some(frame)))).await;
    let io = socket.get_mut();
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut drained = 0usize;
        while drained < 1 << 20 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A client message as stream syntax: RFC 7395's `<open/>` and `<close/>` become the
/// stream header and end tag the parser expects; anything else is passed on unchanged.
pub fn translate(message: &str) -> Vec<u8> {
    let trimmed = message.trim_ascii();
    if !(trimmed.starts_with("<open") || trimmed.starts_with("<close")) {
        return message.as_bytes().to_vec();
    }
    let Ok(el) = crate::xml::parse_stanza(trimmed) else {
        return message.as_bytes().to_vec();
    };
    if el.ns != NS_FRAMING {
        return message.as_bytes().to_vec();
    }
    match el.name.as_str() {
        "open" => {
            let mut header = b"<stream:stream xmlns='jabber:client' \
                xmlns:stream='http://etherx.jabber.org/streams'"
                .to_vec();
            for (name, value) in &el.attrs {
                if matches!(name.as_str(), "to" | "from" | "version" | "id" | "xml:lang") {
                    header.extend_from_slice(format!(" {name}='").as_bytes());
                    escape_attr(value, &mut header);
                    header.push(b'\'');
                }
            }
            header.push(b'>');
            header
        }
        "close" => STREAM_CLOSE.to_vec(),
        _ => message.as_bytes().to_vec(),
    }
}

/// Our `<open/>` (RFC 7395 §3.4).
pub fn open_element(from: &str, id: &str) -> String {
    let mut out = format!("<open xmlns='{NS_FRAMING}' version='1.0' xml:lang='en'").into_bytes();
    for (name, value) in [("from", from), ("id", id)] {
        out.extend_from_slice(format!(" {name}='").as_bytes());
        escape_attr(value, &mut out);
        out.push(b'\'');
    }
    out.extend_from_slice(b"/>");
    String::from_utf8(out).unwrap_or_default()
}

pub fn close_element() -> String {
    format!("<close xmlns='{NS_FRAMING}'/>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_open_and_close_only_in_the_framing_namespace() {
        assert_eq!(
            String::from_utf8(translate(
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' \
                 version='1.0' evil='x'/>"
            ))
            .unwrap(),
            "<stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
        );
        assert_eq!(
            translate(" <close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
            STREAM_CLOSE
        );
        let other = "<open xmlns='jabber:client'/>";
        assert_eq!(translate(other), other.as_bytes());
        let broken = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'";
        assert_eq!(translate(broken), broken.as_bytes());
        let stanza = "<message xmlns='jabber:client'><body>x</body></message>";
        assert_eq!(translate(stanza), stanza.as_bytes());
    }

    #[test]
    fn our_open_escapes_its_attributes() {
        assert_eq!(
            open_element("example.org", "a'b"),
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0' xml:lang='en' \
             from='example.org' id='a&apos;b'/>"
        );
    }
}
