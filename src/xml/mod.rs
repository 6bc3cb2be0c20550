//! Sans-I/O XML for XMPP streams: bounded framing, restricted-XML parsing into
//! [`Element`]s, and escaping serialization.

pub mod element;
pub mod escape;
pub mod ns;

pub use element::{Element, Node};
