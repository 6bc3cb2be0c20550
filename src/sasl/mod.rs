//! Sans-I/O SASL: SCRAM-SHA-1/256 (+ -PLUS channel binding), PLAIN, and stored credentials.

pub mod credentials;
