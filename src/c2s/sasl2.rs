//! XEP-0388 (SASL2) for client streams, with XEP-0386 (Bind 2) and XEP-0484 (FAST): a
//! client authenticates, binds a resource and switches on carbons, stream management and
//! CSI in one exchange, without a stream restart; a returning client proves with a token
//! it was given instead of running a password exchange.
//!
//! The mechanisms are those of RFC 6120 SASL (`negotiate::run_exchange`), framed in the
//! SASL2 namespace, plus the hashed-token ones of `sasl::ht` for FAST.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::negotiate::{
    self, Negotiated, State, account_jid, auth_failed, bind_resource, decode_sasl2,
    offered_mechanisms, run_exchange, sasl_failure,
};
use super::session::SessionState;
use super::{Connection, Ending, sm};
use crate::addr::{BareJid, FullJid};
use crate::context::Context;
use crate::datetime::{now_secs, stamp_from_unix};
use crate::registry::BoundByBind2;
use crate::sasl::ht::{self, HtMechanism};
use crate::sasl::{SaslError, StoredCredentials};
use crate::storage::{FastToken, FastTokens};
use crate::stream::{StreamErrorCondition, random_id};
use crate::xml::{Element, ns};

/// The longest `<user-agent id>` kept: clients send a UUID.
const MAX_AGENT_ID: usize = 128;
/// The longest Bind 2 `<tag>` put into a resource.
const MAX_TAG: usize = 64;

/// What a Bind 2 login still owes its client once the session exists: the `<success/>`
/// (completed with `<bound/>`) and the session features the bind request asked for.
pub(crate) struct PendingSuccess {
    success: Element,
    inline: Vec<Element>,
    /// What the modules say about the account in `<bound/>` (the archive's metadata).
    info: Vec<Element>,
}

/// The `<authentication/>` stream feature, if SASL2 is on.
pub(super) fn feature(ctx: &Context, st: &State) -> Option<Element> {
    if !ctx.config.c2s.sasl2 {
        return None;
    }
    let mut auth = Element::new("authentication", ns::SASL2);
    for m in offered_mechanisms(ctx, st) {
        auth.push_child(Element::new("mechanism", ns::SASL2).with_text(m.name()));
    }
    let mut inline = Element::new("inline", ns::SASL2);
    let mut bind_inline = Element::new("inline", ns::BIND2);
    for var in std::iter::once(sm::NS).chain(ctx.registry.bind_inline_features()) {
        bind_inline.push_child(Element::new("feature", ns::BIND2).with_attr("var", var));
    }
    inline.push_child(Element::new("bind", ns::BIND2).with_child(bind_inline));
    // XEP-0198 resumption inside `<authenticate/>`.
    inline.push_child(Element::new("sm", sm::NS));
    let fast = offered_fast(ctx, st);
    if !fast.is_empty() {
        let mut f = Element::new("fast", ns::FAST);
        for m in fast {
            f.push_child(Element::new("mechanism", ns::FAST).with_text(m.name()));
        }
        inline.push_child(f);
    }
    auth.push_child(inline);
    Some(auth)
}

/// FAST mechanisms this stream may use: only on an encrypted stream (XEP-0484 §7: a
/// token sent in the clear could be replayed).
fn offered_fast(ctx: &Context, st: &State) -> Vec<HtMechanism> {
    if !ctx.config.c2s.fast || !ctx.config.c2s.sasl2 || !st.neg.is_secure() {
        return Vec::new();
    }
    HtMechanism::available(&st.bindings)
}

