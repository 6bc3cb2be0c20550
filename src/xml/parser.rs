//! Incremental, bounded parser for XMPP streams (RFC 6120 §4, §11): bytes in, stream
//! events out.
//!
//! The [framer](super::framer) cuts the input into the stream header, complete stanzas
//! and the stream end while enforcing size and depth limits; each unit is then parsed
//! with quick-xml's `NsReader`, seeded with the namespace bindings of the stream header
//! so `stream:`/`db:` prefixes and the stanza default namespace resolve.

use std::borrow::Cow;
use std::cell::RefCell;

use quick_xml::XmlVersion;
use quick_xml::escape::EscapeError;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesDecl, BytesStart, Event};
use quick_xml::name::{
    Namespace, NamespaceError, NamespaceResolver, PrefixDeclaration, QName, ResolveResult,
};
use quick_xml::{NsReader, Reader};

use super::element::{Element, Node};
use super::framer::{FrameKind, Framer};
use super::ns;

/// Namespace bindings a stanza may have in scope on top of those of the stream header.
const STANZA_NS_BINDINGS: usize = 32;

#[derive(Clone, Copy, Debug)]
pub struct ParserLimits {
    /// Largest stanza (and largest prologue + stream header), in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza; the stanza element itself is depth 1.
    pub max_depth: usize,
    /// Most attributes (namespace declarations included) on one element.
    pub max_attributes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// Local name, expected "stream".
    pub name: String,
    /// Resolved namespace of the root, expected `http://etherx.jabber.org/streams`.
    pub ns: String,
    /// The `xmlns` of the header: `jabber:client` / `jabber:server`.
    pub default_ns: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// Prefixed namespace declarations on the header other than the root's own prefix
    /// (`stream`), e.g. `db` -> `jabber:server:dialback`.
    pub prefixes: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Open(StreamHeader),
    Stanza(Element),
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    #[error("bad format: {0}")]
    BadFormat(String),
}

impl XmlError {
    /// The RFC 6120 stream error condition to answer with.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::PolicyViolation(_) => "policy-violation",
            XmlError::BadFormat(_) => "bad-format",
        }
    }
}

fn not_well_formed(msg: impl Into<String>) -> XmlError {
    XmlError::NotWellFormed(msg.into())
}

impl From<quick_xml::Error> for XmlError {
    fn from(e: quick_xml::Error) -> Self {
        match &e {
            quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name)) => {
                XmlError::RestrictedXml(format!("reference to undeclared entity '{name}'"))
            }
            quick_xml::Error::Escape(EscapeError::TooManyNestedEntities) => {
                XmlError::RestrictedXml(e.to_string())
            }
            quick_xml::Error::Namespace(ns_err) => ns_error(ns_err),
            _ => XmlError::NotWellFormed(e.to_string()),
        }
    }
}

fn ns_error(e: &NamespaceError) -> XmlError {
    match e {
        NamespaceError::TooManyBindings(_) | NamespaceError::TooDeeplyNested(_) => {
            XmlError::PolicyViolation(e.to_string())
        }
        _ => XmlError::NotWellFormed(e.to_string()),
    }
}

/// What the stanzas of a stream inherit from its header.
#[derive(Debug, Default)]
struct StreamContext {
    /// Qualified name of the root, to check the end tag against.
    root_qname: String,
    default_ns: Option<String>,
    /// Every prefixed declaration of the header, the root's own prefix included.
    prefixes: Vec<(String, String)>,
}

/// A resolver seeded with the bindings of a stream header, as stanzas start from it.
struct SeededResolver {
    default_ns: Option<String>,
    prefixes: Vec<(String, String)>,
    resolver: NamespaceResolver,
    /// The open elements of the stanza being parsed; empty between stanzas. Kept for
    /// its room, per thread as the resolver is: not per connection, where it would stay
    /// with every idle one.
    stack: Vec<Element>,
}

impl SeededResolver {
    fn new(context: &StreamContext) -> Result<Self, XmlError> {
        let inherited = context.prefixes.len() + usize::from(context.default_ns.is_some());
        let mut resolver = NamespaceResolver::default();
        resolver.set_max_namespace_bindings(inherited + STANZA_NS_BINDINGS);
        if let Some(default_ns) = &context.default_ns {
            resolver
                .add(PrefixDeclaration::Default, Namespace(default_ns))
                .map_err(|e| ns_error(&e))?;
        }
        for (prefix, uri) in &context.prefixes {
            resolver
                .add(PrefixDeclaration::Named(prefix), Namespace(uri))
                .map_err(|e| ns_error(&e))?;
        }
        Ok(SeededResolver {
            default_ns: context.default_ns.clone(),
            prefixes: context.prefixes.clone(),
            resolver,
            stack: Vec::new(),
        })
    }

    fn serves(&self, context: &StreamContext) -> bool {
        self.default_ns == context.default_ns && self.prefixes == context.prefixes
    }
}

thread_local! {
    /// The resolver the last stanza parsed on this thread started from. Building one per
    /// stanza (three allocations, the header's bindings declared again) was a tenth of
    /// parsing a message, and one per stream stayed with every idle connection; nearly
    /// all streams of a server declare the same bindings (`jabber:client` and the
    /// `stream` prefix), so one per thread is rarely seeded again.
    static RESOLVER: RefCell<Option<SeededResolver>> = const { RefCell::new(None) };
}

/// Sans-I/O XMPP stream parser. See the module docs.
pub struct StreamParser {
    limits: ParserLimits,
    framer: Framer,
    /// Set once the header has been parsed.
    context: Option<StreamContext>,
    /// The error that killed the parser; returned by every later call.
    dead: Option<XmlError>,
}

impl StreamParser {
    pub fn new(limits: ParserLimits) -> Self {
        StreamParser {
            limits,
            framer: Framer::new(limits.max_stanza_bytes, limits.max_depth),
            context: None,
            dead: None,
        }
    }

