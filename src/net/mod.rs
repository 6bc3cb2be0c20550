//! Network plumbing shared by the listeners: TLS contexts and development certificates.

pub mod connection;
pub mod devcert;
pub mod io;
pub mod link;
pub mod server_tls;
pub mod tls;
pub mod verify;

pub use connection::Connection;
pub use tls::{TlsBindings, TlsContext, TlsError};
