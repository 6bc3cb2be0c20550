//! One client connection: TCP (optionally bound to a chosen 127.0.0.x source), STARTTLS
//! or direct TLS, SASL, resource binding, and small helpers to read elements and answer
//! the server's IQs.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use rand::distr::Alphanumeric;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::scram::{self, HashKind, SaltCache, ScramClient};
use crate::xml::{self, Frame, Splitter};

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<String> for Error {
    fn from(e: String) -> Self {
        Error(e)
    }
}

impl From<&str> for Error {
    fn from(e: &str) -> Self {
        Error(e.to_owned())
    }
}

pub type Res<T> = Result<T, Error>;

/// Callback for elements that arrive while waiting for something else; it may queue
/// replies in the write buffer it is given.
pub type OnElement<'a> = dyn FnMut(&[u8], &mut Vec<u8>) + Send + 'a;

/// Which SASL mechanism to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    /// The strongest one offered: SCRAM-SHA-256, then SCRAM-SHA-1, then PLAIN.
    Auto,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "PLAIN")]
    Plain,
}

/// Settings shared by every connection of a run.
pub struct Ctx {
    pub addr: SocketAddr,
    /// Spread connections over 127.0.0.1..=127.0.0.N (0 or 1: let the kernel choose).
    pub source_addrs: u32,
    pub direct_tls: bool,
    pub mech: Mech,
    pub tls: TlsConnector,
    pub handshake_timeout: Duration,
    pub resource: String,
    pub salt_cache: SaltCache,
}

/// An account to log in as.
#[derive(Debug, Clone)]
pub struct Account {
    pub local: String,
    pub domain: String,
    pub password: String,
}

