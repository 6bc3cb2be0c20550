//! XMPP over WebSocket (RFC 7395), server side: the HTTP/1.1 upgrade (RFC 6455 §4.2) and
//! the framing, translated to and from the classic stream so that c2s negotiation and
//! sessions run unchanged. Inbound, `<open/>` becomes a stream header and `<close/>` the
//! stream's end tag, and every other message is fed to the stream parser as is (RFC 7395
//! messages are complete elements carrying their namespaces). Outbound, each element goes
//! in a text frame of its own, with its namespaces declared (see `net::Framing`).

use std::borrow::Cow;
use std::io;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::MaybeTls;
use crate::xml::escape::escape_attr;

/// RFC 7395 §3.3.1.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// Largest upgrade request read (headers included); browsers send well under 2 KiB.
const MAX_REQUEST: usize = 8 * 1024;
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Control-frame answers held until the next write.
const MAX_PENDING_REPLIES: usize = 16 * 1024;

/// Answers the client's HTTP upgrade request on `io`: `101 Switching Protocols` with the
/// `xmpp` subprotocol, or an HTTP error (then `Err`). Pages of other sites are refused
/// with 403 (see [`origin_allowed`]).
pub async fn accept_upgrade(
    io: &mut MaybeTls,
    allowed_origins: &[String],
    is_local_domain: impl Fn(&str) -> bool,
) -> io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        if let Some(end) = find(&request, b"\r\n\r\n") {
            break end + 4;
        }
        if request.len() >= MAX_REQUEST {
            return refuse(io, "431 Request Header Fields Too Large").await;
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&chunk[..n]);
    };
    // A client must wait for the 101 before sending frames (RFC 6455 §4.1).
    if request.len() > head_len {
        return refuse(io, "400 Bad Request").await;
    }
    let origin_ok = |origin: &str, host: Option<&str>| {
        origin_allowed(origin, host, allowed_origins, &is_local_domain)
    };
    let key = match upgrade_key(&request[..head_len], origin_ok) {
        Ok(key) => key,
        Err(status) => return refuse(io, status).await,
    };
    let accept = accept_key(&key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
    );
    io.write_all(response.as_bytes()).await?;
    io.flush().await
}

/// RFC 6455 §4.2.2: proves the server read the client's key.
fn accept_key(key: &str) -> String {
    let mut hash = Sha1::new();
    hash.update(key.as_bytes());
    hash.update(ACCEPT_GUID);
    B64.encode(hash.finalize())
}

/// The `Sec-WebSocket-Key` of a valid XMPP upgrade request, or the HTTP status to refuse it.
/// `origin_ok` judges the `Origin` header, if any, given the `Host` header.
fn upgrade_key(
    head: &[u8],
    origin_ok: impl Fn(&str, Option<&str>) -> bool,
) -> Result<String, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("400 Bad Request"),
    }
    if req.method != Some("GET") {
        return Err("405 Method Not Allowed");
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err("426 Upgrade Required");
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err("426 Upgrade Required");
    }
    // RFC 7395 §3.1: the subprotocol must be requested, and only `xmpp` is spoken here.
    if !has_token("sec-websocket-protocol", "xmpp") {
        return Err("400 Bad Request");
    }
    // Browsers always send Origin (RFC 6455 §4.1), so a page of another site cannot use
    // the user's browser (and its network position) to talk to this server.
    if let Some(origin) = header("origin").map(str::trim)
        && !origin_ok(origin, header("host").map(str::trim))
    {
        tracing::info!(
            origin,
            "WebSocket upgrade from a page of another site refused"
        );
        return Err("403 Forbidden");
    }
    let key = header("sec-websocket-key").map(str::trim).unwrap_or("");
    match B64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(key.to_string()),
        _ => Err("400 Bad Request"),
    }
}

