//! Invitations (XEP-0401, XEP-0379, XEP-0445): creation, listing and revocation, shared
//! by the control socket (`xmppd invite …`) and the ad-hoc commands, and the links that
//! carry them (xmpp: URIs and landing pages).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::AdminError;
use crate::addr::BareJid;
use crate::config::{Config, ListenerKind, TlsMode};
use crate::storage::{Invite, Storage};

/// Longest validity a CLI invitation may have (ten years), so the expiry never overflows.
const MAX_CLI_EXPIRY_SECS: u64 = 10 * 365 * 86_400;
/// Most registrations one invitation may allow.
pub const MAX_USES: u32 = 10_000;

/// What an invitation is to allow.
#[derive(Clone, Debug, Default)]
pub struct InviteSpec {
    /// The vhost; the first one when `None` (ignored with an inviter: theirs).
    pub domain: Option<String>,
    /// A contact invitation from this account.
    pub inviter: Option<BareJid>,
    /// An account name reserved for the invitee.
    pub username: Option<String>,
    pub register: bool,
    pub admin: bool,
    pub expires_secs: Option<u64>,
    pub uses: Option<u32>,
    /// The creator is the operator (CLI) or an admin: no per-user count, longer expiry.
    pub privileged: bool,
}

/// An invitation as reported to its creator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    pub token: String,
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inviter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub admin: bool,
    pub uses_left: u32,
    /// XEP-0082 DateTime.
    pub expires: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_url: Option<String>,
}

pub use crate::datetime::now_secs;

