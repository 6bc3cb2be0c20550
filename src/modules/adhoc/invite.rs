//! XEP-0401 invitation commands: `urn:xmpp:invite#invite` (a contact invitation that also
//! lets the invitee register here) for users when `invites.users_may_invite`, and
//! `urn:xmpp:invite#create-account` for admins.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Command, Requester, Stage, Step, form, register_command};
use crate::admin::invites::{self, InviteSpec};
use crate::admin::{AdminError, ErrorKind};
use crate::context::Context;
use crate::registry::Registrar;
use crate::storage::Invite;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::Element;

const FORM_TYPE: &str = "urn:xmpp:invite#invitation";

pub(super) fn register(r: &mut Registrar<'_>) {
    if r.config().invites.enabled {
        register_command(r, Arc::new(InviteUser));
        register_command(r, Arc::new(CreateAccount));
    }
}

fn error(e: &AdminError) -> StanzaError {
    match e.kind() {
        ErrorKind::UserExists => {
            StanzaError::new(ErrorType::Cancel, "conflict").with_text(e.to_string())
        }
        ErrorKind::InvalidJid | ErrorKind::UnknownDomain => {
            StanzaError::new(ErrorType::Modify, "not-acceptable").with_text(e.to_string())
        }
        ErrorKind::Config => {
            StanzaError::new(ErrorType::Wait, "resource-constraint").with_text(e.to_string())
        }
        _ => {
            tracing::warn!(error = %e, "invitation command failed");
            StanzaError::internal_server_error()
        }
    }
}

/// The XEP-0401 result form: uri, landing-url, expire.
fn result(ctx: &Context, invite: &Invite) -> Element {
    let listeners = ctx.listeners.get().map(Vec::as_slice).unwrap_or_default();
    let info = invites::info(&ctx.config, listeners, invite);
    let mut f = form::new("result", FORM_TYPE, None);
    f.push_child(form::field(
        "uri",
        "text-single",
        Some("Invitation URI"),
        &[&info.uri],
    ));
    if let Some(url) = &info.landing_url {
        f.push_child(form::field(
            "landing-url",
            "text-single",
            Some("Invitation web page"),
            &[url],
        ));
    }
    f.push_child(form::field(
        "expire",
        "text-single",
        Some("Valid until"),
        &[&info.expires],
    ));
    f
}

struct InviteUser;

#[async_trait]
impl Command for InviteUser {
    fn node(&self) -> &'static str {
        "urn:xmpp:invite#invite"
    }
    fn name(&self) -> &'static str {
        "Invite user"
    }
    fn allowed(&self, ctx: &Context, who: &Requester) -> bool {
        who.local && (who.admin || ctx.config.invites.users_may_invite)
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        who: &Requester,
        _: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        // No form: the link comes at once (XEP-0401 §5.1).
        let spec = InviteSpec {
            inviter: Some(who.bare.clone()),
            register: true,
            privileged: who.admin,
            ..Default::default()
        };
        let invite = invites::create(&ctx.storage, &ctx.config, spec)
            .await
            .map_err(|e| error(&e))?;
        Ok(Step::result(result(ctx, &invite)))
    }
}

struct CreateAccount;

#[async_trait]
impl Command for CreateAccount {
    fn node(&self) -> &'static str {
        "urn:xmpp:invite#create-account"
    }
    fn name(&self) -> &'static str {
        "Create account"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        who: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Create an account invitation"));
            f.push_child(form::field(
                "username",
                "text-single",
                Some("Username"),
                &[],
            ));
            f.push_child(form::field(
                "roster-subscription",
                "boolean",
                Some("Roster subscription"),
                &[],
            ));
            return Ok(Step::form(f));
        };
        let spec = InviteSpec {
            domain: Some(who.bare.domain().as_str().to_string()),
            username: form::value(x, "username"),
            inviter: form::boolean(x, "roster-subscription").then(|| who.bare.clone()),
            register: true,
            privileged: true,
            ..Default::default()
        };
        let invite = invites::create(&ctx.storage, &ctx.config, spec)
            .await
            .map_err(|e| error(&e))?;
        Ok(Step::result(result(ctx, &invite)))
    }
}
