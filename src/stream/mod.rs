//! RFC 6120 stream pieces shared by c2s and s2s: stream headers, stream errors and
//! stanza errors.

pub mod negotiate;

use crate::xml::escape::escape_attr;
use crate::xml::{Element, ns};

/// Stream-level error conditions (RFC 6120 §4.9.3) that this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamErrorCondition {
    BadFormat,
    Conflict,
    ConnectionTimeout,
    HostUnknown,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamErrorCondition {
    pub fn name(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostUnknown => "host-unknown",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }

    pub fn from_xml_error(err: &crate::xml::XmlError) -> Self {
        match err.condition() {
            "restricted-xml" => StreamErrorCondition::RestrictedXml,
            "policy-violation" => StreamErrorCondition::PolicyViolation,
            "bad-format" => StreamErrorCondition::BadFormat,
            _ => StreamErrorCondition::NotWellFormed,
        }
    }
}

/// A stream error to send before closing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::STREAM)
            .with_child(Element::new(self.condition.name(), ns::STREAM_ERRORS));
        if let Some(text) = &self.text {
            el.push_child(
                Element::new("text", ns::STREAM_ERRORS)
                    .with_attr("xml:lang", "en")
                    .with_text(text.clone()),
            );
        }
        el
    }
}

impl From<StreamErrorCondition> for StreamError {
    fn from(c: StreamErrorCondition) -> Self {
        StreamError::new(c)
    }
}

/// Our stream header (response side). `content_ns` is `jabber:client` or `jabber:server`.
pub fn response_header(
    content_ns: &str,
    from: &str,
    to: Option<&str>,
    id: &str,
    extra_ns: &[(&str, &str)],
) -> Vec<u8> {
    header(content_ns, from, to, Some(id), extra_ns)
}

pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// Which kind of stream a connection carries: what its headers declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// `jabber:client` (RFC 6120 §4.8.2).
    Client,
    /// `jabber:server` with the dialback prefix (XEP-0220).
    Server,
}

impl StreamKind {
    pub fn content_ns(self) -> &'static str {
        match self {
            StreamKind::Client => ns::CLIENT,
            StreamKind::Server => ns::SERVER,
        }
    }

    /// Our stream header: the answering side's (with `id`) or the initiating side's
    /// (no `id`, RFC 6120 §4.7.3).
    pub fn header(self, from: &str, to: Option<&str>, id: Option<&str>) -> Vec<u8> {
        let extra: &[(&str, &str)] = match self {
            StreamKind::Client => &[],
            StreamKind::Server => &[("db", ns::DIALBACK)],
        };
        match id {
            Some(id) => response_header(self.content_ns(), from, to, id, extra),
            None => initial_header(self.content_ns(), from, to, extra),
        }
    }
}

/// The initiating side's stream header (no id; RFC 6120 §4.7).
fn initial_header(
    content_ns: &str,
    from: &str,
    to: Option<&str>,
    extra_ns: &[(&str, &str)],
) -> Vec<u8> {
    header(content_ns, from, to, None, extra_ns)
}

/// A stream header; the responding side's carries the stream id and its language.
fn header(
    content_ns: &str,
    from: &str,
    to: Option<&str>,
    id: Option<&str>,
    extra_ns: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    escape_attr(content_ns, &mut out);
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.push(b'\'');
    for (prefix, uri) in extra_ns {
        out.extend_from_slice(b" xmlns:");
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr(uri, &mut out);
        out.push(b'\'');
    }
    out.extend_from_slice(b" version='1.0'");
    if let Some(id) = id {
        out.extend_from_slice(b" xml:lang='en' id='");
        escape_attr(id, &mut out);
        out.push(b'\'');
    }
    out.extend_from_slice(b" from='");
    escape_attr(from, &mut out);
    out.push(b'\'');
    if let Some(to) = to {
        out.extend_from_slice(b" to='");
        escape_attr(to, &mut out);
        out.push(b'\'');
    }
    out.push(b'>');
    out
}

