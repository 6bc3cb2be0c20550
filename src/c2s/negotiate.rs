//! RFC 6120 §4–§7 for clients: stream headers, STARTTLS, SASL and resource binding.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::{debug, info};

use super::session::SessionState;
use super::{Connection, Ending, sasl2, sm};
use crate::addr::{self, BareJid, FullJid};
use crate::config::TlsMode;
use crate::context::Context;
use crate::net::io::MaybeTls;
use crate::net::tls::TlsContext;
use crate::router::{BindOutcome, SessionControl, SessionInfo};
use crate::sasl::{
    ChannelBindings, Mechanism, SaslError, ScramServer, StoredCredentials, parse_plain,
    verify_plain,
};
use crate::stream::negotiate::{Action, Negotiator, Policy, Role};
use crate::stream::{StreamError, StreamErrorCondition, random_id};
use crate::xml::{Element, ns};

/// What a successful negotiation produced.
pub(crate) enum Negotiated {
    /// A newly bound resource.
    Bound(Bound),
    /// An existing session taken over by XEP-0198 resumption, with the client's `h`.
    Resumed(Box<SessionState>, Option<u32>),
}

/// A bound session, ready for stanzas.
pub(crate) struct Bound {
    pub bare: BareJid,
    pub resource: String,
    pub full: FullJid,
    pub domain: String,
    pub conn_id: u64,
    pub rx: crate::router::SessionReceiver,
    pub control: Arc<SessionControl>,
    /// The stream's `xml:lang`, stamped on the client's stanzas that carry none
    /// (RFC 6120 §4.7.4), so recipients know their language.
    pub lang: Option<String>,
    /// Bound through SASL2 and Bind 2: the `<success/>` still to be sent once the session
    /// has switched on what the bind request asked for.
    pub sasl2: Option<Box<sasl2::PendingSuccess>>,
}

pub(super) struct State {
    /// The stream-level rules; this driver performs its actions.
    pub(super) neg: Negotiator,
    pub(super) bindings: ChannelBindings,
    pub(super) failures: u32,
    /// The client tried a -PLUS mechanism with a channel-binding type we do not offer
    /// (e.g. `tls-unique`, undefined for TLS 1.3); see `c2s.strict_channel_binding`.
    pub(super) client_lacks_cb_types: bool,
    /// The client's address, under which failed authentications are also counted across
    /// connections (`Context::auth_throttle`); `None` if the socket could not tell.
    pub(super) peer_ip: Option<IpAddr>,
    /// The account SASL authenticated (the negotiator keeps it as the stream sees it).
    pub(super) account: Option<BareJid>,
    /// XEP-0198 resumptions refused on this connection.
    pub(super) resume_failures: u32,
    /// What pre-auth modules keep for this stream (registry::PreAuthStream); in a
    /// mutex only so that `State` is `Sync` (it is never contended).
    pub(super) pre_auth: std::sync::Mutex<crate::registry::Extensions>,
    /// STARTTLS can happen here (a socket; not a stream the HTTP server carries).
    pub(super) starttls_possible: bool,
}