    /// Appends received bytes. Callers feed chunks of at most a few KiB and drain events
    /// (`next_event` until `Ok(None)`) before feeding again. Errors (PolicyViolation)
    /// rather than buffer more than `max_stanza_bytes` of an incomplete stanza (plus the
    /// chunk being fed). Input after the end of the stream is ignored.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), XmlError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let result = self.framer.feed(data);
        if let Err(e) = &result {
            self.dead = Some(e.clone());
        }
        result
    }

    /// Next complete event, `Ok(None)` if more bytes are needed. After an error the
    /// parser is dead: every later call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let result = self.step();
        if let Err(e) = &result {
            self.dead = Some(e.clone());
        }
        result
    }

    /// Forgets everything and expects a fresh stream header (after STARTTLS and SASL
    /// success, RFC 6120 §5.4.3.3 / §6.4.6). Discards any buffered bytes.
    pub fn reset(&mut self) {
        self.framer.reset();
        self.context = None;
        self.dead = None;
    }

    /// Bytes currently buffered (for tests/metrics).
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    fn step(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if self.framer.is_closed() {
            return Ok(None);
        }
        let Some(frame) = self.framer.next_frame()? else {
            return Ok(None);
        };
        let bytes = self.framer.bytes(&frame);
        match frame.kind {
            FrameKind::Header => {
                let (header, context) = parse_header(bytes, &self.limits)?;
                self.context = Some(context);
                Ok(Some(StreamEvent::Open(header)))
            }
            FrameKind::Stanza => {
                let context = self
                    .context
                    .as_ref()
                    .ok_or_else(|| not_well_formed("stanza before the stream header"))?;
                let element = parse_stanza(bytes, context, &self.limits)?;
                Ok(Some(StreamEvent::Stanza(element)))
            }
            FrameKind::Close => {
                let context = self
                    .context
                    .as_ref()
                    .ok_or_else(|| not_well_formed("end tag before the stream header"))?;
                // The frame is `</` name whitespace? `>`.
                let name = bytes
                    .get(2..bytes.len().saturating_sub(1))
                    .unwrap_or_default()
                    .trim_ascii_end();
                if name != context.root_qname.as_bytes() {
                    return Err(not_well_formed("end tag does not match the stream header"));
                }
                Ok(Some(StreamEvent::Close))
            }
        }
    }
}

/// UTF-8 check for a whole unit, plus the non-characters U+FFFE/U+FFFF that Rust strings
/// allow and XML does not.
fn to_str(bytes: &[u8]) -> Result<&str, XmlError> {
    let s = std::str::from_utf8(bytes).map_err(|_| not_well_formed("invalid UTF-8"))?;
    // Both are encoded EF BF BE / EF BF BF. memchr scans a word at a time; a byte loop
    // here cost as much as the UTF-8 check itself.
    for i in memchr::memchr_iter(0xEF, bytes) {
        if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) {
            return Err(not_well_formed("U+FFFE/U+FFFF are not XML characters"));
        }
    }
    Ok(s)
}

/// XML 1.0 `Char` production.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A conservative check of XML (qualified) names: quick-xml only splits on delimiters,
/// and a name carrying quotes or `=` would corrupt the XML we write back out.
/// Both the prefix and the local part must be names of their own (`NCName`): the local
/// part is written back without the prefix, so `x:0a` would come out as the invalid `0a`.
/// One pass over a byte table: every element and attribute name of every stanza comes
/// through here.
fn check_name(name: &str) -> Result<(), XmlError> {
    let mut part_empty = true;
    let mut colons = 0;
    for &b in name.as_bytes() {
        match NAME_BYTE[usize::from(b)] {
            NameByte::Start => part_empty = false,
            NameByte::Follow if !part_empty => {}
            NameByte::Colon if !part_empty && colons == 0 => {
                colons += 1;
                part_empty = true;
            }
            _ => return Err(not_well_formed(format!("invalid name '{name}'"))),
        }
    }
    if part_empty {
        // Empty, or empty after its prefix.
        return Err(not_well_formed(format!("invalid name '{name}'")));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NameByte {
    /// May start a name part: ASCII letters, `_`, and every byte of a non-ASCII character.
    Start,
    /// Only after the first: digits, `-` and `.`.
    Follow,
    /// Between prefix and local part.
    Colon,
    Invalid,
}

const NAME_BYTE: [NameByte; 256] = {
    let mut table = [NameByte::Invalid; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c >= 0x80 || c.is_ascii_alphabetic() || c == b'_' {
            NameByte::Start
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            NameByte::Follow
        } else if c == b':' {
            NameByte::Colon
        } else {
            NameByte::Invalid
        };
        b += 1;
    }
    table
};

/// The normalized, unescaped value of an attribute.
fn attr_value<'a>(attr: &Attribute<'a>) -> Result<Cow<'a, str>, XmlError> {
    let value = attr.normalized_value(XmlVersion::Implicit1_0)?;
    // Literal characters were checked by the framer; references may produce others.
    if attr.value.contains("&#") && !value.chars().all(is_xml_char) {
        return Err(not_well_formed(
            "character reference to a non-XML character",
        ));
    }
    Ok(value)
}

/// The namespace a resolver result stands for. quick-xml keeps declaration values raw,
/// so a value containing a reference is unescaped here.
fn namespace_of(result: ResolveResult<'_>) -> Result<String, XmlError> {
    match result {
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Bound(Namespace(uri)) => {
            if uri.contains('&') {
                let uri = quick_xml::escape::unescape(uri)
                    .map_err(|e| XmlError::from(quick_xml::Error::Escape(e)))?;
                // As in attribute values: a reference must not smuggle in a character
                // that no XML can carry, which every stanza written with it would repeat.
                if !uri.chars().all(is_xml_char) {
                    return Err(not_well_formed(
                        "character reference to a non-XML character",
                    ));
                }
                Ok(uri.into_owned())
            } else {
                Ok(uri.to_owned())
            }
        }
        ResolveResult::Unknown(prefix) => Err(not_well_formed(format!(
            "undeclared namespace prefix '{prefix}'"
        ))),
    }
}

