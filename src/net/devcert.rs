//! Self-signed development certificates for vhosts configured without one.
//!
//! Generated once into `<data_dir>/certs/<domain>.{crt,key}` and reused afterwards, so that
//! a client which pinned or accepted the certificate keeps working across restarts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::tls::TlsError;

/// Where the development certificate and key of `domain` live.
pub fn paths(data_dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("certs");
    (
        dir.join(format!("{domain}.crt")),
        dir.join(format!("{domain}.key")),
    )
}

/// Creates `dir` (and missing parents) with mode 0700. An existing directory is left as is:
/// it may be one the operator chose deliberately.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Returns the PEM certificate and key paths for `domain`, generating them first if either
/// is missing. `Ok((crt, key, true))` when freshly generated.
pub fn ensure(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    // The domain becomes a file name: refuse anything that could leave the directory.
    if domain.is_empty() || domain.starts_with('.') || domain.contains(['/', '\\', '\0']) {
        return Err(TlsError::Vhost {
            domain: domain.to_string(),
            reason: "not usable as a certificate file name".into(),
        });
    }
    let (crt, key) = paths(data_dir, domain);
    if crt.is_file() && key.is_file() {
        return Ok((crt, key, false));
    }
    let dir = data_dir.join("certs");
    create_private_dir(&dir).map_err(|source| TlsError::Io {
        path: dir.clone(),
        source,
    })?;
    let (crt_pem, key_pem) = generate(domain)?;
    // Key first: a crash in between leaves no certificate, so the next start regenerates both.
    write_atomic(&key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&crt, crt_pem.as_bytes(), 0o644)?;
    Ok((crt, key, true))
}

/// A self-signed ECDSA P-256 certificate for exactly `domain` (one DNS SAN, CN = domain).
/// Returns (certificate PEM, PKCS#8 key PEM).
pub fn generate(domain: &str) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Vhost {
        domain: domain.to_string(),
        reason: format!("cannot generate a development certificate: {e}"),
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, domain);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes via a temporary file and rename so a reader never sees half a file, with the
/// mode set at creation (a key must never exist world-readable, even briefly).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (crt, key, fresh) = ensure(&data, "a.test").unwrap();
        assert!(fresh);
        assert_eq!(crt, data.join("certs/a.test.crt"));
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(data.join("certs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let before = fs::read(&crt).unwrap();
        let (_, _, fresh) = ensure(&data, "a.test").unwrap();
        assert!(!fresh);
        assert_eq!(fs::read(&crt).unwrap(), before);
    }

    #[test]
    fn missing_cert_regenerates_both() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key, _) = ensure(dir.path(), "a.test").unwrap();
        let old_key = fs::read(&key).unwrap();
        fs::remove_file(&crt).unwrap();
        let (_, _, fresh) = ensure(dir.path(), "a.test").unwrap();
        assert!(fresh);
        assert_ne!(fs::read(&key).unwrap(), old_key);
    }

    #[test]
    fn refuses_path_like_domains() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["../x", "", ".hidden", "a/b"] {
            assert!(ensure(dir.path(), d).is_err(), "{d}");
        }
    }
}
