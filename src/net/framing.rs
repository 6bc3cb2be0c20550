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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{ParserLimits, StreamEvent};

    fn parser() -> StreamParser {
        StreamParser::new(ParserLimits {
            max_stanza_bytes: 4096,
            max_depth: 16,
            max_attributes: 32,
        })
    }

    /// A masked client frame (RFC 6455 §5.3), short payloads only.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn stream_framing_writes_stream_syntax() {
        let f = Framing::Stream;
        let mut out = Vec::new();
        f.header(
            StreamKind::Client,
            "example.org",
            None,
            Some("i1"),
            &mut out,
        );
        assert_eq!(
            out,
            crate::stream::response_header(ns::CLIENT, "example.org", None, "i1", &[])
        );
        let mut out = Vec::new();
        f.header(
            StreamKind::Server,
            "a.example",
            Some("b.example"),
            None,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:server'"));
        assert!(text.contains("xmlns:db='jabber:server:dialback'"));
        assert!(!text.contains(" id="));
        let mut f = Framing::Stream;
        let mut out = Vec::new();
        f.close(&mut out);
        assert_eq!(out, STREAM_CLOSE);
    }

    #[test]
    fn websocket_framing_translates_open_and_answers_pings_first() {
        let mut f = Framing::websocket(4096);
        let mut p = parser();
        let open =
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0'/>";
        let mut input = client_frame(0x1, open);
        input.extend(client_frame(0x9, b"hi"));
        f.feed(&mut p, &input).unwrap();
        let Ok(Some(StreamEvent::Open(h))) = p.next_event() else {
            panic!("no stream header from <open/>");
        };
        assert_eq!(h.default_ns.as_deref(), Some(ns::CLIENT));
        assert_eq!(h.to.as_deref(), Some("example.org"));
        // Our <open/>, then the pong goes out ahead of it.
        let mut out = Vec::new();
        f.header(
            StreamKind::Client,
            "example.org",
            None,
            Some("i1"),
            &mut out,
        );
        f.before_write(&mut out);
        assert_eq!(&out[..4], &[0x8A, 2, b'h', b'i']);
        assert_eq!(out[4], 0x81);
        let text = String::from_utf8_lossy(&out[6..]);
        assert!(text.starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'"));
        // Elements are whole messages declaring their namespace.
        let mut out = Vec::new();
        f.element(&Element::new("features", ns::STREAM), &mut out);
        assert_eq!(out[0], 0x81);
        assert!(String::from_utf8_lossy(&out[2..]).contains(ns::STREAM));
    }

    #[test]
    fn websocket_close_answers_the_clients_close_frame_once() {
        let mut f = Framing::websocket(4096);
        let mut p = parser();
        let open =
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0'/>";
        f.feed(&mut p, &client_frame(0x1, open)).unwrap();
        f.feed(&mut p, &client_frame(0x8, &1000u16.to_be_bytes()))
            .unwrap();
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Open(_)))));
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Close))));
        let mut out = Vec::new();
        f.close(&mut out);
        let close_frames = out.windows(2).filter(|w| w == &[0x88, 2]).count();
        assert_eq!(close_frames, 1);
        // Without the client's close, ours is sent.
        let mut f = Framing::websocket(4096);
        let mut out = Vec::new();
        f.close(&mut out);
        assert!(out.ends_with(&[0x88, 2, 0x03, 0xE8]));
    }
}
