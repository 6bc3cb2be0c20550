//! Test support: start a server in-process on ephemeral ports with a temporary data dir,
//! and a small XMPP client that speaks over real sockets.
#![allow(dead_code)]

pub mod ca;
pub mod dns;
pub mod prosody;
pub mod scram;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd::config::{Config, ListenerConfig, ListenerKind, StorageBackend, TlsMode};
use xmppd::server::ServerHandle;
use xmppd::xml::{Element, ParserLimits, StreamEvent, StreamParser};

pub const DOMAIN: &str = "localhost";
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `cond` until it holds (for state that no stanza announces); panics after 5 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listeners = vec![
        ListenerConfig {
            kind: ListenerKind::C2s,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::Starttls,
        },
        ListenerConfig {
            kind: ListenerKind::C2s,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::DirectTls,
        },
    ];
    // Tests never ask the machine's DNS servers: remote domains resolve only through a
    // test DNS server (tests/support/dns.rs) that a test sets up itself.
    config.s2s.dns_servers = vec!["127.0.0.1:9".parse().unwrap()];
    // Fast tests: the RFC 7677 minimum.
    config.c2s.scram_iterations = 4096;
    config.storage.backend = StorageBackend::Sled;
    config
}

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_with_modules(tweak, xmppd::modules::standard()).await
    }

    /// A server with these modules instead of the standard ones.
    pub async fn start_with_modules(
        tweak: impl FnOnce(&mut Config),
        modules: Vec<Box<dyn xmppd::registry::Module>>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let handle = xmppd::server::start_with_modules(config.clone(), modules)
            .await
            .unwrap();
        TestServer {
            handle: Some(handle),
            dir,
            config,
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    pub fn starttls_addr(&self) -> SocketAddr {
        self.handle()
            .addr(ListenerKind::C2s, TlsMode::Starttls)
            .unwrap()
    }

    pub fn direct_addr(&self) -> SocketAddr {
        self.handle()
            .addr(ListenerKind::C2s, TlsMode::DirectTls)
            .unwrap()
    }

    /// The first vhost's domain.
    pub fn domain(&self) -> String {
        self.config.vhosts[0].domain.clone()
    }

    pub fn ctx(&self) -> &std::sync::Arc<xmppd::context::Context> {
        &self.handle().ctx
    }

    pub fn s2s_addr(&self, tls: TlsMode) -> SocketAddr {
        self.handle().addr(ListenerKind::S2s, tls).unwrap()
    }

    pub async fn add_user(&self, node: &str, password: &str) {
        let creds =
            xmppd::sasl::credentials::StoredCredentials::from_password(password, 4096).unwrap();
        let jid = xmppd::addr::parse_bare(&format!("{node}@{}", self.domain())).unwrap();
        assert!(
            self.handle()
                .ctx
                .storage
                .accounts
                .create(&jid, &creds)
                .await
                .unwrap()
        );
    }

    /// Stops the server and starts a new one on the same data dir (new ports).
    pub async fn restart(&mut self) {
        let handle = self.handle.take().unwrap();
        handle.shutdown().await;
        let mut config = self.config.clone();
        config.data_dir = self.dir.path().to_path_buf();
        self.handle = Some(xmppd::server::start(config).await.unwrap());
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Logs in `node` with SCRAM-SHA-256 over STARTTLS and the given resource.
    pub async fn login(&self, node: &str, resource: &str) -> Client {
        Client::login_opts(
            self.starttls_addr(),
            node,
            LoginOptions {
                resource: Some(resource.into()),
                domain: Some(self.domain()),
                ..LoginOptions::default()
            },
        )
        .await
        .unwrap()
    }
}

enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Taken,
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientIo::Taken => std::task::Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientIo::Taken => std::task::Poll::Ready(Ok(0)),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            ClientIo::Taken => std::task::Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientIo::Taken => std::task::Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client TLS configuration that trusts any certificate. Its session store (rustls's
/// in-memory default) is shared by its clones: connectors made from one are one device.
pub fn tls_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth()
}

pub fn tls_connector(alpn: Option<&[u8]>) -> tokio_rustls::TlsConnector {
    let mut config = tls_client_config();
    if let Some(p) = alpn {
        config.alpn_protocols = vec![p.to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mech {
    ScramSha256,
    ScramSha1,
    ScramSha256Plus(CbType),
    ScramSha1Plus(CbType),
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CbType {
    TlsExporter,
    TlsServerEndPoint,
}

pub struct LoginOptions {
    pub direct_tls: bool,
    pub mech: Mech,
    pub password: String,
    pub resource: Option<String>,
    /// Override the gs2 header (to test downgrade rules).
    pub gs2_override: Option<String>,
    pub authzid: Option<String>,
    /// The server's domain; `DOMAIN` when unset.
    pub domain: Option<String>,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            direct_tls: false,
            mech: Mech::ScramSha256,
            password: "password".into(),
            resource: None,
            gs2_override: None,
            authzid: None,
            domain: None,
        }
    }
}

pub struct Client {
    io: ClientIo,
    parser: StreamParser,
    buf: Vec<u8>,
    pub jid: String,
    /// The domain put in our stream headers.
    pub domain: String,
    pub features: Option<Element>,
    tls_exporter: Option<Vec<u8>>,
    end_point: Option<Vec<u8>>,
    next_id: u64,
    /// Stanzas skipped by `recv_until`, handed out again before new ones.
    skipped: std::collections::VecDeque<Element>,
}

fn limits() -> ParserLimits {
    ParserLimits {
        max_stanza_bytes: 1 << 20,
        max_depth: 64,
        max_attributes: 64,
    }
}

impl Client {
    /// A plain TCP connection with no stream opened yet.
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            io: ClientIo::Plain(tcp),
            parser: StreamParser::new(limits()),
            buf: vec![0; 8192],
            jid: String::new(),
            domain: DOMAIN.to_string(),
            features: None,
            tls_exporter: None,
            end_point: None,
            next_id: 1,
            skipped: Default::default(),
        }
    }

    pub async fn connect_direct_tls(addr: SocketAddr) -> Client {
        Client::connect_direct_tls_with(addr, &tls_connector(Some(b"xmpp-client"))).await
    }

    /// Direct TLS with the given connector (e.g. one that keeps session tickets).
    pub async fn connect_direct_tls_with(
        addr: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
    ) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
            .await
            .unwrap();
        let (exp, ep) = bindings(tls.get_ref().1);
        let mut c = Client::connect_from(ClientIo::Tls(Box::new(tls)));
        c.tls_exporter = exp;
        c.end_point = ep;
        c
    }

    fn connect_from(io: ClientIo) -> Client {
        Client {
            io,
            parser: StreamParser::new(limits()),
            buf: vec![0; 8192],
            jid: String::new(),
            domain: DOMAIN.to_string(),
            features: None,
            tls_exporter: None,
            end_point: None,
            next_id: 1,
            skipped: Default::default(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Like `send_raw`, but reports a closed connection instead of panicking.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    pub async fn send(&mut self, xml: &str) {
        self.send_raw(xml.as_bytes()).await;
    }

    pub async fn open_stream(&mut self) -> Element {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
            self.domain
        ))
        .await;
        match self.next_event().await {
            Some(StreamEvent::Open(_)) => {}
            other => panic!("expected stream header, got {other:?}"),
        }
        let features = self.recv().await;
        assert_eq!(features.name, "features", "{features:?}");
        self.features = Some(features.clone());
        features
    }

    /// The next parser event, or `None` when the server closed the connection.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => {
                    if std::env::var_os("XMPP_TRACE").is_some() {
                        eprintln!("[{}] <- {ev:?}", self.jid);
                    }
                    return Some(ev);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent bad XML: {e}"),
            }
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut self.buf))
                .await
                .expect("timed out waiting for the server")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.parser.feed(&self.buf[..n]).unwrap();
        }
    }

    /// The next stanza; panics on timeout, close or stream end.
    pub async fn recv(&mut self) -> Element {
        if let Some(el) = self.skipped.pop_front() {
            return el;
        }
        match self.next_event().await {
            Some(StreamEvent::Stanza(el)) => el,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }

    /// The first stanza that matches; others are kept for later `recv` calls.
    pub async fn recv_until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(pos) = self.skipped.iter().position(&pred) {
            return self.skipped.remove(pos).unwrap();
        }
        loop {
            let el = match self.next_event().await {
                Some(StreamEvent::Stanza(el)) => el,
                other => panic!("expected a stanza, got {other:?}"),
            };
            if pred(&el) {
                return el;
            }
            self.skipped.push_back(el);
        }
    }

    /// Asserts that nothing arrives for `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        if let Ok(ev) = tokio::time::timeout(dur, self.next_event()).await {
            panic!("expected silence, got {ev:?}");
        }
    }

    /// Asserts that no stanza other than presence arrives for `dur`.
    pub async fn expect_silence_except_presence(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                Err(_) => return,
                Ok(Some(StreamEvent::Stanza(e))) if e.name == "presence" => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until a stream error; returns its condition. Panics if none arrives.
    pub async fn expect_stream_error(&mut self) -> String {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(el)) if el.name == "error" => {
                    let cond = el
                        .first_element()
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    // The server must close after a stream error.
                    loop {
                        match self.next_event().await {
                            None | Some(StreamEvent::Close) => return cond,
                            Some(_) => {}
                        }
                    }
                }
                Some(StreamEvent::Open(_)) | Some(StreamEvent::Stanza(_)) => {}
                Some(StreamEvent::Close) | None => panic!("closed without a stream error"),
            }
        }
    }

    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// Sends an iq (its `id` is set here) and waits for the matching result or error.
    pub async fn iq(&mut self, iq_without_id: &str) -> Element {
        let id = self.new_id();
        let xml = iq_without_id.replacen("<iq ", &format!("<iq id='{id}' "), 1);
        self.send(&xml).await;
        self.recv_until(|e| e.name == "iq" && e.attr("id") == Some(id.as_str()))
            .await
    }

    pub async fn starttls(&mut self) {
        self.starttls_with(&tls_connector(None)).await;
    }

    /// STARTTLS with the given connector (e.g. one that keeps session tickets).
    pub async fn starttls_with(&mut self, connector: &tokio_rustls::TlsConnector) {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.recv().await;
        assert_eq!(proceed.name, "proceed");
        let ClientIo::Plain(tcp) = std::mem::replace(&mut self.io, ClientIo::Taken) else {
            panic!("STARTTLS on a connection that is not plain TCP");
        };
        let tls = connector
            .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
            .await
            .unwrap();
        let (exp, ep) = bindings(tls.get_ref().1);
        self.tls_exporter = exp;
        self.end_point = ep;
        self.io = ClientIo::Tls(Box::new(tls));
        self.parser.reset();
    }

    /// Whether the TLS handshake was full or resumed; `None` without TLS.
    pub fn tls_handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        match &self.io {
            ClientIo::Tls(tls) => tls.get_ref().1.handshake_kind(),
            _ => None,
        }
    }

    /// Runs SASL; `Ok(())` on success (stream restarted), `Err(condition)` on failure.
    pub async fn authenticate(&mut self, node: &str, opts: &LoginOptions) -> Result<(), String> {
        let (name, hash, gs2, cb) = match opts.mech {
            Mech::Plain => ("PLAIN", None, String::new(), Vec::new()),
            Mech::ScramSha256 => (
                "SCRAM-SHA-256",
                Some(scram::Hash::Sha256),
                "n,".into(),
                vec![],
            ),
            Mech::ScramSha1 => ("SCRAM-SHA-1", Some(scram::Hash::Sha1), "n,".into(), vec![]),
            Mech::ScramSha256Plus(t) => {
                let (n, d) = self.cb(t);
                (
                    "SCRAM-SHA-256-PLUS",
                    Some(scram::Hash::Sha256),
                    format!("p={n},"),
                    d,
                )
            }
            Mech::ScramSha1Plus(t) => {
                let (n, d) = self.cb(t);
                (
                    "SCRAM-SHA-1-PLUS",
                    Some(scram::Hash::Sha1),
                    format!("p={n},"),
                    d,
                )
            }
        };
        let authz = opts
            .authzid
            .clone()
            .map(|a| format!("a={a}"))
            .unwrap_or_default();
        let gs2 = opts
            .gs2_override
            .clone()
            .unwrap_or(format!("{gs2}{authz},"));
        match hash {
            None => {
                let msg = format!(
                    "{}\0{node}\0{}",
                    opts.authzid.clone().unwrap_or_default(),
                    opts.password
                );
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{name}'>{}</auth>",
                    B64.encode(msg)
                ))
                .await;
                let reply = self.recv().await;
                sasl_outcome(&reply)?;
            }
            Some(hash) => {
                let mut client = scram::ScramClient::new(hash, node, &opts.password, &gs2, cb);
                self.send(&format!(
                    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{name}'>{}</auth>",
                    B64.encode(client.client_first())
                ))
                .await;
                let challenge = self.recv().await;
                sasl_outcome(&challenge)?;
                assert_eq!(challenge.name, "challenge");
                let server_first = B64.decode(challenge.text()).unwrap();
                let fin = client.client_final(&server_first);
                self.send(&format!(
                    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                    B64.encode(fin)
                ))
                .await;
                let success = self.recv().await;
                sasl_outcome(&success)?;
                assert_eq!(success.name, "success");
                let server_final = B64.decode(success.text()).unwrap();
                assert!(
                    client.verify_server_final(&server_final),
                    "server signature invalid"
                );
            }
        }
        self.parser.reset();
        Ok(())
    }

    pub fn cb(&self, t: CbType) -> (&'static str, Vec<u8>) {
        match t {
            CbType::TlsExporter => ("tls-exporter", self.tls_exporter.clone().unwrap()),
            CbType::TlsServerEndPoint => ("tls-server-end-point", self.end_point.clone().unwrap()),
        }
    }

    pub async fn bind(&mut self, resource: Option<&str>) -> Result<String, Element> {
        let body = match resource {
            Some(r) => format!("<resource>{r}</resource>"),
            None => String::new(),
        };
        let reply = self
            .iq(&format!(
                "<iq type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{body}</bind></iq>"
            ))
            .await;
        if reply.attr("type") != Some("result") {
            return Err(reply);
        }
        let jid = reply
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.child_text("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .unwrap();
        self.jid = jid.clone();
        Ok(jid)
    }

    /// Full login; `Err(condition)` if SASL fails.
    pub async fn login_opts(
        addr: SocketAddr,
        node: &str,
        opts: LoginOptions,
    ) -> Result<Client, String> {
        let domain = opts.domain.clone().unwrap_or_else(|| DOMAIN.to_string());
        let mut c = if opts.direct_tls {
            let mut c = Client::connect_direct_tls(addr).await;
            c.domain = domain;
            c
        } else {
            let mut c = Client::connect(addr).await;
            c.domain = domain;
            c.open_stream().await;
            c.starttls().await;
            c
        };
        c.open_stream().await;
        c.authenticate(node, &opts).await?;
        c.open_stream().await;
        c.bind(opts.resource.as_deref())
            .await
            .map_err(|e| format!("bind failed: {e:?}"))?;
        Ok(c)
    }

    pub async fn login(addr: SocketAddr, node: &str, password: &str, resource: &str) -> Client {
        Client::login_opts(
            addr,
            node,
            LoginOptions {
                password: password.into(),
                resource: Some(resource.into()),
                ..LoginOptions::default()
            },
        )
        .await
        .unwrap()
    }

    /// Sends initial presence and consumes the reflected copy.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        let me = self.jid.clone();
        self.recv_until(|e| e.name == "presence" && e.attr("from") == Some(me.as_str()))
            .await;
    }

    /// Logs in up to SASL success and the restarted stream, without binding a resource
    /// (for XEP-0198 resumption).
    pub async fn authenticated(addr: SocketAddr, node: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.open_stream().await;
        c.starttls().await;
        c.open_stream().await;
        c.authenticate(node, &LoginOptions::default())
            .await
            .unwrap();
        c.open_stream().await;
        c
    }

    /// Drops the connection abruptly: a TCP reset, no TLS close, no stream close (a phone
    /// losing its network).
    pub fn drop_connection(self) {
        let tcp = match &self.io {
            ClientIo::Plain(tcp) => Some(tcp),
            ClientIo::Tls(tls) => Some(tls.get_ref().0),
            ClientIo::Taken => None,
        };
        if let Some(tcp) = tcp {
            tcp.set_zero_linger().unwrap();
        }
    }

    pub async fn close(mut self) {
        self.send("</stream:stream>").await;
        loop {
            match self.next_event().await {
                None | Some(StreamEvent::Close) => return,
                Some(_) => {}
            }
        }
    }
}

