//! Sans-I/O stream negotiation (RFC 6120 §4–§7), one state machine for the three kinds of
//! stream: a client's stream to us, another server's stream to us, and our stream to
//! another server. It takes the parser's events and returns what to do; the async
//! drivers (`c2s::negotiate`, `s2s::inbound`, `s2s::outbound`) perform the actions (write,
//! TLS handshakes, SASL against storage, dialback, binding) and report back
//! (`tls_established`, `sasl_succeeded`, …). It owns the stream-level rules: headers
//! (namespaces, version, `to`/`from`, ids), the features round, restarts after TLS and
//! SASL, what may come when, and the stream errors for everything else.

use crate::addr;
use crate::stream::{Ending, StreamError, StreamErrorCondition, random_id};
use crate::xml::{Element, StreamEvent, StreamHeader, ns};

/// Which stream this is, and on which side we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A client's stream to us (`jabber:client`).
    Client,
    /// Another server's stream to us (`jabber:server`).
    ServerIn,
    /// Our stream to another server: we send the first header.
    ServerOut,
}

/// Settings the negotiator needs from the configuration.
pub struct Policy {
    pub role: Role,
    /// Ours when a header names no domain we host (an error follows) or names none.
    pub default_domain: String,
    /// TLS before SASL (`c2s.require_tls`) or dialback (`s2s.require_encryption`).
    pub tls_required: bool,
}

/// Our stream header: `id` is `None` on the initiating side (RFC 6120 §4.7.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub from: String,
    pub to: Option<String>,
    pub id: Option<String>,
}