fn check_decl(decl: &BytesDecl<'_>) -> Result<(), XmlError> {
    let version = decl.version()?;
    if !version.starts_with("1.") {
        return Err(not_well_formed(format!(
            "unsupported XML version '{version}'"
        )));
    }
    if let Some(encoding) = decl.encoding() {
        let encoding = encoding.map_err(|e| not_well_formed(e.to_string()))?;
        // RFC 6120 §11.6: UTF-8 only.
        if !encoding.eq_ignore_ascii_case("UTF-8") {
            return Err(not_well_formed(format!(
                "unsupported encoding '{encoding}'"
            )));
        }
    }
    Ok(())
}

fn restricted_event(event: &Event<'_>) -> XmlError {
    let what = match event {
        Event::Comment(_) => "comment",
        Event::PI(_) => "processing instruction",
        Event::DocType(_) => "DOCTYPE",
        _ => "XML declaration",
    };
    XmlError::RestrictedXml(what.into())
}

fn parse_header(
    bytes: &[u8],
    limits: &ParserLimits,
) -> Result<(StreamHeader, StreamContext), XmlError> {
    let text = to_str(bytes)?;
    let mut reader = NsReader::from_str(text);
    reader
        .resolver_mut()
        .set_max_namespace_bindings(limits.max_attributes);
    loop {
        let event = reader.read_event()?;
        match event {
            Event::Decl(decl) => check_decl(&decl)?,
            // The framer only lets whitespace through here.
            Event::Text(_) => {}
            Event::Start(start) => return header_from_start(&start, reader.resolver(), limits),
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {
                return Err(restricted_event(&event));
            }
            _ => return Err(not_well_formed("expected the stream header")),
        }
    }
}

fn header_from_start(
    start: &BytesStart<'_>,
    resolver: &NamespaceResolver,
    limits: &ParserLimits,
) -> Result<(StreamHeader, StreamContext), XmlError> {
    let qname = start.name();
    check_name(qname.as_ref())?;
    let (result, local) = resolver.resolve_element(qname);
    let mut header = StreamHeader {
        name: local.as_ref().to_owned(),
        ns: namespace_of(result)?,
        default_ns: None,
        to: None,
        from: None,
        id: None,
        version: None,
        lang: None,
        prefixes: Vec::new(),
    };
    let root_prefix = qname.prefix().map(|p| p.into_inner());
    let mut context = StreamContext {
        root_qname: qname.as_ref().to_owned(),
        ..StreamContext::default()
    };
    for (count, attr) in start.attributes().enumerate() {
        if count >= limits.max_attributes {
            return Err(too_many_attributes(limits));
        }
        let attr = attr.map_err(|e| not_well_formed(e.to_string()))?;
        check_name(attr.key.as_ref())?;
        let value = attr_value(&attr)?.into_owned();
        if let Some(decl) = attr.key.as_namespace_binding() {
            match decl {
                PrefixDeclaration::Default => {
                    header.default_ns = Some(value.clone());
                    context.default_ns = Some(value);
                }
                // Always bound; re-declaring it changes nothing worth keeping.
                PrefixDeclaration::Named("xml") => {}
                PrefixDeclaration::Named(prefix) => {
                    if Some(prefix) != root_prefix {
                        header.prefixes.push((prefix.to_owned(), value.clone()));
                    }
                    context.prefixes.push((prefix.to_owned(), value));
                }
            }
            continue;
        }
        let (local, prefix) = attr.key.decompose();
        let slot = match (prefix.map(|p| p.into_inner()), local.into_inner()) {
            (None, "to") => &mut header.to,
            (None, "from") => &mut header.from,
            (None, "id") => &mut header.id,
            (None, "version") => &mut header.version,
            (Some("xml"), "lang") => &mut header.lang,
            (Some(_), _) => {
                // Unknown attributes are ignored, but their prefixes must be declared.
                namespace_of(resolver.resolve_attribute(attr.key).0)?;
                continue;
            }
            (None, _) => continue,
        };
        *slot = Some(value);
    }
    Ok((header, context))
}

fn too_many_attributes(limits: &ParserLimits) -> XmlError {
    XmlError::PolicyViolation(format!(
        "more than {} attributes on an element",
        limits.max_attributes
    ))
}

/// Builds the element for a start (or empty-element) tag.
pub(crate) fn element_from_start(
    start: &BytesStart<'_>,
    resolver: &NamespaceResolver,
    limits: &ParserLimits,
) -> Result<Element, XmlError> {
    let qname = start.name();
    check_name(qname.as_ref())?;
    let (result, local) = resolver.resolve_element(qname);
    let mut ns = namespace_of(result)?;
    if ns == ns::SERVER {
        // Stanzas are kept in one canonical namespace whatever the stream type.
        ns = ns::CLIENT.to_owned();
    }
    let mut element = Element::new(local.as_ref(), ns);
    for (count, attr) in start.attributes().enumerate() {
        if count >= limits.max_attributes {
            return Err(too_many_attributes(limits));
        }
        // Duplicates are reported here (checks are on by default).
        let attr = attr.map_err(|e| not_well_formed(e.to_string()))?;
        let key: QName<'_> = attr.key;
        check_name(key.as_ref())?;
        if key.as_namespace_binding().is_some() {
            // Already applied by the reader; the tree carries resolved namespaces.
            continue;
        }
        let (local, prefix) = key.decompose();
        let name = match prefix {
            None => local.as_ref().to_owned(),
            Some(p) if p.is_xml() => {
                if local.as_ref() == "lang" {
                    "xml:lang".to_owned()
                } else {
                    continue;
                }
            }
            Some(_) => {
                // Namespaced attributes are dropped, but must still be well-formed.
                namespace_of(resolver.resolve_attribute(key).0)?;
                continue;
            }
        };
        let value = attr_value(&attr)?.into_owned();
        element.attrs.push((name, value));
    }
    Ok(element)
}