/// Runs one SASL2 `<authenticate/>`. `Some`: a session was resumed (XEP-0198) or a
/// resource bound (Bind 2), and the session starts; `None`: the stream goes on
/// (authenticated or not).
pub(super) async fn authenticate(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    st: &mut State,
    auth: &Element,
    conn_id: u64,
) -> Result<Option<Negotiated>, Ending> {
    let mechanism = auth.attr("mechanism").unwrap_or_default();
    let initial = auth
        .child("initial-response", ns::SASL2)
        .map(|r| decode_sasl2(&r.text()))
        .transpose();
    let agent = auth
        .child("user-agent", ns::SASL2)
        .and_then(|u| u.attr("id"))
        .filter(|id| !id.is_empty() && id.len() <= MAX_AGENT_ID && !id.contains('\0'));
    let fast = HtMechanism::from_name(mechanism).filter(|m| offered_fast(ctx, st).contains(m));
    let outcome = match (initial, fast) {
        (Err(e), _) => Err(e),
        (Ok(initial), Some(m)) => fast_login(ctx, st, m, initial, agent).await?,
        (Ok(initial), None) => match run_exchange(ctx, conn, st, mechanism, initial).await? {
            Ok(Some((jid, data))) => Ok(Login {
                jid,
                additional: data,
                token: None,
            }),
            Ok(None) => {
                st.neg.sasl_failed();
                return sasl_failure(conn, true, "aborted", None)
                    .await
                    .map(|()| None);
            }
            Err(e) => Err(e),
        },
    };
    let login = match outcome {
        Ok(login) => login,
        Err(e) => {
            st.neg.sasl_failed();
            auth_failed(ctx, conn, st, mechanism, e).await?;
            return Ok(None);
        }
    };
    // Resumption first; if it fails, the client binds a new session instead (XEP-0386
    // §3.2), told why in the success.
    let mut resume_failed = None;
    let mut token = None;
    if let Some(request) = auth.child("resume", sm::NS) {
        // Before the takeover: a taken-over session must not wait at an await point.
        token = tokens_after_login(ctx, st, auth, agent, &login).await;
        match negotiate::resume(ctx, st, &login.jid, request).await {
            Ok(mut state) => {
                let mut success = success_element(&login, state.bound.full.as_str());
                if let Some(token) = token {
                    success.push_child(token);
                }
                info!(jid = %login.jid, mechanism, "authenticated (SASL2), session resumed");
                st.neg.sasl2_succeeded(login.jid.to_string());
                // The `<resumed/>` goes into the success once the session is back.
                state.bound.sasl2 = Some(Box::new(PendingSuccess {
                    success,
                    inline: Vec::new(),
                    info: Vec::new(),
                }));
                return Ok(Some(Negotiated::Resumed(state, sm::parse_h(request))));
            }
            Err(failed) => resume_failed = Some(failed),
        }
    }
    // Bind 2 before the success, which names the full JID (XEP-0386 §3.2).
    let bind_request = auth.child("bind", ns::BIND2);
    let bound = match bind_request {
        None => None,
        Some(request) => {
            match bind_resource(ctx, st, resource_for(&login.jid, request, agent)?, conn_id) {
                Ok(bound) => Some(bound),
                Err(condition) => {
                    // Authenticated, but no session can start: nothing of it took effect.
                    st.neg.sasl_failed();
                    let text = format!("no resource can be bound ({condition}): too many sessions");
                    return sasl_failure(conn, true, "aborted", Some(&text))
                        .await
                        .map(|()| None);
                }
            }
        }
    };
    // Tokens only once nothing can fail any more: a token the client never receives
    // would take the place of one it holds.
    if auth.child("resume", sm::NS).is_none() {
        token = tokens_after_login(ctx, st, auth, agent, &login).await;
    }
    let identity = match &bound {
        Some(b) => b.full.as_str(),
        None => login.jid.as_str(),
    };
    let mut success = success_element(&login, identity);
    for child in [token, resume_failed].into_iter().flatten() {
        success.push_child(child);
    }
    info!(jid = %login.jid, mechanism, bind2 = bound.is_some(), "authenticated (SASL2)");
    st.neg.sasl2_succeeded(login.jid.to_string());
    st.account = Some(login.jid);
    match (bound, bind_request) {
        (Some(mut bound), Some(request)) => {
            let info = ctx.registry.bound_info(ctx, &bound.bare).await;
            bound.sasl2 = Some(Box::new(PendingSuccess {
                success,
                info,
                inline: request
                    .elements()
                    .filter(|e| e.ns != ns::BIND2)
                    .cloned()
                    .collect(),
            }));
            Ok(Some(Negotiated::Bound(bound)))
        }
        _ => {
            // XEP-0388 §2.6.1: the features of the authenticated stream follow at once.
            conn.queue(&success);
            conn.send(&negotiate::features(ctx, st)).await?;
            Ok(None)
        }
    }
}

