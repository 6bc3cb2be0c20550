//! The receiving side: streams other servers open to us. The sending domain is
//! authenticated with SASL EXTERNAL (its certificate) or dialback (asking its
//! authoritative server); only then are its stanzas routed, and only with a `from` of an
//! authenticated domain and a `to` of one of our vhosts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::outbound::Failure;
use super::{Pair, S2s};
use crate::config::TlsMode;
use crate::context::Context;
use crate::metrics::{Direction, Stream};
use crate::net::Connection as Conn;
use crate::net::io::MaybeTls;
use crate::net::tls::TlsContext;
use crate::router::route_addressed;
use crate::server::Shaper;
use crate::stream::negotiate::{Action, Negotiator, Policy, Role, domain_only};
use crate::stream::{Ending, StreamError, StreamErrorCondition, StreamKind};
use crate::xml::ns::{DIALBACK, DIALBACK_FEATURE};
use crate::xml::{Element, StreamEvent, ns};

/// Dialback verifications one stream may have in flight; more is a flood.
const MAX_PENDING_VERIFICATIONS: usize = 8;

struct Verdict {
    remote: String,
    local: String,
    outcome: Result<bool, Failure>,
}

struct State {
    /// The stream-level rules; this driver performs its actions.
    neg: Negotiator,
    sasl_done: bool,
    /// (remote domain, local domain) pairs authenticated on this stream.
    authed: HashSet<Pair>,
    /// Remote domains this stream counts against their limit of inbound streams.
    counted: Vec<String>,
    pending: usize,
}

enum Flow {
    Continue,
    /// The stream restarts (TLS, SASL): bytes still buffered belong to the old one.
    Restarted,
}

/// Serves one accepted server-to-server connection until it closes.
pub async fn serve(
    ctx: Arc<Context>,
    tls: TlsContext,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: TlsMode,
    conn_id: u64,
    shutdown: CancellationToken,
) {
    let span = info_span!("s2s_in", conn = conn_id, %peer, from = tracing::field::Empty);
    async move {
        let Some(s2s) = ctx.s2s.get().cloned() else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let _counted = ctx.metrics.s2s_connection(false);
        let mut conn = Conn::new(MaybeTls::Plain(tcp), StreamKind::Server, &ctx.config);
        let hosts = ctx.clone();
        let policy = Policy {
            role: Role::ServerIn,
            default_domain: ctx.default_domain(),
            tls_required: s2s.config.s2s.require_encryption,
        };
        let mut st = State {
            neg: Negotiator::new(policy, move |d| hosts.is_hosted_domain(d)),
            sasl_done: false,
            authed: HashSet::new(),
            counted: Vec::new(),
            pending: 0,
        };
        // Everything before the first authenticated domain, TLS handshakes included, must
        // fit in the handshake timeout: silent peers must not keep connection slots.
        let handshake = Duration::from_secs(ctx.config.limits.handshake_timeout_secs);
        let deadline = tokio::time::Instant::now() + handshake;
        if mode == TlsMode::DirectTls {
            let direct = tokio::time::timeout_at(deadline, upgrade(&tls, &mut conn, &mut st, true));
            if !matches!(direct.await, Ok(Ok(()))) {
                debug!("Direct TLS handshake failed or timed out");
                return;
            }
        }
        let ending = run(&ctx, &s2s, &tls, &mut conn, &mut st, deadline, &shutdown).await;
        for remote in &st.counted {
            s2s.inbound_stream_closed(remote);
        }
        let from = st
            .neg
            .domain()
            .map(str::to_string)
            .unwrap_or_else(|| ctx.default_domain());
        conn.finish(ending, &from).await;
        debug!("inbound connection closed");
    }
    .instrument(span)
    .await
}

async fn upgrade(
    tls: &TlsContext,
    conn: &mut Conn,
    st: &mut State,
    direct: bool,
) -> Result<(), Ending> {
    let config = if direct {
        tls.direct_s2s_config()
    } else {
        tls.s2s_starttls_config()
    };
    conn.io.accept_tls(config).await.map_err(|e| {
        debug!(error = %e, "TLS handshake failed");
        Ending::Gone
    })?;
    conn.restart();
    st.neg.tls_established();
    Ok(())
}

