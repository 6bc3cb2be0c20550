//! XEP-0077 In-Band Registration, with XEP-0445 pre-authenticated registration.
//!
//! - Before authentication, on encrypted streams only (a pre-auth handler): the
//!   registration form and account creation, when open registration is on
//!   (`registration.open`, off by default) or the client presented a valid invitation
//!   token first (`<preauth xmlns='urn:xmpp:pars:0'/>`, XEP-0445). Limited per client
//!   address, with a minimum password length and reserved names.
//! - After authentication: the account's own password change (refused on an unencrypted
//!   stream, XEP-0077 §3.3) and removal (§3.2), through the same admin paths as
//!   `xmppd user passwd|remove`.
// Stanza errors are returned by value across this module, as elsewhere in modules/.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::addr::BareJid;
use crate::admin::{self, AdminError, ErrorKind};
use crate::context::Context;
use crate::registry::{IqHandler, IqTarget, Module, PreAuthHandler, PreAuthStream, Registrar};
use crate::storage::Invite;
use crate::stream::{ErrorType, StanzaError, StreamErrorCondition, error_reply, iq_result};
use crate::xml::Element;

pub const NS: &str = "jabber:iq:register";
/// The stream feature: registration is possible on this stream.
pub const FEATURE: &str = "http://jabber.org/features/iq-register";
/// XEP-0379/XEP-0445 pre-authentication tokens.
pub const NS_PARS: &str = "urn:xmpp:pars:0";
/// XEP-0445's stream feature: invitation tokens are accepted.
pub const FEATURE_IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";
const DATA_FORMS: &str = "jabber:x:data";

pub struct Register;

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let limiter = Arc::new(RateLimiter::new(&r.config().registration));
        r.iq(Arc::new(AccountRequests));
        r.pre_auth(Arc::new(PreAuthRegistration { limiter }));
    }
}

/// Accounts created per client address within a window.
struct RateLimiter {
    max: u32,
    window: Duration,
    tracked: usize,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    fn new(cfg: &crate::config::RegistrationConfig) -> Self {
        RateLimiter {
            max: cfg.max_per_ip,
            window: Duration::from_secs(cfg.rate_window_secs),
            tracked: cfg.tracked_ips,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < self.window => *n < self.max,
            _ => self.max > 0,
        }
    }

