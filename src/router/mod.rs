//! The session table and RFC 6121 §8 delivery rules. The router knows no XEP: iq payloads,
//! presence, message hooks, route filters, services and offline storage are the module
//! registry's (`crate::registry`).

mod deliver;
pub(crate) mod queue;
mod sessions;

pub use queue::{TryRecvError, TrySendError};

pub use deliver::{
    deliver_to_session, redeliver, route, route_addressed, route_reply, route_unfiltered,
};
pub use sessions::{
    BindOutcome, SessionCommand, SessionControl, SessionInfo, SessionReceiver, SessionSender,
    Sessions, serve_own_session, session_queue,
};
