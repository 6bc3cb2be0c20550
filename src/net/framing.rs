//! The seam between a connection and its wire format: how stream syntax travels on the
//! transport. Everything above it (the parser's events, the negotiator, sessions) sees
//! one XML stream whatever the transport; only this enum knows about frames.

use crate::net::websocket::{self, WsDecoder, WsError};
use crate::stream::{STREAM_CLOSE, StreamKind};
use crate::xml::{Element, StreamParser, XmlError, ns};

/// How a connection's bytes carry the stream. BOSH (XEP-0124/0206) would be a third
/// variant: HTTP requests in, responses out, with the same feed/header/element/close duties.
#[derive(Debug)]
pub enum Framing {
    /// RFC 6120: one XML document over TCP or TLS.
    Stream,
    /// RFC 7395: every element a WebSocket text message, `<open/>`/`<close/>` for the
    /// stream's start and end; control frames are answered here.
    WebSocket(Box<WsDecoder>),
}

impl Framing {
    /// WebSocket framing whose messages are bounded by the stanza size limit.
    pub fn websocket(max_message: usize) -> Self {
        Framing::WebSocket(Box::new(WsDecoder::new(max_message)))
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self, Framing::WebSocket(_))
    }

    /// Feeds received bytes to the parser, decoding frames first where there are any.
    pub fn feed(&mut self, parser: &mut StreamParser, bytes: &[u8]) -> Result<(), XmlError> {
        let Framing::WebSocket(ws) = self else {
            return parser.feed(bytes);
        };
        match ws.feed(bytes, |message| parser.feed(message)) {
            Ok(fed) => fed,
            // The close handshake ends the stream like `<close/>` would (RFC 7395 §3.6).
            Err(WsError::Closed) => parser.feed(STREAM_CLOSE),
            Err(WsError::TooBig) => Err(XmlError::PolicyViolation(
                "WebSocket message larger than the stanza size limit".into(),
            )),
            Err(WsError::Protocol(why)) => {
                Err(XmlError::NotWellFormed(format!("WebSocket: {why}")))
            }
        }
    }

    /// Appends our stream header (over WebSocket, `<open/>`); `id` is `None` on the
    /// initiating side.
    pub fn header(
        &self,
        kind: StreamKind,
        from: &str,
        to: Option<&str>,
        id: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        match self {
            Framing::Stream => out.extend_from_slice(&kind.header(from, to, id)),
            Framing::WebSocket(_) => websocket::text_frame(
                &websocket::open_element(from, to, id.unwrap_or_default()),
                out,
            ),
        }
    }

    /// Appends one top-level element.
    pub fn element(&self, el: &Element, out: &mut Vec<u8>) {
        match self {
            // Stanzas are kept in jabber:client internally; written with that as the
            // parent namespace they inherit the stream's default (client or server).
            Framing::Stream => el.write_to(out, ns::CLIENT),
            // Every message is a complete element that declares its namespaces.
            Framing::WebSocket(_) => {
                let mut xml = Vec::new();
                el.write_standalone(&mut xml);
                websocket::text_frame(&xml, out);
            }
        }
    }

    /// Puts what the transport itself must answer (WebSocket pongs) before `out`: they
    /// go before what was queued after the ping arrived.
    pub fn before_write(&mut self, out: &mut Vec<u8>) {
        if let Framing::WebSocket(ws) = self
            && !ws.replies.is_empty()
        {
            let mut replies = std::mem::take(&mut ws.replies);
            replies.append(out);
            *out = replies;
        }
    }

    /// Appends the end of our stream (and of the transport's session, if it has one).
    pub fn close(&mut self, out: &mut Vec<u8>) {
        match self {
            Framing::Stream => out.extend_from_slice(STREAM_CLOSE),
            Framing::WebSocket(ws) => {
                websocket::text_frame(&websocket::close_element(), out);
                // One close frame: the answer to the client's (among the replies), or ours.
                out.append(&mut ws.replies);
                if !ws.saw_close {
                    websocket::close_frame(out);
                }
            }
        }
    }
}