/// A fresh token: 24 alphanumeric characters (about 143 bits), as XEP-0401 suggests.
fn new_token() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Whether `token` looks like one of ours (checked before any lookup or log).
pub fn is_token(token: &str) -> bool {
    (8..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Percent-encodes what RFC 5122 does not allow as is in a JID within an xmpp: URI.
fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~!$()*+,=@:".contains(&b);
        match plain {
            true => out.push(char::from(b)),
            false => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The xmpp: URI of an invitation: `xmpp:inviter@domain?roster;preauth=T;ibr=y` for a
/// contact invitation (XEP-0379, XEP-0401 §5.1), `xmpp:[name@]domain?register;preauth=T`
/// for an account invitation (XEP-0445 §2).
pub fn invite_uri(invite: &Invite) -> String {
    match (&invite.inviter, &invite.username) {
        (Some(inviter), None) => {
            let ibr = if invite.register { ";ibr=y" } else { "" };
            format!(
                "xmpp:{}?roster;preauth={}{ibr}",
                uri_escape(inviter.as_str()),
                invite.token
            )
        }
        _ => {
            let who = match &invite.username {
                Some(u) => format!("{u}@{}", invite.domain),
                None => invite.domain.clone(),
            };
            format!(
                "xmpp:{}?register;preauth={}",
                uri_escape(&who),
                invite.token
            )
        }
    }
}

/// The landing page of an invitation: `<invites.base_url>/invite/<token>`, else on the
/// first HTTPS listener under the invitation's domain.
pub fn landing_url(
    config: &Config,
    listeners: &[(ListenerKind, TlsMode, SocketAddr)],
    invite: &Invite,
) -> Option<String> {
    let base = match &config.invites.base_url {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => {
            let (_, _, addr) = listeners
                .iter()
                .find(|(k, t, _)| *k == ListenerKind::Http && *t == TlsMode::DirectTls)?;
            match addr.port() {
                443 => format!("https://{}", invite.domain),
                port => format!("https://{}:{port}", invite.domain),
            }
        }
    };
    Some(format!("{base}/invite/{}", invite.token))
}

pub fn info(
    config: &Config,
    listeners: &[(ListenerKind, TlsMode, SocketAddr)],
    invite: &Invite,
) -> InviteInfo {
    InviteInfo {
        token: invite.token.clone(),
        domain: invite.domain.clone(),
        inviter: invite.inviter.as_ref().map(|j| j.to_string()),
        username: invite.username.clone(),
        admin: invite.admin,
        uses_left: invite.uses_left,
        expires: crate::modules::time::stamp_from_unix(invite.expires),
        uri: invite_uri(invite),
        landing_url: landing_url(config, listeners, invite),
    }
}

/// Creates and stores an invitation.
pub async fn create(
    storage: &Storage,
    config: &Config,
    spec: InviteSpec,
) -> Result<Invite, AdminError> {
    if !config.invites.enabled {
        return Err(AdminError::Config(
            "invitations are disabled (invites.enabled = false)".into(),
        ));
    }
    let domain = match (&spec.inviter, &spec.domain) {
        (Some(inviter), _) => inviter.domain().as_str().to_string(),
        (None, Some(d)) => d.to_ascii_lowercase(),
        (None, None) => config
            .vhosts
            .first()
            .map(|v| v.domain.clone())
            .unwrap_or_default(),
    };
    if !config.vhosts.iter().any(|v| v.domain == domain) {
        let vhosts: Vec<&str> = config.vhosts.iter().map(|v| v.domain.as_str()).collect();
        return Err(AdminError::UnknownDomain {
            domain,
            vhosts: vhosts.join(", "),
        });
    }
    let username = match &spec.username {
        Some(u) => {
            let jid = super::account_jid(config, &format!("{u}@{domain}"))?;
            if storage.accounts.get(&jid).await?.is_some() {
                return Err(AdminError::UserExists(jid.into_inner()));
            }
            jid.node().map(|n| n.as_str().to_string())
        }
        None => None,
    };
    let max = match spec.privileged {
        true => MAX_CLI_EXPIRY_SECS,
        false => config.invites.max_expiry_secs,
    };
    let expires_in = spec
        .expires_secs
        .unwrap_or(config.invites.default_expiry_secs);
    if expires_in == 0 || expires_in > max {
        return Err(AdminError::Config(format!(
            "expiry must be between 1 and {max} seconds"
        )));
    }
    let uses = spec.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_USES {
        return Err(AdminError::Config(format!(
            "uses must be between 1 and {MAX_USES}"
        )));
    }
    let now = now_secs();
    if let (Some(inviter), false) = (&spec.inviter, spec.privileged) {
        let outstanding = storage
            .invites
            .invites()
            .await?
            .iter()
            .filter(|i| i.is_valid(now) && i.inviter.as_ref() == Some(inviter))
            .count();
        if outstanding >= config.invites.max_per_user {
            return Err(AdminError::Config(format!(
                "at most {} outstanding invitations per user",
                config.invites.max_per_user
            )));
        }
    }
    let invite = Invite {
        token: new_token(),
        domain,
        inviter: spec.inviter,
        username,
        register: spec.register,
        admin: spec.admin,
        created: now,
        expires: now.saturating_add(expires_in),
        uses_left: uses,
    };
    storage.invites.put_invite(&invite).await?;
    tracing::info!(
        domain = %invite.domain,
        inviter = invite.inviter.as_ref().map(|j| j.as_str()),
        admin = invite.admin,
        uses,
        expires_in,
        "invitation created"
    );
    Ok(invite)
}

/// The invitations still valid, oldest first (expired ones are swept on the way).
pub async fn list(storage: &Storage) -> Result<Vec<Invite>, AdminError> {
    let now = now_secs();
    storage.invites.remove_expired_invites(now).await?;
    let mut all: Vec<Invite> = storage
        .invites
        .invites()
        .await?
        .into_iter()
        .filter(|i| i.is_valid(now))
        .collect();
    all.sort_by(|a, b| (a.created, &a.token).cmp(&(b.created, &b.token)));
    Ok(all)
}

/// Revokes an invitation.
pub async fn revoke(storage: &Storage, token: &str) -> Result<(), AdminError> {
    if !is_token(token) || !storage.invites.remove_invite(token).await? {
        return Err(AdminError::NoSuchInvite);
    }
    tracing::info!("invitation revoked");
    Ok(())
}

/// A valid invitation (not used up, not expired), if `token` names one.
pub async fn valid(storage: &Storage, token: &str) -> Option<Invite> {
    if !is_token(token) {
        return None;
    }
    match storage.invites.invite(token).await {
        Ok(Some(i)) if i.is_valid(now_secs()) => Some(i),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading an invitation failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(inviter: Option<&str>, username: Option<&str>, register: bool) -> Invite {
        Invite {
            token: "abc123".into(),
            domain: "example.org".into(),
            inviter: inviter.map(|i| crate::addr::parse_bare(i).unwrap()),
            username: username.map(String::from),
            register,
            admin: false,
            created: 0,
            expires: 1,
            uses_left: 1,
        }
    }

    #[test]
    fn uris_follow_xep_0401_and_0445() {
        assert_eq!(
            invite_uri(&invite(Some("romeo@example.org"), None, true)),
            "xmpp:romeo@example.org?roster;preauth=abc123;ibr=y"
        );
        assert_eq!(
            invite_uri(&invite(Some("romeo@example.org"), None, false)),
            "xmpp:romeo@example.org?roster;preauth=abc123"
        );
        assert_eq!(
            invite_uri(&invite(None, None, true)),
            "xmpp:example.org?register;preauth=abc123"
        );
        assert_eq!(
            invite_uri(&invite(None, Some("juliet"), true)),
            "xmpp:juliet@example.org?register;preauth=abc123"
        );
        assert_eq!(uri_escape("a b&c?d"), "a%20b%26c%3Fd");
    }

    #[test]
    fn tokens_are_alphanumeric_and_checked() {
        let t = new_token();
        assert!(is_token(&t), "{t}");
        assert_ne!(t, new_token());
        assert!(!is_token("short"));
        assert!(!is_token("has/slash/and-more"));
    }
}
