//! Writes Prosody 0.12 `internal_hashed` account files directly: far faster than one
//! `prosodyctl register` (a Lua process) per account.
//!
//! Prosody keeps each account as `<data>/<host>/accounts/<user>.dat`, a Lua chunk
//! `return { ["stored_key"] = hex; ["server_key"] = hex; ["salt"] = str;
//! ["iteration_count"] = n; };` where host and user are escaped by replacing every
//! non-alphanumeric byte with `%xx` (util/datamanager.lua), and the keys are the SCRAM
//! verifiers for the configured `password_hash`, with the salt string used as bytes.

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;

use crate::conn::{Names, Res};
use crate::scram::{self, HashKind};

/// Prosody's path-component escaping.
pub fn prosody_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_salt() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub fn account_file(kind: HashKind, password: &str, salt: &str, iterations: u32) -> String {
    let salted = scram::salted_password(kind, password.as_bytes(), salt.as_bytes(), iterations);
    let (stored, server) = scram::verifiers(kind, &salted);
    format!(
        "return {{\n\t[\"server_key\"] = \"{}\";\n\t[\"salt\"] = \"{salt}\";\n\t[\"iteration_count\"] = {iterations};\n\t[\"stored_key\"] = \"{}\";\n}};\n",
        hex(&server),
        hex(&stored)
    )
}

pub struct AccountSpec<'a> {
    pub data_dir: &'a Path,
    pub names: &'a Names,
    pub users: usize,
    pub kind: HashKind,
    pub iterations: u32,
    pub salt: Option<String>,
    pub salt_per_user: bool,
}

/// Writes the account files; returns how many were written.
///
/// By default all accounts share one salt (random per call). The server never runs
/// PBKDF2 for a SCRAM login, but the client does: a shared salt lets the generator
/// derive the salted password once instead of per login, so login figures measure the
/// server, not the generator.
pub fn write_prosody(spec: &AccountSpec<'_>) -> Res<usize> {
    let shared = match &spec.salt {
        Some(s) => {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("salt must be non-empty [A-Za-z0-9_-]".into());
            }
            s.clone()
        }
        None => random_salt(),
    };
    let mut cache: HashMap<String, String> = HashMap::new();
    for i in 0..spec.users {
        let acct = spec.names.account(i);
        let dir = spec
            .data_dir
            .join(prosody_encode(&acct.domain))
            .join("accounts");
        if i == 0
            || !spec
                .names
                .user_pattern
                .ends_with(&format!("@{}", acct.domain))
        {
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let body = if spec.salt_per_user {
            account_file(spec.kind, &acct.password, &random_salt(), spec.iterations)
        } else if let Some(b) = cache.get(&acct.password) {
            b.clone()
        } else {
            let b = account_file(spec.kind, &acct.password, &shared, spec.iterations);
            cache.insert(acct.password.clone(), b.clone());
            b
        };
        let path = dir.join(format!("{}.dat", prosody_encode(&acct.local)));
        std::fs::write(&path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(spec.users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_prosody() {
        assert_eq!(prosody_encode("localhost"), "localhost");
        assert_eq!(prosody_encode("example.org"), "example%2eorg");
        assert_eq!(prosody_encode("a_b-c"), "a%5fb%2dc");
    }

    #[test]
    fn file_format() {
        // Same verifiers as a `prosodyctl register user1 localhost password` file.
        let f = account_file(
            HashKind::Sha1,
            "password",
            "cca8db61-c908-42c3-9827-ca2a53be222b",
            10000,
        );
        assert!(f.starts_with("return {\n"));
        assert!(f.contains("[\"stored_key\"] = \"5f5b37c381cf16b45c8fc727755de89cdfffd7d3\";"));
        assert!(f.contains("[\"server_key\"] = \"7a3a6530829b61827d4fee64bba81b9e7a63ce85\";"));
        assert!(f.contains("[\"iteration_count\"] = 10000;"));
        assert!(f.ends_with("};\n"));
    }

    #[test]
    fn writes_tree() {
        let dir = std::env::temp_dir().join(format!("xmppd-bench-acct-{}", std::process::id()));
        let names = Names {
            user_pattern: "u{i}@example.org".into(),
            password_pattern: "pw".into(),
            first: 1,
        };
        let n = write_prosody(&AccountSpec {
            data_dir: &dir,
            names: &names,
            users: 3,
            kind: HashKind::Sha256,
            iterations: 4096,
            salt: Some("fixed".into()),
            salt_per_user: false,
        })
        .unwrap();
        assert_eq!(n, 3);
        let f = std::fs::read_to_string(dir.join("example%2eorg/accounts/u3.dat")).unwrap();
        assert!(f.contains("[\"salt\"] = \"fixed\";"));
        assert!(
            write_prosody(&AccountSpec {
                data_dir: &dir,
                names: &names,
                users: 1,
                kind: HashKind::Sha1,
                iterations: 4096,
                salt: Some("bad\"salt".into()),
                salt_per_user: false,
            })
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
