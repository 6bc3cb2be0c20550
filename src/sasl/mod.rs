//! Sans-I/O SASL: SCRAM-SHA-1/256 (+ -PLUS channel binding), PLAIN, the hashed-token
//! mechanisms of XEP-0484, and stored credentials.
//!
//! `throttle` is the one piece of shared state: failed attempts per client address.
//!
//! Nothing here does I/O or base64 of the SASL payload itself: the caller decodes the
//! `<auth/>`/`<response/>` text (reporting `incorrect-encoding` itself) and encodes what we return.

pub mod credentials;
pub mod error;
pub mod ht;
pub mod plain;
pub mod scram;
pub mod throttle;

pub use credentials::{ScramCredentials, StoredCredentials, verify_plain};
pub use error::SaslError;
pub use ht::HtMechanism;
pub use plain::{PlainCredentials, parse_plain};
pub use scram::{
    ChannelBindingType, ChannelBindings, ClientFirst, Mechanism, ScramHash, ScramServer,
};
