//! Stored SCRAM credentials: the only form in which a password is ever kept.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::error::SaslError;
use super::scram::{SALT_LEN, ScramHash, fake_credentials};

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

/// SASLprep a password for storage or comparison; empty results are refused (RFC 4616 and
/// RFC 5802 both require a non-empty password).
fn prep_password(password: &str) -> Option<zeroize::Zeroizing<String>> {
    match stringprep::saslprep(password) {
        Ok(p) if !p.is_empty() => Some(zeroize::Zeroizing::new(p.into_owned())),
        _ => None,
    }
}

impl ScramCredentials {
    /// Derives the SCRAM verifiers (RFC 5802 §3) for `password`, which is SASLprep'd here.
    ///
    /// Errors with `MalformedRequest` when the password fails SASLprep or is empty after it,
    /// when `iterations` is 0, or when `salt` is empty (none of those can be used for SCRAM).
    /// There is deliberately no fallback to the unprepared password.
    pub fn derive(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, SaslError> {
        let prepped = prep_password(password).ok_or(SaslError::MalformedRequest)?;
        if iterations == 0 || salt.is_empty() {
            return Err(SaslError::MalformedRequest);
        }
        Ok(Self::derive_prepped(
            hash,
            prepped.as_bytes(),
            salt,
            iterations,
        ))
    }

    fn derive_prepped(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hash.hi(password, salt, iterations);
        let client_key = zeroize::Zeroizing::new(hash.hmac(&salted, b"Client Key"));
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` derives these verifiers (one PBKDF2 run), compared in constant time.
    fn matches(&self, hash: ScramHash, password: &str) -> bool {
        let Some(prepped) = prep_password(password) else {
            return false;
        };
        if self.iterations == 0 || self.salt.is_empty() {
            return false;
        }
        let derived =
            ScramCredentials::derive_prepped(hash, prepped.as_bytes(), &self.salt, self.iterations);
        let ok =
            derived.stored_key.ct_eq(&self.stored_key) & derived.server_key.ct_eq(&self.server_key);
        ok.into()
    }
}

/// PLAIN verification that costs the same whether the account exists or not, so neither the
/// answer nor its timing tells which (`stored` is `None` for an unknown account).
///
/// For an unknown account the password is checked against the verifiers SCRAM would show for
/// it (a salt derived from `account`, the normalised account name, and
/// `unknown_user_iterations`, the configured iteration count); the result is ignored and the
/// answer is false. CPU-bound (one PBKDF2): callers on an async runtime run it off its workers.
pub fn verify_plain(
    stored: Option<&StoredCredentials>,
    account: &str,
    password: &str,
    unknown_user_iterations: u32,
) -> bool {
    match stored {
        Some(s) => s.verify_password(password),
        None => {
            let fake = fake_credentials(ScramHash::Sha256, account, unknown_user_iterations);
            // black_box: the comparison must not be optimised away with its unused result.
            std::hint::black_box(fake.matches(ScramHash::Sha256, password));
            false
        }
    }
}

impl StoredCredentials {
    /// Derives verifiers for both hashes, each with its own random 16-byte salt.
    ///
    /// Errors with `MalformedRequest` when the password fails SASLprep (or is empty after it) or
    /// `iterations` is 0.
    pub fn from_password(password: &str, iterations: u32) -> Result<Self, SaslError> {
        let prepped = prep_password(password).ok_or(SaslError::MalformedRequest)?;
        if iterations == 0 {
            return Err(SaslError::MalformedRequest);
        }
        let mut rng = rand::rng();
        let mut salt1 = [0u8; SALT_LEN];
        let mut salt256 = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt1);
        rng.fill_bytes(&mut salt256);
        Ok(StoredCredentials {
            sha1: ScramCredentials::derive_prepped(
                ScramHash::Sha1,
                prepped.as_bytes(),
                &salt1,
                iterations,
            ),
            sha256: ScramCredentials::derive_prepped(
                ScramHash::Sha256,
                prepped.as_bytes(),
                &salt256,
                iterations,
            ),
        })
    }

    /// Credentials imported from a server that kept SCRAM-SHA-1 verifiers only (Prosody's
    /// `internal_hashed`): the SHA-256 set is left unusable (no salt, 0 iterations), which
    /// SCRAM treats exactly like an unknown account's, so SCRAM-SHA-256 fails for it as a
    /// wrong password would, without telling anything more. SCRAM-SHA-1 and PLAIN work.
    pub fn sha1_only(sha1: ScramCredentials) -> Self {
        StoredCredentials {
            sha1,
            sha256: ScramCredentials {
                salt: Vec::new(),
                iterations: 0,
                stored_key: Vec::new(),
                server_key: Vec::new(),
            },
        }
    }

    /// Whether the SHA-256 verifiers are usable (false after a SHA-1-only import, until the
    /// password is next seen in clear and the full set is derived).
    pub fn has_sha256(&self) -> bool {
        self.sha256.iterations > 0 && !self.sha256.salt.is_empty()
    }

    /// For PLAIN: re-derives the SHA-256 verifiers (SHA-1 for a SHA-1-only account) with the
    /// stored salt/iterations and compares them in constant time. False for a password
    /// failing SASLprep or for unusable stored data.
    pub fn verify_password(&self, password: &str) -> bool {
        if self.has_sha256() {
            self.sha256.matches(ScramHash::Sha256, password)
        } else {
            self.sha1.matches(ScramHash::Sha1, password)
        }
    }

    /// The verifiers for one hash.
    pub fn for_hash(&self, hash: ScramHash) -> &ScramCredentials {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_matches_rfc5802_keys() {
        // RFC 5802 §5: user "user", password "pencil", salt QSXCR+Q6sek8bf92, i=4096.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("QSXCR+Q6sek8bf92").unwrap();
        let c = ScramCredentials::derive(ScramHash::Sha1, "pencil", &salt, 4096).unwrap();
        assert_eq!(
            c.stored_key,
            [
                0xe9, 0xd9, 0x46, 0x60, 0xc3, 0x9d, 0x65, 0xc3, 0x8f, 0xba, 0xd9, 0x1c, 0x35, 0x8f,
                0x14, 0xda, 0x0e, 0xef, 0x2b, 0xd6
            ]
        );
        assert_eq!(
            c.server_key,
            [
                0x0f, 0xe0, 0x92, 0x58, 0xb3, 0xac, 0x85, 0x2b, 0xa5, 0x02, 0xcc, 0x62, 0xba, 0x90,
                0x3e, 0xaa, 0xcd, 0xbf, 0x7d, 0x31
            ]
        );
        assert_eq!(c.salt, salt);
        assert_eq!(c.iterations, 4096);
    }

    #[test]
    fn derive_saslpreps_and_rejects() {
        let salt = b"salt";
        // U+00A0 NO-BREAK SPACE maps to SPACE; U+00AD maps to nothing.
        let a = ScramCredentials::derive(ScramHash::Sha256, "a\u{a0}b\u{ad}", salt, 4096).unwrap();
        let b = ScramCredentials::derive(ScramHash::Sha256, "a b", salt, 4096).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha256, "bad\u{7}", salt, 4096),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha256, "", salt, 4096),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha256, "pw", salt, 0),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            ScramCredentials::derive(ScramHash::Sha256, "pw", b"", 4096),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn from_password_and_verify() {
        let c = StoredCredentials::from_password("correct horse", 4096).unwrap();
        assert_eq!(c.sha1.salt.len(), SALT_LEN);
        assert_eq!(c.sha256.salt.len(), SALT_LEN);
        assert_ne!(c.sha1.salt, c.sha256.salt);
        assert_eq!(c.sha1.stored_key.len(), 20);
        assert_eq!(c.sha256.stored_key.len(), 32);
        assert_eq!(c.for_hash(ScramHash::Sha1), &c.sha1);
        assert_eq!(c.for_hash(ScramHash::Sha256), &c.sha256);
        // The stored verifiers agree with an explicit derivation using the same salt.
        let again =
            ScramCredentials::derive(ScramHash::Sha1, "correct horse", &c.sha1.salt, 4096).unwrap();
        assert_eq!(again, c.sha1);

        assert!(c.verify_password("correct horse"));
        // SASLprep-equivalent spelling is the same password.
        assert!(c.verify_password("correct\u{a0}horse"));
        assert!(!c.verify_password("correct horse "));
        assert!(!c.verify_password("Correct horse"));
        assert!(!c.verify_password(""));
        assert!(!c.verify_password("bad\u{7}"));

        let other = StoredCredentials::from_password("correct horse", 4096).unwrap();
        assert_ne!(other.sha256.salt, c.sha256.salt);

        assert_eq!(
            StoredCredentials::from_password("bad\u{7}", 4096),
            Err(SaslError::MalformedRequest)
        );
        assert_eq!(
            StoredCredentials::from_password("pw", 0),
            Err(SaslError::MalformedRequest)
        );
    }

    #[test]
    fn sha1_only_credentials_verify_with_sha1() {
        let full = StoredCredentials::from_password("old pw", 4096).unwrap();
        let legacy = StoredCredentials::sha1_only(full.sha1.clone());
        assert!(!legacy.has_sha256());
        assert!(full.has_sha256());
        assert!(legacy.verify_password("old pw"));
        assert!(!legacy.verify_password("other"));
    }

    #[test]
    fn verify_password_with_corrupt_record_is_false() {
        let mut c = StoredCredentials::from_password("pw", 4096).unwrap();
        c.sha256.stored_key.truncate(5);
        assert!(!c.verify_password("pw"));
        let mut c = StoredCredentials::from_password("pw", 4096).unwrap();
        c.sha256.iterations = 0;
        c.sha1.stored_key.truncate(5);
        assert!(!c.verify_password("pw"));
    }

    fn pbkdf2_runs() -> (u32, u64) {
        crate::sasl::scram::PBKDF2_RUNS.with(|r| r.get())
    }

    #[test]
    fn plain_does_the_same_pbkdf2_for_an_unknown_account() {
        let real = StoredCredentials::from_password("pw", 4096).unwrap();
        let start = pbkdf2_runs();
        assert!(verify_plain(Some(&real), "juliet@example.org", "pw", 4096));
        let after_real = pbkdf2_runs();
        assert!(!verify_plain(None, "romeo@example.org", "pw", 4096));
        let after_unknown = pbkdf2_runs();
        // One PBKDF2 with the same iteration count on either path.
        assert_eq!((after_real.0 - start.0, after_real.1 - start.1), (1, 4096));
        assert_eq!(
            (
                after_unknown.0 - after_real.0,
                after_unknown.1 - after_real.1
            ),
            (1, 4096)
        );
        // And with the configured count for unknown accounts, whatever the real ones use.
        assert!(!verify_plain(None, "romeo@example.org", "pw", 10_000));
        assert_eq!(pbkdf2_runs().1 - after_unknown.1, 10_000);
    }

    #[test]
    fn plain_unknown_account_uses_the_salt_scram_would_show() {
        // The fake verifiers depend on the normalised name only, so two spellings of one
        // unknown name cost and look the same.
        let a = fake_credentials(ScramHash::Sha256, "romeo@example.org", 4096);
        let b = fake_credentials(ScramHash::Sha256, "romeo@example.org", 4096);
        let c = fake_credentials(ScramHash::Sha256, "juliet@example.org", 4096);
        assert_eq!(a, b);
        assert_ne!(a.salt, c.salt);
        assert_eq!(a.salt.len(), SALT_LEN);
        for pw in ["pw", "romeo@example.org", ""] {
            assert!(!verify_plain(None, "romeo@example.org", pw, 4096));
        }
    }
}