async fn run(
    ctx: &Arc<Context>,
    s2s: &Arc<S2s>,
    tls: &TlsContext,
    conn: &mut Conn,
    st: &mut State,
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Ending {
    let (vtx, mut vrx) = mpsc::channel::<Verdict>(MAX_PENDING_VERIFICATIONS);
    let handshake = tokio::time::sleep_until(deadline);
    tokio::pin!(handshake);
    let idle = Duration::from_secs(ctx.config.limits.idle_timeout_secs);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut shaper = Shaper::new(ctx.config.limits.s2s_shaper(), std::time::Instant::now());
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return StreamErrorCondition::SystemShutdown.into(),
            Some(v) = vrx.recv() => {
                st.pending = st.pending.saturating_sub(1);
                let unauthenticated = st.authed.is_empty();
                let answered = verdict(s2s, conn, st, v);
                if let Err(e) = within(unauthenticated, deadline, answered).await {
                    return e;
                }
            }
            read = conn.read_some() => {
                let read_bytes = match read {
                    Ok(n) => n,
                    Err(e) => return e,
                };
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                // A remote domain over its rate is read more slowly (TCP pushes back):
                // bytes are charged per read, stanzas one by one, pausing between them.
                let mut wait = shaper.charge(read_bytes, 0, std::time::Instant::now());
                loop {
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return StreamErrorCondition::SystemShutdown.into(),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    let ev = match conn.parser.next_event() {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break,
                        Err(e) => return crate::stream::xml_ending(e),
                    };
                    let stanzas = usize::from(matches!(ev, StreamEvent::Stanza(_)));
                    wait = shaper.charge(0, stanzas, std::time::Instant::now());
                    let unauthenticated = st.authed.is_empty();
                    let handled = event(ctx, s2s, tls, conn, st, &vtx, ev);
                    match within(unauthenticated, deadline, handled).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Restarted) => break,
                        Err(e) => return e,
                    }
                }
            }
            _ = &mut handshake, if st.authed.is_empty() => {
                return StreamErrorCondition::ConnectionTimeout.into();
            }
            _ = &mut idle_timer => return StreamErrorCondition::ConnectionTimeout.into(),
        }
    }
}

/// Runs `step` (which may write, or run a STARTTLS handshake) within the handshake
/// deadline while no domain is authenticated: the deadline arm of the loop in `run` is not
/// polled meanwhile.
async fn within<T>(
    unauthenticated: bool,
    deadline: tokio::time::Instant,
    step: impl std::future::Future<Output = Result<T, Ending>>,
) -> Result<T, Ending> {
    if !unauthenticated {
        return step.await;
    }
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or_else(|_| Err(StreamErrorCondition::ConnectionTimeout.into()))
}

async fn event(
    ctx: &Arc<Context>,
    s2s: &Arc<S2s>,
    tls: &TlsContext,
    conn: &mut Conn,
    st: &mut State,
    vtx: &mpsc::Sender<Verdict>,
    ev: StreamEvent,
) -> Result<Flow, Ending> {
    for action in st.neg.handle(ev) {
        match action {
            // Queued: it leaves in one write with the features (or the error).
            Action::SendHeader(h) => conn.queue_header(&h.from, h.to.as_deref(), h.id.as_deref()),
            Action::SendFeatures => {
                if let Some(f) = st.neg.peer() {
                    tracing::Span::current().record("from", f);
                }
                let features = features(ctx, s2s, conn, st);
                conn.send(&features).await?;
            }
            Action::StartTls => {
                conn.send(&Element::new("proceed", ns::TLS)).await?;
                upgrade(tls, conn, st, false).await?;
                return Ok(Flow::Restarted);
            }
            Action::Auth(auth) => return sasl_external(ctx, s2s, conn, st, &auth).await,
            Action::Dialback(el) if el.name == "result" => {
                db_result(ctx, s2s, conn, st, vtx, &el).await?
            }
            Action::Dialback(el) => db_verify(ctx, s2s, conn, &el).await?,
            Action::Stanza(el) => stanza(ctx, st, el).await?,
            Action::End(ending) => return Err(ending),
            // Not produced for server streams to us.
            Action::Features(_)
            | Action::SaslFailure(_)
            | Action::SaslResponse(_)
            | Action::SaslAbort
            | Action::Bind(_)
            | Action::Element(_)
            | Action::Refuse(_) => return Err(StreamErrorCondition::UnsupportedStanzaType.into()),
        }
    }
    Ok(Flow::Continue)
}

/// The features of this stage: STARTTLS, then SASL EXTERNAL (when the certificate
/// proves the `from` domain) and dialback.
fn features(ctx: &Context, s2s: &S2s, conn: &Conn, st: &State) -> Element {
    let secure = st.neg.is_secure();
    let require_tls = s2s.config.s2s.require_encryption;
    let mut features = Element::new("features", ns::STREAM);
    if !secure {
        let mut starttls = Element::new("starttls", ns::TLS);
        if require_tls {
            starttls.push_child(Element::new("required", ns::TLS));
        }
        features.push_child(starttls);
    }
    if secure || !require_tls {
        let foreign_from = st.neg.peer().filter(|f| !ctx.is_hosted_domain(f));
        if secure && !st.sasl_done && cert_valid_for(s2s, conn, foreign_from) {
            features.push_child(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        features.push_child(
            Element::new("dialback", DIALBACK_FEATURE)
                .with_child(Element::new("errors", DIALBACK_FEATURE)),
        );
    }
    features
}

fn cert_valid_for(s2s: &S2s, conn: &Conn, domain: Option<&str>) -> bool {
    let Some(domain) = domain else { return false };
    match s2s.trust.verify(&conn.io.peer_certificates(), domain) {
        Ok(()) => true,
        Err(e) => {
            debug!(domain, error = %e, "peer certificate not valid for the domain");
            false
        }
    }
}

async fn sasl_failure(conn: &mut Conn, condition: &str) -> Result<Flow, Ending> {
    conn.send(&Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL)))
        .await?;
    Ok(Flow::Continue)
}

