//! TLS server setup: per-vhost certificates chosen by SNI, STARTTLS and Direct TLS
//! acceptors, and channel-binding data for SCRAM-*-PLUS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::Ticketer;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::config::{Config, VhostConfig};

use super::devcert;
use super::server_tls::ServerTls;

/// ALPN protocol id for Direct TLS client connections (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";
/// ALPN protocol id for Direct TLS server-to-server connections (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("vhost {domain}: {reason}")]
    Vhost { domain: String, reason: String },
    #[error("no vhost configured")]
    NoVhosts,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Channel-binding data of one TLS connection (RFC 9266, RFC 5929). The lead converts this
/// into `crate::sasl::ChannelBindings`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsBindings {
    /// `tls-exporter`: 32 bytes; `None` unless the connection is TLS 1.3.
    pub tls_exporter: Option<Vec<u8>>,
    /// `tls-server-end-point`: hash of the certificate this server presented.
    pub tls_server_end_point: Option<Vec<u8>>,
}

/// Everything the listeners need for TLS. Cheap to clone.
#[derive(Clone)]
pub struct TlsContext {
    resolver: Arc<SniResolver>,
    starttls: Arc<ServerConfig>,
    direct_c2s: Arc<ServerConfig>,
    /// https:// listeners (WebSocket, BOSH, upload): ALPN `h2` and `http/1.1`.
    http: Arc<ServerConfig>,
    direct_s2s: Arc<ServerConfig>,
    /// STARTTLS for s2s: like `starttls` but asks for a client certificate (XEP-0178).
    s2s_starttls: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("domains", &self.resolver.by_domain.keys())
            .finish_non_exhaustive()
    }
}

/// A vhost's certificate plus what channel binding needs from it, computed once.
#[derive(Debug)]
struct VhostCert {
    key: Arc<CertifiedKey>,
    end_point: Vec<u8>,
}

#[derive(Debug)]
struct SniResolver {
    by_domain: HashMap<String, Arc<VhostCert>>,
    /// The first vhost: served when SNI is absent or names no vhost.
    fallback: Arc<VhostCert>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> &Arc<VhostCert> {
        sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.by_domain.get(&name)
        })
        .unwrap_or(&self.fallback)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        super::server_tls::note_sni(hello.server_name());
        Some(self.pick(hello.server_name()).key.clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit provider: never depend on (or race with) the process-wide default.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // AES-128-GCM (with SHA-256) first: as strong as needed, and cheaper than the
    // AES-256/SHA-384 suite most clients list first, for every record and every
    // handshake (SHA-384 has no hardware path here: 6 % of a login's CPU). Servers
    // follow their own order (`ignore_client_order`).
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        });
    Arc::new(provider)
}

