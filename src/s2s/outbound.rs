//! The initiating side: one task per (local, remote) pair that connects, secures and
//! authenticates a stream, then writes queued stanzas until it is idle or fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::{Instrument, debug, info, info_span, warn};

use super::conn::{Conn, DIALBACK, Ending, initial_header, limits};
use super::{Pair, S2s, bounce};
use crate::context::Context;
use crate::net::io::MaybeTls;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, StreamEvent, ns};

/// Stanzas written in one go before the socket is flushed.
const WRITE_BATCH: usize = 64;

/// Why a remote domain could not be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// DNS knows no server for the domain.
    NotFound,
    /// No server answered in time (or every connection attempt failed).
    Timeout,
    /// A server answered but the stream could not be secured or authenticated.
    Refused(String),
}

impl Failure {
    /// The bounce condition (RFC 6120 §8.3.3.15 and §8.3.3.16).
    pub fn stanza_error(&self) -> StanzaError {
        match self {
            Failure::NotFound => StanzaError::remote_server_not_found(),
            Failure::Timeout => StanzaError::new(ErrorType::Wait, "remote-server-timeout"),
            Failure::Refused(why) => {
                StanzaError::new(ErrorType::Wait, "remote-server-timeout").with_text(why.clone())
            }
        }
    }
}

/// How the outbound stream was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with our certificate (XEP-0178).
    SaslExternal,
    /// Server Dialback (XEP-0220).
    Dialback,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::SaslExternal => "SASL EXTERNAL",
            AuthMethod::Dialback => "dialback",
        }
    }
}

/// A connected stream after TLS, with the features of the current stream.
pub(crate) struct Opened {
    pub stream_id: String,
    pub features: Element,
}

/// Finds, connects to and secures a server of `remote`: every DNS target in order, each of
/// its addresses with the connect timeout.
pub(crate) async fn open(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
) -> Result<(Conn, Opened), Failure> {
    let targets = crate::dns::targets(s2s.resolver.as_ref(), &s2s.config.s2s.routes, remote)
        .await
        .map_err(|e| {
            debug!(error = %e, "resolving failed");
            Failure::NotFound
        })?;
    let connect_timeout = Duration::from_secs(s2s.config.s2s.connect_timeout_secs);
    let mut any_address = false;
    let mut last = Failure::NotFound;
    for target in targets {
        let ips = match s2s.resolver.ips(&target.host).await {
            Ok(ips) => ips,
            Err(e) => {
                debug!(host = %target.host, error = %e, "address lookup failed");
                continue;
            }
        };
        for ip in ips {
            any_address = true;
            let addr = std::net::SocketAddr::new(ip, target.port);
            let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    debug!(%addr, error = %e, "connect failed");
                    last = Failure::Timeout;
                    continue;
                }
                Err(_) => {
                    debug!(%addr, "connect timed out");
                    last = Failure::Timeout;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match secure(s2s, local, remote, tcp, target.direct_tls).await {
                Ok(opened) => {
                    debug!(%addr, direct_tls = target.direct_tls, "connected");
                    return Ok(opened);
                }
                Err(f) => {
                    debug!(%addr, failure = ?f, "stream setup failed; trying the next target");
                    last = f;
                }
            }
        }
    }
    if !any_address {
        return Err(Failure::NotFound);
    }
    Err(last)
}

fn refused(why: &str) -> impl Fn(Ending) -> Failure + '_ {
    move |e| Failure::Refused(format!("{why}: {e:?}"))
}

/// Opens a stream, upgrades it with STARTTLS (or starts with TLS), and returns the
/// features of the secured stream.
async fn secure(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    tcp: TcpStream,
    direct_tls: bool,
) -> Result<(Conn, Opened), Failure> {
    let mut conn = Conn::new(MaybeTls::Plain(tcp), limits(&s2s.config));
    if direct_tls {
        tls_connect(s2s, &mut conn, local, remote, true).await?;
    }
    loop {
        let opened = open_stream(&mut conn, local, remote).await?;
        if !conn.io.is_tls() {
            if opened.features.has_child("starttls", ns::TLS) {
                conn.send(&Element::new("starttls", ns::TLS))
                    .await
                    .map_err(refused("starttls"))?;
                let reply = conn.next_element().await.map_err(refused("starttls"))?;
                if !reply.is("proceed", ns::TLS) {
                    return Err(Failure::Refused("STARTTLS refused".into()));
                }
                tls_connect(s2s, &mut conn, local, remote, false).await?;
                continue;
            }
            if s2s.config.s2s.require_encryption {
                return Err(Failure::Refused("the server offers no TLS".into()));
            }
            return Ok((conn, opened));
        }
        if let Err(e) = s2s.trust.verify(&conn.io.peer_certificates(), remote) {
            if s2s.config.s2s.require_valid_certificates {
                return Err(Failure::Refused(format!("server certificate: {e}")));
            }
            debug!(error = %e, "server certificate not valid; relying on dialback/DNS");
        }
        return Ok((conn, opened));
    }
}