/// XEP-0178: the stream's `from` domain, proven by its certificate.
async fn sasl_external(
    ctx: &Context,
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    st: &mut State,
    auth: &Element,
) -> Result<Flow, Ending> {
    if !st.neg.is_secure() || st.sasl_done {
        return sasl_failure(conn, "not-authorized").await;
    }
    if auth.attr("mechanism") != Some("EXTERNAL") {
        return sasl_failure(conn, "invalid-mechanism").await;
    }
    let (Some(from), Some(to)) = (
        st.neg.peer().map(str::to_string),
        st.neg.domain().map(str::to_string),
    ) else {
        return sasl_failure(conn, "not-authorized").await;
    };
    if ctx.is_hosted_domain(&from) {
        // A certificate that also covers our domain (a shared wildcard one) must not let
        // a peer speak for our users.
        info!(from, "SASL EXTERNAL for a domain we host refused");
        return sasl_failure(conn, "not-authorized").await;
    }
    let text: String = auth.text().chars().filter(|c| !c.is_whitespace()).collect();
    let authzid = match text.as_str() {
        "" | "=" => None,
        t => match B64.decode(t).ok().and_then(|b| String::from_utf8(b).ok()) {
            Some(a) => Some(a),
            None => return sasl_failure(conn, "incorrect-encoding").await,
        },
    };
    if authzid
        .as_deref()
        .is_some_and(|a| !a.eq_ignore_ascii_case(&from))
    {
        return sasl_failure(conn, "invalid-authzid").await;
    }
    if !cert_valid_for(s2s, conn, Some(&from)) {
        return sasl_failure(conn, "not-authorized").await;
    }
    admit(s2s, st, &from)?;
    conn.send(&Element::new("success", ns::SASL)).await?;
    s2s.record_inbound(&from, &to, "SASL EXTERNAL");
    st.authed.insert((from.clone(), to));
    st.sasl_done = true;
    conn.restart();
    st.neg.sasl_succeeded(from);
    Ok(Flow::Restarted)
}

fn db_error(from: &str, to: &str, kind: &str, condition: &str) -> Element {
    super::dialback::result_element(from, to)
        .with_attr("type", "error")
        .with_child(
            Element::new("error", ns::CLIENT)
                .with_attr("type", kind)
                .with_child(Element::new(condition, ns::STANZA_ERRORS)),
        )
}

/// XEP-0220 §2.2: the originating server claims `from` with a key; we ask its
/// authoritative server unless the certificate already proves it.
async fn db_result(
    ctx: &Context,
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    st: &mut State,
    vtx: &mpsc::Sender<Verdict>,
    el: &Element,
) -> Result<(), Ending> {
    let (Some(remote), Some(local)) = (
        el.attr("from").and_then(domain_only),
        el.attr("to").and_then(domain_only),
    ) else {
        return Err(StreamErrorCondition::InvalidFrom.into());
    };
    if Some(local.as_str()) != st.neg.domain() {
        // Dialback for another of our vhosts on this stream (piggybacking) is fine only
        // if we host it.
        if !s2s.config.vhosts.iter().any(|v| v.domain == local) {
            conn.send(&db_error(&local, &remote, "cancel", "item-not-found"))
                .await?;
            return Ok(());
        }
    }
    if ctx.is_hosted_domain(&remote) {
        // Only we speak for our domains: no certificate or callback can prove otherwise.
        info!(remote, "dialback for a domain we host refused");
        conn.send(&db_error(&local, &remote, "cancel", "forbidden"))
            .await?;
        return Ok(());
    }
    let key = el.text().trim().to_string();
    if key.is_empty() {
        return Err(StreamErrorCondition::BadFormat.into());
    }
    let pair = (remote.clone(), local.clone());
    if st.authed.contains(&pair) || cert_valid_for(s2s, conn, Some(&remote)) {
        admit(s2s, st, &remote)?;
        // Already proven, or proven by the certificate (XEP-0344): no callback needed.
        conn.send(&super::dialback::result_element(&local, &remote).with_attr("type", "valid"))
            .await?;
        if st.authed.insert(pair) {
            s2s.record_inbound(&remote, &local, "dialback (certificate)");
            st.neg.domain_authenticated(&remote);
        }
        return Ok(());
    }
    if s2s.config.s2s.require_valid_certificates {
        conn.send(&db_error(&local, &remote, "auth", "not-authorized"))
            .await?;
        return Ok(());
    }
    if st.pending >= MAX_PENDING_VERIFICATIONS {
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many dialback requests in flight",
        )));
    }
    st.pending += 1;
    let s2s = s2s.clone();
    let vtx = vtx.clone();
    let stream_id = st.neg.stream_id().to_string();
    tokio::spawn(
        async move {
            let outcome =
                super::dialback::verify_with_authoritative(&s2s, &local, &remote, &stream_id, &key)
                    .await;
            let _ = vtx
                .send(Verdict {
                    remote,
                    local,
                    outcome,
                })
                .await;
        }
        .in_current_span(),
    );
    Ok(())
}