impl TlsContext {
    /// Loads every vhost's certificate and key; vhosts without them get a generated
    /// development certificate in `<data_dir>/certs` (created once, then reused).
    pub fn load(cfg: &Config) -> Result<TlsContext, TlsError> {
        let provider = provider();
        let mut by_domain = HashMap::new();
        let mut fallback = None;
        for vhost in &cfg.vhosts {
            let (crt, key) = match (&vhost.certificate, &vhost.key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                (None, None) => {
                    let (c, k, fresh) = devcert::ensure(&cfg.data_dir, &vhost.domain)?;
                    tracing::warn!(
                        domain = %vhost.domain,
                        certificate = %c.display(),
                        generated = fresh,
                        "DEVELOPMENT ONLY: serving a self-signed certificate for {}; \
                         clients will not trust it. Configure vhost certificate and key \
                         for production.",
                        vhost.domain
                    );
                    (c, k)
                }
                _ => {
                    return Err(TlsError::Vhost {
                        domain: vhost.domain.clone(),
                        reason: "certificate and key must be set together".into(),
                    });
                }
            };
            let cert = Arc::new(load_vhost_cert(&vhost.domain, &crt, &key, &provider)?);
            if fallback.is_none() {
                fallback = Some(cert.clone());
            }
            by_domain.insert(vhost.domain.to_ascii_lowercase(), cert);
        }
        let fallback = fallback.ok_or(TlsError::NoVhosts)?;
        let resolver = Arc::new(SniResolver {
            by_domain,
            fallback,
        });

        // Stateless tickets: the server keeps nothing per client, however many return.
        // rustls's default (a 256-entry session cache per config) forgets a client after
        // 128 others have connected. One ticketer per client-certificate policy: a c2s
        // session (no client certificate asked) must not be resumable on an s2s listener,
        // nor the other way round (rustls leaves that to us).
        let (c2s_tickets, s2s_tickets) = if cfg.tls.session_tickets {
            (Some(Ticketer::new()?), Some(Ticketer::new()?))
        } else {
            (None, None)
        };
        let build = |alpn: Option<&[u8]>| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?;
            // Server-to-server streams ask for the peer's certificate (SASL EXTERNAL).
            let s2s = alpn == Some(ALPN_XMPP_SERVER) || alpn == Some(b"");
            let builder = if s2s {
                builder.with_client_cert_verifier(Arc::new(
                    super::verify::DeferredClientVerifier::new(),
                ))
            } else {
                builder.with_no_client_auth()
            };
            let mut sc = builder.with_cert_resolver(resolver.clone());
            sc.ignore_client_order = true;
            // The exporter secret, for the `tls-exporter` binding (see `server_tls`).
            sc.key_log = Arc::new(super::server_tls::ExporterSecretLog);
            if let Some(a) = alpn.filter(|a| !a.is_empty()) {
                sc.alpn_protocols = vec![a.to_vec()];
            }
            // 0-RTT data can be replayed by anyone who saw it: never accepted.
            sc.max_early_data_size = 0;
            match if s2s { &s2s_tickets } else { &c2s_tickets } {
                Some(ticketer) => {
                    sc.ticketer = ticketer.clone();
                    // Clients use a ticket once. Two leave a spare for when a connection
                    // fails before its new tickets arrive (phones on flaky networks).
                    sc.send_tls13_tickets = 2;
                }
                None => {
                    // No resumption at all, TLS 1.2 session ids included.
                    sc.send_tls13_tickets = 0;
                    sc.session_storage = Arc::new(NoServerSessionStorage {});
                }
            }
            Ok(Arc::new(sc))
        };
        Ok(TlsContext {
            starttls: build(None)?,
            direct_c2s: build(Some(ALPN_XMPP_CLIENT))?,
            http: {
                let mut sc = (*build(Some(b"http/1.1"))?).clone();
                sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Arc::new(sc)
            },
            direct_s2s: build(Some(ALPN_XMPP_SERVER))?,
            // Empty ALPN marks "s2s, no ALPN" for `build`.
            s2s_starttls: build(Some(b""))?,
            resolver,
        })
    }

    /// For STARTTLS upgrades (no ALPN).
    pub fn starttls_config(&self) -> Arc<ServerConfig> {
        self.starttls.clone()
    }

    /// For Direct TLS c2s (XEP-0368): ALPN `xmpp-client` offered; clients that send no ALPN
    /// are accepted, clients offering only other protocols are refused (RFC 7301).
    pub fn direct_c2s_config(&self) -> Arc<ServerConfig> {
        self.direct_c2s.clone()
    }

    /// For https:// listeners (WebSocket, BOSH, upload): ALPN `h2` and `http/1.1`.
    pub fn http_config(&self) -> Arc<ServerConfig> {
        self.http.clone()
    }

    /// For Direct TLS s2s (XEP-0368): ALPN `xmpp-server`, otherwise as c2s.
    pub fn direct_s2s_config(&self) -> Arc<ServerConfig> {
        self.direct_s2s.clone()
    }

    /// For s2s STARTTLS upgrades: asks for (without requiring) a client certificate.
    pub fn s2s_starttls_config(&self) -> Arc<ServerConfig> {
        self.s2s_starttls.clone()
    }

    /// The certificate and key served for `domain` (a vhost), for use as a TLS client
    /// certificate on outbound s2s streams.
    pub fn certified_key(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.resolver
            .by_domain
            .get(&domain.to_ascii_lowercase())
            .map(|c| c.key.clone())
    }

    /// Channel-binding data of an accepted connection; both `None` while still handshaking.
    ///
    /// `tls-exporter` is only given for TLS 1.3: for TLS 1.2 it is safe only with extended
    /// master secret, which rustls does not let us confirm for a given connection.
    pub fn channel_bindings<IO>(&self, conn: &ServerTls<IO>) -> TlsBindings
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if conn.state().is_handshaking() {
            return TlsBindings::default();
        }
        let tls_exporter = conn.tls_exporter();
        // The resolver is a pure function of SNI, so this is the certificate that was sent.
        // A resumed session sends none, but rustls resumes only under the same SNI and
        // the ticket keys belong to this context, so it is the one the first handshake
        // sent: the certificate the client binds to (RFC 5929 §4.1).
        let cert = self.resolver.pick(conn.server_name());
        TlsBindings {
            tls_exporter,
            tls_server_end_point: Some(cert.end_point.clone()),
        }
    }
}