pub(crate) async fn negotiate(
    ctx: &Arc<Context>,
    tls: &TlsContext,
    conn: &mut Connection,
    mode: TlsMode,
    conn_id: u64,
) -> Result<Negotiated, Ending> {
    let hosts = ctx.clone();
    let policy = Policy {
        role: Role::Client,
        default_domain: ctx.default_domain(),
        tls_required: ctx.config.c2s.require_tls,
    };
    let mut st = State {
        neg: Negotiator::new(policy, move |d| hosts.is_local_domain(d)),
        bindings: ChannelBindings::default(),
        failures: 0,
        client_lacks_cb_types: false,
        peer_ip: match &conn.io {
            MaybeTls::Plain(tcp) => tcp.peer_addr().ok().map(|a| a.ip()),
            _ => None,
        },
        account: None,
        resume_failures: 0,
        starttls_possible: !matches!(conn.io, MaybeTls::Link(_)),
        pre_auth: Default::default(),
    };
    if mode == TlsMode::DirectTls {
        upgrade(tls, conn, &mut st, true).await?;
    }
    if let MaybeTls::Link(link) = &conn.io {
        st.peer_ip = Some(link.peer);
        st.bindings = link.bindings.clone();
        // No STARTTLS exists over HTTP transports: https://, or a loopback listener behind
        // a TLS-terminating proxy, is as private as TLS.
        if link.secure {
            st.neg.set_secure();
        }
    }
    loop {
        let event = conn.next_event().await?;
        for action in st.neg.handle(event) {
            match action {
                // Queued, not flushed: it leaves in one write with the features (or the error).
                Action::SendHeader(h) => {
                    conn.queue_header(&h.from, h.to.as_deref(), h.id.as_deref())
                }
                Action::SendFeatures => {
                    if !st.starttls_possible && !st.neg.is_secure() && ctx.config.c2s.require_tls {
                        return Err(unencrypted_transport());
                    }
                    conn.send(&features(ctx, &st)).await?
                }
                Action::StartTls if !st.starttls_possible => return Err(unencrypted_transport()),
                Action::StartTls => {
                    conn.send(&Element::new("proceed", ns::TLS)).await?;
                    upgrade(tls, conn, &mut st, false).await?;
                }
                Action::SaslFailure(condition) => {
                    sasl_failure(conn, st.neg.is_sasl2(), condition, None).await?
                }
                // Not offered: an element this stream does not know (RFC 6120 §6.4.1).
                Action::Auth(_) if st.neg.is_sasl2() && !ctx.config.c2s.sasl2 => {
                    return Err(StreamErrorCondition::NotAuthorized.into());
                }
                Action::Auth(auth) if st.neg.is_sasl2() => {
                    if let Some(done) =
                        sasl2::authenticate(ctx, conn, &mut st, &auth, conn_id).await?
                    {
                        return Ok(done);
                    }
                }
                Action::Auth(auth) => match authenticate(ctx, conn, &mut st, &auth).await? {
                    Some(jid) => {
                        conn.restart();
                        st.neg.sasl_succeeded(jid.to_string());
                        st.account = Some(jid);
                    }
                    None => st.neg.sasl_failed(),
                },
                Action::Bind(iq) => {
                    if let Some(bound) = bind(ctx, conn, &st, &iq, conn_id).await? {
                        return Ok(Negotiated::Bound(bound));
                    }
                }
                Action::Element(el) => {
                    if let Some(resumed) = authenticated_element(ctx, conn, &mut st, el).await? {
                        return Ok(resumed);
                    }
                }
                Action::End(ending) => return Err(ending),
                // Not produced for client streams.
                Action::Features(_)
                | Action::SaslResponse(_)
                | Action::SaslAbort
                | Action::Dialback(_)
                | Action::Stanza(_)
                | Action::Refuse(_) => return Err(StreamErrorCondition::NotAuthorized.into()),
            }
        }
    }
}

/// An element after authentication other than a bind request: XEP-0198 or a module's
/// nonza. `Some` when a previous session was resumed.
async fn authenticated_element(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    el: Element,
) -> Result<Option<Negotiated>, Ending> {
    let Some(bare) = st.account.as_ref() else {
        return pre_auth_iq(ctx, conn, st, el).await.map(|()| None);
    };
    if el.ns == sm::NS {
        match el.name.as_str() {
            // XEP-0198 §5: instead of binding, take over a previous session.
            "resume" => {
                match resume(ctx, st, bare, &el).await {
                    // Returned at once: the state must not wait at an await point.
                    Ok(state) => return Ok(Some(Negotiated::Resumed(state, sm::parse_h(&el)))),
                    // The client may bind a new resource instead (XEP-0198 §5).
                    Err(failed) => {
                        st.resume_failures += 1;
                        if st.resume_failures > ctx.config.limits.sm_max_resume_failures {
                            return Err(Ending::Error(StreamError::with_text(
                                StreamErrorCondition::PolicyViolation,
                                "too many failed resumption attempts",
                            )));
                        }
                        conn.send(&failed).await?
                    }
                }
            }
            // Nothing to manage before a resource is bound (XEP-0198 §3).
            "enable" => conn.send(&sm::failed("unexpected-request")).await?,
            _ => {}
        }
        return Ok(None);
    }
    if ctx.registry.has_nonza(&el.ns) {
        // Module nonzas (e.g. XEP-0352 client state) act on a bound session;
        // before binding there is nothing to act on.
        return Ok(None);
    }
    // Anything else before a bound session is refused (RFC 6120 §7.1).
    Err(StreamErrorCondition::NotAuthorized.into())
}