/// What the driver is to do, in order.
#[derive(Debug)]
pub enum Action {
    /// Queue our stream header.
    SendHeader(Header),
    /// The peer's header was accepted: send this stage's features (answering side).
    SendFeatures,
    /// The peer's features (initiating side): what to ask for next is the driver's call.
    Features(Element),
    /// Answer `<proceed/>`, run the TLS handshake, then call `tls_established`.
    StartTls,
    /// Refuse a SASL request with this condition; the stream goes on.
    SaslFailure(&'static str),
    /// Run SASL for this `<auth/>`, then call `sasl_succeeded` or `sasl_failed`.
    Auth(Element),
    /// The client's `<response/>` in a running SASL exchange.
    SaslResponse(Element),
    /// The client aborted the running SASL exchange.
    SaslAbort,
    /// A resource-binding request on an authenticated client stream.
    Bind(Element),
    /// A dialback element (`db:result`, `db:verify`, XEP-0220) on a server stream to us.
    Dialback(Element),
    /// A stanza on a server stream to us with an authenticated domain.
    Stanza(Element),
    /// Any other element the stream allows at this point (client: XEP-0198 and module
    /// nonzas after authentication; initiating side: answers to what we sent).
    Element(Element),
    /// Close the stream, with a stream error if the ending has one.
    End(Ending),
    /// Initiating side: the peer is not one we can use; give up (no error is owed).
    Refuse(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's stream header.
    Header,
    /// Initiating side: waiting for the peer's features.
    Features,
    /// Features sent (or received): the negotiation steps.
    Open,
    /// A TLS handshake runs; nothing may be read until it is done.
    Tls,
    /// A SASL exchange runs (client streams: challenges and responses).
    Sasl,
    /// A stream error was decided; nothing more is accepted.
    Ended,
}

/// One stream's negotiation state; see the module docs.
pub struct Negotiator {
    policy: Policy,
    hosted: Box<dyn Fn(&str) -> bool + Send + Sync>,
    phase: Phase,
    secure: bool,
    /// Client: the authenticated bare JID. Server to us: the first authenticated domain.
    authenticated: Option<String>,
    /// Answering side: our domain, fixed by the first header. Initiating side: theirs.
    domain: Option<String>,
    /// The peer's `from` (server streams: its domain).
    peer: Option<String>,
    /// The current stream's id (ours when answering, theirs when initiating).
    stream_id: String,
    /// `xml:lang` of the peer's current header, if usable.
    lang: Option<String>,
    /// The running (or last) SASL exchange is SASL2 (XEP-0388): its responses and aborts
    /// are in that namespace, and success restarts no stream.
    sasl2: bool,
}

impl Negotiator {
    /// A negotiator for the answering side (`Role::Client`, `Role::ServerIn`); `hosted`
    /// tells which domains are ours.
    pub fn new(policy: Policy, hosted: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Negotiator {
            policy,
            hosted: Box::new(hosted),
            phase: Phase::Header,
            secure: false,
            authenticated: None,
            domain: None,
            peer: None,
            stream_id: String::new(),
            lang: None,
            sasl2: false,
        }
    }

    /// A negotiator for our stream from `local` to `remote` (`Role::ServerOut`); the
    /// driver performs `restart` first to send our header.
    pub fn initiating(local: &str, remote: &str, tls_required: bool) -> Self {
        let mut n = Negotiator::new(
            Policy {
                role: Role::ServerOut,
                default_domain: local.to_string(),
                tls_required,
            },
            |_| false,
        );
        n.domain = Some(remote.to_string());
        n
    }

    pub fn role(&self) -> Role {
        self.policy.role
    }

    /// TLS is established (or the transport is otherwise private, e.g. wss://).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.is_some()
    }

    /// Client: the authenticated bare JID; server to us: the first authenticated domain.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// Answering side: our domain on this stream; initiating side: the peer's.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The `from` domain of a server's header.
    pub fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn lang(&self) -> Option<&str> {
        self.lang.as_deref()
    }

    /// The transport is private without TLS (a WebSocket behind wss:// or loopback).
    pub fn set_secure(&mut self) {
        self.secure = true;
    }

    /// TLS is up: a new stream follows. Returns the actions of the restart.
    pub fn tls_established(&mut self) -> Vec<Action> {
        self.secure = true;
        self.restart()
    }

    /// SASL succeeded for `identity` (a bare JID, or a server's domain): a new stream
    /// follows. Returns the actions of the restart.
    pub fn sasl_succeeded(&mut self, identity: String) -> Vec<Action> {
        self.authenticated = Some(identity);
        self.restart()
    }

    /// Whether the running (or last) SASL exchange is SASL2: its elements are in that
    /// namespace.
    pub fn is_sasl2(&self) -> bool {
        self.sasl2
    }

    /// SASL2 succeeded for the bare JID `identity`: the stream goes on, authenticated
    /// (XEP-0388 has no restart).
    pub fn sasl2_succeeded(&mut self, identity: String) {
        self.authenticated = Some(identity);
        self.phase = Phase::Open;
    }

    /// The SASL exchange failed or was aborted; the stream goes on.
    pub fn sasl_failed(&mut self) {
        if self.phase == Phase::Sasl {
            self.phase = Phase::Open;
        }
    }

    /// A server stream to us has an authenticated domain (by dialback): its stanzas may
    /// now come.
    pub fn domain_authenticated(&mut self, domain: &str) {
        if self.authenticated.is_none() {
            self.authenticated = Some(domain.to_string());
        }
    }

    /// A new stream on the same transport (after TLS or SASL, and the initiating side's
    /// first): the answering side waits for a header, the initiating side sends one.
    pub fn restart(&mut self) -> Vec<Action> {
        self.phase = Phase::Header;
        if self.policy.role != Role::ServerOut {
            return Vec::new();
        }
        vec![Action::SendHeader(Header {
            from: self.policy.default_domain.clone(),
            to: self.domain.clone(),
            id: None,
        })]
    }

    /// Takes one event from the parser and says what to do.
    pub fn handle(&mut self, event: StreamEvent) -> Vec<Action> {
        let actions = match (self.phase, event) {
            (Phase::Ended, _) => Vec::new(),
            (_, StreamEvent::Close) => vec![Action::End(Ending::PeerClosed)],
            (Phase::Header, StreamEvent::Open(h)) => match self.policy.role {
                Role::ServerOut => self.their_header(h),
                _ => self.answer_header(h),
            },
            // Input during a TLS handshake belongs to no stream; a second header inside
            // a stream, or an element before one, breaks the XML document.
            (Phase::Tls, _) | (_, StreamEvent::Open(_)) | (Phase::Header, _) => {
                fail(StreamErrorCondition::NotWellFormed)
            }
            (Phase::Features, StreamEvent::Stanza(el)) => their_features(el),
            (Phase::Sasl, StreamEvent::Stanza(el)) => sasl_step(el, self.sasl2),
            (Phase::Open, StreamEvent::Stanza(el)) => match self.policy.role {
                Role::Client => self.client_element(el),
                Role::ServerIn => self.server_element(el),
                Role::ServerOut => their_element(el),
            },
        };
        for a in &actions {
            match a {
                Action::End(_) | Action::Refuse(_) => self.phase = Phase::Ended,
                Action::SendFeatures => self.phase = Phase::Open,
                Action::Features(_) => self.phase = Phase::Open,
                Action::StartTls => self.phase = Phase::Tls,
                Action::Auth(_) if self.policy.role == Role::Client => self.phase = Phase::Sasl,
                _ => {}
            }
        }
        actions
    }

    /// The answering side: our header first, so that any error is inside a stream (RFC
    /// 6120 §4.9.1.3), then the checks.
    fn answer_header(&mut self, h: StreamHeader) -> Vec<Action> {
        let client = self.policy.role == Role::Client;
        // Clients may address a JID's domain; servers name bare domains.
        let to = match client {
            true => {
                h.to.as_deref()
                    .and_then(addr::parse)
                    .map(|a| a.domain().as_str().to_string())
            }
            false => h.to.as_deref().and_then(domain_only),
        };
        let from = h.from.as_deref().and_then(domain_only);
        if client {
            self.lang = h
                .lang
                .clone()
                .filter(|l| !l.is_empty() && l.len() <= 35 && !l.contains(['\'', '"', '<', '&']));
        }
        self.stream_id = random_id();
        let ours = match client {
            true => to.clone(),
            false => to.clone().filter(|d| (self.hosted)(d)),
        }
        .unwrap_or_else(|| self.policy.default_domain.clone());
        let theirs = match client {
            true => self.authenticated.clone(),
            false => from.clone(),
        };
        let header = Action::SendHeader(Header {
            from: ours,
            to: theirs,
            id: Some(self.stream_id.clone()),
        });
        let content_ns = match client {
            true => ns::CLIENT,
            false => ns::SERVER,
        };
        let checked = check_header(&h, content_ns).and_then(|()| {
            let Some(to) = to.filter(|d| (self.hosted)(d)) else {
                return Err(StreamErrorCondition::HostUnknown.into());
            };
            // A restarted stream is for the same domain as the first.
            if self.domain.as_ref().is_some_and(|prev| *prev != to) {
                return Err(StreamErrorCondition::HostUnknown.into());
            }
            if !client && h.from.is_some() && from.is_none() {
                return Err(StreamErrorCondition::InvalidFrom.into());
            }
            Ok(to)
        });
        match checked {
            Ok(to) => {
                self.domain = Some(to);
                if !client {
                    self.peer = from;
                }
                vec![header, Action::SendFeatures]
            }
            Err(e) => vec![header, Action::End(Ending::Error(e))],
        }
    }

    /// The initiating side: the answer to our header.
    fn their_header(&mut self, h: StreamHeader) -> Vec<Action> {
        if h.default_ns.as_deref() != Some(ns::SERVER) || h.ns != ns::STREAM {
            return vec![Action::Refuse("not a server-to-server stream".into())];
        }
        self.stream_id = h.id.unwrap_or_default();
        self.phase = Phase::Features;
        Vec::new()
    }

    fn client_element(&mut self, el: Element) -> Vec<Action> {
        if self.authenticated.is_some() {
            if el.name == "iq" && el.has_child("bind", ns::BIND) {
                return vec![Action::Bind(el)];
            }
            // XEP-0198 resumption, module nonzas: the driver knows them (or refuses).
            return vec![Action::Element(el)];
        }
        if el.is("starttls", ns::TLS) && !self.secure {
            return vec![Action::StartTls];
        }
        if el.is("auth", ns::SASL) || el.is("authenticate", ns::SASL2) {
            self.sasl2 = el.ns == ns::SASL2;
            if !self.secure && self.policy.tls_required {
                return vec![Action::SaslFailure("encryption-required")];
            }
            return vec![Action::Auth(el)];
        }
        // An iq before authentication on an encrypted stream may be one a module answers
        // there (XEP-0077 registration); the driver refuses the others.
        if self.secure && el.name == "iq" && el.ns == ns::CLIENT {
            return vec![Action::Element(el)];
        }
        // Anything else before authentication is refused (RFC 6120 §6.4.1, §7.1).
        fail(StreamErrorCondition::NotAuthorized)
    }

    fn server_element(&mut self, el: Element) -> Vec<Action> {
        if el.is("starttls", ns::TLS) && !self.secure {
            return vec![Action::StartTls];
        }
        if el.is("auth", ns::SASL) {
            return vec![Action::Auth(el)];
        }
        if el.ns == ns::DIALBACK && matches!(el.name.as_str(), "result" | "verify") {
            if !self.secure && self.policy.tls_required {
                return vec![Action::End(Ending::Error(StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    "TLS is required before dialback",
                )))];
            }
            return vec![Action::Dialback(el)];
        }
        if self.authenticated.is_none() {
            // RFC 6120 §4.9.3.12: nothing but negotiation before a domain is authenticated.
            return fail(StreamErrorCondition::NotAuthorized);
        }
        if el.ns == ns::CLIENT && matches!(el.name.as_str(), "message" | "presence" | "iq") {
            return vec![Action::Stanza(el)];
        }
        fail(StreamErrorCondition::UnsupportedStanzaType)
    }
}

