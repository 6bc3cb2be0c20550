//! A test certificate authority (rcgen). Issued certificates name only DNS names (no
//! xmppAddr: ejabberd 23.01 crashes on those) and carry only the serverAuth EKU, as
//! public CAs issue them since 2026.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// Issues a certificate for `domain` and writes `dir/<domain>.crt` and `.key`.
    pub fn issue(&self, domain: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![domain.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, domain);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let crt = dir.join(format!("{domain}.crt"));
        let k = dir.join(format!("{domain}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }

    /// Issues a certificate for `names` valid from `not_before` to `not_after`, written to
    /// `dir/<stem>.crt` and `.key`.
    #[allow(dead_code)]
    pub fn issue_names(
        &self,
        names: &[&str],
        validity: (time::OffsetDateTime, time::OffsetDateTime),
        stem: &str,
        dir: &Path,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, names[0].clone());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = validity.0;
        p.not_after = validity.1;
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let crt = dir.join(format!("{stem}.crt"));
        let k = dir.join(format!("{stem}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }
}
