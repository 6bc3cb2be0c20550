//! Sans-I/O XML for XMPP streams: bounded framing, restricted-XML parsing into
//! [`Element`]s, and escaping serialization.

pub mod element;
pub mod escape;
mod framer;
pub mod ns;
pub mod parser;

pub use element::{Element, Node};
pub use parser::{ParserLimits, StreamEvent, StreamHeader, StreamParser, XmlError};

/// The framer on its own, for the fuzz targets in `fuzz/` (which compare it with the
/// parser); not part of the supported API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::framer::{Frame, FrameKind, Framer};
}

/// Parses one serialized stanza (as kept in storage) in the `jabber:client` namespace.
pub fn parse_stanza(xml: &str) -> Result<Element, XmlError> {
    let mut parser = StreamParser::new(ParserLimits {
        max_stanza_bytes: xml.len() + 1024,
        max_depth: 64,
        max_attributes: 256,
    });
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    )?;
    parser.feed(xml.as_bytes())?;
    let mut stanza = None;
    while let Some(ev) = parser.next_event()? {
        if let StreamEvent::Stanza(el) = ev {
            stanza = Some(el);
            break;
        }
    }
    stanza.ok_or_else(|| XmlError::NotWellFormed("no complete stanza".into()))
}