fn sasl_outcome(el: &Element) -> Result<(), String> {
    if el.name == "failure" {
        return Err(el
            .first_element()
            .map(|c| c.name.clone())
            .unwrap_or_default());
    }
    Ok(())
}

fn bindings(conn: &rustls::ClientConnection) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut exp = vec![0u8; 32];
    let exp = conn
        .export_keying_material(&mut exp, b"EXPORTER-Channel-Binding", None)
        .ok()
        .map(|e| e.to_vec());
    let ep = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| sha2::Sha256::digest(c.as_ref()).to_vec());
    (exp, ep)
}

/// Runs a slixmpp scenario (`tests/interop/<script>`, Debian's python3-slixmpp) against
/// `server`'s STARTTLS port with the accounts' password `password`; returns its output
/// after checking that it succeeded.
pub async fn run_slixmpp(server: &TestServer, script: &str) -> String {
    // Debian's python3-slixmpp belongs to /usr/bin/python3; the python3 first on PATH may
    // be another interpreter.
    let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let port = server.starttls_addr().port().to_string();
    let output = tokio::process::Command::new("/usr/bin/python3")
        .args([path.as_str(), "127.0.0.1", &port, "localhost", "password"])
        .output()
        .await
        .expect("run /usr/bin/python3 (install python3-slixmpp: see README)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "slixmpp scenario {script} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}
