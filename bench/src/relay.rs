//! `xmppd-bench relay`: a deliberately minimal XMPP relay, the floor that a c2s server's
//! per-message cost is measured against (issue 16: "TLS, find `to`, forward bytes").
//!
//! It is a benchmark tool, not a server. It speaks exactly as much XMPP as xmppd-bench's
//! own client needs: stream header, STARTTLS (or direct TLS), SASL (SCRAM-SHA-256,
//! SCRAM-SHA-1 or PLAIN, every account sharing the one `--password`), resource binding.
//! After that each top-level stanza is cut out of the stream (no XML tree, no validation,
//! no `from` stamping), its `to` attribute found, and its bytes forwarded unchanged to the
//! session bound to that bare JID; an IQ to the server gets an empty result, anything
//! else to the server (presence, a message) is dropped, as is a stanza for a JID nobody
//! has bound. No storage, no rosters, no presence. tokio + rustls with the same cipher
//! order and ticket settings as xmppd, one task per connection: what any server pays at
//! least. Loopback only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use rand::distr::Alphanumeric;
use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::conn::Res;
use crate::scram::{self, HashKind};
use crate::xml::{self, Frame, Splitter};

/// The relay's own options; the listening address is the global `--host`/`--port`, the
/// accounts' password the global `--password`, and `--direct-tls` makes the listener
/// direct TLS (XEP-0368) instead of STARTTLS.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Certificate chain (PEM), e.g. the one bench/run.sh makes for xmppd.
    #[arg(long)]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The domain served (the accounts' domain).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// SCRAM iteration count announced (the relay derives its keys once at start).
    #[arg(long, default_value_t = 10_000)]
    iterations: u32,
    /// Stanzas queued per session before further ones for it are dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// TLS 1.3 session tickets (two per handshake, as xmppd's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tickets: bool,
}

/// The global options the relay uses.
pub struct RelayCommon<'a> {
    pub host: &'a str,
    pub port: u16,
    pub direct_tls: bool,
    pub password: &'a str,
    pub handshake_timeout: Duration,
}