async fn tls_connect(
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    local: &str,
    remote: &str,
    direct_tls: bool,
) -> Result<(), Failure> {
    let MaybeTls::Plain(tcp) = std::mem::replace(&mut conn.io, MaybeTls::Upgrading) else {
        return Err(Failure::Refused("TLS on a non-plain connection".into()));
    };
    let name = ServerName::try_from(remote.to_string())
        .map_err(|_| Failure::Refused("remote domain is not a DNS name".into()))?;
    let connector = tokio_rustls::TlsConnector::from(s2s.client_config(local, direct_tls)?);
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::Refused(format!("TLS handshake: {e}")))?;
    conn.io = MaybeTls::ClientTls(Box::new(tls));
    conn.parser.reset();
    Ok(())
}

/// Sends our header and reads the peer's header and features.
async fn open_stream(conn: &mut Conn, local: &str, remote: &str) -> Result<Opened, Failure> {
    conn.parser.reset();
    conn.send_raw(&initial_header(local, remote))
        .await
        .map_err(refused("stream"))?;
    conn.header_sent = true;
    let header = match conn.next_event().await.map_err(refused("stream"))? {
        StreamEvent::Open(h) => h,
        _ => return Err(Failure::Refused("no stream header".into())),
    };
    if header.default_ns.as_deref() != Some(ns::SERVER) || header.ns != ns::STREAM {
        return Err(Failure::Refused("not a server-to-server stream".into()));
    }
    let features = conn.next_element().await.map_err(refused("features"))?;
    if features.is("error", ns::STREAM) {
        let condition = features
            .first_element()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        return Err(Failure::Refused(format!("stream error {condition}")));
    }
    if !features.is("features", ns::STREAM) {
        return Err(Failure::Refused("no stream features".into()));
    }
    Ok(Opened {
        stream_id: header.id.unwrap_or_default(),
        features,
    })
}

fn offers_external(features: &Element) -> bool {
    features.child("mechanisms", ns::SASL).is_some_and(|m| {
        m.elements()
            .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
    })
}

/// SASL EXTERNAL when offered, dialback otherwise or when EXTERNAL fails (on the same
/// stream: a peer may offer EXTERNAL and then reject our certificate).
async fn authenticate(
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    opened: Opened,
    local: &str,
    remote: &str,
) -> Result<AuthMethod, Failure> {
    if conn.io.is_tls() && offers_external(&opened.features) {
        let auth = Element::new("auth", ns::SASL)
            .with_attr("mechanism", "EXTERNAL")
            .with_text(B64.encode(local));
        conn.send(&auth).await.map_err(refused("SASL"))?;
        let reply = conn.next_element().await.map_err(refused("SASL"))?;
        if reply.is("success", ns::SASL) {
            let restarted = open_stream(conn, local, remote).await?;
            debug!(features = ?restarted.features.elements().map(|e| e.name.as_str()).collect::<Vec<_>>(), "SASL EXTERNAL succeeded");
            return Ok(AuthMethod::SaslExternal);
        }
        if !reply.is("failure", ns::SASL) {
            return Err(Failure::Refused(format!(
                "unexpected <{}/> during SASL",
                reply.name
            )));
        }
        debug!("SASL EXTERNAL refused; trying dialback");
    }
    let key = s2s.secret.key(remote, local, &opened.stream_id);
    conn.send(&super::dialback::result_element(local, remote).with_text(key))
        .await
        .map_err(refused("dialback"))?;
    loop {
        let el = conn.next_element().await.map_err(refused("dialback"))?;
        if el.is("result", DIALBACK)
            && el.attr("from") == Some(remote)
            && el.attr("to") == Some(local)
        {
            return match el.attr("type") {
                Some("valid") => Ok(AuthMethod::Dialback),
                other => Err(Failure::Refused(format!(
                    "dialback answered {}",
                    other.unwrap_or("nothing")
                ))),
            };
        }
        if el.is("error", ns::STREAM) {
            let condition = el
                .first_element()
                .map(|c| c.name.clone())
                .unwrap_or_default();
            return Err(Failure::Refused(format!("stream error {condition}")));
        }
    }
}