/// Takes over the hibernated session `<resume/>` names (XEP-0198 §5); `Err`: the
/// `<failed/>` to answer.
pub(super) async fn resume(
    ctx: &Arc<Context>,
    st: &State,
    bare: &BareJid,
    request: &Element,
) -> Result<Box<SessionState>, Element> {
    let previd = request.attr("previd").unwrap_or_default();
    let state = sm::take_over(ctx, bare, previd).await?;
    // The session is now as private as the stream that took it over.
    let (b, secure) = (&state.bound, st.neg.is_secure());
    ctx.sessions
        .update(&b.bare, &b.resource, b.conn_id, |s| s.secure = secure);
    Ok(state)
}

/// An iq before authentication (the negotiator passes them on encrypted streams only):
/// answered by the module registered for its payload, else the stream ends (RFC 6120 §7.1).
async fn pre_auth_iq(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    el: Element,
) -> Result<(), Ending> {
    let handler = el
        .first_element()
        .and_then(|payload| ctx.registry.pre_auth_handler(&payload.ns));
    let (Some(handler), true) = (handler, el.name == "iq") else {
        return Err(StreamErrorCondition::NotAuthorized.into());
    };
    let domain = st.neg.domain().unwrap_or_default().to_string();
    let mut stream = crate::registry::PreAuthStream {
        domain: &domain,
        peer_ip: st.peer_ip,
        ext: st.pre_auth.get_mut().unwrap_or_else(|e| e.into_inner()),
    };
    let reply = handler.handle(ctx, &mut stream, &el).await?;
    conn.send(&reply).await
}

async fn upgrade(
    tls: &TlsContext,
    conn: &mut Connection,
    st: &mut State,
    direct: bool,
) -> Result<(), Ending> {
    let config = if direct {
        tls.direct_c2s_config()
    } else {
        tls.starttls_config()
    };
    let session = conn.io.accept_tls(config).await.map_err(|e| {
        debug!(error = %e, "TLS handshake failed");
        Ending::Gone
    })?;
    let b = tls.channel_bindings(session);
    st.bindings = ChannelBindings {
        tls_exporter: b.tls_exporter,
        tls_server_end_point: b.tls_server_end_point,
    };
    conn.restart();
    st.neg.tls_established();
    Ok(())
}

pub(super) fn offered_mechanisms(ctx: &Context, st: &State) -> Vec<Mechanism> {
    let mut out = Vec::new();
    // The same list for every account (chosen before the username is known), so it tells
    // nothing about which accounts exist or how their credentials are stored.
    let sha256 = ctx.config.c2s.offer_scram_sha256;
    if !st.bindings.is_empty() {
        if sha256 {
            out.push(Mechanism::ScramSha256Plus);
        }
        out.push(Mechanism::ScramSha1Plus);
    }
    if sha256 {
        out.push(Mechanism::ScramSha256);
    }
    out.push(Mechanism::ScramSha1);
    if st.neg.is_secure() && ctx.config.c2s.allow_plain {
        out.push(Mechanism::Plain);
    }
    out
}

/// A web transport over plain http:// off loopback: no STARTTLS exists there, and
/// `c2s.require_tls` forbids logging in without encryption.
fn unencrypted_transport() -> Ending {
    Ending::Error(StreamError::with_text(
        StreamErrorCondition::PolicyViolation,
        "this transport is not encrypted: connect over https:// or wss://",
    ))
}