    fn record(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.tracked && !seen.contains_key(&ip) {
            let window = self.window;
            seen.retain(|_, (start, _)| now.duration_since(*start) < window);
            // Still full: forget the oldest window rather than grow.
            if seen.len() >= self.tracked
                && let Some(oldest) = seen.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// A token this stream presented and the server accepted (XEP-0445): its expiry was
/// checked then, and is not checked again for this stream.
struct AcceptedToken {
    token: String,
    accepted_at: u64,
    username: Option<String>,
}

/// Refused tokens and registrations on this stream.
#[derive(Default)]
struct Failures(u32);

fn text_error(kind: ErrorType, condition: &'static str, text: &str) -> StanzaError {
    StanzaError::new(kind, condition).with_text(text)
}

fn reply(iq: &Element, outcome: Result<Option<Element>, StanzaError>) -> Element {
    match outcome {
        Ok(payload) => iq_result(iq, payload),
        // `error_reply` is `None` only for an error stanza, which the caller never passes.
        Err(e) => error_reply(iq, &e).unwrap_or_else(|| iq_result(iq, None)),
    }
}

/// Registration before authentication.
struct PreAuthRegistration {
    limiter: Arc<RateLimiter>,
}

#[async_trait]
impl PreAuthHandler for PreAuthRegistration {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS, NS_PARS]
    }

    fn stream_features(&self, ctx: &Context, _domain: &str) -> Vec<Element> {
        let mut out = Vec::new();
        if ctx.config.invites.enabled {
            out.push(Element::new("register", FEATURE_IBR_TOKEN));
        }
        if ctx.config.invites.enabled || ctx.config.registration.open {
            out.push(Element::new("register", FEATURE));
        }
        out
    }

    async fn handle(
        &self,
        ctx: &Arc<Context>,
        stream: &mut PreAuthStream<'_>,
        iq: &Element,
    ) -> Result<Element, StreamErrorCondition> {
        // Client streams' iqs are not answered with errors to errors.
        if !matches!(iq.attr("type"), Some("get" | "set")) || iq.attr("id").is_none() {
            return Err(StreamErrorCondition::NotAuthorized);
        }
        let Some(payload) = iq.first_element() else {
            return Err(StreamErrorCondition::NotAuthorized);
        };
        let outcome = match (payload.ns.as_str(), iq.attr("type")) {
            (NS_PARS, Some("set")) if payload.name == "preauth" => {
                preauth(ctx, stream, payload).await
            }
            (NS, Some("get")) => Ok(Some(form(ctx, stream))),
            (NS, Some("set")) => self.create(ctx, stream, payload).await,
            _ => Err(StanzaError::bad_request()),
        };
        if outcome.is_err() {
            let failures = stream.ext.get_or_insert_with(Failures::default);
            failures.0 += 1;
            // Guessing tokens or names on one stream ends it, as failed SASL does.
            if failures.0 > ctx.config.limits.max_auth_attempts {
                return Err(StreamErrorCondition::PolicyViolation);
            }
        }
        Ok(reply(iq, outcome))
    }
}

/// XEP-0445 §4: checks a token; single-use tokens are used only by the registration.
async fn preauth(
    ctx: &Arc<Context>,
    stream: &mut PreAuthStream<'_>,
    payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    let invalid = || {
        text_error(
            ErrorType::Cancel,
            "item-not-found",
            "The provided token is invalid or expired",
        )
    };
    if !ctx.config.invites.enabled {
        return Err(invalid());
    }
    let token = payload.attr("token").unwrap_or_default();
    let Some(invite) = admin::invites::valid(&ctx.storage, token).await else {
        return Err(invalid());
    };
    if !invite.register || invite.domain != stream.domain {
        return Err(invalid());
    }
    stream.ext.insert(AcceptedToken {
        token: invite.token.clone(),
        accepted_at: admin::invites::now_secs(),
        username: invite.username.clone(),
    });
    Ok(None)
}

/// The XEP-0077 registration form (§3.1): the fields we need, prefilled with a name the
/// invitation reserved.
fn form(ctx: &Context, stream: &PreAuthStream<'_>) -> Element {
    let reserved = stream
        .ext
        .get::<AcceptedToken>()
        .and_then(|t| t.username.clone());
    let mut username = Element::new("username", NS);
    if let Some(name) = reserved {
        username = username.with_text(name);
    }
    let min = ctx.config.registration.min_password_length;
    Element::new("query", NS)
        .with_child(Element::new("instructions", NS).with_text(format!(
            "Choose a user name and a password of at least {min} characters."
        )))
        .with_child(username)
        .with_child(Element::new("password", NS))
}

/// `username` and `password` from the legacy fields or a data form (XEP-0077 §6).
fn submitted(query: &Element) -> (Option<String>, Option<String>) {
    if let Some(x) = query.child("x", DATA_FORMS) {
        let field = |var: &str| {
            x.elements()
                .find(|f| f.name == "field" && f.attr("var") == Some(var))
                .and_then(|f| f.child_text("value", DATA_FORMS))
        };
        return (field("username"), field("password"));
    }
    (
        query.child_text("username", NS),
        query.child_text("password", NS),
    )
}

/// Whether a new password is long enough (`registration.min_password_length`).
pub fn check_password(ctx: &Context, password: &str) -> Result<(), StanzaError> {
    let min = ctx.config.registration.min_password_length;
    if password.chars().count() < min {
        return Err(text_error(
            ErrorType::Modify,
            "not-acceptable",
            &format!("The password must have at least {min} characters."),
        ));
    }
    Ok(())
}

fn admin_error(e: &AdminError) -> StanzaError {
    match e.kind() {
        ErrorKind::UserExists => StanzaError::new(ErrorType::Cancel, "conflict"),
        ErrorKind::InvalidJid | ErrorKind::InvalidPassword => {
            text_error(ErrorType::Modify, "not-acceptable", &e.to_string())
        }
        ErrorKind::NoSuchUser => StanzaError::item_not_found(),
        _ => {
            tracing::warn!(error = %e, "account operation failed");
            StanzaError::internal_server_error()
        }
    }
}

impl PreAuthRegistration {
    async fn create(
        &self,
        ctx: &Arc<Context>,
        stream: &mut PreAuthStream<'_>,
        query: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if query.has_child("remove", NS) {
            // Nothing to cancel before authentication (XEP-0077 §3.2).
            return Err(StanzaError::new(ErrorType::Cancel, "unexpected-request"));
        }
        let token = stream.ext.get::<AcceptedToken>();
        if token.is_none() && !ctx.config.registration.open {
            return Err(text_error(
                ErrorType::Cancel,
                "not-allowed",
                "Registration needs an invitation on this server.",
            ));
        }
        let (Some(username), Some(password)) = submitted(query) else {
            return Err(StanzaError::new(ErrorType::Modify, "not-acceptable"));
        };
        let now = Instant::now();
        if let Some(ip) = stream.peer_ip
            && !self.limiter.allows(ip, now)
        {
            tracing::info!(%ip, "registration refused: too many from this address");
            return Err(text_error(
                ErrorType::Wait,
                "resource-constraint",
                "Too many registrations from this address; try again later.",
            ));
        }
        let jid = admin::account_jid(
            &ctx.config,
            &format!("{}@{}", username.trim(), stream.domain),
        )
        .map_err(|e| admin_error(&e))?;
        let node = jid
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        if let Some(t) = token
            && t.username.as_deref().is_some_and(|u| u != node)
        {
            return Err(text_error(
                ErrorType::Modify,
                "not-acceptable",
                "This invitation is for another user name.",
            ));
        }
        let own_token = token.map(|t| t.token.clone());
        if is_reserved(ctx, &node, own_token.as_deref()).await {
            return Err(text_error(
                ErrorType::Cancel,
                "conflict",
                "This user name is reserved.",
            ));
        }
        check_password(ctx, &password)?;
        match ctx.storage.accounts.get(&jid).await {
            Ok(Some(_)) => return Err(StanzaError::new(ErrorType::Cancel, "conflict")),
            Ok(None) => {}
            Err(e) => return Err(super::internal(e)),
        }
        // The invitation's use is taken before the account exists: a token racing itself
        // cannot create two accounts.
        let invite = match stream.ext.remove::<AcceptedToken>() {
            Some(t) => match ctx
                .storage
                .invites
                .use_invite(&t.token, t.accepted_at)
                .await
            {
                Ok(Some(invite)) => Some(invite),
                Ok(None) => {
                    return Err(text_error(
                        ErrorType::Cancel,
                        "not-allowed",
                        "The invitation is no longer valid.",
                    ));
                }
                Err(e) => return Err(super::internal(e)),
            },
            None => None,
        };
        admin::live::add_account(ctx, &jid, &password)
            .await
            .map_err(|e| admin_error(&e))?;
        if let Some(ip) = stream.peer_ip {
            self.limiter.record(ip, now);
        }
        tracing::info!(%jid, invited = invite.is_some(), "account registered in-band");
        if let Some(invite) = invite {
            invited(ctx, &jid, &invite).await;
        }
        Ok(None)
    }
}

/// What an invitation gives the account registered with it: admin rights, and the
/// inviter as a mutual contact (XEP-0401 §5.6).
async fn invited(ctx: &Arc<Context>, jid: &BareJid, invite: &Invite) {
    if invite.admin
        && let Err(e) = ctx.storage.invites.set_admin(jid, true).await
    {
        tracing::warn!(error = %e, %jid, "recording an admin invitation failed");
    }
    if let Some(inviter) = &invite.inviter
        && let Err(e) = super::invites::make_mutual(ctx, inviter, jid).await
    {
        tracing::warn!(error = %e, %jid, "adding the inviter as a contact failed");
    }
}

/// Whether `node` may not be registered: configured as reserved, or reserved by a valid
/// invitation other than `own_token`.
async fn is_reserved(ctx: &Context, node: &str, own_token: Option<&str>) -> bool {
    if ctx
        .config
        .registration
        .reserved_names
        .iter()
        .any(|r| r.eq_ignore_ascii_case(node))
    {
        return true;
    }
    let now = admin::invites::now_secs();
    match ctx.storage.invites.invites().await {
        Ok(all) => all.iter().any(|i| {
            i.is_valid(now)
                && i.username.as_deref() == Some(node)
                && Some(i.token.as_str()) != own_token
        }),
        Err(e) => {
            tracing::warn!(error = %e, "reading invitations failed");
            true
        }
    }
}

/// XEP-0077 for an authenticated account: its registration, password change, removal.
struct AccountRequests;

#[async_trait]
impl IqHandler for AccountRequests {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let user = own_request(target, iq)?;
        let Some(query) = iq.child("query", NS) else {
            return Err(StanzaError::bad_request());
        };
        match iq.attr("type") {
            Some("get") => Ok(Some(
                Element::new("query", NS)
                    .with_child(Element::new("registered", NS))
                    .with_child(
                        Element::new("username", NS)
                            .with_text(user.node().map(|n| n.as_str()).unwrap_or_default()),
                    ),
            )),
            Some("set") if query.has_child("remove", NS) => {
                if query.elements().count() != 1 {
                    return Err(StanzaError::bad_request());
                }
                admin::remove_user(&ctx.storage, user.as_str())
                    .await
                    .map_err(|e| admin_error(&e))?;
                tracing::info!(jid = %user, "account removed by its owner");
                Ok(None)
            }
            Some("set") => change_own_password(ctx, &user, iq, query).await,
            _ => Err(StanzaError::bad_request()),
        }
    }

