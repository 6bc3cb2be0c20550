//! xmppd: a federated XMPP server.

pub mod addr;
pub mod admin;
pub mod c2s;
pub mod check;
pub mod cli;
pub mod config;
pub mod context;
pub mod datetime;
pub mod dns;
pub mod hashing;
pub mod metrics;
pub mod migrate;
pub mod modules;
pub mod net;
pub mod registry;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod storage;
pub mod stream;
pub mod web;
pub mod xml;
