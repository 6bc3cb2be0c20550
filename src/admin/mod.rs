//! Account administration, usable with the server running (through the control socket,
//! see [`control`]) or stopped (directly on the storage).
//!
//! Passwords are only ever passed on to the credential derivation; they are never logged,
//! echoed or kept.

pub mod control;
pub mod invites;
pub mod live;
// TEMPORARY until merge with the `sasl` and `storage` branches; see the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::addr::BareJid;
use crate::config::{Config, StorageBackend};
use crate::sasl::credentials::StoredCredentials;
use crate::storage::{Storage, StorageError};

/// Error categories, shared by local errors and those reported over the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidJid,
    UnknownDomain,
    UserExists,
    NoSuchUser,
    NoSuchInvite,
    InvalidPassword,
    /// A malformed control request.
    BadRequest,
    /// Storage or other server-side failure.
    Internal,
    /// No server is listening on the control socket.
    NotRunning,
    /// Talking to the control socket failed.
    Control,
    /// The configuration does not allow the operation.
    Config,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{jid:?} is not a valid account JID: {reason}")]
    InvalidJid { jid: String, reason: String },
    #[error("{domain:?} is not a domain served here (configured vhosts: {vhosts})")]
    UnknownDomain { domain: String, vhosts: String },
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("no such invitation (unknown, expired, used up or revoked)")]
    NoSuchInvite,
    #[error("unacceptable password: {0}")]
    InvalidPassword(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("no server is listening on {}", path.display())]
    NotRunning { path: PathBuf },
    #[error("control socket {}: {reason}", path.display())]
    Control { path: PathBuf, reason: String },
    /// An error the server reported over the control socket.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    #[error("{0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdminError::InvalidJid { .. } => ErrorKind::InvalidJid,
            AdminError::UnknownDomain { .. } => ErrorKind::UnknownDomain,
            AdminError::UserExists(_) => ErrorKind::UserExists,
            AdminError::NoSuchUser(_) => ErrorKind::NoSuchUser,
            AdminError::NoSuchInvite => ErrorKind::NoSuchInvite,
            AdminError::InvalidPassword(_) => ErrorKind::InvalidPassword,
            AdminError::Storage(_) | AdminError::Internal(_) => ErrorKind::Internal,
            AdminError::NotRunning { .. } => ErrorKind::NotRunning,
            AdminError::Control { .. } => ErrorKind::Control,
            AdminError::Remote { kind, .. } => *kind,
            AdminError::Config(_) => ErrorKind::Config,
        }
    }
}

/// Normalizes an account JID (`user@domain`, no resource) whose domain is a configured vhost.
pub fn account_jid(config: &Config, jid: &str) -> Result<BareJid, AdminError> {
    let bare = parse_account_jid(jid)?;
    let domain = bare.domain().as_str();
    if !config.vhosts.iter().any(|v| v.domain == domain) {
        let vhosts: Vec<&str> = config.vhosts.iter().map(|v| v.domain.as_str()).collect();
        return Err(AdminError::UnknownDomain {
            domain: domain.to_string(),
            vhosts: vhosts.join(", "),
        });
    }
    Ok(bare)
}

/// Normalizes `user@domain` without checking the domain.
fn parse_account_jid(jid: &str) -> Result<BareJid, AdminError> {
    let invalid = |reason: String| AdminError::InvalidJid {
        jid: jid.to_string(),
        reason,
    };
    let bare = BareJid::new(jid).map_err(|e| invalid(e.to_string()))?;
    if crate::addr::parse_bare(jid).as_ref() != Some(&bare) {
        return Err(invalid("its normal form is not stable".into()));
    }
    if bare.node().is_none() {
        return Err(invalid("no user part (expected user@domain)".into()));
    }
    Ok(bare)
}

async fn derive(password: &str, iterations: u32) -> Result<StoredCredentials, AdminError> {
    if password.is_empty() {
        return Err(AdminError::InvalidPassword("empty".into()));
    }
    let pw = Zeroizing::new(password.to_string());
    // PBKDF2 with thousands of iterations takes long enough to stall a runtime thread.
    let result =
        tokio::task::spawn_blocking(move || StoredCredentials::from_password(&pw, iterations))
            .await
            .map_err(|e| AdminError::Internal(format!("password hashing task: {e}")))?;
    result.map_err(|_| {
        AdminError::InvalidPassword(
            "contains characters not allowed by SASLprep (RFC 4013) or is empty after it".into(),
        )
    })
}

/// Creates an account; returns its normalized JID. The password is derived with
/// `config.c2s.scram_iterations`.
pub async fn add_user(
    storage: &Storage,
    config: &Config,
    jid: &str,
    password: &str,
) -> Result<String, AdminError> {
    let jid = account_jid(config, jid)?;
    // Cheap check first so an existing user does not cost a PBKDF2 run.
    if storage.accounts.get(&jid).await?.is_some() {
        return Err(AdminError::UserExists(jid.into_inner()));
    }
    let creds = derive(password, config.c2s.scram_iterations).await?;
    if !storage.accounts.create(&jid, &creds).await? {
        return Err(AdminError::UserExists(jid.into_inner()));
    }
    tracing::info!(%jid, "account created");
    Ok(jid.into_inner())
}