pub(super) fn features(ctx: &Context, st: &State) -> Element {
    if st.neg.is_authenticated() {
        let mut f = Element::new("features", ns::STREAM);
        f.push_child(Element::new("bind", ns::BIND));
        f.push_child(
            Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
        );
        push_bound_features(ctx, &mut f, true);
        return f;
    }
    let mut f = Element::new("features", ns::STREAM);
    if !st.neg.is_secure() && st.starttls_possible {
        let mut starttls = Element::new("starttls", ns::TLS);
        if ctx.config.c2s.require_tls {
            starttls.push_child(Element::new("required", ns::TLS));
            f.push_child(starttls);
            return f;
        }
        f.push_child(starttls);
    }
    let mut mechs = Element::new("mechanisms", ns::SASL);
    for m in offered_mechanisms(ctx, st) {
        mechs.push_child(Element::new("mechanism", ns::SASL).with_text(m.name()));
    }
    f.push_child(mechs);
    if let Some(authentication) = sasl2::feature(ctx, st) {
        f.push_child(authentication);
    }
    if !st.bindings.is_empty() {
        // XEP-0440: which channel-binding types a -PLUS client may use.
        let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
        for t in st.bindings.available() {
            cb.push_child(Element::new("channel-binding", ns::SASL_CB).with_attr("type", t.name()));
        }
        f.push_child(cb);
    }
    if st.neg.is_secure() {
        for feature in ctx
            .registry
            .pre_auth_features(ctx, st.neg.domain().unwrap_or_default())
        {
            f.push_child(feature);
        }
    }
    f
}

/// The features of a stream with a bound resource (after Bind 2, no resource binding);
/// XEP-0198 only while it can still be enabled (clients take an `<sm/>` feature as the
/// cue to resume or enable it).
pub(super) fn bound_features(ctx: &Context, offer_sm: bool) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    push_bound_features(ctx, &mut f, offer_sm);
    f
}

fn push_bound_features(ctx: &Context, f: &mut Element, offer_sm: bool) {
    f.push_child(Element::new("ver", ns::ROSTER_VER));
    f.push_child(Element::new("sub", ns::PRE_APPROVAL));
    if offer_sm {
        f.push_child(Element::new("sm", sm::NS));
    }
    for feature in ctx.registry.bound_stream_features() {
        f.push_child(feature.clone());
    }
}

/// A SASL `<failure/>` in the exchange's profile; SASL2 may say why in `<text/>`.
pub(super) async fn sasl_failure(
    conn: &mut Connection,
    sasl2: bool,
    condition: &str,
    text: Option<&str>,
) -> Result<(), Ending> {
    let profile = if sasl2 { ns::SASL2 } else { ns::SASL };
    let mut failure =
        Element::new("failure", profile).with_child(Element::new(condition, ns::SASL));
    if let (true, Some(text)) = (sasl2, text) {
        failure.push_child(Element::new("text", ns::SASL2).with_text(text));
    }
    conn.send(&failure).await
}

/// Decodes SASL element text: empty means "no data", "=" means empty data (RFC 6120 §6.4.2).
fn decode_sasl(text: &str) -> Result<Option<Vec<u8>>, SaslError> {
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match text.as_str() {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        t => B64
            .decode(t)
            .map(Some)
            .map_err(|_| SaslError::IncorrectEncoding),
    }
}

enum Step {
    Data(Vec<u8>),
    Aborted,
}

/// Decodes SASL2 element text: no "=" special case, empty is empty (XEP-0388 §2.2).
pub(super) fn decode_sasl2(text: &str) -> Result<Vec<u8>, SaslError> {
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(text).map_err(|_| SaslError::IncorrectEncoding)
}

/// Sends a challenge (in the exchange's profile) and waits for the client's response.
async fn challenge(
    conn: &mut Connection,
    neg: &mut Negotiator,
    data: &[u8],
) -> Result<Result<Step, SaslError>, Ending> {
    let sasl2 = neg.is_sasl2();
    let text = if data.is_empty() && !sasl2 {
        "=".to_string()
    } else {
        B64.encode(data)
    };
    let profile = if sasl2 { ns::SASL2 } else { ns::SASL };
    conn.send(&Element::new("challenge", profile).with_text(text))
        .await?;
    let event = conn.next_event().await?;
    // The negotiator allows a response or an abort here, and ends the stream otherwise.
    match neg.handle(event).into_iter().next() {
        Some(Action::SaslAbort) => Ok(Ok(Step::Aborted)),
        Some(Action::SaslResponse(el)) if sasl2 => Ok(decode_sasl2(&el.text()).map(Step::Data)),
        Some(Action::SaslResponse(el)) => {
            Ok(decode_sasl(&el.text()).map(|d| Step::Data(d.unwrap_or_default())))
        }
        Some(Action::End(ending)) => Err(ending),
        _ => Err(StreamErrorCondition::NotAuthorized.into()),
    }
}

