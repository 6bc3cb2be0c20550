//! Peer certificates of server-to-server streams (RFC 6125 / RFC 9525, XEP-0178).
//!
//! TLS itself accepts any certificate (the handshake signatures are still checked): an
//! unverifiable certificate is not fatal in XMPP federation, it only means Server Dialback
//! must prove the peer's identity instead. After the handshake, [`TrustStore::verify`]
//! decides whether the chain is trusted and names the remote domain (DNS-ID, SRV-ID or
//! XmppAddr). Certificates carrying only the serverAuth EKU are accepted in both
//! directions: public CAs no longer issue clientAuth.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

/// Why a peer certificate is not acceptable for a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no certificate presented")]
    Missing,
    #[error("certificate chain not trusted: {0}")]
    Untrusted(String),
    #[error("certificate is not valid for {0}")]
    WrongName(String),
}

/// Trust anchors for peer certificates: the system's roots plus an optional extra file.
#[derive(Clone)]
pub struct TrustStore {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl TrustStore {
    /// The system's roots (rustls-native-certs) plus the PEM certificates in `extra`.
    /// Unreadable system roots are logged and skipped; an unreadable `extra` is an error.
    pub fn load(extra: Option<&Path>) -> Result<TrustStore, String> {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "could not load some system CA certificates");
        }
        let mut ders = native.certs;
        if let Some(path) = extra {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let extra = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            if extra.is_empty() {
                return Err(format!("{}: no CERTIFICATE found", path.display()));
            }
            ders.extend(extra);
        }
        Ok(Self::from_ders(&ders))
    }

    /// Exactly these roots (tests).
    pub fn from_ders(ders: &[CertificateDer<'_>]) -> TrustStore {
        let anchors = ders
            .iter()
            .filter_map(|d| {
                webpki::anchor_from_trusted_cert(d)
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        TrustStore {
            anchors: Arc::new(anchors),
            provider: provider(),
        }
    }

    /// Whether `chain` (leaf first) is trusted and names `domain`.
    pub fn verify(&self, chain: &[CertificateDer<'_>], domain: &str) -> Result<(), CertError> {
        self.verify_at(chain, domain, UnixTime::now())
    }

    pub fn verify_at(
        &self,
        chain: &[CertificateDer<'_>],
        domain: &str,
        now: UnixTime,
    ) -> Result<(), CertError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertError::Missing)?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| CertError::Untrusted(e.to_string()))?;
        let algs = self.provider.signature_verification_algorithms.all;
        // serverAuth first: it is what public CAs issue for XMPP servers now, whichever
        // side of the stream the certificate is presented on.
        let verify = |usage| {
            ee.verify_for_usage(algs, &self.anchors, intermediates, now, usage, None, None)
                .map(|_| ())
        };
        verify(webpki::KeyUsage::server_auth())
            .or_else(|_| verify(webpki::KeyUsage::client_auth()))
            .map_err(|e| CertError::Untrusted(e.to_string()))?;
        if names_domain(&ee, leaf, domain) {
            Ok(())
        } else {
            Err(CertError::WrongName(domain.to_string()))
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn names_domain(ee: &webpki::EndEntityCert<'_>, der: &[u8], domain: &str) -> bool {
    if let Ok(name) = ServerName::try_from(domain)
        && ee.verify_is_valid_for_subject_name(&name).is_ok()
    {
        return true;
    }
    other_names(der).iter().any(|n| match n {
        OtherName::XmppAddr(a) => a.eq_ignore_ascii_case(domain),
        OtherName::Srv(s) => s
            .strip_prefix("_xmpp-server.")
            .or_else(|| s.strip_prefix("_xmpps-server."))
            .is_some_and(|d| d.eq_ignore_ascii_case(domain)),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum OtherName {
    /// id-on-xmppAddr (RFC 6120 §13.7.1.4).
    XmppAddr(String),
    /// id-on-dnsSRV (RFC 4985), e.g. `_xmpp-server.example.org`.
    Srv(String),
}

const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
const OID_DNS_SRV: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];

/// One DER TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The otherName entries of the subjectAltName extension; empty on any parse problem
/// (webpki has already rejected malformed certificates by the time this runs).
fn other_names(der: &[u8]) -> Vec<OtherName> {
    (|| {
        let (_, cert, _) = tlv(der)?;
        let (_, mut tbs, _) = tlv(cert)?;
        // Skip to the [3] extensions wrapper.
        let exts = loop {
            let (tag, contents, rest) = tlv(tbs)?;
            if tag == 0xa3 {
                break contents;
            }
            tbs = rest;
        };
        let (_, mut list, _) = tlv(exts)?;
        let mut out = Vec::new();
        while !list.is_empty() {
            let (_, ext, rest) = tlv(list)?;
            list = rest;
            let (_, oid, mut after) = tlv(ext)?;
            if oid != OID_SAN {
                continue;
            }
            let (mut tag, mut value, _) = tlv(after)?;
            if tag == 0x01 {
                // critical flag
                (_, _, after) = tlv(after)?;
                (tag, value, _) = tlv(after)?;
            }
            if tag != 0x04 {
                return None;
            }
            let (_, mut names, _) = tlv(value)?;
            while !names.is_empty() {
                let (tag, name, rest) = tlv(names)?;
                names = rest;
                if tag != 0xa0 {
                    continue;
                }
                let (_, type_id, value) = tlv(name)?;
                let (_, inner, _) = tlv(value)?;
                let (_, text, _) = tlv(inner)?;
                let Ok(text) = std::str::from_utf8(text) else {
                    continue;
                };
                match type_id {
                    OID_XMPP_ADDR => out.push(OtherName::XmppAddr(text.to_string())),
                    OID_DNS_SRV => out.push(OtherName::Srv(text.to_string())),
                    _ => {}
                }
            }
        }
        Some(out)
    })()
    .unwrap_or_default()
}

/// Client side of s2s TLS: accepts any server certificate (checked afterwards with
/// [`TrustStore::verify`]) but verifies the handshake signatures.
#[derive(Debug)]
pub struct DeferredServerVerifier {
    provider: Arc<CryptoProvider>,
}

impl DeferredServerVerifier {
    pub fn new() -> Self {
        DeferredServerVerifier {
            provider: provider(),
        }
    }
}

impl Default for DeferredServerVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCertVerifier for DeferredServerVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side of s2s TLS: asks for a client certificate without requiring one, accepts
/// whatever is sent (checked afterwards against the stream's `from` domain).
#[derive(Debug)]
pub struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl DeferredClientVerifier {
    pub fn new() -> Self {
        DeferredClientVerifier {
            provider: provider(),
        }
    }
}

impl Default for DeferredClientVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents one vhost's certificate as our client certificate (for SASL EXTERNAL).
#[derive(Debug)]
pub struct VhostClientCert(pub Arc<CertifiedKey>);

impl ResolvesClientCert for VhostClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS client configuration for outbound s2s from one local domain.
pub fn s2s_client_config(
    cert: Option<Arc<CertifiedKey>>,
    direct_tls: bool,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DeferredServerVerifier::new()));
    let mut config = match cert {
        Some(c) => builder.with_client_cert_resolver(Arc::new(VhostClientCert(c))),
        None => builder.with_no_client_auth(),
    };
    if direct_tls {
        config.alpn_protocols = vec![super::tls::ALPN_XMPP_SERVER.to_vec()];
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(
        ca: &Ca,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.extended_key_usages = eku;
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn dns(n: &str) -> SanType {
        SanType::DnsName(n.try_into().unwrap())
    }

    #[test]
    fn dns_id_with_server_auth_only_is_accepted() {
        let ca = ca();
        let store = TrustStore::from_ders(std::slice::from_ref(&ca.der));
        let cert = leaf(
            &ca,
            vec![dns("a.example")],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        );
        assert_eq!(
            store.verify(std::slice::from_ref(&cert), "a.example"),
            Ok(())
        );
        assert_eq!(
            store.verify(&[cert], "b.example"),
            Err(CertError::WrongName("b.example".into()))
        );
        let wild = leaf(&ca, vec![dns("*.w.example")], vec![]);
        assert_eq!(store.verify(&[wild], "c.w.example"), Ok(()));
        let client_only = leaf(
            &ca,
            vec![dns("a.example")],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        assert_eq!(store.verify(&[client_only], "a.example"), Ok(()));
    }

    #[test]
    fn untrusted_and_missing_are_rejected() {
        let ca1 = ca();
        let ca2 = ca();
        let store = TrustStore::from_ders(std::slice::from_ref(&ca1.der));
        let cert = leaf(&ca2, vec![dns("a.example")], vec![]);
        assert!(matches!(
            store.verify(&[cert], "a.example"),
            Err(CertError::Untrusted(_))
        ));
        assert_eq!(store.verify(&[], "a.example"), Err(CertError::Missing));
    }

    #[test]
    fn srv_id_and_xmpp_addr_are_matched() {
        let ca = ca();
        let store = TrustStore::from_ders(std::slice::from_ref(&ca.der));
        let other = |oid: &[u64], v: &str| {
            SanType::OtherName((oid.to_vec(), rcgen::OtherNameValue::Utf8String(v.into())))
        };
        let cert = leaf(
            &ca,
            vec![
                dns("unrelated.example"),
                other(&[1, 3, 6, 1, 5, 5, 7, 8, 5], "x.example"),
                other(&[1, 3, 6, 1, 5, 5, 7, 8, 7], "_xmpp-server.y.example"),
            ],
            vec![],
        );
        assert_eq!(
            other_names(&cert),
            vec![
                OtherName::XmppAddr("x.example".into()),
                OtherName::Srv("_xmpp-server.y.example".into())
            ]
        );
        assert_eq!(
            store.verify(std::slice::from_ref(&cert), "x.example"),
            Ok(())
        );
        assert_eq!(
            store.verify(std::slice::from_ref(&cert), "y.example"),
            Ok(())
        );
        assert!(store.verify(&[cert], "z.example").is_err());
    }
}
