//! The session table and RFC 6121 §8 delivery rules. The router knows no XEP: iq payloads
//! go to the module registry, undeliverable messages to the offline hook, presence to
//! the presence module.

mod deliver;
mod sessions;

pub use deliver::{deliver_to_session, route, route_reply, route_unfiltered};
pub use sessions::{BindOutcome, SessionCommand, SessionControl, SessionInfo, Sessions};
