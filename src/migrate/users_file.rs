//! A users file for bulk account creation: one account per line,
//!
//! ```text
//! # comment
//! juliet@example.org:her password
//! romeo@example.org:{SCRAM-SHA-1}4096$<salt b64>$<StoredKey b64>$<ServerKey b64>
//! ```
//!
//! Everything after the first `:` is the password (it may contain `:`), unless it starts
//! with `{SCRAM-SHA-1}`: then it holds SCRAM-SHA-1 verifiers and the account gets
//! SHA-1-only credentials. The whole file is checked before any account is created.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{Limits, MigrateError, UserData};
use crate::addr;
use crate::sasl::credentials::{ScramCredentials, StoredCredentials};

const SCRAM_SHA1: &str = "{SCRAM-SHA-1}";

/// Parses the file; `domain_ok` says whether an account's domain is served here.
pub fn read(
    path: &std::path::Path,
    limits: &Limits,
    iterations: u32,
    domain_ok: &dyn Fn(&str) -> bool,
) -> Result<Vec<UserData>, MigrateError> {
    let bytes = zeroize::Zeroizing::new(super::read_bounded(path, limits.max_file_bytes)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| MigrateError::invalid(path.display().to_string(), "not UTF-8"))?;
    let mut users: Vec<UserData> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((jid, secret)) = line.split_once(':') else {
            return Err(MigrateError::invalid(at(), "expected user@domain:password"));
        };
        let jid = addr::parse_bare(jid.trim())
            .filter(|j| j.node().is_some())
            .ok_or_else(|| MigrateError::invalid(at(), "not a valid user@domain"))?;
        if !domain_ok(jid.domain().as_str()) {
            return Err(MigrateError::invalid(
                at(),
                format!("{} is not a configured vhost", jid.domain()),
            ));
        }
        if users.iter().any(|u| u.jid == jid) {
            return Err(MigrateError::invalid(at(), format!("{jid} appears twice")));
        }
        let creds = match secret.strip_prefix(SCRAM_SHA1) {
            Some(v) => StoredCredentials::sha1_only(
                parse_verifiers(v).map_err(|m| MigrateError::invalid(at(), m))?,
            ),
            // Never echo the password in an error.
            None => StoredCredentials::from_password(secret, iterations).map_err(|_| {
                MigrateError::invalid(at(), "the password is empty or fails SASLprep")
            })?,
        };
        users.push(UserData::new(jid, creds));
    }
    Ok(users)
}

fn parse_verifiers(v: &str) -> Result<ScramCredentials, &'static str> {
    let parts: Vec<&str> = v.split('$').collect();
    let [iter, salt, stored, server] = parts[..] else {
        return Err("expected {SCRAM-SHA-1}iterations$salt$StoredKey$ServerKey");
    };
    let iterations: u32 = iter.parse().map_err(|_| "bad iteration count")?;
    let dec = |s: &str| B64.decode(s).map_err(|_| "bad base64");
    let (salt, stored_key, server_key) = (dec(salt)?, dec(stored)?, dec(server)?);
    if iterations == 0 || salt.is_empty() || stored_key.len() != 20 || server_key.len() != 20 {
        return Err("SCRAM-SHA-1 keys must be 20 bytes, salt and iterations non-zero");
    }
    Ok(ScramCredentials {
        salt,
        iterations,
        stored_key,
        server_key,
    })
}
