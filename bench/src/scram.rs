//! Client side of SASL SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677) and PLAIN,
//! plus the Prosody account-file verifiers computed from the same primitives.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    Sha1,
    Sha256,
}

impl HashKind {
    pub fn mechanism(self) -> &'static str {
        match self {
            HashKind::Sha1 => "SCRAM-SHA-1",
            HashKind::Sha256 => "SCRAM-SHA-256",
        }
    }
}

pub fn hmac(kind: HashKind, key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    match kind {
        HashKind::Sha1 => match Hmac::<Sha1>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
        HashKind::Sha256 => match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
    }
}

pub fn hash(kind: HashKind, data: &[u8]) -> Vec<u8> {
    match kind {
        HashKind::Sha1 => Sha1::digest(data).to_vec(),
        HashKind::Sha256 => Sha256::digest(data).to_vec(),
    }
}

pub fn salted_password(kind: HashKind, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match kind {
        HashKind::Sha1 => {
            let mut out = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
            out.to_vec()
        }
        HashKind::Sha256 => {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

/// (StoredKey, ServerKey) for a salted password.
pub fn verifiers(kind: HashKind, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let client_key = hmac(kind, salted, b"Client Key");
    (hash(kind, &client_key), hmac(kind, salted, b"Server Key"))
}

/// Caches SaltedPassword per (hash, password, salt, iterations): PBKDF2 is the one
/// expensive step of a SCRAM login, and a real client would cache it too. Accounts that
/// share a salt then cost the generator one PBKDF2 per run instead of one per login.
/// (hash, password, salt, iterations).
type SaltKey = (HashKind, Vec<u8>, Vec<u8>, u32);

#[derive(Default)]
pub struct SaltCache {
    map: Mutex<HashMap<SaltKey, Vec<u8>>>,
}

impl SaltCache {
    pub fn get(&self, kind: HashKind, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let key = (kind, password.to_vec(), salt.to_vec(), iterations);
        if let Ok(m) = self.map.lock()
            && let Some(v) = m.get(&key)
        {
            return v.clone();
        }
        let v = salted_password(kind, password, salt, iterations);
        if let Ok(mut m) = self.map.lock() {
            // Bounded: per-user salts must not grow the cache without limit.
            if m.len() >= 65_536 {
                m.clear();
            }
            m.insert(key, v.clone());
        }
        v
    }
}

/// SASLname escaping of the username (RFC 5802 §5.1).
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One SCRAM exchange in progress.
pub struct ScramClient {
    kind: HashKind,
    client_first_bare: String,
    nonce: String,
    server_signature: Vec<u8>,
}

impl ScramClient {
    pub fn new(kind: HashKind, user: &str, nonce: &str) -> Self {
        ScramClient {
            kind,
            client_first_bare: format!("n={},r={}", saslname(user), nonce),
            nonce: nonce.to_owned(),
            server_signature: Vec::new(),
        }
    }

    /// The client-first-message (gs2 header: no channel binding, no authzid).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Given the server-first-message, returns the client-final-message.
    pub fn client_final(
        &mut self,
        server_first: &str,
        password: &str,
        cache: &SaltCache,
    ) -> Result<String, String> {
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                r = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                s = Some(v);
            } else if let Some(v) = part.strip_prefix("i=") {
                i = Some(v);
            } else if part.starts_with("m=") {
                return Err("server requires an unsupported SCRAM extension".into());
            }
        }
        let (Some(r), Some(s), Some(i)) = (r, s, i) else {
            return Err(format!("malformed server-first-message {server_first:?}"));
        };
        if !r.starts_with(&self.nonce) || r.len() == self.nonce.len() {
            return Err("server nonce does not extend the client nonce".into());
        }
        let salt = B64.decode(s).map_err(|e| format!("bad salt base64: {e}"))?;
        let iterations: u32 = i
            .parse()
            .map_err(|_| format!("bad iteration count {i:?}"))?;
        if iterations == 0 || iterations > 10_000_000 {
            return Err(format!("iteration count {iterations} out of range"));
        }
        let salted = cache.get(self.kind, password.as_bytes(), &salt, iterations);
        let client_key = hmac(self.kind, &salted, b"Client Key");
        let stored_key = hash(self.kind, &client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_sig = hmac(self.kind, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_sig.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(self.kind, &salted, b"Server Key");
        self.server_signature = hmac(self.kind, &server_key, auth_message.as_bytes());
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message (`v=...`), proving the server knew the verifier.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(format!("server reported SCRAM error {e}"));
        }
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| format!("no verifier in server-final-message {server_final:?}"))?;
        let got = B64
            .decode(v)
            .map_err(|e| format!("bad verifier base64: {e}"))?;
        if got == self.server_signature {
            Ok(())
        } else {
            Err("server signature mismatch".into())
        }
    }
}

/// The FAST mechanism the bench uses (XEP-0484): HMAC-SHA-256 over the token, no
/// channel binding.
pub const HT_SHA256_NONE: &str = "HT-SHA-256-NONE";

/// The initial response of HT-SHA-256-NONE (XEP-0484), not yet base64-encoded:
/// `username || 0x00 || HMAC-SHA-256(key = token, "Initiator")` (the channel binding
/// data that would follow "Initiator" is empty for -NONE).
pub fn ht_initiator(user: &str, token: &str) -> Vec<u8> {
    let mac = hmac(HashKind::Sha256, token.as_bytes(), b"Initiator");
    let mut out = Vec::with_capacity(user.len() + 1 + mac.len());
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(&mac);
    out
}

/// What the server must answer to an HT-SHA-256-NONE login, proving it holds the token:
/// `HMAC-SHA-256(key = token, "Responder")`.
pub fn ht_responder(token: &str) -> Vec<u8> {
    hmac(HashKind::Sha256, token.as_bytes(), b"Responder")
}

/// The PLAIN initial response (RFC 4616), base64-encoded.
pub fn plain_response(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    B64.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // RFC 5802 §5 example.
    #[test]
    fn rfc5802_sha1_vector() {
        let cache = SaltCache::default();
        let mut c = ScramClient::new(HashKind::Sha1, "user", "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let fin = c
            .client_final(
                "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                "pencil",
                &cache,
            )
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert!(
            c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKA=")
                .is_err()
        );
    }

    // RFC 7677 §3 example.
    #[test]
    fn rfc7677_sha256_vector() {
        let cache = SaltCache::default();
        let mut c = ScramClient::new(HashKind::Sha256, "user", "rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .client_final(
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "pencil",
                &cache,
            )
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn rejects_bad_server_first() {
        let cache = SaltCache::default();
        let mut c = ScramClient::new(HashKind::Sha1, "u", "abc");
        assert!(c.client_final("r=xyz,s=QSXC,i=1", "p", &cache).is_err());
        assert!(c.client_final("r=abc,s=QSXC,i=1", "p", &cache).is_err());
        assert!(c.client_final("r=abcd,s=QSXC", "p", &cache).is_err());
        assert!(
            c.client_final("m=x,r=abcd,s=QSXC,i=1", "p", &cache)
                .is_err()
        );
    }

    // The verifiers Prosody 0.12 wrote for user "password" with this salt (checked
    // against a `prosodyctl register` account file).
    #[test]
    fn prosody_verifiers() {
        let salted = salted_password(
            HashKind::Sha1,
            b"password",
            b"cca8db61-c908-42c3-9827-ca2a53be222b",
            10000,
        );
        let (stored, server) = verifiers(HashKind::Sha1, &salted);
        assert_eq!(hex(&stored), "5f5b37c381cf16b45c8fc727755de89cdfffd7d3");
        assert_eq!(hex(&server), "7a3a6530829b61827d4fee64bba81b9e7a63ce85");
    }

    // RFC 4231 test case 2 (the HMAC-SHA-256 FAST uses), then the HT layout on top.
    #[test]
    fn ht_sha256_none() {
        assert_eq!(
            hex(&hmac(
                HashKind::Sha256,
                b"Jefe",
                b"what do ya want for nothing?"
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let init = ht_initiator("user7", "s3cr\u{e9}t");
        let (user, mac) = init.split_at(6);
        assert_eq!(user, b"user7\0");
        assert_eq!(mac.len(), 32);
        let mut m = Hmac::<Sha256>::new_from_slice("s3cr\u{e9}t".as_bytes()).unwrap();
        m.update(b"Initiator");
        assert_eq!(mac, m.finalize().into_bytes().as_slice());
        let mut m = Hmac::<Sha256>::new_from_slice(b"tok").unwrap();
        m.update(b"Responder");
        assert_eq!(ht_responder("tok"), m.finalize().into_bytes().to_vec());
        assert_ne!(ht_responder("tok"), ht_responder("tok2"));
        assert_ne!(
            &ht_initiator("u", "tok")[2..],
            ht_responder("tok").as_slice()
        );
    }

    #[test]
    fn plain_and_saslname() {
        assert_eq!(plain_response("u", "p"), B64.encode(b"\0u\0p"));
        assert_eq!(saslname("a=b,c"), "a=3Db=2Cc");
    }
}
