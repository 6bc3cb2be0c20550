//! Stored SCRAM credentials: the only form in which a password is ever kept.

use serde::{Deserialize, Serialize};

/// One hash's SCRAM verifier set (RFC 5802 §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// What an account stores instead of its password: verifiers for SHA-1 and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredentials {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
}