fn success_element(login: &Login, identity: &str) -> Element {
    let mut success = Element::new("success", ns::SASL2);
    if let Some(data) = &login.additional {
        success.push_child(Element::new("additional-data", ns::SASL2).with_text(B64.encode(data)));
    }
    success.with_child(Element::new("authorization-identifier", ns::SASL2).with_text(identity))
}

/// A successful authentication.
struct Login {
    jid: BareJid,
    /// The mechanism's success data (`<additional-data/>`).
    additional: Option<Vec<u8>>,
    /// FAST: the token it was made with.
    token: Option<UsedToken>,
}

struct UsedToken {
    token: FastToken,
    /// The client's tokens as they now stand.
    tokens: FastTokens,
    /// The token was in the "new" slot and has moved to "current": to be stored.
    moved: bool,
}

/// The Bind 2 resource: the client's tag, then an identifier that is the same for every
/// login of the same client (SASL2 user agent) on the same account, so that a new login
/// replaces that client's earlier session (XEP-0386 §3.2), without showing the agent id.
fn resource_for(jid: &BareJid, request: &Element, agent: Option<&str>) -> Result<FullJid, Ending> {
    let id = match agent {
        Some(agent) => {
            let digest = Sha256::new()
                .chain_update(b"xmppd bind2\0")
                .chain_update(jid.as_str())
                .chain_update(b"\0")
                .chain_update(agent)
                .finalize();
            URL_SAFE_NO_PAD.encode(&digest[..9])
        }
        None => random_id()[..12].to_string(),
    };
    let tag = request
        .child_text("tag", ns::BIND2)
        .map(|t| t.trim().chars().take(MAX_TAG).collect::<String>())
        .filter(|t| !t.is_empty());
    if let Some(tag) = tag
        && let Ok(full) = jid.with_resource_str(&format!("{tag}/{id}"))
    {
        return Ok(full);
    }
    jid.with_resource_str(&id)
        .map_err(|_| Ending::from(StreamErrorCondition::InternalServerError))
}

/// A digest of an account's credentials: tokens issued under other credentials (before a
/// password change) are refused.
fn credentials_digest(creds: &StoredCredentials) -> Vec<u8> {
    Sha256::new()
        .chain_update(&creds.sha1.salt)
        .chain_update(&creds.sha1.stored_key)
        .chain_update(&creds.sha256.salt)
        .chain_update(&creds.sha256.stored_key)
        .finalize()
        .to_vec()
}