const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// A session's input buffer is given back above this once nothing is pending in it.
const KEEP_BUFFER: usize = 4096;
/// Queued stanzas appended into one write at most (then the socket is written).
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// SCRAM verifiers for one hash, derived once from the shared password.
struct ScramKeys {
    salt_b64: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

struct Route {
    /// Which binding this is: a session removes its route only if it is still its own.
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

struct Shared {
    domain: String,
    acceptor: TlsAcceptor,
    direct_tls: bool,
    handshake_timeout: Duration,
    password: String,
    iterations: u32,
    sha1: ScramKeys,
    sha256: ScramKeys,
    queue: usize,
    /// Bare JID → the session bound to it (the newest binding wins).
    sessions: RwLock<HashMap<Vec<u8>, Route>>,
    next_id: AtomicU64,
    /// Stanzas not forwarded: no session for `to`, or its queue full.
    dropped: AtomicU64,
}

fn tls_config(a: &RelayArgs, direct_tls: bool) -> Res<ServerConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // The same suite preference as xmppd's (AES-128-GCM first, server order), so that
    // each record costs the relay what it costs xmppd.
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    let certs = CertificateDer::pem_file_iter(&a.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", a.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&a.key)
        .map_err(|e| format!("key {}: {e}", a.key.display()))?;
    let mut sc = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    sc.ignore_client_order = true;
    sc.max_early_data_size = 0;
    if a.tickets {
        sc.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("ticketer: {e}"))?;
        sc.send_tls13_tickets = 2;
    } else {
        sc.send_tls13_tickets = 0;
        sc.session_storage = Arc::new(NoServerSessionStorage {});
    }
    if direct_tls {
        sc.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(sc)
}

fn scram_keys(kind: HashKind, password: &str, iterations: u32) -> ScramKeys {
    let salt: [u8; 16] = rand::rng().random();
    let salted = scram::salted_password(kind, password.as_bytes(), &salt, iterations);
    let (stored_key, server_key) = scram::verifiers(kind, &salted);
    ScramKeys {
        salt_b64: B64.encode(salt),
        stored_key,
        server_key,
    }
}

/// Runs the relay until the process is killed.
pub fn main(c: &RelayCommon<'_>, a: &RelayArgs) -> ExitCode {
    match serve(c, a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppd-bench relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(c: &RelayCommon<'_>, a: &RelayArgs) -> Res<()> {
    if c.password.contains("{i}") {
        return Err("the relay needs one password for every account (no {i})".into());
    }
    if a.domain.is_empty() || a.domain.bytes().any(|b| b"'\"<>&/@ ".contains(&b)) {
        return Err(format!("bad domain {:?}", a.domain).into());
    }
    if a.iterations == 0 || a.queue == 0 {
        return Err("--iterations and --queue must be at least 1".into());
    }
    let nofile = crate::stats::raise_nofile();
    let sh = Arc::new(Shared {
        domain: a.domain.clone(),
        acceptor: TlsAcceptor::from(Arc::new(tls_config(a, c.direct_tls)?)),
        direct_tls: c.direct_tls,
        handshake_timeout: c.handshake_timeout,
        password: c.password.to_owned(),
        iterations: a.iterations,
        sha1: scram_keys(HashKind::Sha1, c.password, a.iterations),
        sha256: scram_keys(HashKind::Sha256, c.password, a.iterations),
        queue: a.queue,
        sessions: RwLock::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
    });
    // The same runtime as `xmppd serve`: multi-threaded, one worker per core it may use.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (host, port) = (c.host.to_owned(), c.port);
    rt.block_on(async move {
        let addr = crate::resolve(&host, port).await?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listen on {addr}: {e}"))?;
        eprintln!(
            "relay: listening on {addr} ({}), domain {}, open-files limit {nofile}",
            if sh.direct_tls {
                "direct TLS"
            } else {
                "STARTTLS"
            },
            sh.domain
        );
        tokio::spawn(report_drops(sh.clone()));
        accept_loop(listener, sh).await
    })
}

/// Says on stderr when stanzas could not be forwarded (the bench would count them lost).
async fn report_drops(sh: Arc<Shared>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = sh.dropped.load(Ordering::Relaxed);
        if now != seen {
            eprintln!("relay: {} stanzas dropped so far", now);
            seen = now;
        }
    }
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>) -> Res<()> {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let sh = sh.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(tcp, &sh).await {
                        // Disconnects are normal at the end of a run; say why at least.
                        if !e.0.contains("closed") {
                            eprintln!("relay: {peer}: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                eprintln!("relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

thread_local! {
    /// One read buffer per worker thread: a connection keeps only what is not yet cut
    /// into stanzas, so an idle session holds no read buffer of its own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

/// Reads once from `io` and appends what came to `rd`; `Ok(0)` at end of stream.
/// Cancel-safe: nothing is held between polls.
fn read_into<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    rd: &'a mut Splitter,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        SCRATCH.with(|cell| {
            let Ok(mut scratch) = cell.try_borrow_mut() else {
                // Only a nested read on the same thread could get here; tokio never does.
                return Poll::Ready(Err(io::Error::other("read buffer busy")));
            };
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let got = buf.filled();
                    Poll::Ready(rd.push(got).map(|()| got.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
}

/// The next frame, reading as needed.
async fn next_frame<S: AsyncRead + Unpin>(io: &mut S, rd: &mut Splitter) -> Res<Frame> {
    loop {
        if let Some(f) = rd.next_frame()? {
            return Ok(f);
        }
        if read_into(io, rd).await? == 0 {
            return Err("connection closed by the client".into());
        }
    }
}

/// Waits for the client's stream header.
async fn expect_header<S: AsyncRead + Unpin>(io: &mut S, rd: &mut Splitter) -> Res<()> {
    match next_frame(io, rd).await? {
        Frame::Header(_) => Ok(()),
        _ => Err("expected a stream header".into()),
    }
}

/// The next top-level element's bytes (negotiation only: copied out, allocation is fine).
async fn expect_element<S: AsyncRead + Unpin>(io: &mut S, rd: &mut Splitter) -> Res<Vec<u8>> {
    match next_frame(io, rd).await? {
        Frame::Element(r) => Ok(rd.bytes(r).to_vec()),
        Frame::Close => Err("connection closed by the client".into()),
        Frame::Header(_) => Err("unexpected stream header".into()),
    }
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> Res<()> {
    io.write_all(bytes).await?;
    io.flush().await?;
    Ok(())
}

/// Our stream header followed by `features`.
fn header(domain: &str, features: &str) -> Vec<u8> {
    let id: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='{id}' from='{domain}' \
         version='1.0' xml:lang='en'><stream:features>{features}</stream:features>"
    )
    .into_bytes()
}

async fn connection(tcp: TcpStream, sh: &Shared) -> Res<()> {
    tcp.set_nodelay(true)?;
    // Start small: the buffer grows to what a read brings and is given back when idle.
    let mut rd = Splitter::with_capacity(0);
    let negotiated = tokio::time::timeout(sh.handshake_timeout, negotiate(tcp, &mut rd, sh)).await;
    let (mut tls, bare) = match negotiated {
        Ok(r) => r?,
        Err(_) => return Err("login timed out".into()),
    };
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(sh.queue);
    sh.sessions
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(bare.clone(), Route { id, tx });
    let r = session(&mut tls, &mut rd, sh, rx).await;
    let mut table = sh.sessions.write().unwrap_or_else(|e| e.into_inner());
    if table.get(&bare).is_some_and(|route| route.id == id) {
        table.remove(&bare);
    }
    r
}

/// STARTTLS (unless direct TLS), SASL, resource binding; returns the TLS stream and the
/// bound bare JID.
async fn negotiate(
    mut tcp: TcpStream,
    rd: &mut Splitter,
    sh: &Shared,
) -> Res<(TlsStream<TcpStream>, Vec<u8>)> {
    if !sh.direct_tls {
        expect_header(&mut tcp, rd).await?;
        send(
            &mut tcp,
            &header(
                &sh.domain,
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
            ),
        )
        .await?;
        let el = expect_element(&mut tcp, rd).await?;
        if xml::local_name(&el) != b"starttls" {
            return Err("expected <starttls/>".into());
        }
        send(
            &mut tcp,
            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
        // The client sends nothing more before the handshake.
        rd.reset();
    }
    let mut tls = sh
        .acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    expect_header(&mut tls, rd).await?;
    let mechs = format!(
        "<mechanisms xmlns='{SASL_NS}'><mechanism>SCRAM-SHA-256</mechanism>\
         <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>"
    );
    send(&mut tls, &header(&sh.domain, &mechs)).await?;
    let user = authenticate(&mut tls, rd, sh).await?;
    rd.reset();
    expect_header(&mut tls, rd).await?;
    send(
        &mut tls,
        &header(
            &sh.domain,
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
        ),
    )
    .await?;
    let el = expect_element(&mut tls, rd).await?;
    if xml::name(&el) != b"iq" || !xml::has_child(&el, b"bind") {
        return Err("expected a resource binding".into());
    }
    let resource = match xml::child_text(&el, b"resource") {
        Some(r) if !r.is_empty() => String::from_utf8_lossy(&xml::unescape(r)).into_owned(),
        _ => "relay".to_owned(),
    };
    let bare = format!("{user}@{}", sh.domain);
    let mut reply = b"<iq type='result'".to_vec();
    push_id(&mut reply, &el);
    reply.extend_from_slice(b"><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>");
    xml::escape_into(&mut reply, &format!("{bare}/{resource}"));
    reply.extend_from_slice(b"</jid></bind></iq>");
    send(&mut tls, &reply).await?;
    Ok((tls, bare.into_bytes()))
}

/// Appends ` id="…"` with the raw value of `el`'s id (already escaped for a quote that
/// it does not contain), if it has one.
fn push_id(out: &mut Vec<u8>, el: &[u8]) {
    if let Some(id) = xml::attr(el, b"id") {
        let q = if id.contains(&b'"') { b'\'' } else { b'"' };
        out.extend_from_slice(b" id=");
        out.push(q);
        out.extend_from_slice(id);
        out.push(q);
    }
}

/// The decoded text payload of a SASL element.
fn sasl_payload(el: &[u8]) -> Res<Vec<u8>> {
    let text = el
        .iter()
        .position(|&c| c == b'>')
        .filter(|&gt| gt == 0 || el[gt - 1] != b'/')
        .map(|gt| {
            let body = &el[gt + 1..];
            let end = body.iter().position(|&c| c == b'<').unwrap_or(body.len());
            &body[..end]
        })
        .unwrap_or(b"");
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if text.is_empty() || text == b"=" {
        return Ok(Vec::new());
    }
    B64.decode(&text)
        .map_err(|e| format!("SASL payload base64: {e}").into())
}

async fn sasl_failure<S: AsyncWrite + Unpin>(io: &mut S, condition: &str) -> Res<String> {
    let el = format!("<failure xmlns='{SASL_NS}'><{condition}/></failure>");
    send(io, el.as_bytes()).await?;
    Err(format!("SASL failed: {condition}").into())
}

/// One SASL exchange; returns the authenticated username.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    rd: &mut Splitter,
    sh: &Shared,
) -> Res<String> {
    let el = expect_element(io, rd).await?;
    if xml::local_name(&el) != b"auth" {
        return sasl_failure(io, "malformed-request").await;
    }
    let kind = match xml::attr(&el, b"mechanism") {
        Some(b"SCRAM-SHA-256") => HashKind::Sha256,
        Some(b"SCRAM-SHA-1") => HashKind::Sha1,
        Some(b"PLAIN") => {
            let raw = sasl_payload(&el)?;
            let mut parts = raw.split(|&c| c == 0);
            let (_authzid, user, pass) = (parts.next(), parts.next(), parts.next());
            return match (user, pass) {
                (Some(u), Some(p)) if !u.is_empty() && p == sh.password.as_bytes() => {
                    send(io, format!("<success xmlns='{SASL_NS}'/>").as_bytes()).await?;
                    Ok(String::from_utf8_lossy(u).into_owned())
                }
                _ => sasl_failure(io, "not-authorized").await,
            };
        }
        _ => return sasl_failure(io, "invalid-mechanism").await,
    };
    let keys = match kind {
        HashKind::Sha1 => &sh.sha1,
        HashKind::Sha256 => &sh.sha256,
    };
    let client_first = String::from_utf8(sasl_payload(&el)?).map_err(|_| "SASL not UTF-8")?;
    let Some(parsed) = parse_client_first(&client_first) else {
        return sasl_failure(io, "malformed-request").await;
    };
    let nonce_ext: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let nonce = format!("{}{nonce_ext}", parsed.nonce);
    let server_first = format!("r={nonce},s={},i={}", keys.salt_b64, sh.iterations);
    send(
        io,
        format!(
            "<challenge xmlns='{SASL_NS}'>{}</challenge>",
            B64.encode(&server_first)
        )
        .as_bytes(),
    )
    .await?;
    let el = expect_element(io, rd).await?;
    if xml::local_name(&el) != b"response" {
        return sasl_failure(io, "malformed-request").await;
    }
    let client_final = String::from_utf8(sasl_payload(&el)?).map_err(|_| "SASL not UTF-8")?;
    let Some((without_proof, proof)) = client_final.rsplit_once(",p=") else {
        return sasl_failure(io, "malformed-request").await;
    };
    let mut fields = without_proof.split(',');
    let channel = fields.next().and_then(|f| f.strip_prefix("c="));
    let echoed = fields.next().and_then(|f| f.strip_prefix("r="));
    if channel != Some(&B64.encode(parsed.gs2_header)) || echoed != Some(nonce.as_str()) {
        return sasl_failure(io, "not-authorized").await;
    }
    let Ok(proof) = B64.decode(proof) else {
        return sasl_failure(io, "malformed-request").await;
    };
    let auth_message = format!("{},{server_first},{without_proof}", parsed.bare);
    let client_sig = scram::hmac(kind, &keys.stored_key, auth_message.as_bytes());
    if proof.len() != client_sig.len() {
        return sasl_failure(io, "not-authorized").await;
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_sig).map(|(a, b)| a ^ b).collect();
    if scram::hash(kind, &client_key) != keys.stored_key {
        return sasl_failure(io, "not-authorized").await;
    }
    let server_sig = scram::hmac(kind, &keys.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", B64.encode(server_sig));
    send(
        io,
        format!(
            "<success xmlns='{SASL_NS}'>{}</success>",
            B64.encode(server_final)
        )
        .as_bytes(),
    )
    .await?;
    Ok(parsed.user)
}

struct ClientFirst<'a> {
    /// `n,,` or `y,,` (no channel binding; an authzid is refused).
    gs2_header: &'a str,
    /// client-first-message-bare.
    bare: &'a str,
    user: String,
    nonce: &'a str,
}

fn parse_client_first(msg: &str) -> Option<ClientFirst<'_>> {
    let gs2_len = if msg.starts_with("n,,") || msg.starts_with("y,,") {
        3
    } else {
        return None;
    };
    let (gs2_header, bare) = msg.split_at(gs2_len);
    let mut user = None;
    let mut nonce = None;
    for part in bare.split(',') {
        if let Some(v) = part.strip_prefix("n=") {
            user = Some(v.replace("=2C", ",").replace("=3D", "="));
        } else if let Some(v) = part.strip_prefix("r=") {
            nonce = Some(v);
        } else if part.starts_with("m=") {
            return None;
        }
    }
    let user = user.filter(|u| !u.is_empty() && !u.contains(['@', '/', '\'', '"', '<', '&']))?;
    Some(ClientFirst {
        gs2_header,
        bare,
        user,
        nonce: nonce.filter(|n| !n.is_empty())?,
    })
}

/// The bound session: forwards the client's stanzas by `to`, writes what others forward
/// to it, answers its IQs to the server.
async fn session(
    io: &mut TlsStream<TcpStream>,
    rd: &mut Splitter,
    sh: &Shared,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Res<()> {
    let mut out: Vec<u8> = Vec::new();
    loop {
        while let Some(f) = rd.next_frame()? {
            match f {
                Frame::Element(r) => route(rd.bytes(r), sh, &mut out),
                Frame::Close => {
                    out.extend_from_slice(b"</stream:stream>");
                    send(io, &out).await?;
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                    return Ok(());
                }
                Frame::Header(_) => return Err("unexpected stream header".into()),
            }
        }
        rd.shrink_idle(KEEP_BUFFER);
        if !out.is_empty() {
            send(io, &out).await?;
            out.clear();
            if out.capacity() > WRITE_BATCH_BYTES {
                out = Vec::new();
            }
        }
        tokio::select! {
            m = rx.recv() => {
                // None: a newer binding of this JID replaced this session.
                let Some(m) = m else { return Ok(()) };
                out.extend_from_slice(&m);
                // Everything already queued goes out in the same write.
                while out.len() < WRITE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(m) => out.extend_from_slice(&m),
                        Err(_) => break,
                    }
                }
            }
            n = read_into(io, rd) => {
                if n? == 0 {
                    return Err("connection closed by the client".into());
                }
            }
        }
    }
}

/// One stanza from a bound client: to another JID → that session's queue; an IQ
/// request to the server → an empty result in `out`; anything else is dropped.
fn route(el: &[u8], sh: &Shared, out: &mut Vec<u8>) {
    match xml::attr(el, b"to") {
        Some(to) if to != sh.domain.as_bytes() => {
            let bare = to.split(|&c| c == b'/').next().unwrap_or(to);
            let table = sh.sessions.read().unwrap_or_else(|e| e.into_inner());
            let sent = table
                .get(bare)
                .is_some_and(|r| r.tx.try_send(el.to_vec()).is_ok());
            if !sent {
                sh.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            let ty = xml::attr(el, b"type");
            if xml::name(el) == b"iq" && matches!(ty, Some(b"get") | Some(b"set")) {
                out.extend_from_slice(b"<iq type='result'");
                push_id(out, el);
                out.extend_from_slice(b"/>");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_parsing() {
        let p = parse_client_first("n,,n=user1,r=abc").unwrap();
        assert_eq!(p.gs2_header, "n,,");
        assert_eq!(p.bare, "n=user1,r=abc");
        assert_eq!(p.user, "user1");
        assert_eq!(p.nonce, "abc");
        assert_eq!(parse_client_first("n,,n=a=2Cb,r=x").unwrap().user, "a,b");
        assert!(parse_client_first("p=tls-unique,,n=u,r=x").is_none());
        assert!(parse_client_first("n,a=admin,n=u,r=x").is_none());
        assert!(parse_client_first("n,,n=u").is_none());
        assert!(parse_client_first("n,,n=u@x,r=y").is_none());
    }

    #[test]
    fn ids_keep_their_escaping() {
        let mut out = Vec::new();
        push_id(&mut out, b"<iq id='a\"b' type='get'/>");
        assert_eq!(out, b" id='a\"b'");
        out.clear();
        push_id(&mut out, b"<iq id=\"x'y\"/>");
        assert_eq!(out, b" id=\"x'y\"");
    }

    #[test]
    fn sasl_payloads() {
        assert_eq!(
            sasl_payload(b"<auth mechanism='PLAIN'>AHUAcA==</auth>").unwrap(),
            b"\0u\0p"
        );
        assert!(sasl_payload(b"<response xmlns='x'/>").unwrap().is_empty());
    }
}