impl Account {
    pub fn bare(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Turns the `user{i}@domain` / `password` patterns into accounts.
#[derive(Debug, Clone)]
pub struct Names {
    pub user_pattern: String,
    pub password_pattern: String,
    pub first: usize,
}

impl Names {
    pub fn check(&self) -> Res<()> {
        let sample = self.user_pattern.replace("{i}", "1");
        match sample.split_once('@') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('/') => Ok(()),
            _ => Err(format!("user pattern {:?} is not local@domain", self.user_pattern).into()),
        }
    }

    /// The account for offset `i` (numbered from `first`).
    pub fn account(&self, i: usize) -> Account {
        let n = (self.first + i).to_string();
        let jid = self.user_pattern.replace("{i}", &n);
        let (local, domain) = jid.split_once('@').unwrap_or((jid.as_str(), "localhost"));
        Account {
            local: local.to_owned(),
            domain: domain.to_owned(),
            password: self.password_pattern.replace("{i}", &n),
        }
    }
}

/// Accepts any server certificate: this tool only talks to self-signed servers on
/// loopback and measures them; authenticating them would add nothing.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn tls_connector(direct_tls: bool) -> Res<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    // Every simulated client is a new one: no session resumption across connections.
    cfg.resumption = Resumption::disabled();
    if direct_tls {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// A connector for one returning device: `base` with a session store of its own, so the
/// device offers the tickets it got on its earlier connections (TLS 1.3 resumption). One
/// store per device, as on real devices: rustls keys a store by server name and keeps at
/// most 8 tickets per name, so devices sharing a store would mostly find none left (and
/// use each other's).
pub fn device_connector(base: &TlsConnector) -> TlsConnector {
    let mut cfg = (**base.config()).clone();
    cfg.resumption = Resumption::in_memory_sessions(8);
    TlsConnector::from(Arc::new(cfg))
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An XMPP client stream.
pub struct Conn {
    pub io: Stream,
    pub rd: Splitter,
    /// Outgoing bytes, sent by [`Conn::flush`]; batching several stanzas into one write
    /// keeps TLS records and syscalls per stanza low.
    pub wbuf: Vec<u8>,
    pub bare: String,
    pub domain: String,
}

impl Conn {
    /// Whether the TLS handshake resumed an earlier session.
    pub fn tls_resumed(&self) -> bool {
        match &self.io {
            Stream::Tls(t) => t.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed),
            Stream::Plain(_) => false,
        }
    }

    fn new(io: Stream, bare: String, domain: String) -> Self {
        Conn {
            io,
            rd: Splitter::new(),
            wbuf: Vec::with_capacity(4096),
            bare,
            domain,
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await
    }

    /// Reads once more from the socket; `Ok(0)` at EOF.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        self.rd.fill(&mut self.io).await
    }

    /// The next frame, reading as needed.
    pub async fn next_frame(&mut self) -> Res<Frame> {
        loop {
            if let Some(f) = self.rd.next_frame()? {
                return Ok(f);
            }
            if self.read_more().await? == 0 {
                return Err("connection closed by the server".into());
            }
        }
    }

    /// The next top-level element; a stream end or stream error is an error here.
    pub async fn next_element(&mut self) -> Res<Range<usize>> {
        loop {
            match self.next_frame().await? {
                Frame::Element(r) => {
                    let el = self.rd.bytes(r.clone());
                    if xml::name(el) == b"stream:error" {
                        return Err(format!("stream error: {}", String::from_utf8_lossy(el)).into());
                    }
                    return Ok(r);
                }
                Frame::Header(_) => {}
                Frame::Close => return Err("server closed the stream".into()),
            }
        }
    }

    /// Sends nothing and waits for the IQ answer with `id`, handing every other element
    /// to `other` (which may queue replies in the write buffer). Returns the result IQ.
    pub async fn await_iq(&mut self, id: &[u8], other: &mut OnElement<'_>) -> Res<Vec<u8>> {
        loop {
            let r = self.next_element().await?;
            let el = self.rd.bytes(r);
            if xml::name(el) == b"iq" && xml::attr(el, b"id") == Some(id) {
                return match xml::attr(el, b"type") {
                    Some(b"result") => Ok(el.to_vec()),
                    _ => Err(format!("IQ failed: {}", String::from_utf8_lossy(el)).into()),
                };
            }
            other(el, &mut self.wbuf);
            if !self.wbuf.is_empty() {
                self.flush().await?;
            }
        }
    }

    /// Sends initial presence, then pings the server and waits for the answer: the
    /// server handles a session's stanzas in order, so afterwards the presence is in
    /// effect (messages to the bare JID will be delivered, not stored offline).
    pub async fn presence_sync(&mut self, other: &mut OnElement<'_>) -> Res<()> {
        self.wbuf
            .extend_from_slice(b"<presence/><iq type='get' id='sync' to='");
        xml::escape_into(&mut self.wbuf, &self.domain);
        self.wbuf
            .extend_from_slice(b"'><ping xmlns='urn:xmpp:ping'/></iq>");
        self.flush().await?;
        self.await_iq(b"sync", other).await.map(|_| ())
    }

    /// Fetches the roster; returns the result element.
    pub async fn roster_get(&mut self, other: &mut OnElement<'_>) -> Res<Vec<u8>> {
        self.wbuf.extend_from_slice(
            b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>",
        );
        self.flush().await?;
        self.await_iq(b"roster", other).await
    }

    /// Ends the stream politely: `</stream:stream>`, wait (briefly) for the server's,
    /// then TLS close_notify and TCP shutdown.
    pub async fn close(mut self) {
        self.wbuf.extend_from_slice(b"</stream:stream>");
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(f) = self.next_frame().await {
                if f == Frame::Close {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

/// Answers IQ requests from the server (pings, roster pushes): `result` for sets and
/// pings, `service-unavailable` for other gets. Returns true when `el` was such a request.
pub fn auto_reply(el: &[u8], out: &mut Vec<u8>) -> bool {
    if xml::name(el) != b"iq" {
        return false;
    }
    let ty = xml::attr(el, b"type");
    if ty != Some(b"get") && ty != Some(b"set") {
        return false;
    }
    let ok = ty == Some(b"set") || xml::has_child(el, b"ping");
    out.extend_from_slice(if ok {
        b"<iq type='result'"
    } else {
        b"<iq type='error'"
    });
    for key in [&b"id"[..], b"from"] {
        if let Some(v) = xml::attr(el, key) {
            out.extend_from_slice(if key == b"id" { b" id='" } else { b" to='" });
            let v = xml::unescape(v);
            xml::escape_into(out, &String::from_utf8_lossy(&v));
            out.push(b'\'');
        }
    }
    if ok {
        out.extend_from_slice(b"/>");
    } else {
        out.extend_from_slice(
            b"><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        );
    }
    true
}

/// Default handler for elements nobody waits for: answer IQ requests, ignore the rest.
pub fn ignore_other(el: &[u8], out: &mut Vec<u8>) {
    auto_reply(el, out);
}

async fn tcp_connect(ctx: &Ctx, idx: usize) -> io::Result<TcpStream> {
    let sock = if ctx.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if ctx.source_addrs > 1 && ctx.addr.is_ipv4() {
        // Each source address has its own ephemeral port range; spreading lets one
        // generator hold more connections than one address has ports.
        let host = 1 + (idx as u32 % ctx.source_addrs.min(254)) as u8;
        sock.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))?;
    }
    let s = sock.connect(ctx.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn tls_wrap(tls: &TlsConnector, tcp: TcpStream, domain: &str) -> Res<Stream> {
    let name = ServerName::try_from(domain.to_owned())
        .map_err(|e| format!("bad TLS server name {domain:?}: {e}"))?;
    let tls = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// Sends a stream header and returns the `<stream:features/>` that follows.
async fn open_stream(conn: &mut Conn) -> Res<Vec<u8>> {
    conn.rd.reset();
    conn.wbuf
        .extend_from_slice(b"<?xml version='1.0'?><stream:stream to='");
    xml::escape_into(&mut conn.wbuf, &conn.domain);
    conn.wbuf.extend_from_slice(
        b"' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    conn.flush().await?;
    loop {
        let r = conn.next_element().await?;
        let el = conn.rd.bytes(r);
        if xml::name(el) == b"stream:features" {
            return Ok(el.to_vec());
        }
    }
}

fn tag_text(tag: &[u8]) -> &[u8] {
    let Some(gt) = tag.iter().position(|&c| c == b'>') else {
        return b"";
    };
    let body = &tag[gt + 1..];
    let end = body.iter().position(|&c| c == b'<').unwrap_or(body.len());
    &body[..end]
}

fn choose_mech(features: &[u8], want: Mech) -> Res<Mech> {
    let offered: Vec<&[u8]> = xml::each_tag(features, b"mechanism")
        .map(tag_text)
        .collect();
    let has = |m: &[u8]| offered.contains(&m);
    let pick = match want {
        Mech::Auto => {
            if has(b"SCRAM-SHA-256") {
                Some(Mech::ScramSha256)
            } else if has(b"SCRAM-SHA-1") {
                Some(Mech::ScramSha1)
            } else if has(b"PLAIN") {
                Some(Mech::Plain)
            } else {
                None
            }
        }
        Mech::ScramSha256 => has(b"SCRAM-SHA-256").then_some(want),
        Mech::ScramSha1 => has(b"SCRAM-SHA-1").then_some(want),
        Mech::Plain => has(b"PLAIN").then_some(want),
    };
    pick.ok_or_else(|| {
        let list: Vec<_> = offered.iter().map(|m| String::from_utf8_lossy(m)).collect();
        Error(format!(
            "mechanism {want:?} not offered (server offers {list:?})"
        ))
    })
}

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// Waits for the next SASL element; returns (local name, decoded payload).
async fn sasl_step(conn: &mut Conn) -> Res<(Vec<u8>, String)> {
    let r = conn.next_element().await?;
    let el = conn.rd.bytes(r);
    let name = xml::local_name(el).to_vec();
    if name == b"failure" {
        return Err(format!("SASL failure: {}", String::from_utf8_lossy(el)).into());
    }
    let text = tag_text(el);
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let data = if text.is_empty() || text == b"=" {
        Vec::new()
    } else {
        B64.decode(&text)
            .map_err(|e| format!("SASL payload base64: {e}"))?
    };
    Ok((
        name,
        String::from_utf8(data).map_err(|_| "SASL payload not UTF-8")?,
    ))
}

async fn authenticate(ctx: &Ctx, conn: &mut Conn, acct: &Account, mech: Mech) -> Res<()> {
    let kind = match mech {
        Mech::ScramSha256 => HashKind::Sha256,
        Mech::ScramSha1 => HashKind::Sha1,
        _ => {
            let resp = scram::plain_response(&acct.local, &acct.password);
            conn.wbuf.extend_from_slice(
                format!("<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{resp}</auth>").as_bytes(),
            );
            conn.flush().await?;
            let (name, _) = sasl_step(conn).await?;
            return if name == b"success" {
                Ok(())
            } else {
                Err(format!("unexpected SASL reply <{}>", String::from_utf8_lossy(&name)).into())
            };
        }
    };
    let nonce: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let mut scram = ScramClient::new(kind, &acct.local, &nonce);
    conn.wbuf.extend_from_slice(
        format!(
            "<auth xmlns='{SASL_NS}' mechanism='{}'>{}</auth>",
            kind.mechanism(),
            B64.encode(scram.client_first())
        )
        .as_bytes(),
    );
    conn.flush().await?;
    let (name, server_first) = sasl_step(conn).await?;
    if name != b"challenge" {
        return Err("expected a SCRAM challenge".into());
    }
    let fin = scram.client_final(&server_first, &acct.password, &ctx.salt_cache)?;
    conn.wbuf.extend_from_slice(
        format!("<response xmlns='{SASL_NS}'>{}</response>", B64.encode(fin)).as_bytes(),
    );
    conn.flush().await?;
    let (name, server_final) = sasl_step(conn).await?;
    scram.verify_server_final(&server_final)?;
    match name.as_slice() {
        b"success" => Ok(()),
        b"challenge" => {
            // Server-final sent as a challenge (RFC 6120 §6.4.6 allows it): empty reply.
            conn.wbuf
                .extend_from_slice(format!("<response xmlns='{SASL_NS}'/>").as_bytes());
            conn.flush().await?;
            let (name, _) = sasl_step(conn).await?;
            if name == b"success" {
                Ok(())
            } else {
                Err("SASL did not succeed".into())
            }
        }
        _ => Err("SASL did not succeed".into()),
    }
}

/// Connects and logs in through resource binding. `idx` picks the source address.
pub async fn login(ctx: &Ctx, idx: usize, acct: &Account) -> Res<Conn> {
    login_with(ctx, idx, acct, &ctx.tls).await
}

/// [`login`] with another TLS connector (a returning device's).
pub async fn login_with(ctx: &Ctx, idx: usize, acct: &Account, tls: &TlsConnector) -> Res<Conn> {
    match tokio::time::timeout(ctx.handshake_timeout, login_inner(ctx, idx, acct, tls)).await {
        Ok(r) => r,
        Err(_) => Err("login timed out".into()),
    }
}

async fn login_inner(ctx: &Ctx, idx: usize, acct: &Account, tls: &TlsConnector) -> Res<Conn> {
    let tcp = tcp_connect(ctx, idx)
        .await
        .map_err(|e| format!("connect {}: {e}", ctx.addr))?;
    let bare = acct.bare();
    let mut conn = if ctx.direct_tls {
        Conn::new(
            tls_wrap(tls, tcp, &acct.domain).await?,
            bare,
            acct.domain.clone(),
        )
    } else {
        Conn::new(Stream::Plain(tcp), bare, acct.domain.clone())
    };
    let mut features = open_stream(&mut conn).await?;
    if !ctx.direct_tls {
        if !xml::has_child(&features, b"starttls") {
            return Err("server offers no STARTTLS".into());
        }
        conn.wbuf
            .extend_from_slice(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        conn.flush().await?;
        let r = conn.next_element().await?;
        if xml::local_name(conn.rd.bytes(r)) != b"proceed" {
            return Err("STARTTLS refused".into());
        }
        let Conn {
            io, bare, domain, ..
        } = conn;
        let Stream::Plain(tcp) = io else {
            return Err("STARTTLS on an encrypted stream".into());
        };
        conn = Conn::new(tls_wrap(tls, tcp, &domain).await?, bare, domain);
        features = open_stream(&mut conn).await?;
    }
    let mech = choose_mech(&features, ctx.mech)?;
    authenticate(ctx, &mut conn, acct, mech).await?;
    let features = open_stream(&mut conn).await?;
    if !xml::has_child(&features, b"bind") {
        return Err("no resource binding offered".into());
    }
    conn.wbuf.extend_from_slice(
        b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>",
    );
    xml::escape_into(&mut conn.wbuf, &ctx.resource);
    conn.wbuf.extend_from_slice(b"</resource></bind></iq>");
    conn.flush().await?;
    let res = conn.await_iq(b"bind", &mut ignore_other).await?;
    if xml::child_text(&res, b"jid").is_none() {
        return Err("bind result without a JID".into());
    }
    // Legacy session establishment only when the server says it is not optional.
    if session_required(&features) {
        conn.wbuf.extend_from_slice(
            b"<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        );
        conn.flush().await?;
        conn.await_iq(b"sess", &mut ignore_other).await?;
    }
    Ok(conn)
}

/// True when the features list a `<session/>` without `<optional/>` (RFC 3921 servers).
fn session_required(features: &[u8]) -> bool {
    let Some(at) = xml::find_tag(features, b"session", 1) else {
        return false;
    };
    let rest = &features[at..];
    let Some(gt) = rest.iter().position(|&c| c == b'>') else {
        return false;
    };
    if gt > 0 && rest[gt - 1] == b'/' {
        return true;
    }
    let close = rest
        .windows(10)
        .position(|w| w == b"</session>")
        .unwrap_or(rest.len());
    xml::find_tag(&rest[..close], b"optional", 1).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_feature() {
        assert!(!session_required(
            b"<stream:features><bind/></stream:features>"
        ));
        assert!(!session_required(
            b"<stream:features><bind/><session xmlns='s'><optional/></session></stream:features>"
        ));
        assert!(session_required(
            b"<stream:features><session xmlns='s'/></stream:features>"
        ));
        assert!(session_required(
            b"<stream:features><session xmlns='s'></session><x><optional/></x></stream:features>"
        ));
    }

    #[test]
    fn mechanism_choice() {
        let f = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
        assert_eq!(choose_mech(f, Mech::Auto).unwrap(), Mech::ScramSha1);
        assert_eq!(choose_mech(f, Mech::Plain).unwrap(), Mech::Plain);
        assert!(choose_mech(f, Mech::ScramSha256).is_err());
        let g = b"<stream:features><mechanisms><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-256</mechanism></mechanisms></stream:features>";
        assert_eq!(choose_mech(g, Mech::Auto).unwrap(), Mech::ScramSha256);
    }

    #[test]
    fn iq_replies() {
        let mut out = Vec::new();
        assert!(auto_reply(
            b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            &mut out
        ));
        assert_eq!(out, b"<iq type='result' id='p1' to='localhost'/>");
        out.clear();
        assert!(auto_reply(
            b"<iq type='get' id=\"a'b\"><query xmlns='jabber:iq:version'/></iq>",
            &mut out
        ));
        assert!(out.starts_with(b"<iq type='error' id='a&apos;b'><error type='cancel'>"));
        out.clear();
        assert!(!auto_reply(b"<iq type='result' id='x'/>", &mut out));
        assert!(!auto_reply(b"<message><body>x</body></message>", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn names_pattern() {
        let n = Names {
            user_pattern: "u{i}@example.org".into(),
            password_pattern: "pw{i}".into(),
            first: 5,
        };
        n.check().unwrap();
        let a = n.account(2);
        assert_eq!(a.bare(), "u7@example.org");
        assert_eq!(a.password, "pw7");
        let bad = Names {
            user_pattern: "nodomain{i}".into(),
            ..n
        };
        assert!(bad.check().is_err());
    }
}