fn fail(condition: StreamErrorCondition) -> Vec<Action> {
    vec![Action::End(condition.into())]
}

/// The checks every answering side makes (RFC 6120 §4.7, §4.8).
fn check_header(h: &StreamHeader, content_ns: &str) -> Result<(), StreamError> {
    if h.ns != ns::STREAM || h.name != "stream" {
        return Err(StreamErrorCondition::InvalidNamespace.into());
    }
    if h.default_ns.as_deref() != Some(content_ns) {
        return Err(StreamErrorCondition::InvalidNamespace.into());
    }
    match h.version.as_deref() {
        Some(v) if v.starts_with("1.") => Ok(()),
        _ => Err(StreamErrorCondition::UnsupportedVersion.into()),
    }
}

/// A domain with neither node nor resource.
pub fn domain_only(s: &str) -> Option<String> {
    addr::parse_domain(s).map(|d| d.into_inner())
}

/// A running SASL exchange takes a response or an abort of its own profile, nothing
/// else (XEP-0388 §2.4: anything else ends the stream).
fn sasl_step(el: Element, sasl2: bool) -> Vec<Action> {
    let profile = if sasl2 { ns::SASL2 } else { ns::SASL };
    if el.is("abort", profile) {
        return vec![Action::SaslAbort];
    }
    if el.is("response", profile) {
        return vec![Action::SaslResponse(el)];
    }
    fail(StreamErrorCondition::NotAuthorized)
}