/// Runs one SASL exchange. `Ok(Some(jid))` on success (stream restart follows).
async fn authenticate(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    auth: &Element,
) -> Result<Option<BareJid>, Ending> {
    let mechanism = auth.attr("mechanism").unwrap_or_default();
    let outcome = match decode_sasl(&auth.text()) {
        Err(e) => Err(e),
        Ok(initial) => run_exchange(ctx, conn, st, mechanism, initial).await?,
    };
    match outcome {
        Ok(Some((jid, success_data))) => {
            let mut success = Element::new("success", ns::SASL);
            if let Some(d) = success_data.filter(|d| !d.is_empty()) {
                success = success.with_text(B64.encode(d));
            }
            conn.send(&success).await?;
            info!(jid = %jid, mechanism, "authenticated");
            Ok(Some(jid))
        }
        Ok(None) => {
            sasl_failure(conn, false, "aborted", None).await?;
            Ok(None)
        }
        Err(e) => {
            auth_failed(ctx, conn, st, mechanism, e).await?;
            Ok(None)
        }
    }
}

/// Runs the offered mechanism `name` (the same for SASL and SASL2; the negotiator knows
/// which profile frames the challenges).
pub(super) async fn run_exchange(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    name: &str,
    initial: Option<Vec<u8>>,
) -> Result<SaslOutcome, Ending> {
    let offered = offered_mechanisms(ctx, st);
    match Mechanism::from_name(name).filter(|m| offered.contains(m)) {
        None => Ok(Err(SaslError::InvalidMechanism)),
        Some(m) => run_mechanism(ctx, conn, st, m, initial, &offered).await,
    }
}

/// A failed authentication: counted (per stream and per address, slowing down guessing),
/// answered, and the stream ended after too many.
pub(super) async fn auth_failed(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    mechanism: &str,
    e: SaslError,
) -> Result<(), Ending> {
    st.failures += 1;
    let known = Mechanism::from_name(mechanism)
        .map(Mechanism::name)
        .or_else(|| crate::sasl::HtMechanism::from_name(mechanism).map(|m| m.name()));
    ctx.metrics.auth_failure(known);
    let verdict = st
        .peer_ip
        .map(|ip| ctx.auth_throttle.failure(ip, tokio::time::Instant::now()));
    debug!(
        condition = e.condition(),
        failures = st.failures,
        address_failures = verdict.map(|v| v.failures),
        "SASL failure"
    );
    if let Some(v) = verdict
        && !v.delay.is_zero()
    {
        // Slows down guessing from this address, over all its connections.
        tokio::time::sleep(v.delay).await;
    }
    sasl_failure(conn, st.neg.is_sasl2(), e.condition(), None).await?;
    if let Some(v) = verdict
        && v.close
    {
        info!(
            failures = v.failures,
            "too many failed authentication attempts from this address; closing"
        );
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many failed authentication attempts from this address",
        )));
    }
    if st.failures >= ctx.config.limits.max_auth_attempts {
        return Err(Ending::Error(StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many failed authentication attempts",
        )));
    }
    Ok(())
}

/// `Ok(Ok(Some((jid, success data))))` on success, `Ok(Ok(None))` when aborted.
type SaslOutcome = Result<Option<(BareJid, Option<Vec<u8>>)>, SaslError>;

pub(super) fn account_jid(username: &str, domain: &str) -> Result<BareJid, SaslError> {
    addr::parse_bare(&format!("{username}@{domain}"))
        .filter(|jid| jid.node().is_some())
        .ok_or(SaslError::NotAuthorized)
}

fn check_authzid(authzid: Option<&str>, jid: &BareJid) -> Result<(), SaslError> {
    match authzid {
        None => Ok(()),
        Some(a) if addr::parse_bare(a).as_ref() == Some(jid) => Ok(()),
        Some(_) => Err(SaslError::InvalidAuthzid),
    }
}