/// Why a connection ends: what, if anything, is still said before closing.
#[derive(Debug)]
pub enum Ending {
    /// Send this stream error, then close.
    Error(StreamError),
    /// The peer closed its stream; answer with our close.
    PeerClosed,
    /// We close normally (idle, done).
    Close,
    /// The socket is gone (EOF, reset); nothing more can be sent.
    Gone,
    /// Send this prepared `<stream:error/>` (one with an application condition), then close.
    Custom(Element),
}

impl From<StreamErrorCondition> for Ending {
    fn from(c: StreamErrorCondition) -> Self {
        Ending::Error(StreamError::new(c))
    }
}

impl From<StreamError> for Ending {
    fn from(e: StreamError) -> Self {
        Ending::Error(e)
    }
}

/// The stream error for input the parser refused.
pub fn xml_ending(e: crate::xml::XmlError) -> Ending {
    Ending::Error(StreamError::with_text(
        StreamErrorCondition::from_xml_error(&e),
        e.to_string(),
    ))
}

/// A random identifier for stream ids, generated resources and stanza ids.
pub fn random_id() -> String {
    use rand::Rng;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 12] = rand::rng().random();
    // Per nibble, not `format!` per byte: ids are made several times per login.
    let mut s = String::with_capacity(24);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Stanza error types (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// A stanza error condition with its default type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub kind: ErrorType,
    pub condition: &'static str,
    pub text: Option<String>,
    /// An application-specific condition element (e.g. XEP-0191 `<blocked/>`).
    pub app: Option<Element>,
}

impl StanzaError {
    pub fn new(kind: ErrorType, condition: &'static str) -> Self {
        StanzaError {
            kind,
            condition,
            text: None,
            app: None,
        }
    }
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
    pub fn service_unavailable() -> Self {
        Self::new(ErrorType::Cancel, "service-unavailable")
    }
    pub fn feature_not_implemented() -> Self {
        Self::new(ErrorType::Cancel, "feature-not-implemented")
    }
    pub fn bad_request() -> Self {
        Self::new(ErrorType::Modify, "bad-request")
    }
    pub fn not_allowed() -> Self {
        Self::new(ErrorType::Cancel, "not-allowed")
    }
    pub fn forbidden() -> Self {
        Self::new(ErrorType::Auth, "forbidden")
    }
    pub fn item_not_found() -> Self {
        Self::new(ErrorType::Cancel, "item-not-found")
    }
    pub fn jid_malformed() -> Self {
        Self::new(ErrorType::Modify, "jid-malformed")
    }
    pub fn internal_server_error() -> Self {
        Self::new(ErrorType::Cancel, "internal-server-error")
    }
    pub fn resource_constraint() -> Self {
        Self::new(ErrorType::Wait, "resource-constraint")
    }
    pub fn remote_server_not_found() -> Self {
        Self::new(ErrorType::Cancel, "remote-server-not-found")
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::CLIENT)
            .with_attr("type", self.kind.name())
            .with_child(Element::new(self.condition, ns::STANZA_ERRORS));
        if let Some(text) = &self.text {
            el.push_child(
                Element::new("text", ns::STANZA_ERRORS)
                    .with_attr("xml:lang", "en")
                    .with_text(text.clone()),
            );
        }
        if let Some(app) = &self.app {
            el.push_child(app.clone());
        }
        el
    }
}

/// Builds the error reply to `stanza` (RFC 6120 §8.3.1): from/to swapped, original payload
/// kept, `type='error'`. Returns `None` for an error stanza, which is never answered.
pub fn error_reply(stanza: &Element, error: &StanzaError) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name.clone(), ns::CLIENT);
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    // Keep the original payload for context, except for huge stanzas' bodies? Keep all: the
    // stanza was already bounded by the size limit.
    if stanza.name != "iq" {
        for child in stanza.elements() {
            if child.name != "error" {
                reply.push_child(child.clone());
            }
        }
    } else if let Some(payload) = stanza.first_element() {
        reply.push_child(payload.clone());
    }
    reply.push_child(error.to_element());
    Some(reply)
}

/// Builds an iq result for `iq`, with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(p) = payload {
        reply.push_child(p);
    }
    reply
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_ids_are_24_lowercase_hex_digits_and_differ() {
        let a = super::random_id();
        let b = super::random_id();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
