//! XEP-0133 Service Administration: ad-hoc commands for the server's admins
//! (`server.admins`, or accounts made admins by an admin invitation). Account changes go
//! through the same paths as `xmppd user …` (sessions end, modules drop a removed
//! account's data).
// Stanza errors are returned by value across this module, as elsewhere in modules/.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use async_trait::async_trait;

use super::{Command, Requester, Stage, Step, form, register_command};
use crate::addr::BareJid;
use crate::admin::{self, AdminError, ErrorKind};
use crate::context::Context;
use crate::registry::Registrar;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, ns};

const FORM_TYPE: &str = "http://jabber.org/protocol/admin";

pub(super) fn register(r: &mut Registrar<'_>) {
    register_command(r, Arc::new(AddUser));
    register_command(r, Arc::new(DeleteUser));
    register_command(r, Arc::new(DisableUser));
    register_command(r, Arc::new(ChangePassword));
    register_command(r, Arc::new(OnlineUsers));
    register_command(r, Arc::new(Announce));
}

fn modify(text: &str) -> StanzaError {
    StanzaError::new(ErrorType::Modify, "not-acceptable").with_text(text)
}

fn admin_error(e: &AdminError) -> StanzaError {
    match e.kind() {
        ErrorKind::UserExists => {
            StanzaError::new(ErrorType::Cancel, "conflict").with_text(e.to_string())
        }
        ErrorKind::NoSuchUser => StanzaError::item_not_found().with_text(e.to_string()),
        ErrorKind::InvalidJid | ErrorKind::UnknownDomain | ErrorKind::InvalidPassword => {
            modify(&e.to_string())
        }
        _ => {
            tracing::warn!(error = %e, "admin command failed");
            StanzaError::internal_server_error()
        }
    }
}

/// An account JID of one of our vhosts, from a form value.
fn account(ctx: &Context, value: &str) -> Result<BareJid, StanzaError> {
    admin::account_jid(&ctx.config, value).map_err(|e| admin_error(&e))
}

fn jid_field(var: &str, label: &str, multi: bool) -> Element {
    let kind = if multi { "jid-multi" } else { "jid-single" };
    form::required(form::field(var, kind, Some(label), &[]))
}

fn password_field(var: &str, label: &str) -> Element {
    form::field(var, "text-private", Some(label), &[])
}

/// The JIDs of `accountjids` (at most the list limit).
fn accounts(ctx: &Context, x: &Element) -> Result<Vec<BareJid>, StanzaError> {
    let values = form::values(x, "accountjids");
    if values.is_empty() || values.len() > ctx.config.server.adhoc_max_list_items {
        return Err(modify("Name between one and the list limit of accounts."));
    }
    values.iter().map(|v| account(ctx, v.trim())).collect()
}

/// A command struct with its XEP-0133 node.
macro_rules! admin_command {
    ($ty:ident, $node:literal) => {
        struct $ty;
        impl $ty {
            const NODE: &'static str = concat!("http://jabber.org/protocol/admin#", $node);
        }
    };
}

admin_command!(AddUser, "add-user");
admin_command!(DeleteUser, "delete-user");
admin_command!(DisableUser, "disable-user");
admin_command!(ChangePassword, "change-user-password");
admin_command!(OnlineUsers, "get-online-users-list");
admin_command!(Announce, "announce");

#[async_trait]
impl Command for AddUser {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "Add a user"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        _: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Adding a User"));
            f.push_child(jid_field(
                "accountjid",
                "The Jabber ID for the account to be added",
                false,
            ));
            f.push_child(password_field("password", "The password for this account"));
            f.push_child(password_field("password-verify", "Retype password"));
            return Ok(Step::form(f));
        };
        let jid = account(ctx, &form::value(x, "accountjid").unwrap_or_default())?;
        let password = form::values(x, "password")
            .into_iter()
            .next()
            .unwrap_or_default();
        let verify = form::values(x, "password-verify").into_iter().next();
        if verify.is_some_and(|v| v != password) {
            return Err(modify("The passwords differ."));
        }
        admin::live::add_account(ctx, &jid, &password)
            .await
            .map_err(|e| admin_error(&e))?;
        Ok(Step::done(format!("User {jid} added.")))
    }
}