async fn run_mechanism(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    mechanism: Mechanism,
    initial: Option<Vec<u8>>,
    offered: &[Mechanism],
) -> Result<SaslOutcome, Ending> {
    let domain = st.neg.domain().unwrap_or_default().to_string();
    let first = match initial {
        Some(d) => d,
        None => match challenge(conn, &mut st.neg, &[]).await? {
            Ok(Step::Data(d)) => d,
            Ok(Step::Aborted) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e)),
        },
    };
    if mechanism == Mechanism::Plain {
        let creds = match parse_plain(&first) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let jid = account_jid(&creds.authcid, &domain);
        let stored = match &jid {
            Ok(j) => ctx
                .storage
                .accounts
                .get(j)
                .await
                .map_err(|_| Ending::from(StreamErrorCondition::InternalServerError))?,
            Err(_) => None,
        };
        // An unknown account costs the same PBKDF2 as a real one (no timing oracle), keyed
        // by the normalised name as SCRAM's fake salt is.
        let account = match &jid {
            Ok(j) => j.to_string(),
            Err(_) => creds.authcid.clone(),
        };
        let iterations = ctx.config.c2s.scram_iterations;
        let password = creds.password;
        // PBKDF2 is milliseconds of CPU: off the runtime's workers, which serve other streams.
        let (valid, upgraded) = tokio::task::spawn_blocking(move || {
            let valid = verify_plain(stored.as_ref(), &account, &password, iterations);
            // An account imported with SCRAM-SHA-1 verifiers only gets the full set now
            // that its password is seen in clear (SCRAM-SHA-256 works from then on).
            let upgrade = valid && stored.as_ref().is_some_and(|s| !s.has_sha256());
            let upgraded = upgrade
                .then(|| StoredCredentials::from_password(&password, iterations).ok())
                .flatten();
            (valid, upgraded)
        })
        .await
        .map_err(|_| Ending::from(StreamErrorCondition::InternalServerError))?;
        let (true, Ok(jid)) = (valid, jid) else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        if let Err(e) = check_authzid(creds.authzid.as_deref(), &jid) {
            return Ok(Err(e));
        }
        if let Some(new) = upgraded {
            match ctx.storage.accounts.set_credentials(&jid, &new).await {
                Ok(_) => info!(jid = %jid, "SHA-1-only credentials upgraded to SHA-1 + SHA-256"),
                // The login itself is fine; the upgrade is retried at the next PLAIN login.
                Err(e) => debug!(jid = %jid, error = %e, "credential upgrade failed"),
            }
        }
        return Ok(Ok(Some((jid, None))));
    }
    let Some((hash, plus)) = mechanism.scram() else {
        return Ok(Err(SaslError::InvalidMechanism));
    };
    if plus && !offers_binding_type(&st.bindings, &first) {
        st.client_lacks_cb_types = true;
    }
    // What this stream advertised decides whether `y` is a downgrade (RFC 5802 §6);
    // unless strict, a client that showed it has no binding type in common with us may
    // say `y` (slixmpp 1.8 on TLS 1.3).
    let tolerated = st.client_lacks_cb_types && !ctx.config.c2s.strict_channel_binding;
    let plus_offered = offered.iter().any(|m| m.scram().is_some_and(|(_, p)| p)) && !tolerated;
    let mut scram = ScramServer::new(hash, plus, plus_offered, st.bindings.clone());
    // Unknown users must look like real ones (same iteration count).
    scram.set_unknown_user_iterations(ctx.config.c2s.scram_iterations);
    let client_first = match scram.client_first(&first) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let jid = account_jid(&client_first.username, &domain);
    let stored = match &jid {
        Ok(j) => {
            // An unknown name's fake salt must not depend on how the client spelled it.
            scram.set_account_name(j.as_str());
            ctx.storage
                .accounts
                .get(j)
                .await
                .map_err(|_| Ending::from(StreamErrorCondition::InternalServerError))?
        }
        Err(_) => None,
    };
    let server_first = scram.server_first(stored.as_ref().map(|s| s.for_hash(hash)));
    let client_final = match challenge(conn, &mut st.neg, &server_first).await? {
        Ok(Step::Data(d)) => d,
        Ok(Step::Aborted) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    let server_final = match scram.client_final(&client_final) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let (Ok(jid), Some(_)) = (jid, stored) else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    if let Err(e) = check_authzid(client_first.authzid.as_deref(), &jid) {
        return Ok(Err(e));
    }
    Ok(Ok(Some((jid, Some(server_final)))))
}