/// The initiating side: what follows the peer's header.
fn their_features(el: Element) -> Vec<Action> {
    if let Some(refused) = their_stream_error(&el) {
        return vec![refused];
    }
    if !el.is("features", ns::STREAM) {
        return vec![Action::Refuse("no stream features".into())];
    }
    vec![Action::Features(el)]
}

fn their_element(el: Element) -> Vec<Action> {
    match their_stream_error(&el) {
        Some(refused) => vec![refused],
        None => vec![Action::Element(el)],
    }
}

/// The peer's `<stream:error/>`: the stream is over.
fn their_stream_error(el: &Element) -> Option<Action> {
    if !el.is("error", ns::STREAM) {
        return None;
    }
    let condition = el
        .first_element()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    Some(Action::Refuse(format!("stream error {condition}")))
}

/// Drives a client-stream negotiator with arbitrary bytes through the stream parser, as
/// the c2s driver would; TLS and SASL succeed or fail by the input's own bytes, so that
/// restarts are reached too. For fuzz targets: it must never panic, whatever the bytes.
pub fn fuzz_c2s(bytes: &[u8]) {
    fuzz(Role::Client, bytes);
}

/// As [`fuzz_c2s`], for a server's stream to us and for ours to a server.
pub fn fuzz_s2s(bytes: &[u8]) {
    fuzz(Role::ServerIn, bytes);
    fuzz(Role::ServerOut, bytes);
}