pub(crate) fn push_text(element: &mut Element, text: &str) {
    if text.is_empty() {
        return;
    }
    // References and CDATA split text into several events; keep one node.
    if let Some(Node::Text(last)) = element.children.last_mut() {
        last.push_str(text);
    } else {
        element.children.push(Node::Text(text.to_owned()));
    }
}

/// Attaches a finished element to its parent, or makes it the result.
fn attach(stack: &mut [Element], done: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(element)),
        None => *done = Some(element),
    }
}

fn parse_stanza(
    bytes: &[u8],
    context: &StreamContext,
    limits: &ParserLimits,
) -> Result<Element, XmlError> {
    let text = to_str(bytes)?;
    RESOLVER.with(|cell| {
        // Parsing never re-enters itself; should the cell be in use anyway, a resolver
        // of its own does the same job.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            let mut seeded = SeededResolver::new(context)?;
            return parse_stanza_with(text, &mut seeded.resolver, &mut seeded.stack, limits);
        };
        let seeded = match slot.take() {
            Some(seeded) if seeded.serves(context) => seeded,
            _ => SeededResolver::new(context)?,
        };
        let seeded = slot.insert(seeded);
        // Back to the header's bindings and an empty stack, whatever happened inside the
        // last stanza (an error, or a parse that unwound midway).
        seeded.resolver.set_level(0);
        seeded.stack.clear();
        parse_stanza_with(text, &mut seeded.resolver, &mut seeded.stack, limits)
    })
}