/// Whether a -PLUS client-first-message names a binding type this connection offers.
fn offers_binding_type(bindings: &ChannelBindings, client_first: &[u8]) -> bool {
    let Some(rest) = client_first.strip_prefix(b"p=") else {
        return true;
    };
    let name = rest.split(|&b| b == b',').next().unwrap_or_default();
    bindings
        .available()
        .iter()
        .any(|t| t.name().as_bytes() == name)
}

/// RFC 6120 §7: resource binding; the newest session wins a resource conflict.
async fn bind(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &State,
    iq: &Element,
    conn_id: u64,
) -> Result<Option<Bound>, Ending> {
    let Some(bare) = &st.account else {
        return Err(StreamErrorCondition::NotAuthorized.into());
    };
    let reply_error = |condition: &'static str, kind| {
        crate::stream::error_reply(iq, &crate::stream::StanzaError::new(kind, condition))
    };
    if iq.attr("type") != Some("set") || iq.attr("id").is_none() {
        if let Some(err) = reply_error("bad-request", crate::stream::ErrorType::Modify) {
            conn.send(&err).await?;
        }
        return Ok(None);
    }
    let requested = iq
        .child("bind", ns::BIND)
        .and_then(|b| b.child_text("resource", ns::BIND))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let full = match requested {
        None => match bare.with_resource_str(&random_id()) {
            Ok(full) => full,
            Err(_) => return Err(StreamErrorCondition::InternalServerError.into()),
        },
        Some(r) => match bare.with_resource_str(&r) {
            Ok(full) => full,
            Err(_) => {
                if let Some(err) = reply_error("bad-request", crate::stream::ErrorType::Modify) {
                    conn.send(&err).await?;
                }
                return Ok(None);
            }
        },
    };
    let bound = match bind_resource(ctx, st, full, conn_id) {
        Ok(bound) => bound,
        Err(condition) => {
            if let Some(err) = reply_error(condition, crate::stream::ErrorType::Wait) {
                conn.send(&err).await?;
            }
            return Ok(None);
        }
    };
    let mut result = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_child(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(bound.full.as_str())),
        );
    if let Some(id) = iq.attr("id") {
        result.set_attr("id", id);
    }
    if let Err(e) = conn.send(&result).await {
        ctx.sessions.unbind(&bound.bare, &bound.resource, conn_id);
        return Err(e);
    }
    Ok(Some(bound))
}

/// Binds `full` (of the authenticated account) to this connection; the newest session
/// wins a conflict. `Err`: the stanza error condition why not.
pub(super) fn bind_resource(
    ctx: &Arc<Context>,
    st: &State,
    full: FullJid,
    conn_id: u64,
) -> Result<Bound, &'static str> {
    let bare = full.to_bare();
    let resource = full.resource().as_str().to_string();
    let (tx, rx) = crate::router::session_queue(ctx.config.limits.session_queue_len);
    // Half the session's byte budget for its queue; SM's unacked stanzas and CSI's held
    // ones share the other half.
    let control = Arc::new(SessionControl::new(ctx.config.limits.session_max_bytes / 2));
    let info = SessionInfo {
        resource: resource.clone(),
        conn_id,
        tx,
        control: control.clone(),
        priority: 0,
        available: false,
        presence: None,
        flags: Default::default(),
        secure: st.neg.is_secure(),
    };
    match ctx
        .sessions
        .bind(&bare, info, ctx.config.limits.max_resources)
    {
        BindOutcome::Bound => {}
        BindOutcome::Replaced(old) => {
            old.kick(StreamError::with_text(
                StreamErrorCondition::Conflict,
                "replaced by a new session with the same resource",
            ));
        }
        BindOutcome::TooManyResources => return Err("resource-constraint"),
    }
    Ok(Bound {
        domain: bare.domain().as_str().to_string(),
        bare,
        resource,
        full,
        conn_id,
        rx,
        control,
        lang: st.neg.lang().map(str::to_string),
        sasl2: None,
    })
}