/// Counts this stream against `remote`'s limit of inbound streams, once per stream.
fn admit(s2s: &S2s, st: &mut State, remote: &str) -> Result<(), Ending> {
    if st.counted.iter().any(|r| r == remote) {
        return Ok(());
    }
    if !s2s.inbound_stream_opened(remote) {
        info!(remote, "too many inbound streams from this domain; closed");
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            format!("too many streams from {remote}"),
        )));
    }
    st.counted.push(remote.to_string());
    Ok(())
}

async fn verdict(s2s: &S2s, conn: &mut Conn, st: &mut State, v: Verdict) -> Result<(), Ending> {
    let reply = match &v.outcome {
        Ok(true) => {
            admit(s2s, st, &v.remote)?;
            s2s.record_inbound(&v.remote, &v.local, "dialback");
            st.authed.insert((v.remote.clone(), v.local.clone()));
            st.neg.domain_authenticated(&v.remote);
            super::dialback::result_element(&v.local, &v.remote).with_attr("type", "valid")
        }
        Ok(false) => {
            info!(remote = %v.remote, "dialback key invalid");
            super::dialback::result_element(&v.local, &v.remote).with_attr("type", "invalid")
        }
        Err(f) => {
            info!(remote = %v.remote, failure = ?f, "authoritative server unreachable");
            db_error(&v.local, &v.remote, "cancel", "remote-connection-failed")
        }
    };
    conn.send(&reply).await
}

/// XEP-0220 §2.3: we are the authoritative server; check a key we (or a sibling node with
/// the same secret) generated.
async fn db_verify(
    ctx: &Arc<Context>,
    s2s: &Arc<S2s>,
    conn: &mut Conn,
    el: &Element,
) -> Result<(), Ending> {
    let receiving = el.attr("from").unwrap_or_default();
    let authoritative = el.attr("to").unwrap_or_default();
    let id = el.attr("id").unwrap_or_default();
    let key = el.text();
    let valid = ctx.is_hosted_domain(authoritative)
        && s2s.secret.check(receiving, authoritative, id, key.trim());
    debug!(receiving, authoritative, valid, "answering dialback verify");
    let reply = Element::new("verify", DIALBACK)
        .with_attr("from", authoritative)
        .with_attr("to", receiving)
        .with_attr("id", id)
        .with_attr("type", if valid { "valid" } else { "invalid" });
    conn.send(&reply).await
}

/// RFC 6120 §8.1.1.2, §13.9.3: `from` must be an authenticated domain and `to` one of our
/// vhosts; then the stanza is routed like a local one.
async fn stanza(ctx: &Arc<Context>, st: &State, mut el: Element) -> Result<(), Ending> {
    ctx.metrics.stanza(Stream::S2s, Direction::In, &el.name);
    let Some(to) = el.attr("to").and_then(crate::addr::parse) else {
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::HostUnknown,
            "stanza without a valid 'to'",
        )));
    };
    let Some(from) = el.attr("from").and_then(crate::addr::parse) else {
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::InvalidFrom,
            "stanza without a valid 'from'",
        )));
    };
    if !ctx.is_hosted_domain(to.domain().as_str()) {
        return Err(StreamErrorCondition::HostUnknown.into());
    }
    if ctx.is_hosted_domain(from.domain().as_str()) {
        // Our users' stanzas never arrive from another server; never route one that claims to.
        warn!(from = %from, "stanza from a local domain on an inbound s2s stream; dropped");
        return Ok(());
    }
    if !st.authed.contains(&(
        from.domain().as_str().to_string(),
        to.domain().as_str().to_string(),
    )) {
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::InvalidFrom,
            format!("{} is not authenticated on this stream", from.domain()),
        )));
    }
    el.set_attr("from", from.as_str());
    el.set_attr("to", to.as_str());
    route_addressed(ctx, &from, &to, el).await;
    Ok(())
}