/// Parses and checks the certificates configured for vhosts (without generating anything):
/// for `xmppd check`. Returns one error per bad vhost.
pub fn check_configured_certs(cfg: &Config) -> Vec<TlsError> {
    let provider = provider();
    cfg.vhosts
        .iter()
        .filter_map(|v: &VhostConfig| match (&v.certificate, &v.key) {
            (Some(c), Some(k)) => load_vhost_cert(&v.domain, c, k, &provider).err(),
            _ => None,
        })
        .collect()
}

fn load_vhost_cert(
    domain: &str,
    crt: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<VhostCert, TlsError> {
    let crt_pem = std::fs::read(crt).map_err(|source| TlsError::Io {
        path: crt.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| TlsError::Io {
        path: key.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&crt_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: crt.to_path_buf(),
            reason: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: crt.to_path_buf(),
            reason: "no CERTIFICATE found".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })?;
    let end_point = server_end_point_hash(&chain[0]);
    let certified =
        CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Vhost {
            domain: domain.to_string(),
            reason: format!(
                "certificate {} with key {}: {e}",
                crt.display(),
                key.display()
            ),
        })?;
    Ok(VhostCert {
        key: Arc::new(certified),
        end_point,
    })
}

/// RFC 5929 §4.1: hash the certificate with its signature's hash function, SHA-256 when
/// that is MD5/SHA-1 or the algorithm has none (Ed25519) or cannot be read.
pub fn server_end_point_hash(cert: &CertificateDer<'_>) -> Vec<u8> {
    let der = cert.as_ref();
    match signature_hash(der) {
        SigHash::Sha384 => Sha384::digest(der).to_vec(),
        SigHash::Sha512 => Sha512::digest(der).to_vec(),
        SigHash::Sha256 => Sha256::digest(der).to_vec(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

// DER-encoded object identifier contents.
const OID_SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// Reads Certificate.signatureAlgorithm (RFC 5280 §4.1.1.2).
fn signature_hash(der: &[u8]) -> SigHash {
    (|| {
        let (cert, _) = der_expect(der, 0x30)?;
        let (_tbs, rest) = der_expect(cert, 0x30)?;
        let (alg, _) = der_expect(rest, 0x30)?;
        let (oid, params) = der_expect(alg, 0x06)?;
        Some(match oid {
            OID_SHA384_RSA | OID_ECDSA_SHA384 => SigHash::Sha384,
            OID_SHA512_RSA | OID_ECDSA_SHA512 => SigHash::Sha512,
            // RSASSA-PSS-params: SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier, .. }
            OID_RSA_PSS => {
                let (p, _) = der_expect(params, 0x30)?;
                let (h, _) = der_expect(p, 0xa0)?;
                let (h, _) = der_expect(h, 0x30)?;
                let (h, _) = der_expect(h, 0x06)?;
                match h {
                    OID_SHA384 => SigHash::Sha384,
                    OID_SHA512 => SigHash::Sha512,
                    _ => SigHash::Sha256,
                }
            }
            _ => SigHash::Sha256,
        })
    })()
    .unwrap_or(SigHash::Sha256)
}

/// Splits one DER TLV with the given tag off `input`: (contents, rest).
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
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
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VhostConfig;
    use crate::net::server_tls::EXPORTER_LABEL;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{
        ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion, RootCertStore,
        SignatureScheme,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config(dir: &Path, domains: &[&str]) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            vhosts: domains
                .iter()
                .map(|d| VhostConfig {
                    domain: d.to_string(),
                    certificate: None,
                    key: None,
                })
                .collect(),
            ..Config::default()
        }
    }

    fn dev_cert(dir: &Path, domain: &str) -> CertificateDer<'static> {
        let (crt, _) = devcert::paths(dir, domain);
        CertificateDer::from_pem_file(crt).unwrap()
    }

    fn client(roots: &[CertificateDer<'static>], tls13_only: bool) -> ClientConfig {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let b = ClientConfig::builder_with_provider(provider());
        let b = if tls13_only {
            b.with_protocol_versions(&[&rustls::version::TLS13])
        } else {
            b.with_protocol_versions(&[&rustls::version::TLS12])
        };
        b.unwrap()
            .with_root_certificates(store)
            .with_no_client_auth()
    }

    /// Accepts any certificate: for checking which one the server picked without SNI.
    #[derive(Debug)]
    struct AcceptAll;
    impl ServerCertVerifier for AcceptAll {
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
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    type Pair = (
        ServerTls<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    );

    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
        name: &str,
    ) -> Result<Pair, std::io::Error> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from(name.to_string()).unwrap();
        let (sr, cr) = tokio::join!(ServerTls::accept(s, server), connector.connect(name, c));
        let (mut s, mut c) = (sr?, cr?);
        // Exchange application data both ways so both sides have finished the handshake
        // and the client has taken in the server's session tickets.
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await?;
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok((s, c))
    }

    #[test]
    fn dev_cert_is_reused_on_second_load() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a.test"]);
        TlsContext::load(&cfg).unwrap();
        let first = dev_cert(dir.path(), "a.test");
        let ctx = TlsContext::load(&cfg).unwrap();
        assert_eq!(dev_cert(dir.path(), "a.test"), first);
        assert_eq!(ctx.resolver.fallback.key.cert[0], first);
    }

    #[tokio::test]
    async fn sni_selects_vhost_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test", "b.test"])).unwrap();
        let (a, b) = (
            dev_cert(dir.path(), "a.test"),
            dev_cert(dir.path(), "b.test"),
        );
        assert_ne!(a, b);
        let roots = [a.clone(), b.clone()];
        for (name, want) in [("b.test", &b), ("a.test", &a), ("B.Test", &b)] {
            // Real verification: the generated certificate is valid for its domain.
            let (_, c) = handshake(ctx.starttls_config(), client(&roots, true), name)
                .await
                .unwrap();
            assert_eq!(
                &c.get_ref().1.peer_certificates().unwrap()[0],
                want,
                "{name}"
            );
        }
        // Only trusting b: asking for a must fail (a's certificate is served).
        assert!(
            handshake(
                ctx.starttls_config(),
                client(std::slice::from_ref(&b), true),
                "a.test"
            )
            .await
            .is_err()
        );
        // No SNI (IP address) and unknown SNI: the first vhost.
        for name in ["127.0.0.1", "c.test"] {
            let mut cc = client(&[], true);
            cc.dangerous().set_certificate_verifier(Arc::new(AcceptAll));
            let (_, c) = handshake(ctx.starttls_config(), cc, name).await.unwrap();
            assert_eq!(c.get_ref().1.peer_certificates().unwrap()[0], a, "{name}");
        }
    }

    #[tokio::test]
    async fn channel_bindings_match_client_side() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test", "b.test"])).unwrap();
        let b = dev_cert(dir.path(), "b.test");
        let (s, c) = handshake(
            ctx.direct_c2s_config(),
            client(std::slice::from_ref(&b), true),
            "b.test",
        )
        .await
        .unwrap();
        let cb = ctx.channel_bindings(&s);
        let client_conn = c.get_ref().1;
        assert_eq!(
            client_conn.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        let client_exporter = client_conn
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .unwrap();
        assert_eq!(cb.tls_exporter.as_deref(), Some(&client_exporter[..]));
        let peer = &client_conn.peer_certificates().unwrap()[0];
        assert_eq!(
            cb.tls_server_end_point.as_deref(),
            Some(&Sha256::digest(peer.as_ref())[..])
        );
        // A second connection has a different exporter value.
        let (s2, _c2) = handshake(ctx.starttls_config(), client(&[b], true), "b.test")
            .await
            .unwrap();
        let cb2 = ctx.channel_bindings(&s2);
        assert_ne!(cb2.tls_exporter, cb.tls_exporter);
        assert_eq!(cb2.tls_server_end_point, cb.tls_server_end_point);
    }

    fn kinds(p: &Pair) -> (Option<HandshakeKind>, Option<HandshakeKind>) {
        (
            p.0.state().handshake_kind(),
            p.1.get_ref().1.handshake_kind(),
        )
    }

    #[tokio::test]
    async fn returning_client_resumes_on_c2s_listeners_with_the_same_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test", "b.test"])).unwrap();
        let b = dev_cert(dir.path(), "b.test");
        // Clones share the client's session store: one returning device.
        let device = client(std::slice::from_ref(&b), true);
        let full = (Some(HandshakeKind::Full), Some(HandshakeKind::Full));
        let resumed = (Some(HandshakeKind::Resumed), Some(HandshakeKind::Resumed));
        let first = handshake(ctx.starttls_config(), device.clone(), "b.test")
            .await
            .unwrap();
        assert_eq!(kinds(&first), full);
        let first_cb = ctx.channel_bindings(&first.0);

        let mut direct = device.clone();
        direct.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
        let mut https = device.clone();
        https.alpn_protocols = vec![b"h2".to_vec()];
        for (server, cc) in [
            (ctx.starttls_config(), device.clone()),
            (ctx.direct_c2s_config(), direct),
            (ctx.http_config(), https),
            (ctx.http_config(), device.clone()),
        ] {
            let p = handshake(server, cc, "b.test").await.unwrap();
            assert_eq!(kinds(&p), resumed);
            let (s, c) = (&p.0, &p.1);
            // No certificate crossed the wire, yet both sides bind to the first one.
            let cb = ctx.channel_bindings(s);
            let cc = c.get_ref().1;
            let client_exporter = cc
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                .unwrap();
            assert_eq!(cb.tls_exporter.as_deref(), Some(&client_exporter[..]));
            assert_ne!(cb.tls_exporter, first_cb.tls_exporter);
            assert_eq!(cb.tls_server_end_point, first_cb.tls_server_end_point);
            assert_eq!(
                cb.tls_server_end_point.as_deref(),
                Some(&Sha256::digest(cc.peer_certificates().unwrap()[0].as_ref())[..])
            );
        }

        // A c2s ticket is not good on an s2s listener (another client-certificate policy).
        let (s, _c) = handshake(ctx.s2s_starttls_config(), device.clone(), "b.test")
            .await
            .unwrap();
        assert_eq!(s.state().handshake_kind(), Some(HandshakeKind::Full));
    }

    #[tokio::test]
    async fn s2s_listeners_resume_among_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test"])).unwrap();
        let a = dev_cert(dir.path(), "a.test");
        let peer = client(&[a], true);
        let mut direct = peer.clone();
        direct.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        let first = handshake(ctx.s2s_starttls_config(), peer.clone(), "a.test")
            .await
            .unwrap();
        assert_eq!(kinds(&first).0, Some(HandshakeKind::Full));
        let again = handshake(ctx.direct_s2s_config(), direct, "a.test")
            .await
            .unwrap();
        assert_eq!(kinds(&again).0, Some(HandshakeKind::Resumed));
        // And an s2s ticket is not good for c2s.
        let c2s = handshake(ctx.starttls_config(), peer, "a.test")
            .await
            .unwrap();
        assert_eq!(kinds(&c2s).0, Some(HandshakeKind::Full));
    }

    #[tokio::test]
    async fn session_tickets_off_means_full_handshakes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), &["a.test"]);
        cfg.tls.session_tickets = false;
        let ctx = TlsContext::load(&cfg).unwrap();
        let a = dev_cert(dir.path(), "a.test");
        let device = client(&[a], true);
        for _ in 0..2 {
            let p = handshake(ctx.starttls_config(), device.clone(), "a.test")
                .await
                .unwrap();
            assert_eq!(kinds(&p).1, Some(HandshakeKind::Full));
        }
        // TLS 1.2 session ids are not remembered either.
        let device12 = client(&[dev_cert(dir.path(), "a.test")], false);
        for _ in 0..2 {
            let p = handshake(ctx.starttls_config(), device12.clone(), "a.test")
                .await
                .unwrap();
            assert_eq!(kinds(&p).1, Some(HandshakeKind::Full));
        }
    }

    #[tokio::test]
    async fn tls12_has_no_exporter_binding() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test"])).unwrap();
        let a = dev_cert(dir.path(), "a.test");
        let (s, _c) = handshake(ctx.starttls_config(), client(&[a], false), "a.test")
            .await
            .unwrap();
        assert_eq!(s.state().protocol_version(), Some(ProtocolVersion::TLSv1_2));
        let cb = ctx.channel_bindings(&s);
        assert_eq!(cb.tls_exporter, None);
        assert_eq!(cb.tls_server_end_point.map(|h| h.len()), Some(32));
    }

    #[tokio::test]
    async fn direct_tls_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(&config(dir.path(), &["a.test"])).unwrap();
        let a = dev_cert(dir.path(), "a.test");
        let mut cc = client(std::slice::from_ref(&a), true);
        cc.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
        let (s, _) = handshake(ctx.direct_c2s_config(), cc, "a.test")
            .await
            .unwrap();
        assert_eq!(s.state().alpn_protocol(), Some(ALPN_XMPP_CLIENT));
        // Without ALPN: accepted.
        let (s, _) = handshake(
            ctx.direct_c2s_config(),
            client(std::slice::from_ref(&a), true),
            "a.test",
        )
        .await
        .unwrap();
        assert_eq!(s.state().alpn_protocol(), None);
        // Offering only another protocol: refused.
        let mut cc = client(&[a], true);
        cc.alpn_protocols = vec![b"h2".to_vec()];
        assert!(
            handshake(ctx.direct_c2s_config(), cc, "a.test")
                .await
                .is_err()
        );
    }

    #[test]
    fn configured_cert_and_key_are_used_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (crt_pem, key_pem) = devcert::generate("x.test").unwrap();
        let (_, other_key) = devcert::generate("x.test").unwrap();
        let crt = dir.path().join("x.crt");
        let key = dir.path().join("x.key");
        let wrong = dir.path().join("wrong.key");
        std::fs::write(&crt, &crt_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        std::fs::write(&wrong, &other_key).unwrap();
        let mut cfg = config(&dir.path().join("data"), &["x.test"]);
        cfg.vhosts[0].certificate = Some(crt.clone());
        cfg.vhosts[0].key = Some(key);
        let ctx = TlsContext::load(&cfg).unwrap();
        assert_eq!(
            ctx.resolver.fallback.key.cert[0],
            CertificateDer::from_pem_slice(crt_pem.as_bytes()).unwrap()
        );
        // No development certificate was generated.
        assert!(!dir.path().join("data/certs").exists());
        assert!(check_configured_certs(&cfg).is_empty());

        cfg.vhosts[0].key = Some(wrong);
        let e = TlsContext::load(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("vhost x.test: certificate "), "{e}");
        assert_eq!(check_configured_certs(&cfg).len(), 1);

        cfg.vhosts[0].key = Some(crt.clone());
        let e = TlsContext::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("no usable private key"), "{e}");
    }

    #[test]
    fn end_point_hash_follows_signature_algorithm() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["p384.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der();
        assert_eq!(signature_hash(der), SigHash::Sha384);
        assert_eq!(
            server_end_point_hash(der),
            Sha384::digest(der.as_ref()).to_vec()
        );
        let (p256, _) = devcert::generate("p256.test").unwrap();
        let der = CertificateDer::from_pem_slice(p256.as_bytes()).unwrap();
        assert_eq!(signature_hash(&der), SigHash::Sha256);
        // Garbage falls back to SHA-256 instead of failing.
        assert_eq!(signature_hash(&[0x30, 0x85, 0xff]), SigHash::Sha256);
        assert_eq!(signature_hash(&[]), SigHash::Sha256);
    }
}