async fn connect_and_auth(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
) -> Result<(Conn, AuthMethod), Failure> {
    let (mut conn, opened) = open(s2s, local, remote).await?;
    let method = authenticate(s2s, &mut conn, opened, local, remote).await?;
    Ok((conn, method))
}

/// The task of one outbound pair; see the module docs.
pub(crate) async fn run(
    ctx: Arc<Context>,
    s2s: Arc<S2s>,
    local: String,
    remote: String,
    id: u64,
    rx: mpsc::Receiver<crate::xml::Element>,
) {
    let span = info_span!("s2s_out", %local, %remote, id);
    run_inner(ctx, s2s, (local, remote), id, rx)
        .instrument(span)
        .await
}

async fn run_inner(
    ctx: Arc<Context>,
    s2s: Arc<S2s>,
    pair: Pair,
    id: u64,
    mut rx: mpsc::Receiver<Element>,
) {
    let (local, remote) = (&pair.0, &pair.1);
    let started = Instant::now();
    let handshake = Duration::from_secs(s2s.config.limits.handshake_timeout_secs);
    let shutdown = s2s.shutdown.clone();
    let result = tokio::select! {
        r = tokio::time::timeout(handshake, connect_and_auth(&s2s, local, remote)) => {
            r.unwrap_or(Err(Failure::Timeout))
        }
        _ = shutdown.cancelled() => Err(Failure::Timeout),
    };
    let (mut conn, method) = match result {
        Ok(ok) => ok,
        Err(failure) => {
            warn!(
                ?failure,
                "remote domain unreachable; bouncing queued stanzas"
            );
            s2s.record_failure(&pair, failure.clone());
            s2s.remove_route(&pair, id);
            rx.close();
            while let Ok(stanza) = rx.try_recv() {
                bounce(&ctx, &stanza, &failure).await;
            }
            return;
        }
    };
    let setup = started.elapsed();
    info!(
        method = method.name(),
        setup_ms = setup.as_millis() as u64,
        "outbound stream established"
    );
    s2s.record_success(&pair, method, setup);
    let mut unsent = Vec::new();
    let ending = established(&s2s, &mut conn, &mut rx, &mut unsent).await;
    debug!(?ending, "outbound stream ending");
    s2s.remove_route(&pair, id);
    rx.close();
    while let Ok(stanza) = rx.try_recv() {
        unsent.push(stanza);
    }
    conn.finish(ending, local).await;
    if shutdown.is_cancelled() {
        // Never to be sent: their senders hear so rather than losing them silently.
        for stanza in &unsent {
            bounce(&ctx, stanza, &Failure::Timeout).await;
        }
        return;
    }
    // Stanzas that were queued as the stream ended go out on a new one.
    for stanza in unsent {
        s2s.send(&ctx, remote, stanza).await;
    }
}

async fn established(
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    rx: &mut mpsc::Receiver<Element>,
    unsent: &mut Vec<Element>,
) -> Ending {
    let idle = Duration::from_secs(s2s.config.s2s.idle_timeout_secs);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let shutdown = s2s.shutdown.clone();
    let mut batch: Vec<Element> = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ending::Close,
            stanza = rx.recv() => {
                let Some(stanza) = stanza else { return Ending::Close };
                batch.push(stanza);
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                for s in &batch {
                    conn.queue(s);
                }
                if let Err(e) = conn.flush().await {
                    unsent.append(&mut batch);
                    return e;
                }
                batch.clear();
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            read = conn.read_some() => {
                if let Err(e) = read {
                    return e;
                }
                loop {
                    match conn.parser.next_event() {
                        Ok(None) => break,
                        Ok(Some(StreamEvent::Close)) => return Ending::PeerClosed,
                        Ok(Some(StreamEvent::Stanza(el))) if el.is("error", ns::STREAM) => {
                            warn!(condition = ?el.first_element().map(|c| c.name.clone()), "stream error from the remote server");
                            return Ending::Gone;
                        }
                        // Nothing else is expected on our outgoing stream.
                        Ok(Some(StreamEvent::Stanza(el))) => debug!(name = %el.name, "ignored element on outbound stream"),
                        Ok(Some(StreamEvent::Open(_))) => {
                            return Ending::from(crate::stream::StreamErrorCondition::NotWellFormed);
                        }
                        Err(e) => return super::conn::xml_ending(e),
                    }
                }
            }
            _ = &mut idle_timer => {
                debug!("idle; closing");
                return Ending::Close;
            }
        }
    }
}