    async fn after_result(&self, ctx: &Arc<Context>, target: &IqTarget, iq: &Element) {
        let Ok(user) = own_request(target, iq) else {
            return;
        };
        if iq
            .child("query", NS)
            .is_some_and(|q| q.has_child("remove", NS))
        {
            // XEP-0077 §3.2: the sessions end with not-authorized; modules drop the rest.
            admin::live::after_change(ctx, &admin::control::AdminEvent::Removed(user.to_string()));
        }
    }
}

/// The requesting account, for requests to its own server or to itself.
fn own_request(target: &IqTarget, iq: &Element) -> Result<BareJid, StanzaError> {
    let Some(from) = super::requester_bare(iq) else {
        return Err(StanzaError::bad_request());
    };
    let own = match target {
        IqTarget::Server(d) => from.domain().as_str() == d.as_str(),
        IqTarget::Account(a) => *a == from,
    };
    if !own || from.node().is_none() {
        return Err(StanzaError::forbidden());
    }
    Ok(from)
}

async fn change_own_password(
    ctx: &Arc<Context>,
    user: &BareJid,
    iq: &Element,
    query: &Element,
) -> Result<Option<Element>, StanzaError> {
    // The new password travels in the clear inside the stream: only over TLS (§3.3).
    let from = iq.attr("from").and_then(crate::addr::parse_full);
    let secure = from
        .and_then(|f| ctx.sessions.get(user, f.resource().as_str()))
        .is_some_and(|s| s.secure);
    if !secure {
        return Err(text_error(
            ErrorType::Modify,
            "not-authorized",
            "Password changes need an encrypted connection.",
        ));
    }
    let (username, password) = submitted(query);
    let (Some(username), Some(password)) = (username, password) else {
        return Err(StanzaError::bad_request());
    };
    let own_node = user.node().map(|n| n.as_str()).unwrap_or_default();
    let named = crate::addr::parse_bare(&format!("{}@{}", username.trim(), user.domain()));
    if named.as_ref() != Some(user) || own_node.is_empty() {
        return Err(StanzaError::bad_request());
    }
    // An empty password never replaces the current one (§3.3).
    if password.is_empty() {
        return Err(StanzaError::bad_request());
    }
    check_password(ctx, &password)?;
    admin::live::change_password(ctx, user, &password, false)
        .await
        .map_err(|e| admin_error(&e))?;
    tracing::info!(jid = %user, "password changed by its owner");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_per_address_and_window() {
        let cfg = crate::config::RegistrationConfig {
            max_per_ip: 2,
            rate_window_secs: 60,
            tracked_ips: 2,
            ..Default::default()
        };
        let l = RateLimiter::new(&cfg);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.allows(a, t0));
        l.record(a, t0);
        l.record(a, t0);
        assert!(!l.allows(a, t0));
        assert!(l.allows(b, t0));
        assert!(l.allows(a, t0 + Duration::from_secs(61)));
        // The table stays bounded.
        for i in 0..10u8 {
            l.record(IpAddr::from([198, 51, 100, i]), t0);
        }
        assert!(l.seen.lock().unwrap().len() <= 2);
    }
}