/// Checks a FAST login (XEP-0484 §3.3): the proof must be made with the token in the
/// client's "new" slot or, failing that, its "current" one, issued for this mechanism,
/// unexpired, under the account's present credentials.
async fn fast_login(
    ctx: &Arc<Context>,
    st: &State,
    mechanism: HtMechanism,
    initial: Option<Vec<u8>>,
    agent: Option<&str>,
) -> Result<Result<Login, SaslError>, Ending> {
    let internal = |_| Ending::from(StreamErrorCondition::InternalServerError);
    let Some(data) = initial else {
        return Ok(Err(SaslError::MalformedRequest));
    };
    let response = match ht::parse_response(&data) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let domain = st.neg.domain().unwrap_or_default();
    let (Ok(jid), Some(agent)) = (account_jid(&response.authcid, domain), agent) else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    let tokens = ctx
        .storage
        .fast
        .fast_tokens(&jid, agent)
        .await
        .map_err(internal)?;
    let creds = ctx.storage.accounts.get(&jid).await.map_err(internal)?;
    let (Some(mut tokens), Some(creds)) = (tokens, creds) else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    if tokens.credentials != credentials_digest(&creds) {
        return Ok(Err(SaslError::NotAuthorized));
    }
    let now = now_secs();
    let mut matched = None;
    for (slot, token) in [(Slot::New, &tokens.new), (Slot::Current, &tokens.current)] {
        let Some(token) = token.as_ref().filter(|t| t.mechanism == mechanism.name()) else {
            continue;
        };
        match response.proves(mechanism, &st.bindings, &token.secret) {
            Ok(true) => {
                matched = Some((slot, token.clone()));
                break;
            }
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    let Some((slot, token)) = matched else {
        return Ok(Err(SaslError::NotAuthorized));
    };
    if token.expiry <= now {
        return Ok(Err(SaslError::CredentialsExpired));
    }
    let moved = slot == Slot::New;
    if moved {
        // The client has the new token: the older one is done with (XEP-0484 §3.4).
        tokens.current = tokens.new.take();
    }
    let additional = match ht::responder(mechanism, &st.bindings, &token.secret) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Login {
        jid,
        additional: Some(additional),
        token: Some(UsedToken {
            token,
            tokens,
            moved,
        }),
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    New,
    Current,
}

/// Token bookkeeping after a successful login, stored before the client hears of it: a
/// token is issued when the client asked for one (`<request-token/>`) or when the token
/// it used is past half its life; `<fast invalidate='true'/>` revokes the token used.
/// The `<token/>` for `<success/>`, if one was issued.
async fn tokens_after_login(
    ctx: &Arc<Context>,
    st: &State,
    auth: &Element,
    agent: Option<&str>,
    login: &Login,
) -> Option<Element> {
    let requested = auth
        .child("request-token", ns::FAST)
        .and_then(|r| r.attr("mechanism"))
        .and_then(HtMechanism::from_name)
        .filter(|m| offered_fast(ctx, st).contains(m));
    let invalidate = auth
        .child("fast", ns::FAST)
        .is_some_and(|f| sm::parse_bool(f.attr("invalidate")));
    let lifetime = ctx.config.c2s.fast_token_lifetime_secs;
    let now = now_secs();
    let agent = agent?;
    let (mut tokens, issue, mut changed) = match &login.token {
        Some(used) => {
            let mut tokens = used.tokens.clone();
            if invalidate {
                tokens.current = None;
            }
            let rotate = !invalidate && now >= used.token.issued.saturating_add(lifetime / 2);
            let mechanism = HtMechanism::from_name(&used.token.mechanism).filter(|_| rotate);
            (tokens, requested.or(mechanism), used.moved || invalidate)
        }
        None => {
            requested?;
            let stored = match ctx.storage.accounts.get(&login.jid).await {
                Ok(Some(creds)) => credentials_digest(&creds),
                Ok(None) => return None,
                Err(e) => {
                    warn!(error = %e, "reading credentials for a FAST token failed");
                    return None;
                }
            };
            let tokens = match ctx.storage.fast.fast_tokens(&login.jid, agent).await {
                Ok(Some(t)) if t.credentials == stored => t,
                Ok(_) => FastTokens {
                    credentials: stored,
                    ..Default::default()
                },
                Err(e) => {
                    warn!(error = %e, "reading FAST tokens failed");
                    return None;
                }
            };
            (tokens, requested, true)
        }
    };
    let new = issue.map(|m| FastToken {
        secret: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        mechanism: m.name().to_string(),
        issued: now,
        expiry: now.saturating_add(lifetime),
    });
    if let Some(new) = &new {
        // An unused earlier "new" token is replaced (XEP-0484 §3.4).
        tokens.new = Some(new.clone());
        changed = true;
        if login.token.is_none() {
            make_room(ctx, &login.jid, agent).await;
        }
    }
    // A returning client with its current token costs no write.
    if !changed {
        return None;
    }
    // What the client must be able to rely on is durable at once: a token it is given,
    // a token it revoked.
    let durable = new.is_some() || invalidate;
    let empty = tokens.new.is_none() && tokens.current.is_none();
    let stored = ctx
        .storage
        .fast
        .set_fast_tokens(&login.jid, agent, (!empty).then_some(&tokens), durable)
        .await;
    match (stored, new) {
        (Ok(()), Some(new)) => Some(
            Element::new("token", ns::FAST)
                .with_attr("expiry", stamp_from_unix(new.expiry))
                .with_attr("token", new.secret),
        ),
        (Ok(()), None) => None,
        (Err(e), _) => {
            // The login stands; without a stored token the client keeps using its own.
            warn!(error = %e, "storing FAST tokens failed");
            None
        }
    }
}

/// Keeps the clients holding tokens under `c2s.fast_max_clients`: a new client replaces
/// the one whose tokens expire first.
async fn make_room(ctx: &Arc<Context>, jid: &BareJid, agent: &str) {
    let clients = match ctx.storage.fast.fast_clients(jid).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "listing FAST clients failed");
            return;
        }
    };
    if clients.iter().any(|(a, _)| a == agent) || clients.len() < ctx.config.c2s.fast_max_clients {
        return;
    }
    let expiry = |t: &FastTokens| {
        [&t.new, &t.current]
            .into_iter()
            .flatten()
            .map(|t| t.expiry)
            .max()
            .unwrap_or(0)
    };
    let excess = clients.len() + 1 - ctx.config.c2s.fast_max_clients;
    let mut by_expiry: Vec<_> = clients.iter().map(|(a, t)| (expiry(t), a)).collect();
    by_expiry.sort_unstable();
    for (_, old) in by_expiry.into_iter().take(excess) {
        if let Err(e) = ctx.storage.fast.set_fast_tokens(jid, old, None, true).await {
            warn!(error = %e, "removing a FAST client failed");
        }
    }
}