fn fuzz(role: Role, bytes: &[u8]) {
    use crate::xml::{ParserLimits, StreamParser};
    let mut parser = StreamParser::new(ParserLimits {
        max_stanza_bytes: 16 * 1024,
        max_depth: 16,
        max_attributes: 32,
    });
    let mut neg = match role {
        Role::ServerOut => Negotiator::initiating("example.org", "example.net", true),
        _ => Negotiator::new(
            Policy {
                role,
                default_domain: "example.org".into(),
                tls_required: true,
            },
            |d| d == "example.org",
        ),
    };
    let _ = neg.restart();
    // In chunks, as reads come: a restart drops what the parser still held.
    for chunk in bytes.chunks(61) {
        if parser.feed(chunk).is_err() {
            return;
        }
        loop {
            let event = match parser.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) => return,
            };
            for action in neg.handle(event) {
                match action {
                    Action::End(_) | Action::Refuse(_) => return,
                    Action::StartTls => {
                        parser.reset();
                        let _ = neg.tls_established();
                    }
                    // SASL2 succeeds without a restart.
                    Action::Auth(el) if el.ns == ns::SASL2 && el.attrs.len() % 2 == 1 => {
                        neg.sasl2_succeeded("user@example.org".into())
                    }
                    Action::Auth(el) if el.text().len() % 2 == 0 => {
                        parser.reset();
                        let _ = neg.sasl_succeeded("user@example.org".into());
                    }
                    Action::Auth(_) | Action::SaslAbort => neg.sasl_failed(),
                    Action::Dialback(_) => neg.domain_authenticated("example.net"),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "example.org";

    fn client(tls_required: bool) -> Negotiator {
        Negotiator::new(
            Policy {
                role: Role::Client,
                default_domain: HOST.into(),
                tls_required,
            },
            |d| d == HOST,
        )
    }

    fn server_in() -> Negotiator {
        Negotiator::new(
            Policy {
                role: Role::ServerIn,
                default_domain: HOST.into(),
                tls_required: true,
            },
            |d| d == HOST,
        )
    }

    fn header(content_ns: &str, to: &str) -> StreamEvent {
        StreamEvent::Open(StreamHeader {
            name: "stream".into(),
            ns: ns::STREAM.into(),
            default_ns: Some(content_ns.into()),
            to: Some(to.into()),
            from: None,
            id: None,
            version: Some("1.0".into()),
            lang: Some("en".into()),
            prefixes: Vec::new(),
        })
    }

    fn el(name: &str, ns: &str) -> StreamEvent {
        StreamEvent::Stanza(Element::new(name, ns))
    }

    /// The stream error an action list ends with, if any.
    fn error(actions: &[Action]) -> Option<StreamErrorCondition> {
        actions.iter().find_map(|a| match a {
            Action::End(Ending::Error(e)) => Some(e.condition),
            _ => None,
        })
    }

    fn opened(actions: &[Action]) -> bool {
        matches!(
            actions,
            [Action::SendHeader(h), Action::SendFeatures] if h.from == HOST && h.id.is_some()
        )
    }

    #[test]
    fn client_negotiates_tls_sasl_and_binding() {
        let mut n = client(true);
        assert!(opened(&n.handle(header(ns::CLIENT, HOST))));
        assert!(matches!(
            n.handle(el("starttls", ns::TLS))[..],
            [Action::StartTls]
        ));
        // Nothing is read during the handshake; then a new stream.
        assert!(n.tls_established().is_empty());
        assert!(n.is_secure());
        assert!(opened(&n.handle(header(ns::CLIENT, HOST))));
        let auth = n.handle(el("auth", ns::SASL));
        assert!(matches!(auth[..], [Action::Auth(_)]));
        assert!(matches!(
            n.handle(el("response", ns::SASL))[..],
            [Action::SaslResponse(_)]
        ));
        n.sasl_succeeded("juliet@example.org".into());
        let restarted = n.handle(header(ns::CLIENT, HOST));
        // Our header now names the client (RFC 6120 §4.7.2).
        assert!(matches!(&restarted[..],
            [Action::SendHeader(h), Action::SendFeatures] if h.to.as_deref() == Some("juliet@example.org")));
        let bind = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_child(Element::new("bind", ns::BIND));
        assert!(matches!(
            n.handle(StreamEvent::Stanza(bind))[..],
            [Action::Bind(_)]
        ));
        // XEP-0198 and module nonzas go to the driver.
        assert!(matches!(
            n.handle(el("resume", "urn:xmpp:sm:3"))[..],
            [Action::Element(_)]
        ));
        assert_eq!(n.lang(), Some("en"));
        assert_eq!(n.domain(), Some(HOST));
    }

    #[test]
    fn elements_before_the_header_are_not_well_formed() {
        let mut n = client(false);
        let a = n.handle(el("message", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotWellFormed));
        // Ended: nothing more is acted on.
        assert!(n.handle(header(ns::CLIENT, HOST)).is_empty());
    }

    #[test]
    fn a_second_header_inside_a_stream_is_not_well_formed() {
        for mut n in [client(false), server_in()] {
            let content = match n.role() {
                Role::Client => ns::CLIENT,
                _ => ns::SERVER,
            };
            assert!(opened(&n.handle(header(content, HOST))));
            let a = n.handle(header(content, HOST));
            assert_eq!(error(&a), Some(StreamErrorCondition::NotWellFormed));
        }
    }

    #[test]
    fn headers_with_the_wrong_namespace_or_version_are_refused_inside_a_stream() {
        let mut n = client(false);
        let a = n.handle(header(ns::SERVER, HOST));
        // Our header first, so that the error is inside a stream.
        assert!(matches!(a[0], Action::SendHeader(_)));
        assert_eq!(error(&a), Some(StreamErrorCondition::InvalidNamespace));

        let mut n = client(false);
        let StreamEvent::Open(mut h) = header(ns::CLIENT, HOST) else {
            unreachable!()
        };
        h.ns = "urn:example:not-streams".into();
        let a = n.handle(StreamEvent::Open(h.clone()));
        assert_eq!(error(&a), Some(StreamErrorCondition::InvalidNamespace));

        let mut n = client(false);
        h.ns = ns::STREAM.into();
        h.version = None;
        let a = n.handle(StreamEvent::Open(h));
        assert_eq!(error(&a), Some(StreamErrorCondition::UnsupportedVersion));

        let mut n = server_in();
        let a = n.handle(header(ns::CLIENT, HOST));
        assert_eq!(error(&a), Some(StreamErrorCondition::InvalidNamespace));
    }

    #[test]
    fn unknown_hosts_and_a_changed_host_after_a_restart_are_refused() {
        let mut n = client(false);
        let a = n.handle(header(ns::CLIENT, "example.net"));
        assert_eq!(error(&a), Some(StreamErrorCondition::HostUnknown));

        let mut n = Negotiator::new(
            Policy {
                role: Role::Client,
                default_domain: HOST.into(),
                tls_required: false,
            },
            |d| d == HOST || d == "other.example",
        );
        assert!(opened(&n.handle(header(ns::CLIENT, HOST))));
        n.handle(el("auth", ns::SASL));
        n.sasl_succeeded("juliet@example.org".into());
        let a = n.handle(header(ns::CLIENT, "other.example"));
        assert_eq!(error(&a), Some(StreamErrorCondition::HostUnknown));
    }

    #[test]
    fn auth_before_tls_when_tls_is_required_is_refused() {
        let mut n = client(true);
        n.handle(header(ns::CLIENT, HOST));
        let a = n.handle(el("auth", ns::SASL));
        assert!(matches!(
            a[..],
            [Action::SaslFailure("encryption-required")]
        ));
        // The stream goes on; without the requirement, SASL may run in the clear.
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        assert!(matches!(
            n.handle(el("auth", ns::SASL))[..],
            [Action::Auth(_)]
        ));
    }

    #[test]
    fn stanzas_before_authentication_are_not_authorized() {
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        let a = n.handle(el("message", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));

        let mut n = server_in();
        n.handle(header(ns::SERVER, HOST));
        let a = n.handle(el("message", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));

        // An iq before TLS is refused; after TLS it goes to the driver (pre-auth modules).
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        let a = n.handle(el("iq", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        n.handle(el("starttls", ns::TLS));
        n.tls_established();
        n.handle(header(ns::CLIENT, HOST));
        assert!(matches!(
            n.handle(el("iq", ns::CLIENT))[..],
            [Action::Element(_)]
        ));
        let a = n.handle(el("message", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));
    }

    #[test]
    fn a_sasl2_exchange_takes_its_own_namespace_and_succeeds_without_a_restart() {
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        assert!(matches!(
            n.handle(el("authenticate", ns::SASL2))[..],
            [Action::Auth(_)]
        ));
        assert!(n.is_sasl2());
        assert!(matches!(
            n.handle(el("response", ns::SASL2))[..],
            [Action::SaslResponse(_)]
        ));
        n.sasl2_succeeded(format!("juliet@{HOST}"));
        assert!(n.is_authenticated());
        // No new header: the stream goes on, and a bind request is one.
        let bind = Element::new("iq", ns::CLIENT).with_child(Element::new("bind", ns::BIND));
        assert!(matches!(
            n.handle(StreamEvent::Stanza(bind))[..],
            [Action::Bind(_)]
        ));
        // A classic response inside a SASL2 exchange ends the stream.
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        n.handle(el("authenticate", ns::SASL2));
        let a = n.handle(el("response", ns::SASL));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));
    }

    #[test]
    fn a_sasl_exchange_takes_only_responses_and_aborts() {
        let mut n = client(false);
        n.handle(header(ns::CLIENT, HOST));
        n.handle(el("auth", ns::SASL));
        assert!(matches!(
            n.handle(el("abort", ns::SASL))[..],
            [Action::SaslAbort]
        ));
        n.sasl_failed();
        n.handle(el("auth", ns::SASL));
        let a = n.handle(el("message", ns::CLIENT));
        assert_eq!(error(&a), Some(StreamErrorCondition::NotAuthorized));
    }

    #[test]
    fn server_streams_need_tls_before_dialback_and_an_authenticated_domain_for_stanzas() {
        let mut n = server_in();
        n.handle(header(ns::SERVER, HOST));
        let a = n.handle(el("result", ns::DIALBACK));
        assert_eq!(error(&a), Some(StreamErrorCondition::PolicyViolation));

        let mut n = server_in();
        n.handle(header(ns::SERVER, HOST));
        n.handle(el("starttls", ns::TLS));
        n.tls_established();
        assert!(opened(&n.handle(header(ns::SERVER, HOST))));
        assert!(matches!(
            n.handle(el("result", ns::DIALBACK))[..],
            [Action::Dialback(_)]
        ));
        n.domain_authenticated("example.net");
        assert!(matches!(
            n.handle(el("message", ns::CLIENT))[..],
            [Action::Stanza(_)]
        ));
        let a = n.handle(el("thing", "urn:example:unknown"));
        assert_eq!(error(&a), Some(StreamErrorCondition::UnsupportedStanzaType));
    }

    #[test]
    fn a_server_header_with_an_invalid_from_is_refused() {
        let mut n = server_in();
        let StreamEvent::Open(mut h) = header(ns::SERVER, HOST) else {
            unreachable!()
        };
        h.from = Some("user@example.net".into());
        let a = n.handle(StreamEvent::Open(h));
        assert_eq!(error(&a), Some(StreamErrorCondition::InvalidFrom));
    }

    #[test]
    fn the_initiating_side_sends_its_header_and_takes_the_peers_features() {
        let mut n = Negotiator::initiating(HOST, "example.net", true);
        let start = n.restart();
        assert!(matches!(&start[..],
            [Action::SendHeader(h)] if h.from == HOST && h.to.as_deref() == Some("example.net") && h.id.is_none()));
        let StreamEvent::Open(mut h) = header(ns::SERVER, HOST) else {
            unreachable!()
        };
        h.id = Some("abc".into());
        assert!(n.handle(StreamEvent::Open(h)).is_empty());
        assert_eq!(n.stream_id(), "abc");
        assert!(matches!(
            n.handle(el("features", ns::STREAM))[..],
            [Action::Features(_)]
        ));
        assert!(matches!(
            n.handle(el("proceed", ns::TLS))[..],
            [Action::Element(_)]
        ));

        // A client stream, or a stream error instead of features, is refused.
        let mut n = Negotiator::initiating(HOST, "example.net", true);
        n.restart();
        assert!(matches!(
            n.handle(header(ns::CLIENT, HOST))[..],
            [Action::Refuse(_)]
        ));
        let mut n = Negotiator::initiating(HOST, "example.net", true);
        n.restart();
        n.handle(header(ns::SERVER, HOST));
        let error = Element::new("error", ns::STREAM)
            .with_child(Element::new("host-unknown", ns::STREAM_ERRORS));
        assert!(matches!(&n.handle(StreamEvent::Stanza(error))[..],
            [Action::Refuse(why)] if why == "stream error host-unknown"));
    }

    #[test]
    fn the_fuzz_entry_points_survive_garbage() {
        let inputs: &[&[u8]] = &[
            b"",
            b"\0\xff\xfe<<<>>>&&&",
            b"<message/>",
            b"</stream:stream>",
            b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
              xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>\
              <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
              <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
              to='example.org' version='1.0'><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>ab</auth>\
              <iq type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns:db='jabber:server:dialback' to='example.org' from='example.net' version='1.0'>\
              <db:result from='example.net' to='example.org'>k</db:result><message/>\
              <stream:stream xmlns='jabber:server'>",
        ];
        for input in inputs {
            fuzz_c2s(input);
            fuzz_s2s(input);
        }
        // Deterministic pseudo-random bytes, and the valid openings cut at every length.
        let mut x: u32 = 0x2545_f491;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        fuzz_c2s(&noise);
        fuzz_s2s(&noise);
        for input in &inputs[4..] {
            for cut in 0..input.len() {
                fuzz_c2s(&input[..cut]);
                fuzz_s2s(&input[..cut]);
            }
        }
    }
}