/// Parses one stanza with the stream's resolver, which it leaves at the stanza's
/// nesting level, and an empty `stack` (the caller resets both before the next). Namespace scopes are pushed and popped here
/// exactly as quick-xml's `NsReader` does, without a resolver of its own per stanza.
fn parse_stanza_with(
    text: &str,
    resolver: &mut NamespaceResolver,
    stack: &mut Vec<Element>,
    limits: &ParserLimits,
) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(text);
    let mut done: Option<Element> = None;
    loop {
        let event = reader.read_event()?;
        if done.is_some() && !matches!(event, Event::Eof) {
            // The framer cut the unit after one element; anything else means the two
            // disagree, which only malformed input can cause.
            return Err(not_well_formed("content after the stanza"));
        }
        match event {
            Event::Start(start) => {
                resolver.push(&start).map_err(|e| ns_error(&e))?;
                let element = element_from_start(&start, resolver, limits)?;
                stack.push(element);
            }
            Event::Empty(start) => {
                resolver.push(&start).map_err(|e| ns_error(&e))?;
                let element = element_from_start(&start, resolver, limits)?;
                resolver.pop();
                attach(stack, &mut done, element);
            }
            Event::End(_) => {
                // quick-xml checks that end tags match their start tags.
                let element = stack
                    .pop()
                    .ok_or_else(|| not_well_formed("unexpected end tag"))?;
                resolver.pop();
                attach(stack, &mut done, element);
            }
            Event::Text(t) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("text outside the stanza"))?;
                push_text(parent, &t.xml10_content());
            }
            Event::CData(t) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("CDATA outside the stanza"))?;
                push_text(parent, &t.xml10_content());
            }
            Event::GeneralRef(r) => {
                let parent = stack
                    .last_mut()
                    .ok_or_else(|| not_well_formed("reference outside the stanza"))?;
                let mut utf8 = [0u8; 4];
                let replacement: &str = if let Some(c) = r.resolve_char_ref()? {
                    if !is_xml_char(c) {
                        return Err(not_well_formed(
                            "character reference to a non-XML character",
                        ));
                    }
                    c.encode_utf8(&mut utf8)
                } else {
                    match r.as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "apos" => "'",
                        "quot" => "\"",
                        other => {
                            return Err(XmlError::RestrictedXml(format!(
                                "reference to undeclared entity '{other}'"
                            )));
                        }
                    }
                };
                push_text(parent, replacement);
            }
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {
                return Err(restricted_event(&event));
            }
            Event::Eof => break,
        }
    }
    match done {
        Some(element) if stack.is_empty() => Ok(element),
        _ => Err(not_well_formed("incomplete stanza")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParserLimits = ParserLimits {
        max_stanza_bytes: 64 * 1024,
        max_depth: 32,
        max_attributes: 16,
    };

    const CLIENT_STREAM: &str = "<?xml version='1.0' encoding='UTF-8'?>\n\
        <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        to='example.com' version=\"1.0\" xml:lang='en'>\n\
        <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
        </stream:features>\n  \
        <message to='juliet@example.com' type='chat' xml:lang='fr' id=\"m&amp;1\">\
        <body>Tom &amp; Jerry &lt;3 &#x263A;&#65; &quot;q&apos;</body>\
        <body xml:lang='de'>a<![CDATA[<b>fett</b> & ]]>b</body>\
        <active xmlns='http://jabber.org/protocol/chatstates'/>\
        <x:data xmlns:x='urn:example:x' x:skip='dropped' keep='yes'>t<x:inner/></x:data>\
        </message>\
        <iq type='get' id='r1'>\n  <query xmlns='jabber:iq:roster'>\n    \
        <item jid='a@b' name='A\tB'/>\n  </query>\n</iq>\r\n\
        <presence/>\
        </stream:stream>";

    /// Parses `input` fed in the given chunk sizes (cycled), draining after each feed.
    fn parse_chunks(
        input: &[u8],
        limits: ParserLimits,
        mut sizes: impl FnMut() -> usize,
    ) -> Result<Vec<StreamEvent>, XmlError> {
        let mut parser = StreamParser::new(limits);
        let mut events = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            parser.feed(&rest[..n])?;
            rest = &rest[n..];
            while let Some(event) = parser.next_event()? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn parse_all(input: &[u8]) -> Result<Vec<StreamEvent>, XmlError> {
        parse_chunks(input, LIMITS, || usize::MAX)
    }

    /// xorshift64*: deterministic chunk sizes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn expected_client_events() -> Vec<StreamEvent> {
        let header = StreamHeader {
            name: "stream".into(),
            ns: ns::STREAM.into(),
            default_ns: Some(ns::CLIENT.into()),
            to: Some("example.com".into()),
            from: None,
            id: None,
            version: Some("1.0".into()),
            lang: Some("en".into()),
            prefixes: vec![],
        };
        let features = Element::new("features", ns::STREAM).with_child(
            Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
        );
        let message = Element::new("message", ns::CLIENT)
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_attr("xml:lang", "fr")
            .with_attr("id", "m&1")
            .with_child(Element::new("body", ns::CLIENT).with_text("Tom & Jerry <3 \u{263A}A \"q'"))
            .with_child(
                Element::new("body", ns::CLIENT)
                    .with_attr("xml:lang", "de")
                    .with_text("a<b>fett</b> & b"),
            )
            .with_child(Element::new("active", ns::CHATSTATES))
            .with_child(
                Element::new("data", "urn:example:x")
                    .with_attr("keep", "yes")
                    .with_text("t")
                    .with_child(Element::new("inner", "urn:example:x")),
            );
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "r1")
            .with_text("\n  ")
            .with_child(
                Element::new("query", ns::ROSTER)
                    .with_text("\n    ")
                    .with_child(
                        Element::new("item", ns::ROSTER)
                            .with_attr("jid", "a@b")
                            // Attribute value normalization turns the tab into a space.
                            .with_attr("name", "A B"),
                    )
                    .with_text("\n  "),
            )
            .with_text("\n");
        vec![
            StreamEvent::Open(header),
            StreamEvent::Stanza(features),
            StreamEvent::Stanza(message),
            StreamEvent::Stanza(iq),
            StreamEvent::Stanza(Element::new("presence", ns::CLIENT)),
            StreamEvent::Close,
        ]
    }

    #[test]
    fn prefixed_names_need_a_valid_local_part() {
        // Found by fuzzing: `x:0E` parsed, and was written back as the invalid `<0E`.
        for bad in [
            "<message xmlns:x='u'><x:0E/></message>",
            "<message xmlns:x='u'><x:.a/></message>",
            "<message xmlns:x='u'><x:-a/></message>",
            "<message xmlns:x='u'><a x:1='v'/></message>",
            "<message xmlns:x='u'><x:a:b/></message>",
        ] {
            assert!(crate::xml::parse_stanza(bad).is_err(), "{bad}");
        }
        let ok = crate::xml::parse_stanza("<message xmlns:x='u'><x:a0.-_ x:b1='v'/></message>");
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// The byte table agrees with the NCName rule written out plainly, on every name
    /// made of a small alphabet up to four bytes long.
    #[test]
    fn check_name_agrees_with_the_ncname_rule() {
        fn ncname(part: &str) -> bool {
            match part.as_bytes().first() {
                None => false,
                Some(b) if b.is_ascii_digit() || matches!(b, b'-' | b'.') => false,
                Some(_) => part.bytes().all(|b| {
                    b >= 0x80 || b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
                }),
            }
        }
        let reference = |name: &str| match name.split_once(':') {
            None => ncname(name),
            Some((prefix, local)) => ncname(prefix) && ncname(local),
        };
        let alphabet = ["a", "Z", "_", "0", "-", ".", ":", "é", "'", "=", " ", ">"];
        let mut names = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            for name in &longer {
                assert_eq!(check_name(name).is_ok(), reference(name), "{name:?}");
            }
            names = longer;
        }
        assert!(check_name("").is_err());
    }

    #[test]
    fn client_stream_in_one_chunk() {
        assert_eq!(
            parse_all(CLIENT_STREAM.as_bytes()).unwrap(),
            expected_client_events()
        );
    }

    #[test]
    fn client_stream_at_every_split_point() {
        let input = CLIENT_STREAM.as_bytes();
        let expected = expected_client_events();
        for split in 1..input.len() {
            let mut parser = StreamParser::new(LIMITS);
            let mut events = Vec::new();
            for part in [&input[..split], &input[split..]] {
                parser.feed(part).unwrap();
                while let Some(event) = parser.next_event().unwrap() {
                    events.push(event);
                }
            }
            assert_eq!(events, expected, "split at {split}");
        }
    }

    #[test]
    fn client_stream_in_random_chunks() {
        let expected = expected_client_events();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for max in [1u64, 2, 3, 7, 16, 64] {
            for _ in 0..20 {
                let events = parse_chunks(CLIENT_STREAM.as_bytes(), LIMITS, || {
                    (rng.next() % max) as usize + 1
                })
                .unwrap();
                assert_eq!(events, expected);
            }
        }
    }

    #[test]
    fn round_trip_through_write_to() {
        let header = "<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams'>";
        // Whitespace in attribute values survives as character references.
        let extra = Element::new("message", ns::CLIENT)
            .with_attr("id", "a\tb\nc\r 'q' \"d\" <&>")
            .with_child(Element::new("error", ns::STREAM).with_text("x > y"));
        let stanzas = expected_client_events()
            .into_iter()
            .filter_map(|event| match event {
                StreamEvent::Stanza(element) => Some(element),
                _ => None,
            })
            .chain([extra]);
        for element in stanzas {
            let mut input = header.as_bytes().to_vec();
            element.write_to(&mut input, ns::CLIENT);
            let events = parse_all(&input).unwrap();
            assert_eq!(events.len(), 2, "{}", String::from_utf8_lossy(&input));
            assert_eq!(events[1], StreamEvent::Stanza(element));
        }
    }

    #[test]
    fn server_stream_maps_stanza_namespace() {
        let input = "<stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' \
            xmlns:db='jabber:server:dialback' from='a.example' to='b.example' \
            id='s1' version='1.0'>\
            <db:result from='a.example' to='b.example'>key</db:result>\
            <message from='x@a.example' to='y@b.example'><body>hi</body>\
            <inner xmlns='jabber:server'/></message>";
        let events = parse_all(input.as_bytes()).unwrap();
        let StreamEvent::Open(header) = &events[0] else {
            panic!("expected header, got {events:?}");
        };
        assert_eq!(header.ns, ns::STREAM);
        assert_eq!(header.default_ns.as_deref(), Some(ns::SERVER));
        assert_eq!(header.from.as_deref(), Some("a.example"));
        assert_eq!(header.id.as_deref(), Some("s1"));
        assert_eq!(
            header.prefixes,
            vec![("db".to_string(), "jabber:server:dialback".to_string())]
        );
        assert_eq!(
            events[1],
            StreamEvent::Stanza(
                Element::new("result", "jabber:server:dialback")
                    .with_attr("from", "a.example")
                    .with_attr("to", "b.example")
                    .with_text("key")
            )
        );
        assert_eq!(
            events[2],
            StreamEvent::Stanza(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", "x@a.example")
                    .with_attr("to", "y@b.example")
                    .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
                    .with_child(Element::new("inner", ns::CLIENT))
            )
        );
    }

    const HEADER: &str = "<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams'>";

    fn stanza_error(stanza: &[u8]) -> XmlError {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(stanza);
        input.extend_from_slice(b"</stream:stream>");
        parse_all(&input).unwrap_err()
    }

    #[test]
    fn malformed_xml_is_not_well_formed() {
        for bad in [
            &b"<message><body></message>"[..],
            b"<message to='a' to='b'/>",
            b"<message to=a/>",
            b"<message to='a'from='b'/>",
            b"<message><body>&amp</body></message>",
            b"<message><body>&#0;</body></message>",
            b"<message><body>&#x1;</body></message>",
            b"<message><body>&#xFFFE;</body></message>",
            b"<message to='&#1;'/>",
            b"<message><body>\x01</body></message>",
            b"<message><body>\xEF\xBF\xBF</body></message>",
            b"<foo:message/>",
            b"<message foo:a='x'/>",
            b"<mes'sage/>",
            b"<1message/>",
            b"<message a='<'/>",
            b"<message <a/>",
            b"<message xmlns:xmlns='x'/>",
        ] {
            let err = stanza_error(bad);
            assert!(
                matches!(err, XmlError::NotWellFormed(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(err.condition(), "not-well-formed");
        }
        for bad in [
            &b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"[..],
            b"hello <stream:stream>",
            b"</stream:stream>",
            b"<?xml version='1.0' encoding='ISO-8859-1'?><stream>",
            b"<?xml version='2.0'?><stream>",
            b"<stream:stream>",
            b"<stream a='1' a='2'>",
        ] {
            let err = parse_all(bad).unwrap_err();
            assert!(
                matches!(err, XmlError::NotWellFormed(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Mismatched stream end tag.
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(b"</stream:other>");
        assert!(matches!(parse_all(&input), Err(XmlError::NotWellFormed(_))));
    }

    #[test]
    fn namespace_with_reference_to_non_xml_character() {
        // Found by fuzz/ (stanza target): the namespace came out with a raw control
        // character, so the stanza as written back could not be parsed again.
        for bad in [
            &b"<message><x xmlns='urn:a&#3;b'/></message>"[..],
            b"<message xmlns:p='urn:&#x1;'><p:x/></message>",
            b"<message><x xmlns='urn:&#xFFFE;'/></message>",
        ] {
            let err = stanza_error(bad);
            assert!(
                matches!(err, XmlError::NotWellFormed(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // References to XML characters stay fine.
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(b"<message><x xmlns='urn:a&#x9;&amp;b'/></message>");
        let events = parse_all(&input).unwrap();
        let StreamEvent::Stanza(message) = &events[1] else {
            panic!("{events:?}");
        };
        assert_eq!(message.first_element().unwrap().ns, "urn:a\t&b");
    }

    #[test]
    fn invalid_utf8_is_not_well_formed() {
        assert!(matches!(
            stanza_error(b"<message><body>caf\xC3</body></message>"),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            stanza_error(b"<message to='\xFF'/>"),
            XmlError::NotWellFormed(_)
        ));
        assert!(matches!(
            parse_all(b"<stream:stream to='\xC0\xAF' xmlns:stream='s'>"),
            Err(XmlError::NotWellFormed(_))
        ));
        // A multi-byte character split across chunks is fine.
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice("<message><body>é€😀</body></message>".as_bytes());
        for split in HEADER.len()..input.len() {
            let events = parse_chunks(&input, LIMITS, {
                let mut first = true;
                move || {
                    if std::mem::take(&mut first) {
                        split
                    } else {
                        usize::MAX
                    }
                }
            })
            .unwrap();
            let StreamEvent::Stanza(message) = &events[1] else {
                panic!("{events:?}");
            };
            assert_eq!(message.child_text("body", ns::CLIENT).unwrap(), "é€😀");
        }
    }

    #[test]
    fn doctype_and_billion_laughs_are_restricted() {
        let laughs = b"<?xml version='1.0'?>\n<!DOCTYPE lolz [\n\
            <!ENTITY lol 'lol'>\n\
            <!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>\n\
            <!ENTITY lol2 '&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;'>\n\
            ]>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
        let err = parse_all(laughs).unwrap_err();
        assert!(matches!(err, XmlError::RestrictedXml(_)), "{err:?}");
        assert_eq!(err.condition(), "restricted-xml");
        // Without a DTD the reference itself is refused, unexpanded.
        for bad in [
            &b"<message><body>&lol9;</body></message>"[..],
            b"<message to='&lol9;'/>",
            b"<message><!DOCTYPE x></message>",
            b"<message><!ENTITY x 'y'></message>",
        ] {
            let err = stanza_error(bad);
            assert!(
                matches!(err, XmlError::RestrictedXml(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn comments_and_processing_instructions_are_restricted() {
        for bad in [
            &b"<message><!-- hi --></message>"[..],
            b"<!-- between stanzas -->",
            b"<message><?php echo 1; ?></message>",
            b"<?xml version='1.0'?>",
        ] {
            let err = stanza_error(bad);
            assert!(
                matches!(err, XmlError::RestrictedXml(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_all(b"<!-- hi --><stream:stream>"),
            Err(XmlError::RestrictedXml(_))
        ));
        assert!(matches!(
            parse_all(b"<?xml-stylesheet href='x'?><stream:stream>"),
            Err(XmlError::RestrictedXml(_))
        ));
    }

    #[test]
    fn huge_stanza_fails_early_with_bounded_buffer() {
        let mut parser = StreamParser::new(LIMITS);
        parser.feed(HEADER.as_bytes()).unwrap();
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        parser.feed(b"<message><body>").unwrap();
        let chunk = [b'a'; 4096];
        let mut fed = 0usize;
        let err = loop {
            assert!(fed < 10 * 1024 * 1024, "no error after the whole stanza");
            let result = parser.feed(&chunk).and_then(|()| parser.next_event());
            assert!(parser.buffered() <= LIMITS.max_stanza_bytes + chunk.len());
            fed += chunk.len();
            match result {
                Ok(None) => {}
                Ok(Some(event)) => panic!("unexpected {event:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
        assert_eq!(err.condition(), "policy-violation");
        assert!(fed <= LIMITS.max_stanza_bytes + chunk.len(), "fed {fed}");
        // Dead from now on.
        assert_eq!(parser.next_event(), Err(err.clone()));
        assert_eq!(parser.feed(b"<presence/>"), Err(err));
    }

    #[test]
    fn huge_header_is_refused() {
        let mut input = b"<stream:stream to='".to_vec();
        input.resize(LIMITS.max_stanza_bytes + 10, b'a');
        let err = parse_chunks(&input, LIMITS, || 4096).unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn deep_nesting_fails_fast() {
        let mut parser = StreamParser::new(LIMITS);
        parser.feed(HEADER.as_bytes()).unwrap();
        assert!(parser.next_event().unwrap().is_some());
        parser.feed(&b"<a>".repeat(10_000)).unwrap();
        let err = parser.next_event().unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");

        // Exactly at the limit is fine.
        let depth = LIMITS.max_depth;
        let mut stanza = b"<a>".repeat(depth);
        stanza.extend_from_slice(&b"</a>".repeat(depth));
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(&stanza);
        assert_eq!(parse_all(&input).unwrap().len(), 2);
        input.truncate(HEADER.len());
        input.extend_from_slice(&b"<a>".repeat(depth));
        input.extend_from_slice(b"<b/>");
        assert!(matches!(
            parse_all(&input),
            Err(XmlError::PolicyViolation(_))
        ));
    }

    #[test]
    fn too_many_namespace_bindings() {
        let mut stanza = String::new();
        for i in 0..30 {
            stanza.push_str(&format!("<a xmlns:p{i}='urn:{i}' xmlns:q{i}='urn:q{i}'>"));
        }
        for _ in 0..30 {
            stanza.push_str("</a>");
        }
        let err = stanza_error(stanza.as_bytes());
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn declarations_end_with_their_stanza() {
        // The resolver is kept from stanza to stanza: what one stanza declares must be
        // gone for the next, whether the element was empty or had content.
        let input = format!(
            "{HEADER}<message xmlns:p='urn:p' xmlns='urn:d'><p:x/></message>\
             <iq xmlns:q='urn:q'/><presence><y/></presence>"
        );
        let events = parse_all(input.as_bytes()).unwrap();
        let StreamEvent::Stanza(presence) = &events[3] else {
            panic!("{events:?}");
        };
        assert_eq!(
            (
                presence.ns.as_str(),
                presence.elements().next().map(|y| y.ns.as_str())
            ),
            (ns::CLIENT, Some(ns::CLIENT))
        );
        for leaked in [
            "<r><p:x/></r>",
            "<r><q:x/></r>",
            "<q:r/>",
            "<r><a xmlns:s='urn:s'/><s:b/></r>",
        ] {
            let input = format!(
                "{HEADER}<message xmlns:p='urn:p'><p:x/></message><iq xmlns:q='urn:q'/>{leaked}"
            );
            let err = parse_all(input.as_bytes()).unwrap_err();
            assert!(
                matches!(err, XmlError::NotWellFormed(_)),
                "{leaked}: {err:?}"
            );
        }
        // Each stanza has the whole per-stanza allowance of bindings again.
        let mut stanza = String::from("<a");
        for i in 0..STANZA_NS_BINDINGS {
            stanza.push_str(&format!(" xmlns:p{i}='urn:{i}'"));
        }
        stanza.push_str("/>");
        let limits = ParserLimits {
            max_attributes: STANZA_NS_BINDINGS + 1,
            ..LIMITS
        };
        let input = format!("{HEADER}{}", stanza.repeat(3));
        assert_eq!(
            parse_chunks(input.as_bytes(), limits, || usize::MAX)
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn interleaved_streams_keep_their_own_header_bindings() {
        // Stanzas of streams with different headers alternate on one thread, as
        // sessions do on a worker: each must see its own header's bindings only.
        let mut a = StreamParser::new(LIMITS);
        let mut b = StreamParser::new(LIMITS);
        let events = |p: &mut StreamParser, input: &str| {
            p.feed(input.as_bytes())?;
            let mut out = Vec::new();
            while let Some(e) = p.next_event()? {
                out.push(e);
            }
            Ok::<_, XmlError>(out)
        };
        events(&mut a, "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' xmlns:x='urn:x'>").unwrap();
        events(&mut b, "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>").unwrap();
        for _ in 0..3 {
            let got = events(&mut a, "<message><x:y/></message>").unwrap();
            let [StreamEvent::Stanza(m)] = &got[..] else {
                panic!("{got:?}");
            };
            assert_eq!(m.elements().next().map(|y| y.ns.as_str()), Some("urn:x"));
            let got = events(&mut b, "<db:verify id='1'/><message/>").unwrap();
            let [StreamEvent::Stanza(v), StreamEvent::Stanza(m)] = &got[..] else {
                panic!("{got:?}");
            };
            assert_eq!(
                (v.ns.as_str(), m.ns.as_str()),
                ("jabber:server:dialback", ns::CLIENT)
            );
        }
        // `x` is a's, not b's.
        let err = events(&mut b, "<message><x:y/></message>").unwrap_err();
        assert!(matches!(err, XmlError::NotWellFormed(_)), "{err:?}");
        assert!(events(&mut a, "<message><x:y/></message>").is_ok());
    }

    #[test]
    fn attribute_count_limit() {
        let limits = ParserLimits {
            max_attributes: 4,
            ..LIMITS
        };
        let parse = |stanza: &str| {
            let input = format!("{HEADER}{stanza}");
            parse_chunks(input.as_bytes(), limits, || usize::MAX)
        };
        assert_eq!(
            parse("<message a='1' b='2' c='3' d='4'/>").unwrap().len(),
            2
        );
        let err = parse("<message a='1' b='2' c='3' d='4' e='5'/>").unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
        let err = parse("<message><x xmlns='u' a='1' b='2' c='3' d='4'/></message>").unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
        let err = parse_chunks(b"<stream a='1' b='2' c='3' d='4' e='5'>", limits, || {
            usize::MAX
        })
        .unwrap_err();
        assert!(matches!(err, XmlError::PolicyViolation(_)), "{err:?}");
    }

    #[test]
    fn reset_expects_a_new_header() {
        let mut parser = StreamParser::new(LIMITS);
        parser.feed(HEADER.as_bytes()).unwrap();
        parser
            .feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><partial")
            .unwrap();
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(_)))
        ));
        assert_eq!(parser.next_event(), Ok(None));
        assert!(parser.buffered() > 0);
        parser.reset();
        assert_eq!(parser.buffered(), 0);
        parser
            .feed(
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                xmlns:stream='http://etherx.jabber.org/streams' to='second.example'>",
            )
            .unwrap();
        let Ok(Some(StreamEvent::Open(header))) = parser.next_event() else {
            panic!("expected a new header");
        };
        assert_eq!(header.to.as_deref(), Some("second.example"));

        // reset also revives a parser that hit an error.
        parser.feed(b"junk").unwrap();
        assert!(parser.next_event().is_err());
        parser.reset();
        parser.feed(HEADER.as_bytes()).unwrap();
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
    }

    #[test]
    fn close_event_and_input_after_it() {
        let mut parser = StreamParser::new(LIMITS);
        parser.feed(HEADER.as_bytes()).unwrap();
        parser.feed(b"<presence/></stream:stream  >").unwrap();
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(_)))
        ));
        assert_eq!(parser.next_event(), Ok(Some(StreamEvent::Close)));
        assert_eq!(parser.next_event(), Ok(None));
        parser.feed(b"garbage <<<< &&& ").unwrap();
        assert_eq!(parser.next_event(), Ok(None));
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn whitespace_keepalives_produce_nothing() {
        let mut parser = StreamParser::new(LIMITS);
        parser.feed(HEADER.as_bytes()).unwrap();
        assert!(parser.next_event().unwrap().is_some());
        for _ in 0..100_000 {
            parser.feed(b" \n").unwrap();
            assert_eq!(parser.next_event(), Ok(None));
        }
        assert_eq!(parser.buffered(), 0);
        parser.feed(b"\t<presence/>\r\n").unwrap();
        assert_eq!(
            parser.next_event(),
            Ok(Some(StreamEvent::Stanza(Element::new(
                "presence",
                ns::CLIENT
            ))))
        );
    }

    #[test]
    fn text_between_stanzas_is_bad_format() {
        for bad in [&b"hello"[..], b"<presence/> x", b"&amp;", b"<![CDATA[x]]>"] {
            let err = stanza_error(bad);
            assert!(
                matches!(err, XmlError::BadFormat(_)),
                "{}: {err:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(err.condition(), "bad-format");
        }
    }

    #[test]
    fn stream_prefix_can_differ() {
        let input = "<s:stream xmlns:s='http://etherx.jabber.org/streams' \
            xmlns:stream='urn:other' xmlns='jabber:client'><s:error/><stream:x/></s:stream>";
        let events = parse_all(input.as_bytes()).unwrap();
        let StreamEvent::Open(header) = &events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(header.name, "stream");
        assert_eq!(header.ns, ns::STREAM);
        assert_eq!(
            header.prefixes,
            vec![("stream".to_string(), "urn:other".to_string())]
        );
        assert_eq!(
            events[1],
            StreamEvent::Stanza(Element::new("error", ns::STREAM))
        );
        assert_eq!(
            events[2],
            StreamEvent::Stanza(Element::new("x", "urn:other"))
        );
        assert_eq!(events[3], StreamEvent::Close);
    }
}