/// Completes a SASL2 login that resumed a session: `<resumed/>` goes into `<success/>`,
/// and the features of the stream follow.
pub(super) fn resumed(
    ctx: &Context,
    conn: &mut Connection,
    state: &mut SessionState,
    resumed: Element,
) {
    match state.bound.sasl2.take() {
        Some(pending) => {
            let mut success = pending.success;
            success.push_child(resumed);
            conn.queue(&success);
            conn.queue(&negotiate::bound_features(ctx, false));
        }
        None => conn.queue(&resumed),
    }
}

/// Completes a Bind 2 login on the new session, before anything else is written to it:
/// switches on what the bind request asked for, then sends `<success/>` with `<bound/>`
/// and the session's stream features (XEP-0386 §3.2, XEP-0388 §2.6.1). Whether there
/// was such a login.
pub(super) fn finish(ctx: &Arc<Context>, conn: &mut Connection, state: &mut SessionState) -> bool {
    let Some(pending) = state.bound.sasl2.take() else {
        return false;
    };
    let PendingSuccess {
        mut success,
        inline,
        info,
    } = *pending;
    state.ext.insert(BoundByBind2);
    let mut bound = Element::new("bound", ns::BIND2);
    for el in info {
        bound.push_child(el);
    }
    let mut out = Vec::new();
    for request in &inline {
        if request.ns == sm::NS {
            // Once: a second `<enable/>` must not register a second resumption id.
            if request.name == "enable" && state.sm.is_none() {
                bound.push_child(super::session::enable_sm(ctx, state, request));
            }
            continue;
        }
        let Some(handler) = ctx.registry.bind_inline(&request.ns) else {
            continue;
        };
        if let Some(answer) = handler.enable(ctx, &mut state.module_view(&mut out), request) {
            bound.push_child(answer);
        }
    }
    success.push_child(bound);
    conn.queue(&success);
    conn.queue(&negotiate::bound_features(ctx, state.sm.is_none()));
    state.emit_all(ctx, Some(conn), out);
    true
}
