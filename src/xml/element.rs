//! A small owned XML element tree: what the parser produces and what modules build.
//!
//! Namespaces are resolved: every element carries its namespace URI, and serialization
//! emits an `xmlns` declaration only where the namespace differs from the parent's. The
//! stanza namespace of both c2s and s2s streams is represented internally as
//! `jabber:client` (the s2s parser maps `jabber:server` to it), so one stanza value can be
//! written to either kind of stream.

use super::escape::{escape_attr, escape_text};
use super::ns;

/// Larger buffers are not kept after `with_stanza_text` used them.
const STANZA_SCRATCH_KEPT: usize = 16 * 1024;

thread_local! {
    static STANZA_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(STANZA_SCRATCH_KEPT));
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name, without prefix.
    pub name: String,
    /// Namespace URI; empty for none.
    pub ns: String,
    /// Attributes in document order. Names are unprefixed, except `xml:lang`.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets or replaces an attribute.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name.to_string(), value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Builder form of [`set_attr`](Self::set_attr).
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Child elements, skipping text.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.child(name, ns).is_some()
    }

    /// Removes every child element matching name and namespace.
    pub fn remove_children(&mut self, name: &str, ns: &str) {
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.is(name, ns)));
    }

    /// The first child element in any namespace other than `skip_ns` — for an iq that is
    /// its payload.
    pub fn first_element(&self) -> Option<&Element> {
        self.elements().next()
    }

    /// About how much memory the element holds, in bytes: its strings plus a fixed cost
    /// per node and attribute. What sessions count against their byte budgets.
    pub fn approx_bytes(&self) -> usize {
        const NODE: usize = std::mem::size_of::<Element>();
        const ATTR: usize = std::mem::size_of::<(String, String)>();
        let mut total = NODE + self.name.len() + self.ns.len();
        for (k, v) in &self.attrs {
            total += ATTR + k.len() + v.len();
        }
        for n in &self.children {
            total += match n {
                Node::Element(e) => e.approx_bytes(),
                Node::Text(t) => NODE + t.len(),
            };
        }
        total
    }

    /// Concatenated direct text content.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Text of the named child, if the child exists.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.child(name, ns).map(Element::text)
    }

    /// Serializes as a top-level stanza of a stream whose default namespace is the
    /// stanza namespace (`jabber:client` or `jabber:server`).
    pub fn to_stanza_bytes(&self) -> Vec<u8> {
        // Room for a chat message with full JIDs and a short body, which 256 bytes
        // often was not (a reallocation and copy for most archived messages).
        let mut out = Vec::with_capacity(512);
        self.write_to(&mut out, ns::CLIENT);
        out
    }

    /// Serializes as a top-level stanza into a per-thread buffer and hands `f` the text:
    /// for callers that keep only a copy, or only compare (archiving every message made
    /// and dropped a buffer of its own).
    pub fn with_stanza_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        STANZA_SCRATCH.with(|cell| {
            let mut fallback;
            let mut guard = cell.try_borrow_mut();
            let out: &mut Vec<u8> = match guard.as_mut() {
                Ok(out) => out,
                // Only through reentrancy from `f`: stay correct with a buffer of its own.
                Err(_) => {
                    fallback = Vec::new();
                    &mut fallback
                }
            };
            out.clear();
            self.write_to(out, ns::CLIENT);
            // Valid UTF-8 (names and values are `String`s); the lossy path never runs.
            let result = match std::str::from_utf8(out) {
                Ok(text) => f(text),
                Err(_) => f(&String::from_utf8_lossy(out)),
            };
            if out.capacity() > STANZA_SCRATCH_KEPT {
                *out = Vec::with_capacity(STANZA_SCRATCH_KEPT);
            }
            result
        })
    }

    /// Serializes as a top-level stanza into a `String` (storage keeps stanzas as text).
    pub fn to_stanza_string(&self) -> String {
        // The writer only ever emits valid UTF-8 (names and values are `String`s), so this
        // takes the buffer as it is; the lossy path is never expected to run.
        String::from_utf8(self.to_stanza_bytes())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Serializes this element; `parent_ns` is the default namespace in scope.
    /// Serializes as a document of its own (RFC 7395 messages): the default namespace is
    /// always declared, and the `stream` prefix too when it is used.
    pub fn write_standalone(&self, out: &mut Vec<u8>) {
        if self.ns != ns::STREAM {
            return self.write_to(out, "");
        }
        let mut inner = Vec::new();
        self.write_to(&mut inner, "");
        // `<stream:NAME` then the declaration the prefix needs.
        let split = "<stream:".len() + self.name.len();
        out.extend_from_slice(&inner[..split]);
        out.extend_from_slice(b" xmlns:stream='");
        out.extend_from_slice(ns::STREAM.as_bytes());
        out.push(b'\'');
        out.extend_from_slice(&inner[split..]);
    }

    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        let stream_prefixed = self.ns == ns::STREAM;
        out.push(b'<');
        if stream_prefixed {
            out.extend_from_slice(b"stream:");
        }
        out.extend_from_slice(self.name.as_bytes());
        let default_ns = if stream_prefixed {
            parent_ns
        } else {
            if self.ns != parent_ns {
                out.extend_from_slice(b" xmlns='");
                escape_attr(&self.ns, out);
                out.push(b'\'');
            }
            self.ns.as_str()
        };
        for (k, v) in &self.attrs {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr(v, out);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_to(out, default_ns),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        if stream_prefixed {
            out.extend_from_slice(b"stream:");
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_minimal_namespace_declarations() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "a@b")
            .with_child(Element::new("body", ns::CLIENT).with_text("x < y & 'z'"))
            .with_child(Element::new("active", ns::CHATSTATES));
        let s = el.to_stanza_string();
        assert_eq!(
            s,
            "<message to='a@b'><body>x &lt; y &amp; 'z'</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        );
    }

    #[test]
    fn escapes_attribute_quotes() {
        let el = Element::new("x", "urn:t").with_attr("a", "it's \"q\" <&>");
        let mut out = Vec::new();
        el.write_to(&mut out, "urn:t");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<x a='it&apos;s &quot;q&quot; &lt;&amp;&gt;'/>"
        );
    }

    #[test]
    fn stream_namespace_uses_prefix() {
        let el = Element::new("error", ns::STREAM)
            .with_child(Element::new("not-well-formed", ns::STREAM_ERRORS));
        let s = el.to_stanza_string();
        assert_eq!(
            s,
            "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }
}