#[async_trait]
impl Command for DeleteUser {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "Delete users"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        _: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Deleting a User"));
            f.push_child(jid_field("accountjids", "The Jabber ID(s) to delete", true));
            return Ok(Step::form(f));
        };
        let jids = accounts(ctx, x)?;
        for jid in &jids {
            admin::live::remove_account(ctx, jid)
                .await
                .map_err(|e| admin_error(&e))?;
        }
        Ok(Step::done(format!("{} user(s) deleted.", jids.len())))
    }
}

#[async_trait]
impl Command for DisableUser {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "Disable users"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        _: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Disabling a User"));
            f.push_child(jid_field(
                "accountjids",
                "The Jabber ID(s) to disable",
                true,
            ));
            return Ok(Step::form(f));
        };
        let jids = accounts(ctx, x)?;
        for jid in &jids {
            admin::live::disable_account(ctx, jid)
                .await
                .map_err(|e| admin_error(&e))?;
        }
        Ok(Step::done(format!(
            "{} user(s) disabled; setting a new password enables an account again.",
            jids.len()
        )))
    }
}

#[async_trait]
impl Command for ChangePassword {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "Change a user's password"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        _: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Changing a User Password"));
            f.push_child(jid_field(
                "accountjid",
                "The Jabber ID for this account",
                false,
            ));
            f.push_child(form::required(password_field(
                "password",
                "The password for this account",
            )));
            return Ok(Step::form(f));
        };
        let jid = account(ctx, &form::value(x, "accountjid").unwrap_or_default())?;
        let password = form::values(x, "password")
            .into_iter()
            .next()
            .unwrap_or_default();
        admin::live::change_password(ctx, &jid, &password, true)
            .await
            .map_err(|e| admin_error(&e))?;
        Ok(Step::done(format!("Password of {jid} changed.")))
    }
}

#[async_trait]
impl Command for OnlineUsers {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "List online users"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        _: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        // Few enough to list at once (XEP-0133 §4.20 allows returning the list directly);
        // a submitted max_items narrows it.
        let limit = ctx.config.server.adhoc_max_list_items;
        let max = s
            .form
            .and_then(|x| form::value(x, "max_items"))
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(limit, |n| n.min(limit));
        let mut users: Vec<String> = ctx
            .sessions
            .online_users(max)
            .into_iter()
            .map(|j| j.to_string())
            .collect();
        users.sort();
        let values: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut f = form::new("result", FORM_TYPE, None);
        f.push_child(form::field(
            "onlineuserjids",
            "jid-multi",
            Some("The list of all online users"),
            &values,
        ));
        Ok(Step::result(f))
    }
}

#[async_trait]
impl Command for Announce {
    fn node(&self) -> &'static str {
        Self::NODE
    }
    fn name(&self) -> &'static str {
        "Send an announcement to online users"
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        who: &Requester,
        s: Stage<'_>,
    ) -> Result<Step, StanzaError> {
        let Some(x) = s.form else {
            let mut f = form::new("form", FORM_TYPE, Some("Making an Announcement"));
            f.push_child(form::field("subject", "text-single", Some("Subject"), &[]));
            f.push_child(form::required(form::field(
                "announcement",
                "text-multi",
                Some("Announcement"),
                &[],
            )));
            return Ok(Step::form(f));
        };
        let body = form::values(x, "announcement").join("\n");
        if body.trim().is_empty() {
            return Err(modify("The announcement is empty."));
        }
        let subject = form::value(x, "subject");
        let from = who.bare.domain().as_str().to_string();
        let mut sent = 0usize;
        for user in ctx.sessions.online_users(usize::MAX) {
            for s in ctx.sessions.resources(&user) {
                if !s.available {
                    continue;
                }
                let mut msg = Element::new("message", ns::CLIENT)
                    .with_attr("from", from.clone())
                    .with_attr("to", format!("{user}/{}", s.resource))
                    .with_attr("type", "headline")
                    .with_attr("id", crate::stream::random_id());
                if let Some(subject) = &subject {
                    msg.push_child(Element::new("subject", ns::CLIENT).with_text(subject.clone()));
                }
                msg.push_child(Element::new("body", ns::CLIENT).with_text(body.clone()));
                crate::router::route(ctx, msg).await;
                sent += 1;
            }
        }
        tracing::info!(admin = %who.bare, sessions = sent, "announcement sent");
        Ok(Step::done(format!(
            "Announcement sent to {sent} session(s)."
        )))
    }
}
