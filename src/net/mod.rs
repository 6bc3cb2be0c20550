//! Network plumbing shared by the listeners: TLS contexts and development certificates.

pub mod connection;
pub mod devcert;
pub mod framing;
pub mod io;
pub mod tls;
pub mod verify;
pub mod websocket;

pub use connection::Connection;
pub use framing::Framing;
pub use tls::{TlsBindings, TlsContext, TlsError};
