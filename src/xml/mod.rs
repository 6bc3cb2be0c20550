//! Sans-I/O XML for XMPP streams: bounded framing, restricted-XML parsing into
//! [`Element`]s, and escaping serialization.

pub mod element;
pub mod escape;
mod framer;
pub mod ns;
pub mod parser;

pub use element::{Element, Node};
pub use parser::{ParserLimits, StreamEvent, StreamHeader, StreamParser, XmlError};
