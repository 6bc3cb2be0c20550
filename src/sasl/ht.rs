//! The Hashed Token mechanisms (draft-schmaus-kitten-sasl-ht) that XEP-0484 (FAST) uses:
//! one round trip, the client proving it holds a token the server issued.
//!
//! The client sends `authcid NUL HMAC(token, "Initiator" || cb-data)`, the server answers
//! `HMAC(token, "Responder" || cb-data)`. Only SHA-256 is offered: it is what every FAST
//! client implements.

use subtle::ConstantTimeEq;

use super::{ChannelBindingType, ChannelBindings, SaslError, ScramHash};

/// The HT-SHA-256 family, by channel binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HtMechanism {
    /// `tls-exporter` (RFC 9266).
    Expr,
    /// `tls-server-end-point` (RFC 5929).
    Endp,
    /// No channel binding.
    None,
}

impl HtMechanism {
    /// Strongest first.
    pub const ALL: [HtMechanism; 3] = [HtMechanism::Expr, HtMechanism::Endp, HtMechanism::None];

    pub fn name(self) -> &'static str {
        match self {
            HtMechanism::Expr => "HT-SHA-256-EXPR",
            HtMechanism::Endp => "HT-SHA-256-ENDP",
            HtMechanism::None => "HT-SHA-256-NONE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    fn binding(self) -> Option<ChannelBindingType> {
        match self {
            HtMechanism::Expr => Some(ChannelBindingType::TlsExporter),
            HtMechanism::Endp => Some(ChannelBindingType::TlsServerEndPoint),
            HtMechanism::None => None,
        }
    }

    /// The mechanisms this connection can run: the channel-bound ones only where the
    /// binding data exists.
    pub fn available(bindings: &ChannelBindings) -> Vec<HtMechanism> {
        Self::ALL
            .into_iter()
            .filter(|m| m.binding().is_none_or(|b| bindings.get(b).is_some()))
            .collect()
    }

    /// The channel-binding data this mechanism hashes in (empty for `-NONE`).
    fn cb_data(self, bindings: &ChannelBindings) -> Result<&[u8], SaslError> {
        match self.binding() {
            None => Ok(&[]),
            Some(b) => bindings.get(b).ok_or(SaslError::InvalidMechanism),
        }
    }
}

/// The client's initial response: whom it claims to be and its proof.
pub struct HtResponse {
    /// The authentication identity (the account's localpart), as sent.
    pub authcid: String,
    proof: Vec<u8>,
}

/// Splits `authcid NUL proof`.
pub fn parse_response(data: &[u8]) -> Result<HtResponse, SaslError> {
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or(SaslError::MalformedRequest)?;
    let authcid = std::str::from_utf8(&data[..nul]).map_err(|_| SaslError::MalformedRequest)?;
    let proof = &data[nul + 1..];
    if authcid.is_empty() || proof.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    Ok(HtResponse {
        authcid: authcid.to_string(),
        proof: proof.to_vec(),
    })
}

/// HMAC-SHA-256 keyed with the token over `label || cb-data`.
fn hmac(token: &str, label: &[u8], cb: &[u8]) -> Vec<u8> {
    ScramHash::Sha256.hmac(token.as_bytes(), &[label, cb].concat())
}

impl HtResponse {
    /// Whether the proof is `token`'s for `mechanism` on this connection (compared in
    /// constant time).
    pub fn proves(
        &self,
        mechanism: HtMechanism,
        bindings: &ChannelBindings,
        token: &str,
    ) -> Result<bool, SaslError> {
        let expected = hmac(token, b"Initiator", mechanism.cb_data(bindings)?);
        Ok(expected.ct_eq(&self.proof).into())
    }
}

/// The server's answer once the proof checked out (mutual authentication).
pub fn responder(
    mechanism: HtMechanism,
    bindings: &ChannelBindings,
    token: &str,
) -> Result<Vec<u8>, SaslError> {
    Ok(hmac(token, b"Responder", mechanism.cb_data(bindings)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made as a client would, with the hmac crate directly.
    fn client_proof(token: &str, cb: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).unwrap();
        mac.update(b"Initiator");
        mac.update(cb);
        mac.finalize().into_bytes().to_vec()
    }

    fn bindings() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: None,
        }
    }

    #[test]
    fn a_proof_made_with_the_token_checks_out_and_others_do_not() {
        let mut data = b"juliet\0".to_vec();
        data.extend(client_proof("s3cret", &[]));
        let r = parse_response(&data).unwrap();
        assert_eq!(r.authcid, "juliet");
        let b = bindings();
        assert!(r.proves(HtMechanism::None, &b, "s3cret").unwrap());
        assert!(!r.proves(HtMechanism::None, &b, "other").unwrap());
        // The same proof does not pass for a channel-bound mechanism.
        assert!(!r.proves(HtMechanism::Expr, &b, "s3cret").unwrap());
    }

    #[test]
    fn channel_bound_proofs_hash_the_binding_and_need_it() {
        let b = bindings();
        let mut data = b"juliet\0".to_vec();
        data.extend(client_proof("tok", &[7; 32]));
        let r = parse_response(&data).unwrap();
        assert!(r.proves(HtMechanism::Expr, &b, "tok").unwrap());
        assert!(r.proves(HtMechanism::Endp, &b, "tok").is_err());
        assert_eq!(
            HtMechanism::available(&b),
            vec![HtMechanism::Expr, HtMechanism::None]
        );
        assert_ne!(
            responder(HtMechanism::Expr, &b, "tok").unwrap(),
            responder(HtMechanism::None, &b, "tok").unwrap()
        );
    }

    #[test]
    fn malformed_responses_are_refused() {
        for bad in [&b""[..], b"juliet", b"\0proof", b"juliet\0", b"\xff\0p"] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
    }
}
