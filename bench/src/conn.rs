//! One client connection: TCP (optionally bound to a chosen 127.0.0.x source), STARTTLS
//! or direct TLS, SASL, resource binding, and small helpers to read elements and answer
//! the server's IQs.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
    /// The stream features after authentication offered XEP-0198 stream management.
    pub sm_offered: bool,
    /// XEP-0198 state once the server answered `<enable/>` with `<enabled/>`.
    pub sm: Option<StreamMgmt>,
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
            sm_offered: false,
            sm: None,
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

    /// The next top-level element; a stream end or stream error is an error here. With
    /// stream management enabled, stanzas are counted and the server's `<r/>` answered
    /// here (SM nonzas are not returned).
    pub async fn next_element(&mut self) -> Res<Range<usize>> {
        loop {
            match self.next_frame().await? {
                Frame::Element(r) => {
                    let el = self.rd.bytes(r.clone());
                    if xml::name(el) == b"stream:error" {
                        return Err(format!("stream error: {}", String::from_utf8_lossy(el)).into());
                    }
                    if let Some(sm) = self.sm.as_mut()
                        && sm.observe(el, &mut self.wbuf)
                    {
                        if !self.wbuf.is_empty() {
                            self.flush().await?;
                        }
                        continue;
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

    /// Enables XEP-0198 as mobile clients do after binding (`<enable resume='true'/>`)
    /// and waits, at most `limit`, for `<enabled/>`; `<failed/>` is an error. From then on
    /// [`Conn::next_element`] (and the scenarios' loops, through [`StreamMgmt::observe`])
    /// count the stanzas received and answer the server's `<r/>`.
    pub async fn enable_sm(&mut self, limit: Duration) -> Res<()> {
        if !self.sm_offered {
            return Err(
                "server does not offer XEP-0198 (no <sm xmlns='urn:xmpp:sm:3'/> in the stream features)"
                    .into(),
            );
        }
        self.wbuf
            .extend_from_slice(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
        self.flush().await?;
        let wait = async {
            loop {
                let r = self.next_element().await?;
                let el = self.rd.bytes(r);
                let sm_ns = xml::attr(el, b"xmlns") == Some(SM_NS);
                match xml::local_name(el) {
                    b"enabled" if sm_ns => {
                        let resume = matches!(xml::attr(el, b"resume"), Some(b"true" | b"1"));
                        self.sm = Some(StreamMgmt {
                            resumable: resume
                                && xml::attr(el, b"id").is_some_and(|v| !v.is_empty()),
                            ..StreamMgmt::default()
                        });
                        return Ok(());
                    }
                    b"failed" if sm_ns => {
                        return Err(
                            format!("<enable/> refused: {}", String::from_utf8_lossy(el)).into(),
                        );
                    }
                    _ => {
                        auto_reply(el, &mut self.wbuf);
                        if !self.wbuf.is_empty() {
                            self.flush().await?;
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r,
            Err(_) => Err("no <enabled/> or <failed/> in answer to <enable/>".into()),
        }
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

/// The XEP-0198 namespace (version 3).
pub const SM_NS: &[u8] = b"urn:xmpp:sm:3";

/// The client's side of XEP-0198 once enabled: the stanzas it received (its `h`) and
/// the acks it sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamMgmt {
    /// Stanzas (message, presence, iq) received since `<enabled/>`, mod 2^32.
    pub handled: u32,
    /// `<a/>` sent, one per `<r/>` of the server.
    pub answered: u64,
    /// `<enabled/>` said `resume='true'` and gave an id.
    pub resumable: bool,
}

impl StreamMgmt {
    /// Accounts for one top-level element from the server: a stanza is counted; an `<r/>`
    /// is answered in `out` with `<a h='…'/>`. Returns true for a stream management
    /// nonza (handled here, nothing for the caller), false for anything else.
    pub fn observe(&mut self, el: &[u8], out: &mut Vec<u8>) -> bool {
        match xml::name(el) {
            b"message" | b"presence" | b"iq" => {
                self.handled = self.handled.wrapping_add(1);
                false
            }
            _ if xml::attr(el, b"xmlns") == Some(SM_NS) => {
                if xml::local_name(el) == b"r" {
                    out.extend_from_slice(b"<a xmlns='urn:xmpp:sm:3' h='");
                    out.extend_from_slice(self.handled.to_string().as_bytes());
                    out.extend_from_slice(b"'/>");
                    self.answered += 1;
                }
                true
            }
            _ => false,
        }
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
    open_stream_from(conn, None).await
}

/// [`open_stream`] with a `from` (the bare JID: XEP-0388 wants it on the encrypted
/// stream before SASL2).
async fn open_stream_from(conn: &mut Conn, from: Option<&str>) -> Res<Vec<u8>> {
    conn.rd.reset();
    conn.wbuf
        .extend_from_slice(b"<?xml version='1.0'?><stream:stream to='");
    xml::escape_into(&mut conn.wbuf, &conn.domain);
    if let Some(from) = from {
        conn.wbuf.extend_from_slice(b"' from='");
        xml::escape_into(&mut conn.wbuf, from);
    }
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
    // The legacy list only: SASL2's `<authentication>` lists mechanisms too.
    let legacy = xml::find_tag(features, b"mechanisms", 1)
        .and_then(|at| xml::element_at(features, at))
        .unwrap_or(features);
    let offered: Vec<&[u8]> = xml::each_tag(legacy, b"mechanism").map(tag_text).collect();
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
    login_auth(ctx, idx, acct, tls, &Auth::Legacy)
        .await
        .map(|(conn, _)| conn)
}

/// Connects and logs in as `auth` says. Returns the connection, ready for stanzas, and
/// the FAST token the server issued, if it issued one.
pub async fn login_auth(
    ctx: &Ctx,
    idx: usize,
    acct: &Account,
    tls: &TlsConnector,
    auth: &Auth<'_>,
) -> Res<(Conn, Option<String>)> {
    match tokio::time::timeout(
        ctx.handshake_timeout,
        login_inner(ctx, idx, acct, tls, auth),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err("login timed out".into()),
    }
}

/// TCP, then STARTTLS or direct TLS; returns the connection and the features of the
/// encrypted stream, opened with `from` when given.
async fn connect_tls(
    ctx: &Ctx,
    idx: usize,
    acct: &Account,
    tls: &TlsConnector,
    from: Option<&str>,
) -> Res<(Conn, Vec<u8>)> {
    let tcp = tcp_connect(ctx, idx)
        .await
        .map_err(|e| format!("connect {}: {e}", ctx.addr))?;
    let bare = acct.bare();
    if ctx.direct_tls {
        let mut conn = Conn::new(
            tls_wrap(tls, tcp, &acct.domain).await?,
            bare,
            acct.domain.clone(),
        );
        let features = open_stream_from(&mut conn, from).await?;
        return Ok((conn, features));
    }
    let mut conn = Conn::new(Stream::Plain(tcp), bare, acct.domain.clone());
    let features = open_stream(&mut conn).await?;
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
    let mut conn = Conn::new(tls_wrap(tls, tcp, &domain).await?, bare, domain);
    let features = open_stream_from(&mut conn, from).await?;
    Ok((conn, features))
}

async fn login_inner(
    ctx: &Ctx,
    idx: usize,
    acct: &Account,
    tls: &TlsConnector,
    auth: &Auth<'_>,
) -> Res<(Conn, Option<String>)> {
    if !matches!(auth, Auth::Legacy) {
        let bare = acct.bare();
        let (mut conn, features) = connect_tls(ctx, idx, acct, tls, Some(&bare)).await?;
        let token = sasl2_login(ctx, &mut conn, acct, &features, auth).await?;
        return Ok((conn, token));
    }
    let (mut conn, features) = connect_tls(ctx, idx, acct, tls, None).await?;
    let mech = choose_mech(&features, ctx.mech)?;
    authenticate(ctx, &mut conn, acct, mech).await?;
    let features = open_stream(&mut conn).await?;
    if !xml::has_child(&features, b"bind") {
        return Err("no resource binding offered".into());
    }
    conn.sm_offered = child_ns(&features, b"sm", SM_NS).is_some();
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
    Ok((conn, None))
}

// ------------------------------------------------------------ SASL2, Bind2, FAST

const SASL2_NS: &[u8] = b"urn:xmpp:sasl:2";
const BIND2_NS: &[u8] = b"urn:xmpp:bind:0";
const FAST_NS: &[u8] = b"urn:xmpp:fast:0";

/// How a login authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// RFC 6120 SASL, stream restart, resource binding (an IQ), as every client can.
    Legacy,
    /// SASL2 (XEP-0388) with SCRAM and the password, Bind2 (XEP-0386) inline, and a
    /// FAST token (XEP-0484) requested: a device's first login.
    Sasl2Password {
        /// The `<user-agent id>`: the same on every login of a device.
        user_agent: &'a str,
    },
    /// SASL2 with HT-SHA-256-NONE and a FAST token, Bind2 inline: one round trip after
    /// TLS and no stream restart (a returning device).
    Fast { user_agent: &'a str, token: &'a str },
}

/// A returning device for FAST logins: its stable user-agent id and the token the
/// server last gave it.
#[derive(Debug)]
pub struct FastDevice {
    pub user_agent: String,
    token: Mutex<Option<String>>,
}

impl FastDevice {
    pub fn new(acct: &Account) -> Self {
        FastDevice {
            user_agent: user_agent_id(&acct.bare()),
            token: Mutex::new(None),
        }
    }

    pub fn token(&self) -> Option<String> {
        self.token.lock().ok().and_then(|g| g.clone())
    }

    pub fn set_token(&self, token: String) {
        if let Ok(mut g) = self.token.lock() {
            *g = Some(token);
        }
    }
}

/// A UUID-shaped id derived from the account, the same on every run (a real client
/// makes one at install time and keeps it).
pub fn user_agent_id(bare: &str) -> String {
    let h = scram::hash(
        HashKind::Sha256,
        format!("xmppd-bench device {bare}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // Version 4 and the RFC 4122 variant, so it looks like what clients send.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// What an `<authentication xmlns='urn:xmpp:sasl:2'>` feature offers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sasl2Offer {
    /// SASL mechanisms for a password login.
    pub mechanisms: Vec<String>,
    /// Bind2 may be requested inline.
    pub bind2: bool,
    /// FAST mechanisms (empty: no FAST).
    pub fast: Vec<String>,
}

fn texts(el: &[u8], tag: &[u8]) -> Vec<String> {
    xml::each_tag(el, tag)
        .map(|t| String::from_utf8_lossy(xml::unescape(tag_text(t)).trim_ascii()).into_owned())
        .collect()
}

/// The first `<tag>` below the root of `el` whose xmlns is `ns`, whole.
fn child_ns<'a>(el: &'a [u8], tag: &[u8], ns: &[u8]) -> Option<&'a [u8]> {
    let mut from = 1;
    while let Some(at) = xml::find_tag(el, tag, from) {
        if xml::attr(&el[at..], b"xmlns") == Some(ns) {
            return xml::element_at(el, at);
        }
        from = at + 1;
    }
    None
}

/// The SASL2 offer in stream features; `None` when there is none.
pub fn sasl2_offer(features: &[u8]) -> Option<Sasl2Offer> {
    let auth = child_ns(features, b"authentication", SASL2_NS)?;
    let mut offer = Sasl2Offer::default();
    // The password mechanisms are the <mechanism> children outside <inline>.
    let (outside, inline) = match xml::find_tag(auth, b"inline", 1)
        .and_then(|at| Some((at, xml::element_at(auth, at)?)))
    {
        Some((at, inl)) => ([&auth[..at], &auth[at + inl.len()..]].concat(), inl),
        None => (auth.to_vec(), &b""[..]),
    };
    offer.mechanisms = texts(&outside, b"mechanism");
    if !inline.is_empty() {
        offer.bind2 = child_ns(inline, b"bind", BIND2_NS).is_some();
        if let Some(fast) = child_ns(inline, b"fast", FAST_NS) {
            offer.fast = texts(fast, b"mechanism");
        }
    }
    Some(offer)
}

/// The `<authenticate>` element. `mech` and `tag` are trusted text (mechanism names and
/// the configured resource); `initial` is raw bytes, base64-encoded here.
fn sasl2_authenticate(
    mech: &str,
    initial: &[u8],
    user_agent: &str,
    fast: bool,
    tag: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='");
    xml::escape_into(&mut out, mech);
    out.extend_from_slice(b"'><initial-response>");
    out.extend_from_slice(B64.encode(initial).as_bytes());
    out.extend_from_slice(b"</initial-response><user-agent id='");
    xml::escape_into(&mut out, user_agent);
    out.extend_from_slice(b"'><software>xmppd-bench</software>");
    if !fast {
        out.extend_from_slice(b"<device>bench</device>");
    }
    out.extend_from_slice(b"</user-agent><bind xmlns='urn:xmpp:bind:0'><tag>");
    xml::escape_into(&mut out, tag);
    out.extend_from_slice(b"</tag></bind>");
    if fast {
        out.extend_from_slice(b"<fast xmlns='urn:xmpp:fast:0'/>");
    } else {
        out.extend_from_slice(b"<request-token xmlns='urn:xmpp:fast:0' mechanism='");
        out.extend_from_slice(scram::HT_SHA256_NONE.as_bytes());
        out.extend_from_slice(b"'/>");
    }
    out.extend_from_slice(b"</authenticate>");
    out
}

/// What a SASL2 `<success>` carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sasl2Success {
    /// Decoded `<additional-data>` (SCRAM's server-final, FAST's HMAC).
    pub additional_data: Option<Vec<u8>>,
    /// `<authorization-identifier>`: the full JID once Bind2 bound a resource.
    pub authzid: Option<String>,
    /// `<bound xmlns='urn:xmpp:bind:0'>` was there.
    pub bound: bool,
    /// A FAST `<token>`: requested, or rotated.
    pub token: Option<String>,
}

/// Base64 element content (whitespace ignored, `=` is empty).
fn b64_text(raw: &[u8]) -> Res<Vec<u8>> {
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if text.is_empty() || text == b"=" {
        return Ok(Vec::new());
    }
    B64.decode(&text)
        .map_err(|e| Error(format!("SASL2 payload base64: {e}")))
}

/// Parses `<success xmlns='urn:xmpp:sasl:2'>`; its children may come in any order.
pub fn parse_success(el: &[u8]) -> Res<Sasl2Success> {
    let additional_data = match xml::child_text(el, b"additional-data") {
        Some(t) => Some(b64_text(t)?),
        None => None,
    };
    let authzid = xml::child_text(el, b"authorization-identifier")
        .map(|t| String::from_utf8_lossy(&xml::unescape(t)).trim().to_owned());
    let bound = xml::each_tag(el, b"bound").any(|t| xml::attr(t, b"xmlns") == Some(BIND2_NS));
    let token = xml::each_tag(el, b"token")
        .find(|t| xml::attr(t, b"xmlns") == Some(FAST_NS))
        .and_then(|t| xml::attr(t, b"token"))
        .map(|v| String::from_utf8_lossy(&xml::unescape(v)).into_owned())
        .filter(|v| !v.is_empty());
    Ok(Sasl2Success {
        additional_data,
        authzid,
        bound,
        token,
    })
}

/// A SASL2 `<failure>` as one line: its condition (the first child) and its text.
fn failure_text(el: &[u8]) -> String {
    let condition = el
        .iter()
        .position(|&c| c == b'>')
        .filter(|&gt| gt > 0 && el[gt - 1] != b'/')
        .and_then(|gt| {
            let rest = &el[gt + 1..];
            let lt = rest.iter().position(|&c| c == b'<')?;
            let n = xml::name(&rest[lt..]);
            (!n.is_empty() && !n.starts_with(b"/")).then_some(n)
        })
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_else(|| "no condition".into());
    match xml::child_text(el, b"text") {
        Some(t) => format!(
            "{condition} ({})",
            String::from_utf8_lossy(&xml::unescape(t))
        ),
        None => condition,
    }
}

/// The next SASL2 element from the server: (local name, whole element).
async fn sasl2_next(conn: &mut Conn) -> Res<(Vec<u8>, Vec<u8>)> {
    let r = conn.next_element().await?;
    let el = conn.rd.bytes(r);
    if xml::attr(el, b"xmlns") != Some(SASL2_NS) {
        return Err(format!(
            "expected a SASL2 element, got {}",
            String::from_utf8_lossy(el)
        )
        .into());
    }
    let name = xml::local_name(el).to_vec();
    if name == b"failure" {
        return Err(format!("SASL2 failure: {}", failure_text(el)).into());
    }
    Ok((name, el.to_vec()))
}

/// SASL2 on an encrypted stream whose `features` were just read: password (SCRAM) or
/// FAST token, Bind2 inline. On return the server's post-authentication features have
/// arrived (no stream restart) and the session is bound. Returns the token the server
/// issued, if any.
async fn sasl2_login(
    ctx: &Ctx,
    conn: &mut Conn,
    acct: &Account,
    features: &[u8],
    auth: &Auth<'_>,
) -> Res<Option<String>> {
    let offer = sasl2_offer(features).ok_or(
        "server does not offer FAST (no <authentication xmlns='urn:xmpp:sasl:2'> in its stream features)",
    )?;
    if !offer.fast.iter().any(|m| m == scram::HT_SHA256_NONE) {
        return Err(format!(
            "server does not offer FAST ({} not among its FAST mechanisms {:?})",
            scram::HT_SHA256_NONE,
            offer.fast
        )
        .into());
    }
    if !offer.bind2 {
        return Err("server does not offer Bind2 inline in SASL2".into());
    }
    let tag = ctx.resource.as_str();
    let (success, token_used) = match *auth {
        Auth::Legacy => return Err("not a SASL2 login".into()),
        Auth::Fast { user_agent, token } => {
            let initial = scram::ht_initiator(&acct.local, token);
            conn.wbuf.extend_from_slice(&sasl2_authenticate(
                scram::HT_SHA256_NONE,
                &initial,
                user_agent,
                true,
                tag,
            ));
            conn.flush().await?;
            let (name, el) = sasl2_next(conn).await?;
            if name != b"success" {
                return Err(format!(
                    "FAST: expected <success>, got {}",
                    String::from_utf8_lossy(&el)
                )
                .into());
            }
            let s = parse_success(&el)?;
            match &s.additional_data {
                Some(d) if *d == scram::ht_responder(token) => {}
                Some(_) => return Err("FAST: server's HMAC (Responder) does not match".into()),
                None => {
                    return Err(
                        "FAST: success without <additional-data> (server not verified)".into(),
                    );
                }
            }
            (s, true)
        }
        Auth::Sasl2Password { user_agent } => {
            let kind = match ctx.mech {
                Mech::Auto | Mech::ScramSha256 => HashKind::Sha256,
                Mech::ScramSha1 => HashKind::Sha1,
                Mech::Plain => return Err("--fast logs in with SCRAM, not PLAIN".into()),
            };
            if !offer.mechanisms.iter().any(|m| m == kind.mechanism()) {
                return Err(format!(
                    "server does not offer {} over SASL2 (offers {:?})",
                    kind.mechanism(),
                    offer.mechanisms
                )
                .into());
            }
            let nonce: String = rand::rng()
                .sample_iter(Alphanumeric)
                .take(24)
                .map(char::from)
                .collect();
            let mut scram = ScramClient::new(kind, &acct.local, &nonce);
            conn.wbuf.extend_from_slice(&sasl2_authenticate(
                kind.mechanism(),
                scram.client_first().as_bytes(),
                user_agent,
                false,
                tag,
            ));
            conn.flush().await?;
            let (name, el) = sasl2_next(conn).await?;
            if name != b"challenge" {
                return Err(format!(
                    "SASL2 SCRAM: expected <challenge>, got {}",
                    String::from_utf8_lossy(&el)
                )
                .into());
            }
            let server_first = String::from_utf8(b64_text(tag_text(&el))?)
                .map_err(|_| "SCRAM server-first not UTF-8")?;
            let fin = scram.client_final(&server_first, &acct.password, &ctx.salt_cache)?;
            conn.wbuf
                .extend_from_slice(b"<response xmlns='urn:xmpp:sasl:2'>");
            conn.wbuf.extend_from_slice(B64.encode(fin).as_bytes());
            conn.wbuf.extend_from_slice(b"</response>");
            conn.flush().await?;
            let (name, el) = sasl2_next(conn).await?;
            if name != b"success" {
                return Err(format!(
                    "SASL2 SCRAM: expected <success>, got {}",
                    String::from_utf8_lossy(&el)
                )
                .into());
            }
            let s = parse_success(&el)?;
            let Some(data) = &s.additional_data else {
                return Err(
                    "SASL2 SCRAM: success without <additional-data> (no server signature)".into(),
                );
            };
            let server_final =
                std::str::from_utf8(data).map_err(|_| "SCRAM server-final not UTF-8")?;
            scram.verify_server_final(server_final)?;
            if s.token.is_none() {
                return Err("server issued no FAST token (asked with <request-token>)".into());
            }
            (s, false)
        }
    };
    if !success.bound {
        return Err(
            "SASL2 success without <bound xmlns='urn:xmpp:bind:0'/> (Bind2 not done)".into(),
        );
    }
    match &success.authzid {
        Some(j) if j.contains('/') => {}
        other => {
            return Err(format!(
                "SASL2 success: authorization-identifier {other:?} is not a full JID{}",
                if token_used { " (FAST)" } else { "" }
            )
            .into());
        }
    }
    // No stream restart: the features follow <success> on the same stream.
    loop {
        let r = conn.next_element().await?;
        let el = conn.rd.bytes(r);
        if xml::name(el) == b"stream:features" {
            conn.sm_offered = child_ns(el, b"sm", SM_NS).is_some();
            break;
        }
    }
    Ok(success.token)
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

    /// The stream features of the wire protocol xmppd implements (issue 16).
    const FEATURES: &[u8] = b"<stream:features>\
        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        <authentication xmlns='urn:xmpp:sasl:2'>\
          <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
          <inline>\
            <bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:sm:3'/><feature var='urn:xmpp:carbons:2'/></inline></bind>\
            <fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>\
          </inline>\
        </authentication></stream:features>";

    #[test]
    fn sasl2_features() {
        let o = sasl2_offer(FEATURES).unwrap();
        assert_eq!(
            o.mechanisms,
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1"]
        );
        assert!(o.bind2);
        assert_eq!(o.fast, ["HT-SHA-256-EXPR", "HT-SHA-256-NONE"]);
        // The legacy choice looks at <mechanisms> only.
        assert_eq!(choose_mech(FEATURES, Mech::Auto).unwrap(), Mech::ScramSha1);
        // SASL2 without FAST or Bind2; no SASL2 at all; another namespace.
        let o = sasl2_offer(
            b"<stream:features><authentication xmlns='urn:xmpp:sasl:2'><mechanism>PLAIN</mechanism></authentication></stream:features>",
        )
        .unwrap();
        assert_eq!((o.mechanisms.len(), o.bind2, o.fast.len()), (1, false, 0));
        assert!(sasl2_offer(b"<stream:features><mechanisms/></stream:features>").is_none());
        assert!(
            sasl2_offer(b"<stream:features><authentication xmlns='x'/></stream:features>")
                .is_none()
        );
    }

    #[test]
    fn authenticate_elements() {
        let a = sasl2_authenticate("SCRAM-SHA-256", b"n,,n=u,r=x", "ID-1", false, "bench");
        assert_eq!(
            String::from_utf8(a).unwrap(),
            format!(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'>\
                 <initial-response>{}</initial-response>\
                 <user-agent id='ID-1'><software>xmppd-bench</software><device>bench</device></user-agent>\
                 <bind xmlns='urn:xmpp:bind:0'><tag>bench</tag></bind>\
                 <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
                 </authenticate>",
                B64.encode("n,,n=u,r=x")
            )
        );
        let init = scram::ht_initiator("u", "t");
        let f = sasl2_authenticate("HT-SHA-256-NONE", &init, "ID-1", true, "a<b");
        assert_eq!(
            String::from_utf8(f).unwrap(),
            format!(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
                 <initial-response>{}</initial-response>\
                 <user-agent id='ID-1'><software>xmppd-bench</software></user-agent>\
                 <bind xmlns='urn:xmpp:bind:0'><tag>a&lt;b</tag></bind>\
                 <fast xmlns='urn:xmpp:fast:0'/>\
                 </authenticate>",
                B64.encode(&init)
            )
        );
    }

    #[test]
    fn success_parsing() {
        let el = b"<success xmlns='urn:xmpp:sasl:2'>\
            <token xmlns='urn:xmpp:fast:0' token='a&amp;b' expiry='2026-12-21T00:00:00Z'/>\
            <bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3'/></bound>\
            <authorization-identifier>u@d/bench/X1</authorization-identifier>\
            <additional-data>dj1hYmM=</additional-data></success>";
        let s = parse_success(el).unwrap();
        assert_eq!(s.additional_data.as_deref(), Some(&b"v=abc"[..]));
        assert_eq!(s.authzid.as_deref(), Some("u@d/bench/X1"));
        assert!(s.bound);
        assert_eq!(s.token.as_deref(), Some("a&b"));
        let s = parse_success(
            b"<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>u@d</authorization-identifier></success>",
        )
        .unwrap();
        assert_eq!(s.additional_data, None);
        assert!(!s.bound);
        assert_eq!(s.token, None);
        assert!(
            parse_success(b"<success><additional-data>!!</additional-data></success>").is_err()
        );
    }

    #[test]
    fn failures_and_agents() {
        assert_eq!(
            failure_text(
                b"<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><text>bad token</text></failure>"
            ),
            "not-authorized (bad token)"
        );
        assert_eq!(failure_text(b"<failure xmlns='x'/>"), "no condition");
        let id = user_agent_id("user1@localhost");
        assert_eq!(id, user_agent_id("user1@localhost"));
        assert_ne!(id, user_agent_id("user2@localhost"));
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
    }

    /// A scripted SASL2 server on loopback (plain TCP: the exchange is what is tested).
    /// `answer` gets everything the client sent so far and returns the reply to send,
    /// or `None` to read more.
    async fn mock_server(
        mut answer: impl FnMut(&str) -> Option<String> + Send + 'static,
    ) -> (Conn, tokio::task::JoinHandle<String>) {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = String::new();
            let mut buf = [0u8; 4096];
            // The stream the client already opened (the splitter wants its header).
            s.write_all(
                b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
            )
            .await
            .unwrap();
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return seen;
                }
                seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                if let Some(reply) = answer(&seen) {
                    s.write_all(reply.as_bytes()).await.unwrap();
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (
            Conn::new(Stream::Plain(tcp), "u1@d".into(), "d".into()),
            server,
        )
    }

    fn test_ctx() -> Ctx {
        Ctx {
            addr: "127.0.0.1:1".parse().unwrap(),
            source_addrs: 0,
            direct_tls: false,
            mech: Mech::Auto,
            tls: tls_connector(false).unwrap(),
            handshake_timeout: Duration::from_secs(5),
            resource: "bench".into(),
            salt_cache: SaltCache::default(),
        }
    }

    fn test_account() -> Account {
        Account {
            local: "u1".into(),
            domain: "d".into(),
            password: "pencil".into(),
        }
    }

    fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
        let i = s.find(a).unwrap() + a.len();
        &s[i..i + s[i..].find(b).unwrap()]
    }

    const AFTER: &str = "<stream:features><sm xmlns='urn:xmpp:sm:3'/></stream:features>";

    #[tokio::test]
    async fn sasl2_scram_with_token_request() {
        let (salt, iters) = (b"NaCl-salt".to_vec(), 4096);
        let salted = scram::salted_password(HashKind::Sha256, b"pencil", &salt, iters);
        let (stored, server_key) = scram::verifiers(HashKind::Sha256, &salted);
        let mut step = 0;
        let mut first_bare = String::new();
        let mut server_first = String::new();
        let (mut conn, server) = mock_server(move |seen| match step {
            0 if seen.contains("</authenticate>") => {
                step = 1;
                let init = B64
                    .decode(between(seen, "<initial-response>", "<"))
                    .unwrap();
                let init = String::from_utf8(init).unwrap();
                first_bare = init.strip_prefix("n,,").unwrap().to_owned();
                let nonce = first_bare.split_once(",r=").unwrap().1;
                server_first = format!("r={nonce}SRV,s={},i={iters}", B64.encode(&salt));
                Some(format!(
                    "<challenge xmlns='urn:xmpp:sasl:2'>{}</challenge>",
                    B64.encode(&server_first)
                ))
            }
            1 if seen.contains("</response>") => {
                step = 2;
                let fin = B64
                    .decode(between(seen, "<response xmlns='urn:xmpp:sasl:2'>", "<"))
                    .unwrap();
                let fin = String::from_utf8(fin).unwrap();
                let (without_proof, proof) = fin.split_once(",p=").unwrap();
                let am = format!("{first_bare},{server_first},{without_proof}");
                let sig = scram::hmac(HashKind::Sha256, &stored, am.as_bytes());
                let key: Vec<u8> = B64
                    .decode(proof)
                    .unwrap()
                    .iter()
                    .zip(&sig)
                    .map(|(a, b)| a ^ b)
                    .collect();
                assert_eq!(scram::hash(HashKind::Sha256, &key), stored);
                let v = scram::hmac(HashKind::Sha256, &server_key, am.as_bytes());
                Some(format!(
                    "<success xmlns='urn:xmpp:sasl:2'><bound xmlns='urn:xmpp:bind:0'/>\
                     <token xmlns='urn:xmpp:fast:0' token='T-1' expiry='2026-12-21T00:00:00Z'/>\
                     <authorization-identifier>u1@d/bench/Z</authorization-identifier>\
                     <additional-data>{}</additional-data></success>{AFTER}",
                    B64.encode(format!("v={}", B64.encode(v)))
                ))
            }
            _ => None,
        })
        .await;
        let ctx = test_ctx();
        let auth = Auth::Sasl2Password { user_agent: "UA-1" };
        let token = sasl2_login(&ctx, &mut conn, &test_account(), FEATURES, &auth)
            .await
            .unwrap();
        assert_eq!(token.as_deref(), Some("T-1"));
        drop(conn);
        let seen = server.await.unwrap();
        assert!(seen.starts_with(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'><initial-response>"
        ));
        assert!(seen.contains("<user-agent id='UA-1'><software>xmppd-bench</software><device>bench</device></user-agent>"));
        assert!(
            seen.contains("<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>")
        );
    }

    async fn fast_against(reply: String) -> (Res<Option<String>>, String) {
        let mut sent = false;
        let (mut conn, server) = mock_server(move |seen| {
            (!sent && seen.contains("</authenticate>")).then(|| {
                sent = true;
                reply.clone()
            })
        })
        .await;
        let ctx = test_ctx();
        let auth = Auth::Fast {
            user_agent: "UA-1",
            token: "T-1",
        };
        let r = sasl2_login(&ctx, &mut conn, &test_account(), FEATURES, &auth).await;
        drop(conn);
        (r, server.await.unwrap())
    }

    #[tokio::test]
    async fn fast_login() {
        let good = B64.encode(scram::ht_responder("T-1"));
        let (r, seen) = fast_against(format!(
            "<success xmlns='urn:xmpp:sasl:2'><additional-data>{good}</additional-data>\
             <authorization-identifier>u1@d/bench/Z</authorization-identifier>\
             <bound xmlns='urn:xmpp:bind:0'/>\
             <token xmlns='urn:xmpp:fast:0' token='T-2' expiry='2026-12-21T00:00:00Z'/></success>{AFTER}"
        ))
        .await;
        assert_eq!(r.unwrap().as_deref(), Some("T-2"));
        assert_eq!(
            B64.decode(between(&seen, "<initial-response>", "<"))
                .unwrap(),
            scram::ht_initiator("u1", "T-1")
        );
        assert!(seen.contains("mechanism='HT-SHA-256-NONE'"));
        assert!(seen.contains("<fast xmlns='urn:xmpp:fast:0'/>"));
        assert!(!seen.contains("<device>"));
        assert!(!seen.contains("request-token"));

        // No rotation.
        let (r, _) = fast_against(format!(
            "<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>u1@d/bench/Z</authorization-identifier>\
             <bound xmlns='urn:xmpp:bind:0'/><additional-data>{good}</additional-data></success>{AFTER}"
        ))
        .await;
        assert_eq!(r.unwrap(), None);

        // A server that does not know the token.
        let bad = B64.encode(scram::ht_responder("T-0"));
        let (r, _) = fast_against(format!(
            "<success xmlns='urn:xmpp:sasl:2'><additional-data>{bad}</additional-data>\
             <authorization-identifier>u1@d/bench/Z</authorization-identifier><bound xmlns='urn:xmpp:bind:0'/></success>{AFTER}"
        ))
        .await;
        assert!(r.unwrap_err().0.contains("does not match"));

        // Bound but not said so.
        let (r, _) = fast_against(format!(
            "<success xmlns='urn:xmpp:sasl:2'><additional-data>{good}</additional-data>\
             <authorization-identifier>u1@d</authorization-identifier></success>{AFTER}"
        ))
        .await;
        assert!(r.unwrap_err().0.contains("Bind2"));

        let (r, _) = fast_against(
            "<failure xmlns='urn:xmpp:sasl:2'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></failure>".into(),
        )
        .await;
        assert!(r.unwrap_err().0.contains("SASL2 failure: not-authorized"));
    }

    #[tokio::test]
    async fn no_fast_offered() {
        let (mut conn, _server) = mock_server(|_| None).await;
        let ctx = test_ctx();
        let auth = Auth::Sasl2Password { user_agent: "UA" };
        let plain = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
        let e = sasl2_login(&ctx, &mut conn, &test_account(), plain, &auth)
            .await
            .unwrap_err();
        assert!(e.0.starts_with("server does not offer FAST"), "{e}");
        let no_fast = b"<stream:features><authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256</mechanism><inline><bind xmlns='urn:xmpp:bind:0'/></inline></authentication></stream:features>";
        let e = sasl2_login(&ctx, &mut conn, &test_account(), no_fast, &auth)
            .await
            .unwrap_err();
        assert!(e.0.starts_with("server does not offer FAST"), "{e}");
    }

    #[test]
    fn sm_counts_stanzas_and_answers_requests() {
        let mut sm = StreamMgmt::default();
        let mut out = Vec::new();
        assert!(!sm.observe(b"<presence from='u1@d/bench'/>", &mut out));
        assert!(!sm.observe(b"<iq type='result' id='sync'/>", &mut out));
        assert!(!sm.observe(b"<message><body>x</body></message>", &mut out));
        // Neither stanzas nor SM nonzas: not counted, left to the caller.
        assert!(!sm.observe(b"<stream:features/>", &mut out));
        assert!(!sm.observe(b"<r xmlns='urn:example'/>", &mut out));
        assert!(out.is_empty());
        assert!(sm.observe(b"<r xmlns='urn:xmpp:sm:3'/>", &mut out));
        assert_eq!(out, b"<a xmlns='urn:xmpp:sm:3' h='3'/>");
        // An <a/> from the server is SM, answered with nothing.
        assert!(sm.observe(b"<a xmlns='urn:xmpp:sm:3' h='0'/>", &mut out));
        assert_eq!(sm.answered, 1);
        // h counts mod 2^32.
        sm.handled = u32::MAX;
        out.clear();
        sm.observe(b"<message/>", &mut out);
        sm.observe(b"<r xmlns='urn:xmpp:sm:3'/>", &mut out);
        assert_eq!(out, b"<a xmlns='urn:xmpp:sm:3' h='0'/>");
    }

    #[tokio::test]
    async fn sm_enable_then_acks() {
        let mut step = 0;
        let (mut conn, server) = mock_server(move |seen| {
            if step == 0 && seen.contains("<enable xmlns='urn:xmpp:sm:3' resume='true'/>") {
                step = 1;
                return Some(
                    "<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='300'/>\
                     <presence from='u1@d/bench'/><iq type='result' id='sync'/>\
                     <r xmlns='urn:xmpp:sm:3'/>"
                        .into(),
                );
            }
            if step == 1 && seen.contains("<a xmlns='urn:xmpp:sm:3' h='2'/>") {
                step = 2;
                return Some("<message from='x@d'/><r xmlns='urn:xmpp:sm:3'/>".into());
            }
            None
        })
        .await;
        conn.sm_offered = true;
        conn.enable_sm(Duration::from_secs(5)).await.unwrap();
        assert!(conn.sm.as_ref().unwrap().resumable);
        for want in [&b"presence"[..], b"iq", b"message"] {
            let r = conn.next_element().await.unwrap();
            assert_eq!(xml::name(conn.rd.bytes(r)), want);
        }
        // The second <r/> is answered when it is read.
        let mut out = Vec::new();
        while let Some(Frame::Element(r)) = conn.rd.next_frame().unwrap() {
            let sm = conn.sm.as_mut().unwrap();
            assert!(sm.observe(conn.rd.bytes(r), &mut out));
        }
        assert_eq!(out, b"<a xmlns='urn:xmpp:sm:3' h='3'/>");
        assert_eq!(conn.sm.as_ref().unwrap().answered, 2);
        drop(conn);
        let seen = server.await.unwrap();
        assert!(seen.contains("<a xmlns='urn:xmpp:sm:3' h='2'/>"), "{seen}");
    }

    #[tokio::test]
    async fn sm_failed_or_not_offered() {
        let (mut conn, _server) = mock_server(|seen| {
            seen.contains("<enable").then(|| {
                "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
                    .to_string()
            })
        })
        .await;
        let e = conn.enable_sm(Duration::from_secs(5)).await.unwrap_err();
        assert!(e.0.starts_with("server does not offer XEP-0198"), "{e}");
        conn.sm_offered = true;
        let e = conn.enable_sm(Duration::from_secs(5)).await.unwrap_err();
        assert!(e.0.starts_with("<enable/> refused: <failed"), "{e}");
        assert!(conn.sm.is_none());
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
