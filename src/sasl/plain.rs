//! SASL PLAIN (RFC 4616) message parsing. Verification is `StoredCredentials::verify_password`.

use zeroize::Zeroizing;

use super::error::SaslError;

/// The three fields of a PLAIN message.
pub struct PlainCredentials {
    /// Requested authorization identity (a JID, left as sent); `None` when empty.
    pub authzid: Option<String>,
    /// Authentication identity, SASLprep'd.
    pub authcid: String,
    /// Password, SASLprep'd; wiped on drop.
    pub password: Zeroizing<String>,
}

// Hand-written so the password never ends up in logs.
impl std::fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// RFC 4616 message: `[authzid] NUL authcid NUL passwd`; UTF-8; SASLprep authcid and password.
///
/// Errors: `MalformedRequest` when there are not exactly two NULs, a field is not UTF-8, or
/// authcid/password is empty; `NotAuthorized` when authcid or password fails SASLprep (or becomes
/// empty by it), since no account can match such credentials.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut fields = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    let authzid = utf8(authzid)?;
    let authcid = utf8(authcid)?;
    let passwd = utf8(passwd)?;
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslError::MalformedRequest);
    }

    let authcid = match stringprep::saslprep(authcid) {
        Ok(a) if !a.is_empty() => a.into_owned(),
        _ => return Err(SaslError::NotAuthorized),
    };
    let password = match stringprep::saslprep(passwd) {
        Ok(p) if !p.is_empty() => Zeroizing::new(p.into_owned()),
        _ => return Err(SaslError::NotAuthorized),
    };
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid,
        password,
    })
}

fn utf8(b: &[u8]) -> Result<&str, SaslError> {
    std::str::from_utf8(b).map_err(|_| SaslError::MalformedRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_authzid() {
        let p = parse_plain(b"\0juliet\0s3cr3t").unwrap();
        assert_eq!(p.authzid, None);
        assert_eq!(p.authcid, "juliet");
        assert_eq!(p.password.as_str(), "s3cr3t");

        let p = parse_plain(b"romeo@example.net\0juliet\0pass word").unwrap();
        assert_eq!(p.authzid.as_deref(), Some("romeo@example.net"));
        assert_eq!(p.authcid, "juliet");
        assert_eq!(p.password.as_str(), "pass word");
        assert!(!format!("{p:?}").contains("pass word"));
    }

    #[test]
    fn saslprep_applied() {
        // U+00AD maps to nothing, U+00A0 to SPACE, U+2168 (ROMAN NUMERAL NINE) NFKC → "IX".
        let p = parse_plain("\0ju\u{ad}liet\0a\u{a0}b\u{2168}".as_bytes()).unwrap();
        assert_eq!(p.authcid, "juliet");
        assert_eq!(p.password.as_str(), "a bIX");
        assert!(matches!(
            parse_plain("\0juliet\0pw\u{7}".as_bytes()),
            Err(SaslError::NotAuthorized)
        ));
        assert!(matches!(
            parse_plain("\0\u{ad}\0pw".as_bytes()),
            Err(SaslError::NotAuthorized)
        ));
    }

    #[test]
    fn malformed() {
        let cases: &[&[u8]] = &[
            b"",
            b"juliet",
            b"\0juliet",
            b"juliet\0pw",
            b"\0\0pw",
            b"\0juliet\0",
            b"\0\0",
            b"a\0b\0c\0d",
            b"\0juliet\0pw\0",
            b"\0jul\xffiet\0pw",
            b"\0juliet\0p\xc3",
            b"\xfe\0juliet\0pw",
        ];
        for &c in cases {
            assert!(
                matches!(parse_plain(c), Err(SaslError::MalformedRequest)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut st = 0xDEAD_BEEF_1234_5678u64;
        for i in 0..5000usize {
            let msg: Vec<u8> = (0..i % 50)
                .map(|_| {
                    st ^= st << 13;
                    st ^= st >> 7;
                    st ^= st << 17;
                    // Bias towards NULs and ASCII so some inputs parse.
                    match st % 8 {
                        0 => 0,
                        1 => st as u8,
                        _ => b'a' + (st >> 8) as u8 % 26,
                    }
                })
                .collect();
            if let Ok(p) = parse_plain(&msg) {
                assert!(!p.authcid.is_empty() && !p.password.is_empty());
            }
        }
    }
}
