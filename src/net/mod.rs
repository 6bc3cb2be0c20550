//! Network plumbing shared by the listeners: TLS contexts and development certificates.

pub mod devcert;
pub mod io;
pub mod tls;
pub mod verify;
pub mod websocket;

pub use tls::{TlsBindings, TlsContext, TlsError};
