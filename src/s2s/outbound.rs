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

use super::{Pair, S2s, bounce};
use crate::context::Context;
use crate::metrics::{Direction, Stream};
use crate::net::Connection as Conn;
use crate::net::io::MaybeTls;
use crate::stream::negotiate::{Action, Negotiator};
use crate::stream::{Ending, ErrorType, StanzaError, StreamKind};
use crate::xml::ns::DIALBACK;
use crate::xml::{Element, ns};

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
    /// The stream-level rules of our stream; this module performs its actions.
    pub neg: Negotiator,
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
    let mut conn = Conn::new(MaybeTls::Plain(tcp), StreamKind::Server, &s2s.config);
    let mut neg = Negotiator::initiating(local, remote, s2s.config.s2s.require_encryption);
    let mut start = if direct_tls {
        tls_connect(s2s, &mut conn, local, remote, true).await?;
        neg.tls_established()
    } else {
        neg.restart()
    };
    loop {
        let features = open_stream(&mut conn, &mut neg, start).await?;
        let opened = Opened { neg, features };
        if !conn.io.is_tls() {
            if opened.features.has_child("starttls", ns::TLS) {
                neg = opened.neg;
                conn.send(&Element::new("starttls", ns::TLS))
                    .await
                    .map_err(refused("starttls"))?;
                let reply = next_element(&mut conn, &mut neg, "starttls").await?;
                if !reply.is("proceed", ns::TLS) {
                    return Err(Failure::Refused("STARTTLS refused".into()));
                }
                tls_connect(s2s, &mut conn, local, remote, false).await?;
                start = neg.tls_established();
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
    conn.restart();
    Ok(())
}

/// Performs `start` (our header) and reads the peer's header and features.
async fn open_stream(
    conn: &mut Conn,
    neg: &mut Negotiator,
    start: Vec<Action>,
) -> Result<Element, Failure> {
    conn.restart();
    for action in start {
        if let Action::SendHeader(h) = action {
            conn.queue_header(&h.from, h.to.as_deref(), h.id.as_deref());
        }
    }
    conn.flush().await.map_err(refused("stream"))?;
    loop {
        let event = conn.next_event().await.map_err(refused("stream"))?;
        if let Some(action) = neg.handle(event).into_iter().next() {
            return match action {
                Action::Features(features) => Ok(features),
                other => Err(refusal(other, "features")),
            };
        }
    }
}

/// The next element the peer sends on our stream, for `why`.
pub(crate) async fn next_element(
    conn: &mut Conn,
    neg: &mut Negotiator,
    why: &str,
) -> Result<Element, Failure> {
    loop {
        let event = conn.next_event().await.map_err(refused(why))?;
        if let Some(action) = neg.handle(event).into_iter().next() {
            return match action {
                Action::Element(el) => Ok(el),
                other => Err(refusal(other, why)),
            };
        }
    }
}

/// Why the stream cannot go on, from a negotiator action other than the expected one.
fn refusal(action: Action, why: &str) -> Failure {
    match action {
        Action::Refuse(reason) => Failure::Refused(reason),
        Action::End(ending) => refused(why)(ending),
        other => Failure::Refused(format!("{why}: unexpected {other:?}")),
    }
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
    opened: &mut Opened,
    local: &str,
    remote: &str,
) -> Result<AuthMethod, Failure> {
    let neg = &mut opened.neg;
    if conn.io.is_tls() && offers_external(&opened.features) {
        let auth = Element::new("auth", ns::SASL)
            .with_attr("mechanism", "EXTERNAL")
            .with_text(B64.encode(local));
        conn.send(&auth).await.map_err(refused("SASL"))?;
        let reply = next_element(conn, neg, "SASL").await?;
        if reply.is("success", ns::SASL) {
            let start = neg.sasl_succeeded(local.to_string());
            let restarted = open_stream(conn, neg, start).await?;
            debug!(features = ?restarted.elements().map(|e| e.name.as_str()).collect::<Vec<_>>(), "SASL EXTERNAL succeeded");
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
    let key = s2s.secret.key(remote, local, neg.stream_id());
    conn.send(&super::dialback::result_element(local, remote).with_text(key))
        .await
        .map_err(refused("dialback"))?;
    loop {
        // A stream error ends this with the negotiator's refusal.
        let el = next_element(conn, neg, "dialback").await?;
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
    }
}

async fn connect_and_auth(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
) -> Result<(Conn, Negotiator, AuthMethod), Failure> {
    let (mut conn, mut opened) = open(s2s, local, remote).await?;
    let method = authenticate(s2s, &mut conn, &mut opened, local, remote).await?;
    Ok((conn, opened.neg, method))
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
    let (mut conn, mut neg, method) = match result {
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
    let counted = ctx.metrics.s2s_connection(true);
    let mut unsent = Vec::new();
    let ending = established(&ctx, &s2s, &mut conn, &mut neg, &mut rx, &mut unsent).await;
    drop(counted);
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
    ctx: &Context,
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    neg: &mut Negotiator,
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
                for s in &batch {
                    ctx.metrics.stanza(Stream::S2s, Direction::Out, &s.name);
                }
                batch.clear();
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            read = conn.read_some() => {
                if let Err(e) = read {
                    return e;
                }
                loop {
                    let event = match conn.parser.next_event() {
                        Ok(None) => break,
                        Ok(Some(event)) => event,
                        Err(e) => return crate::stream::xml_ending(e),
                    };
                    for action in neg.handle(event) {
                        match action {
                            // Nothing else is expected on our outgoing stream.
                            Action::Element(el) => debug!(name = %el.name, "ignored element on outbound stream"),
                            Action::Refuse(why) => {
                                // Their stream error: the stream is over, nothing to answer.
                                warn!(%why, "the remote server ended the stream");
                                return Ending::Gone;
                            }
                            Action::End(ending) => return ending,
                            other => debug!(action = ?other, "ignored on outbound stream"),
                        }
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