/// Replaces an account's password; returns its normalized JID.
pub async fn set_password(
    storage: &Storage,
    config: &Config,
    jid: &str,
    password: &str,
) -> Result<String, AdminError> {
    let jid = account_jid(config, jid)?;
    if storage.accounts.get(&jid).await?.is_none() {
        return Err(AdminError::NoSuchUser(jid.into_inner()));
    }
    let creds = derive(password, config.c2s.scram_iterations).await?;
    if !storage.accounts.set_credentials(&jid, &creds).await? {
        return Err(AdminError::NoSuchUser(jid.into_inner()));
    }
    tracing::info!(%jid, "account password changed");
    Ok(jid.into_inner())
}

/// Removes an account with its roster and offline messages; returns its normalized JID.
/// The domain need not be configured any more, so accounts of a dropped vhost can be removed.
pub async fn remove_user(storage: &Storage, jid: &str) -> Result<String, AdminError> {
    let jid = parse_account_jid(jid)?;
    if !storage.remove_account(&jid).await? {
        return Err(AdminError::NoSuchUser(jid.into_inner()));
    }
    tracing::info!(%jid, "account removed");
    Ok(jid.into_inner())
}

/// All accounts, sorted; only those of `domain` when given.
pub async fn list_users(
    storage: &Storage,
    domain: Option<&str>,
) -> Result<Vec<String>, AdminError> {
    let all = storage.accounts.list().await?;
    let d = domain.map(str::to_ascii_lowercase);
    Ok(all
        .into_iter()
        .filter(|j| d.as_deref().is_none_or(|d| j.domain().as_str() == d))
        .map(BareJid::into_inner)
        .collect())
}

/// Opens the configured storage for use while the server is stopped.
pub fn open_storage_offline(config: &Config) -> Result<Storage, AdminError> {
    match config.storage.backend {
        StorageBackend::Sled => Ok(Storage::open_sled_configured(
            &config.data_dir.join("db"),
            config.storage.cache_mb,
            // Offline work (an import) is acknowledged to nobody but must not be lost.
            true,
            config.storage.archive_partition_mb,
        )?),
        StorageBackend::Memory => Err(AdminError::Config(
            "storage.backend = \"memory\": accounts exist only inside a running server, \
             and none is listening on the control socket"
                .into(),
        )),
    }
}

/// `<data_dir>/control.sock`.
pub fn control_socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("control.sock")
}

/// Creates the data directory with mode 0700 if it does not exist.
pub fn ensure_data_dir(path: &Path) -> std::io::Result<()> {
    crate::net::devcert::create_private_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VhostConfig;

    pub(crate) fn config() -> Config {
        let mut cfg = Config {
            vhosts: vec![VhostConfig {
                domain: "example.test".into(),
                certificate: None,
                key: None,
            }],
            ..Config::default()
        };
        cfg.c2s.scram_iterations = 4096;
        cfg
    }

    #[tokio::test]
    async fn add_passwd_remove_list() {
        let storage = Storage::memory();
        let cfg = config();
        let jid = add_user(&storage, &cfg, "Alice@Example.Test", "pw1")
            .await
            .unwrap();
        assert_eq!(jid, "alice@example.test");
        let stored = |jid: &'static str| {
            let accounts = storage.accounts.clone();
            async move {
                let jid = crate::addr::parse_bare(jid).unwrap();
                accounts.get(&jid).await.unwrap().unwrap()
            }
        };
        let first = stored("alice@example.test").await;
        assert_eq!(first.sha256.iterations, 4096);

        let e = add_user(&storage, &cfg, "alice@example.test", "x")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UserExists);

        set_password(&storage, &cfg, "alice@example.test", "pw2")
            .await
            .unwrap();
        assert_ne!(stored("alice@example.test").await, first);

        add_user(&storage, &cfg, "bob@example.test", "pw")
            .await
            .unwrap();
        assert_eq!(
            list_users(&storage, None).await.unwrap(),
            ["alice@example.test", "bob@example.test"]
        );
        assert!(
            list_users(&storage, Some("other.test"))
                .await
                .unwrap()
                .is_empty()
        );
        remove_user(&storage, "alice@example.test").await.unwrap();
        let e = remove_user(&storage, "alice@example.test")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSuchUser);
        let e = set_password(&storage, &cfg, "alice@example.test", "x")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSuchUser);
        assert_eq!(
            list_users(&storage, None).await.unwrap(),
            ["bob@example.test"]
        );
    }

    #[tokio::test]
    async fn rejects_bad_input() {
        let storage = Storage::memory();
        let cfg = config();
        for (jid, kind) in [
            ("example.test", ErrorKind::InvalidJid),
            ("a@example.test/res", ErrorKind::InvalidJid),
            ("a@b@example.test", ErrorKind::InvalidJid),
            ("@example.test", ErrorKind::InvalidJid),
            ("a@other.test", ErrorKind::UnknownDomain),
        ] {
            let e = add_user(&storage, &cfg, jid, "pw").await.unwrap_err();
            assert_eq!(e.kind(), kind, "{jid}: {e}");
        }
        let e = add_user(&storage, &cfg, "a@example.test", "")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidPassword);
        assert!(storage.accounts.list().await.unwrap().is_empty());
        let e = add_user(&storage, &cfg, "a@other.test", "pw")
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"other.test\" is not a domain served here (configured vhosts: example.test)"
        );
    }

    #[test]
    fn memory_backend_cannot_be_opened_offline() {
        let mut cfg = config();
        cfg.storage.backend = StorageBackend::Memory;
        assert_eq!(
            open_storage_offline(&cfg).err().map(|e| e.kind()),
            Some(ErrorKind::Config)
        );
    }
}