/// Whether a page at `origin` may open a WebSocket to this server, reached as `host` (the
/// request's `Host`): when `allowed` lists it, or when it was served by that same host and
/// the host is one of ours (`is_local_domain`, `localhost` or an IP address). Another name
/// could be an attacker's domain pointed at this server (DNS rebinding).
pub fn origin_allowed(
    origin: &str,
    host: Option<&str>,
    allowed: &[String],
    is_local_domain: impl Fn(&str) -> bool,
) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let page_host = origin.split_once("://").and_then(|(scheme, authority)| {
        let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        (web && !authority.contains(['/', '@', '?', '#'])).then(|| host_only(authority))
    });
    let (Some(page_host), Some(host)) = (page_host, host.map(host_only)) else {
        return false;
    };
    if page_host.is_empty() || !page_host.eq_ignore_ascii_case(host) {
        return false;
    }
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || is_local_domain(&host)
}

/// `host[:port]` or `[v6]:port` without the port (and brackets).
fn host_only(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map_or(authority, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

async fn refuse(io: &mut MaybeTls, status: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.flush().await;
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket upgrade refused: {status}"),
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Why the WebSocket layer ends a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum WsError {
    /// A frame or message breaks RFC 6455 (unmasked, bad opcode, reserved bits, binary).
    Protocol(&'static str),
    /// A message longer than the limit (the stanza size limit).
    TooBig,
    /// The client sent a close frame.
    Closed,
}

/// Turns the client's frames into stream bytes for the parser. Holds at most one partial
/// frame and one partial message, each bounded by `max_message`.
#[derive(Debug)]
pub struct WsDecoder {
    max_message: usize,
    /// Received bytes not yet forming a whole frame.
    pending: Vec<u8>,
    /// Payload of a fragmented text message so far.
    message: Vec<u8>,
    in_message: bool,
    /// Control frames to send back (pongs, the close reply), written with the next flush.
    pub replies: Vec<u8>,
    /// The client sent a close frame (answered in `replies`).
    pub saw_close: bool,
}

impl WsDecoder {
    pub fn new(max_message: usize) -> Self {
        WsDecoder {
            max_message,
            pending: Vec::new(),
            message: Vec::new(),
            in_message: false,
            replies: Vec::new(),
            saw_close: false,
        }
    }

    /// Decodes what `bytes` completes and hands each translated message to `deliver`.
    pub fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut deliver: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, WsError> {
        // Frames usually arrive whole: decode straight from the read buffer, keeping only
        // a tail that is not a whole frame yet.
        let mut joined;
        let mut input = bytes;
        if !self.pending.is_empty() {
            joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(bytes);
            input = &joined[..];
        }
        let mut at = 0;
        while let Some((header_len, frame)) = parse_header(&input[at..], self.max_message)? {
            let total = header_len + frame.len;
            if input.len() - at < total {
                break;
            }
            let mut payload = input[at + header_len..at + total].to_vec();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= frame.mask[i % 4];
            }
            at += total;
            if let Err(e) = self.frame(frame, payload, &mut deliver)? {
                return Ok(Err(e));
            }
        }
        if at < input.len() {
            self.pending = input[at..].to_vec();
        }
        Ok(Ok(()))
    }

    fn frame<E>(
        &mut self,
        frame: FrameHeader,
        payload: Vec<u8>,
        deliver: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, WsError> {
        match frame.opcode {
            // Continuation, text.
            0x0 | 0x1 => {
                if (frame.opcode == 0x1) == self.in_message {
                    return Err(WsError::Protocol("unexpected continuation"));
                }
                if self.message.len() + payload.len() > self.max_message {
                    return Err(WsError::TooBig);
                }
                if !frame.fin {
                    self.in_message = true;
                    self.message.extend_from_slice(&payload);
                    return Ok(Ok(()));
                }
                let message = if self.in_message {
                    self.in_message = false;
                    let mut m = std::mem::take(&mut self.message);
                    m.extend_from_slice(&payload);
                    m
                } else {
                    payload
                };
                Ok(deliver(&translate(&message)))
            }
            0x2 => Err(WsError::Protocol(
                "binary messages are not XMPP (RFC 7395 §3.2)",
            )),
            0x8 => {
                // Answer the close handshake; the stream ends with it.
                if !self.saw_close {
                    self.saw_close = true;
                    frame_into(0x8, &payload[..payload.len().min(2)], &mut self.replies);
                }
                Err(WsError::Closed)
            }
            0x9 => {
                // Pongs wait for the next write; a client that only pings must not make
                // them pile up (during negotiation nothing else may be written for a while).
                if self.replies.len() > MAX_PENDING_REPLIES {
                    return Err(WsError::Protocol("ping flood"));
                }
                frame_into(0xA, &payload, &mut self.replies);
                Ok(Ok(()))
            }
            0xA => Ok(Ok(())),
            _ => Err(WsError::Protocol("unknown opcode")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    len: usize,
    mask: [u8; 4],
}

/// The header at the start of `buf`, with its length; `None` if more bytes are needed.
fn parse_header(buf: &[u8], max: usize) -> Result<Option<(usize, FrameHeader)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err(WsError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    // Client frames must be masked (RFC 6455 §5.1).
    if buf[1] & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked client frame"));
    }
    let opcode = buf[0] & 0x0f;
    let fin = buf[0] & 0x80 != 0;
    // RFC 6455 §5.5: control frames (close, ping, pong) are never fragmented.
    if opcode >= 0x8 && !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && len > 125 {
        return Err(WsError::Protocol("control frame too long"));
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or(WsError::TooBig)?;
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    Ok(Some((
        at,
        FrameHeader {
            fin,
            opcode,
            len,
            mask,
        },
    )))
}

/// A server frame (unmasked, final) with `payload`, appended to `out`.
fn frame_into(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// One text message to the client.
pub fn text_frame(payload: &[u8], out: &mut Vec<u8>) {
    frame_into(0x1, payload, out);
}

/// The close frame that ends the WebSocket after `<close/>` (1000: normal closure).
pub fn close_frame(out: &mut Vec<u8>) {
    frame_into(0x8, &1000u16.to_be_bytes(), out);
}

/// RFC 7395 framing elements into classic stream syntax; anything else is unchanged.
fn translate(message: &[u8]) -> Cow<'_, [u8]> {
    let trimmed = message.trim_ascii();
    // Only the framing elements need a look; stanzas go to the parser untouched.
    if !(trimmed.starts_with(b"<open") || trimmed.starts_with(b"<close")) {
        return Cow::Borrowed(message);
    }
    let Ok(el) = crate::xml::parse_stanza(&String::from_utf8_lossy(trimmed)) else {
        // Not one well-formed element: the stream parser reports it properly.
        return Cow::Borrowed(message);
    };
    if el.ns != NS_FRAMING {
        return Cow::Borrowed(message);
    }
    match el.name.as_str() {
        "open" => {
            let mut header =
                b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
                    .to_vec();
            for (name, value) in &el.attrs {
                if matches!(name.as_str(), "to" | "from" | "version" | "id" | "xml:lang") {
                    header.extend_from_slice(format!(" {name}='").as_bytes());
                    escape_attr(value, &mut header);
                    header.push(b'\'');
                }
            }
            header.push(b'>');
            Cow::Owned(header)
        }
        "close" => Cow::Borrowed(b"</stream:stream>"),
        _ => Cow::Borrowed(message),
    }
}

/// The server's `<open/>` (RFC 7395 §3.4), in place of a stream header.
pub fn open_element(from: &str, to: Option<&str>, id: &str) -> Vec<u8> {
    let mut out = format!("<open xmlns='{NS_FRAMING}' version='1.0' xml:lang='en'").into_bytes();
    for (name, value) in [("from", Some(from)), ("to", to), ("id", Some(id))] {
        if let Some(value) = value {
            out.extend_from_slice(format!(" {name}='").as_bytes());
            escape_attr(value, &mut out);
            out.push(b'\'');
        }
    }
    out.extend_from_slice(b"/>");
    out
}

/// The server's `<close/>` (RFC 7395 §3.6).
pub fn close_element() -> Vec<u8> {
    format!("<close xmlns='{NS_FRAMING}'/>").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(d: &mut WsDecoder, bytes: &[u8]) -> Result<Vec<String>, WsError> {
        let mut got = Vec::new();
        d.feed::<()>(bytes, |m| {
            got.push(String::from_utf8_lossy(m).into_owned());
            Ok(())
        })?
        .unwrap();
        Ok(got)
    }

    #[test]
    fn translates_open_and_close_at_every_split() {
        let mut wire = client_frame(
            0x1,
            true,
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>",
        );
        wire.extend(client_frame(
            0x1,
            false,
            b"<message xmlns='jabber:client'><bo",
        ));
        wire.extend(client_frame(0x9, true, b"hi"));
        wire.extend(client_frame(0x0, true, b"dy>x</body></message>"));
        wire.extend(client_frame(
            0x1,
            true,
            b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ));
        for split in 0..wire.len() {
            let mut d = WsDecoder::new(10_000);
            let mut got = decode_all(&mut d, &wire[..split]).unwrap();
            got.extend(decode_all(&mut d, &wire[split..]).unwrap());
            assert_eq!(
                got,
                [
                    "<stream:stream xmlns='jabber:client' \
                     xmlns:stream='http://etherx.jabber.org/streams' to='example.com' \
                     version='1.0'>",
                    "<message xmlns='jabber:client'><body>x</body></message>",
                    "</stream:stream>",
                ],
                "split at {split}"
            );
            // The ping was answered with a pong carrying its payload.
            assert_eq!(d.replies, [0x8A, 2, b'h', b'i']);
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        let mut d = WsDecoder::new(100);
        let unmasked = [0x81, 0x01, b'x'];
        assert!(matches!(
            decode_all(&mut d, &unmasked),
            Err(WsError::Protocol(_))
        ));
        let mut d = WsDecoder::new(100);
        let binary = client_frame(0x2, true, b"x");
        assert!(matches!(
            decode_all(&mut d, &binary),
            Err(WsError::Protocol(_))
        ));
        // Too big is known from the header alone: nothing is buffered for it.
        let mut d = WsDecoder::new(100);
        let big = client_frame(0x1, true, &[b'a'; 200]);
        assert_eq!(decode_all(&mut d, &big[..4]), Err(WsError::TooBig));
        // Fragments add up against the same limit.
        let mut d = WsDecoder::new(100);
        let mut parts = client_frame(0x1, false, &[b'a'; 60]);
        parts.extend(client_frame(0x0, true, &[b'a'; 60]));
        assert_eq!(decode_all(&mut d, &parts), Err(WsError::TooBig));
        // Unanswered pings are bounded.
        let mut d = WsDecoder::new(100);
        let pings: Vec<u8> = (0..1000)
            .flat_map(|_| client_frame(0x9, true, &[b'p'; 100]))
            .collect();
        assert_eq!(
            decode_all(&mut d, &pings),
            Err(WsError::Protocol("ping flood"))
        );
        assert!(d.replies.len() <= MAX_PENDING_REPLIES + 200);
        let mut d = WsDecoder::new(100);
        let close = client_frame(0x8, true, &1000u16.to_be_bytes());
        assert_eq!(decode_all(&mut d, &close), Err(WsError::Closed));
        assert_eq!(d.replies, [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn control_frames_are_never_fragmented_nor_long() {
        // RFC 6455 §5.5: control frames carry FIN and at most 125 bytes of payload.
        for opcode in [0x8, 0x9, 0xA] {
            let mut d = WsDecoder::new(1000);
            let fragmented = client_frame(opcode, false, b"hi");
            assert_eq!(
                decode_all(&mut d, &fragmented),
                Err(WsError::Protocol("fragmented control frame")),
                "opcode {opcode:#x}"
            );
            assert!(d.replies.is_empty(), "nothing answered for {opcode:#x}");
            // Also in the middle of a fragmented text message.
            let mut d = WsDecoder::new(1000);
            let mut wire = client_frame(0x1, false, b"<a/");
            wire.extend(client_frame(opcode, false, b""));
            assert_eq!(
                decode_all(&mut d, &wire),
                Err(WsError::Protocol("fragmented control frame"))
            );
            let mut d = WsDecoder::new(1000);
            let long = client_frame(opcode, true, &[b'p'; 126]);
            assert_eq!(
                decode_all(&mut d, &long[..4]),
                Err(WsError::Protocol("control frame too long"))
            );
            let mut d = WsDecoder::new(1000);
            let longest = client_frame(opcode, true, &[0x03; 125]);
            assert_ne!(
                decode_all(&mut d, &longest),
                Err(WsError::Protocol("control frame too long"))
            );
        }
    }

    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        // xorshift: deterministic, no dependency.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut d = WsDecoder::new(1000);
            for _ in 0..8 {
                let len = (next() % 64) as usize;
                let mut chunk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Mostly masked text frames, so decoding gets past the first checks.
                if let Some(b) = chunk.get_mut(1) {
                    *b |= 0x80;
                }
                if d.feed::<()>(&chunk, |_| Ok(())).is_err() {
                    break;
                }
                assert!(d.pending.len() <= 1000 + 14);
                assert!(d.message.len() <= 1000);
            }
        }
    }

    #[test]
    fn upgrade_request_checks() {
        let ok = "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                  Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n";
        let any = |_: &str, _: Option<&str>| true;
        assert_eq!(
            upgrade_key(ok.as_bytes(), any).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        // The example of RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let no_xmpp = ok.replace("Sec-WebSocket-Protocol: xmpp\r\n", "");
        assert_eq!(upgrade_key(no_xmpp.as_bytes(), any), Err("400 Bad Request"));
        let post = ok.replace("GET", "POST");
        assert_eq!(
            upgrade_key(post.as_bytes(), any),
            Err("405 Method Not Allowed")
        );
        let plain_http = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        assert_eq!(
            upgrade_key(plain_http.as_bytes(), any),
            Err("426 Upgrade Required")
        );
        let none = |_: &str, _: Option<&str>| false;
        assert!(
            upgrade_key(ok.as_bytes(), none).is_ok(),
            "no Origin: not a page"
        );
        let cross = ok.replace("Host:", "Origin: https://evil.example\r\nHost:");
        assert_eq!(upgrade_key(cross.as_bytes(), none), Err("403 Forbidden"));
        let seen = std::cell::RefCell::new(None);
        let record = |o: &str, h: Option<&str>| {
            *seen.borrow_mut() = Some((o.to_string(), h.map(str::to_string)));
            true
        };
        assert!(upgrade_key(cross.as_bytes(), record).is_ok());
        assert_eq!(
            seen.take(),
            Some(("https://evil.example".into(), Some("localhost".into())))
        );
    }

    #[test]
    fn origins() {
        let ours = |d: &str| d == "example.org";
        let ok = |origin: &str, host: &str, allowed: &[&str]| {
            let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            origin_allowed(origin, Some(host), &allowed, ours)
        };
        // Same host, any port or scheme, when the host is ours.
        assert!(ok("http://localhost:8080", "localhost:5280", &[]));
        assert!(ok("https://Example.org", "example.org:5281", &[]));
        assert!(ok("http://127.0.0.1", "127.0.0.1:5280", &[]));
        assert!(ok("http://[::1]:3000", "[::1]:5280", &[]));
        // Other hosts, and names that are not ours (DNS rebinding).
        assert!(!ok("https://evil.example", "example.org", &[]));
        assert!(!ok("http://evil.example:5280", "evil.example:5280", &[]));
        assert!(!ok("http://127.0.0.2", "127.0.0.1:5280", &[]));
        assert!(!ok("null", "localhost:5280", &[]));
        assert!(!ok("file://", "localhost:5280", &[]));
        assert!(!ok("http://localhost@evil.example", "localhost", &[]));
        assert!(!ok("http://", "localhost", &[]));
        assert!(!origin_allowed("http://localhost", None, &[], ours));
        // Listed origins, exactly (scheme and port included).
        let listed = ["https://chat.example.net", "null"];
        assert!(ok("https://chat.example.net", "example.org", &listed));
        assert!(ok("HTTPS://CHAT.example.net", "example.org", &listed));
        assert!(ok("null", "example.org", &listed));
        assert!(!ok("http://chat.example.net", "example.org", &listed));
        assert!(!ok("https://chat.example.net:8443", "example.org", &listed));
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        text_frame(b"<a/>", &mut out);
        assert_eq!(out, [0x81, 4, b'<', b'a', b'/', b'>']);
        let mut out = Vec::new();
        text_frame(&[b'x'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        assert_eq!(out.len(), 304);
    }
}
