//! Server Dialback (XEP-0220) keys (XEP-0185) and the receiving server's check with the
//! authoritative server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::S2s;
use super::outbound::{Failure, next_element, open};
use crate::xml::Element;
use crate::xml::ns::DIALBACK;

/// The dialback secret. Keys are `HMAC-SHA256(hex(SHA256(secret)), "receiving originating
/// id")` in hex (XEP-0185 §3; its example uses the hex form of the hashed secret as key).
#[derive(Clone)]
pub struct Secret(Arc<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

const SECRET_FILE: &str = "dialback.secret";

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        let hex: String = Sha256::digest(secret)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Secret(Arc::new(hex))
    }

    /// The configured secret, or the one in `<data_dir>/dialback.secret`, generated there
    /// (mode 0600) on first use.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> std::io::Result<Secret> {
        if let Some(s) = configured {
            return Ok(Secret::new(s.as_bytes()));
        }
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 16 => return Ok(Secret::new(s.trim().as_bytes())),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "dialback secret file too short; regenerating");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        crate::admin::ensure_data_dir(data_dir)?;
        let fresh = format!(
            "{}{}",
            crate::stream::random_id(),
            crate::stream::random_id()
        );
        write_private(&path, fresh.as_bytes())?;
        Ok(Secret::new(fresh.as_bytes()))
    }

    /// The key the originating server sends for a stream whose id the receiving server
    /// assigned.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Constant-time check of a key received in `<db:verify/>`.
    pub fn check(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        expected.len() == key.len() && bool::from(expected.as_bytes().ct_eq(key.as_bytes()))
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

pub fn result_element(from: &str, to: &str) -> Element {
    Element::new("result", DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
}

/// Receiving-server side (XEP-0220 §2.3): asks the authoritative server of `remote`, over a
/// connection of its own, whether `key` is valid for the stream `stream_id` that `remote`
/// opened to our `local`. `Ok(false)` for an invalid key.
pub async fn verify_with_authoritative(
    s2s: &Arc<S2s>,
    local: &str,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, Failure> {
    let timeout = Duration::from_secs(s2s.config.limits.handshake_timeout_secs);
    let work = async {
        let (mut conn, mut opened) = open(s2s, local, remote).await?;
        let verify = Element::new("verify", DIALBACK)
            .with_attr("from", local)
            .with_attr("to", remote)
            .with_attr("id", stream_id)
            .with_text(key);
        conn.send(&verify).await.map_err(|_| Failure::Timeout)?;
        loop {
            let el = next_element(&mut conn, &mut opened.neg, "verify")
                .await
                .map_err(|_| Failure::Timeout)?;
            if el.is("verify", DIALBACK) && el.attr("id") == Some(stream_id) {
                let valid = el.attr("type") == Some("valid")
                    && el.attr("from") == Some(remote)
                    && el.attr("to") == Some(local);
                conn.finish(crate::stream::Ending::Close, local).await;
                return Ok(valid);
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0185_example_key() {
        // XEP-0185 §4 example.
        let s = Secret::new(b"s3cr3tf0rd14lb4ck");
        assert_eq!(
            s.key("xmpp.example.com", "example.org", "D60000229F"),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(s.check(
            "xmpp.example.com",
            "example.org",
            "D60000229F",
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        ));
        assert!(!s.check("example.net", "example.com", "D60000229G", "37c6"));
    }

    #[test]
    fn secret_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secret::load(None, dir.path()).unwrap();
        let b = Secret::load(None, dir.path()).unwrap();
        assert_eq!(a.key("x", "y", "z"), b.key("x", "y", "z"));
        let c = Secret::load(Some("configured secret value"), dir.path()).unwrap();
        assert_ne!(a.key("x", "y", "z"), c.key("x", "y", "z"));
    }
}
