//! SASL failure reasons, named after the RFC 6120 §6.5 failure conditions they map to.

/// Why a SASL exchange failed. Each variant maps 1:1 to an RFC 6120 §6.5 `<failure/>` child.
///
/// Convention used throughout `sasl`: a message that does not follow the mechanism's syntax is
/// `MalformedRequest`; a well-formed message that fails authentication (wrong password, unknown
/// user, nonce or channel-binding disagreement, SASLprep failure of a credential) is `NotAuthorized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// "malformed-request"
    #[error("malformed request")]
    MalformedRequest,
    /// "not-authorized"
    #[error("not authorized")]
    NotAuthorized,
    /// "invalid-authzid"
    #[error("invalid authzid")]
    InvalidAuthzid,
    /// "incorrect-encoding": bad base64 (decoded by the caller).
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// "invalid-mechanism"
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// "credentials-expired": an expired XEP-0484 token.
    #[error("credentials expired")]
    CredentialsExpired,
}

impl SaslError {
    /// The RFC 6120 §6.5 defined-condition element name for this error.
    pub fn condition(self) -> &'static str {
        match self {
            SaslError::MalformedRequest => "malformed-request",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::CredentialsExpired => "credentials-expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert_eq!(SaslError::MalformedRequest.condition(), "malformed-request");
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
        assert_eq!(SaslError::InvalidAuthzid.condition(), "invalid-authzid");
        assert_eq!(
            SaslError::IncorrectEncoding.condition(),
            "incorrect-encoding"
        );
        assert_eq!(SaslError::InvalidMechanism.condition(), "invalid-mechanism");
    }
}
