//! XEP-0050 Ad-Hoc Commands on the server, with XEP-0004 data forms.
//!
//! Commands are registered by any module with [`register_command`] (this module adds the
//! XEP-0133 admin commands and the XEP-0401 invitation commands). Each command says who
//! may run it; disco#items of the `commands` node lists only those the requester may
//! run. A command answers a stage with a form to fill (the framework keeps a session,
//! bounded in number and time, for the next stage) or with its completion.

pub mod admin;
pub mod invite;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::addr::{BareJid, Jid};
use crate::context::Context;
use crate::registry::{IqHandler, IqTarget, Module, Registrar, ServerNodes};
use crate::stream::{ErrorType, StanzaError, random_id};
use crate::xml::{Element, ns};

pub const NS: &str = "http://jabber.org/protocol/commands";
pub const DATA_FORMS: &str = "jabber:x:data";

/// Who runs a command: a full JID, its account and whether it is a local server admin.
pub struct Requester {
    pub jid: Jid,
    pub bare: BareJid,
    /// An account of a vhost of this server.
    pub local: bool,
    pub admin: bool,
}

/// What a stage of a command gets: the form the requester submitted (if any) and what
/// the previous stage kept.
pub struct Stage<'a> {
    pub form: Option<&'a Element>,
    pub state: Option<Box<dyn Any + Send>>,
}

/// What a stage of a command returns.
pub enum Step {
    /// A form to fill (status `executing`); `state` comes back with the next stage.
    Form {
        form: Element,
        state: Option<Box<dyn Any + Send>>,
    },
    /// Done (status `completed`), with a result form and/or a note.
    Completed {
        form: Option<Element>,
        note: Option<String>,
    },
}

impl Step {
    pub fn form(form: Element) -> Step {
        Step::Form { form, state: None }
    }
    pub fn done(note: impl Into<String>) -> Step {
        Step::Completed {
            form: None,
            note: Some(note.into()),
        }
    }
    pub fn result(form: Element) -> Step {
        Step::Completed {
            form: Some(form),
            note: None,
        }
    }
}

/// One ad-hoc command.
#[async_trait]
pub trait Command: Send + Sync {
    /// The command's node (e.g. `http://jabber.org/protocol/admin#add-user`).
    fn node(&self) -> &'static str;
    /// Its human-readable name (disco#items).
    fn name(&self) -> &'static str;
    /// Whether `who` may see and run it: server admins only, unless a command says
    /// otherwise (the safe default for a command that forgets to).
    fn allowed(&self, _ctx: &Context, who: &Requester) -> bool {
        who.admin
    }
    async fn run(
        &self,
        ctx: &Arc<Context>,
        who: &Requester,
        stage: Stage<'_>,
    ) -> Result<Step, StanzaError>;
}

/// The commands registered by all modules.
#[derive(Default)]
pub struct CommandTable {
    commands: Mutex<Vec<Arc<dyn Command>>>,
}

impl CommandTable {
    fn list(&self) -> Vec<Arc<dyn Command>> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn find(&self, node: &str) -> Option<Arc<dyn Command>> {
        self.list().into_iter().find(|c| c.node() == node)
    }
}

/// The shared command table, created by whichever module registers first.
fn table(r: &mut Registrar<'_>) -> Arc<CommandTable> {
    match r.state::<CommandTable>() {
        Some(t) => t,
        None => {
            let t = Arc::new(CommandTable::default());
            r.shared(t.clone());
            t
        }
    }
}

/// Adds a command to the server's ad-hoc commands (from any module's `register`).
pub fn register_command(r: &mut Registrar<'_>, command: Arc<dyn Command>) {
    table(r)
        .commands
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(command);
}

pub struct AdHoc;

impl Module for AdHoc {
    fn name(&self) -> &'static str {
        "adhoc"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let cfg = &r.config().server;
        let sessions = Arc::new(Sessions {
            max: cfg.adhoc_max_sessions,
            timeout: Duration::from_secs(cfg.adhoc_session_timeout_secs),
            map: Mutex::new(HashMap::new()),
        });
        r.iq(Arc::new(CommandsIq {
            sessions: sessions.clone(),
        }));
        let table = table(r);
        r.server_nodes(Arc::new(CommandNodes { table }));
        admin::register(r);
        invite::register(r);
    }
}

/// A multi-stage command waiting for its next stage.
struct Session {
    node: &'static str,
    owner: Jid,
    expires: Instant,
    state: Option<Box<dyn Any + Send>>,
}

struct Sessions {
    max: usize,
    timeout: Duration,
    map: Mutex<HashMap<String, Session>>,
}

enum Taken {
    Found(Session),
    Unknown,
    Expired,
}

impl Sessions {
    fn start(&self, session: Session) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= self.max {
                return None;
            }
        }
        let id = random_id();
        map.insert(id.clone(), session);
        Some(id)
    }

    fn take(&self, id: &str, node: &str, owner: &Jid) -> Taken {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.node == node && s.owner == *owner => {}
            // Someone else's session is as unknown as a made-up one.
            _ => return Taken::Unknown,
        }
        match map.remove(id) {
            Some(s) if s.expires > Instant::now() => Taken::Found(s),
            Some(_) => Taken::Expired,
            None => Taken::Unknown,
        }
    }
}

fn commands_error(kind: ErrorType, condition: &'static str, specific: &str) -> StanzaError {
    let mut e = StanzaError::new(kind, condition);
    e.app = Some(Element::new(specific, NS));
    e
}

async fn requester(ctx: &Context, iq: &Element) -> Option<Requester> {
    let jid = iq.attr("from").and_then(crate::addr::parse)?;
    let bare = jid.to_bare();
    let local = bare.node().is_some() && ctx.is_local_domain(bare.domain().as_str());
    let admin = local && crate::admin::live::is_admin(ctx, &bare).await;
    Some(Requester {
        jid,
        bare,
        local,
        admin,
    })
}

struct CommandsIq {
    sessions: Arc<Sessions>,
}

#[async_trait]
impl IqHandler for CommandsIq {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[NS]
    }

    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let IqTarget::Server(_) = target else {
            return Err(StanzaError::service_unavailable());
        };
        let Some(cmd) = iq.child("command", NS) else {
            return Err(StanzaError::bad_request());
        };
        if iq.attr("type") != Some("set") {
            return Err(StanzaError::bad_request());
        }
        let node = cmd.attr("node").unwrap_or_default();
        let Some(who) = requester(ctx, iq).await else {
            return Err(StanzaError::bad_request());
        };
        let command = ctx
            .registry
            .state::<CommandTable>()
            .and_then(|t| t.find(node))
            .ok_or_else(StanzaError::item_not_found)?;
        if !command.allowed(ctx, &who) {
            return Err(StanzaError::forbidden());
        }
        let action = cmd.attr("action").unwrap_or("execute");
        if !matches!(action, "execute" | "complete" | "next" | "cancel") {
            return Err(commands_error(
                ErrorType::Modify,
                "bad-request",
                "malformed-action",
            ));
        }
        let state = match cmd.attr("sessionid") {
            Some(id) => match self.sessions.take(id, command.node(), &who.jid) {
                Taken::Found(s) => s.state,
                Taken::Unknown => {
                    return Err(commands_error(
                        ErrorType::Modify,
                        "bad-request",
                        "bad-sessionid",
                    ));
                }
                Taken::Expired => {
                    return Err(commands_error(
                        ErrorType::Cancel,
                        "not-allowed",
                        "session-expired",
                    ));
                }
            },
            None if action == "execute" => None,
            None => {
                return Err(commands_error(
                    ErrorType::Modify,
                    "bad-request",
                    "bad-sessionid",
                ));
            }
        };
        let mut reply = Element::new("command", NS).with_attr("node", command.node());
        if action == "cancel" {
            if let Some(id) = cmd.attr("sessionid") {
                reply.set_attr("sessionid", id);
            }
            reply.set_attr("status", "canceled");
            return Ok(Some(reply));
        }
        let form = cmd
            .child("x", DATA_FORMS)
            .filter(|x| x.attr("type") == Some("submit"));
        let step = command.run(ctx, &who, Stage { form, state }).await?;
        match step {
            Step::Form { form, state } => {
                let session = Session {
                    node: command.node(),
                    owner: who.jid.clone(),
                    expires: Instant::now() + self.sessions.timeout,
                    state,
                };
                let Some(id) = self.sessions.start(session) else {
                    return Err(StanzaError::resource_constraint());
                };
                reply.set_attr("sessionid", id);
                reply.set_attr("status", "executing");
                reply.push_child(
                    Element::new("actions", NS)
                        .with_attr("execute", "complete")
                        .with_child(Element::new("complete", NS)),
                );
                reply.push_child(form);
            }
            Step::Completed { form, note } => {
                if let Some(id) = cmd.attr("sessionid") {
                    reply.set_attr("sessionid", id);
                }
                reply.set_attr("status", "completed");
                if let Some(note) = note {
                    reply.push_child(
                        Element::new("note", NS)
                            .with_attr("type", "info")
                            .with_text(note),
                    );
                }
                if let Some(form) = form {
                    reply.push_child(form);
                }
            }
        }
        Ok(Some(reply))
    }
}

/// Disco: the `commands` node lists the commands the requester may run (XEP-0050 §2.2);
/// each command's node describes it (§2.3).
struct CommandNodes {
    table: Arc<CommandTable>,
}

#[async_trait]
impl ServerNodes for CommandNodes {
    fn handles(&self, node: &str) -> bool {
        node == NS || self.table.find(node).is_some()
    }

    async fn info(
        &self,
        ctx: &Arc<Context>,
        _domain: &str,
        node: &str,
        requester: &Jid,
    ) -> Option<Vec<Element>> {
        let identity = |kind: &str, name: &str| {
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "automation")
                .with_attr("type", kind)
                .with_attr("name", name)
        };
        let feature = |var: &str| Element::new("feature", ns::DISCO_INFO).with_attr("var", var);
        if node == NS {
            return Some(vec![identity("command-list", "Commands")]);
        }
        let command = self
            .visible(ctx, requester)
            .await
            .into_iter()
            .find(|c| c.node() == node)?;
        Some(vec![
            identity("command-node", command.name()),
            feature(NS),
            feature(DATA_FORMS),
        ])
    }

    async fn items(
        &self,
        ctx: &Arc<Context>,
        domain: &str,
        node: &str,
        requester: &Jid,
    ) -> Option<Vec<Element>> {
        if node != NS {
            return None;
        }
        Some(
            self.visible(ctx, requester)
                .await
                .into_iter()
                .map(|c| {
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", domain)
                        .with_attr("node", c.node())
                        .with_attr("name", c.name())
                })
                .collect(),
        )
    }
}

impl CommandNodes {
    async fn visible(&self, ctx: &Arc<Context>, from: &Jid) -> Vec<Arc<dyn Command>> {
        let from = Element::new("iq", ns::CLIENT).with_attr("from", from.as_str());
        let Some(who) = requester(ctx, &from).await else {
            return Vec::new();
        };
        self.table
            .list()
            .into_iter()
            .filter(|c| c.allowed(ctx, &who))
            .collect()
    }
}

/// XEP-0004 data forms: building and reading.
pub mod form {
    use super::DATA_FORMS;
    use crate::xml::Element;

    /// A form of `kind` (`form` or `result`) with a hidden FORM_TYPE.
    pub fn new(kind: &str, form_type: &str, title: Option<&str>) -> Element {
        let mut x = Element::new("x", DATA_FORMS).with_attr("type", kind);
        if let Some(t) = title {
            x.push_child(Element::new("title", DATA_FORMS).with_text(t));
        }
        x.push_child(field("FORM_TYPE", "hidden", None, &[form_type]));
        x
    }

    pub fn field(var: &str, kind: &str, label: Option<&str>, values: &[&str]) -> Element {
        let mut f = Element::new("field", DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", kind);
        if let Some(l) = label {
            f.set_attr("label", l);
        }
        for v in values {
            f.push_child(Element::new("value", DATA_FORMS).with_text(*v));
        }
        f
    }

    /// A field the submitter must fill.
    pub fn required(mut field: Element) -> Element {
        field.push_child(Element::new("required", DATA_FORMS));
        field
    }

    /// The values of field `var` in a submitted form.
    pub fn values(x: &Element, var: &str) -> Vec<String> {
        x.elements()
            .filter(|f| f.name == "field" && f.attr("var") == Some(var))
            .flat_map(|f| {
                f.elements()
                    .filter(|v| v.name == "value")
                    .map(Element::text)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The first value of field `var`, trimmed; `None` if absent or empty.
    pub fn value(x: &Element, var: &str) -> Option<String> {
        values(x, var)
            .into_iter()
            .next()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A boolean field (`1`/`true`).
    pub fn boolean(x: &Element, var: &str) -> bool {
        value(x, var).is_some_and(|v| v == "1" || v == "true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(owner: &str, timeout: Duration) -> Session {
        Session {
            node: "n",
            owner: crate::addr::parse(owner).unwrap(),
            expires: Instant::now() + timeout,
            state: None,
        }
    }

    #[test]
    fn sessions_are_bounded_owned_and_expire() {
        let s = Sessions {
            max: 2,
            timeout: Duration::from_secs(60),
            map: Mutex::new(HashMap::new()),
        };
        let a = s.start(session("a@x/r", Duration::from_secs(60))).unwrap();
        let b = s.start(session("a@x/r", Duration::ZERO)).unwrap();
        // Full with a live one and an expired one: the expired one makes room.
        let c = s.start(session("a@x/r", Duration::from_secs(60))).unwrap();
        assert!(s.start(session("a@x/r", Duration::from_secs(60))).is_none());
        let owner = crate::addr::parse("a@x/r").unwrap();
        let other = crate::addr::parse("b@x/r").unwrap();
        assert!(matches!(s.take(&a, "n", &other), Taken::Unknown));
        assert!(matches!(s.take(&a, "other", &owner), Taken::Unknown));
        assert!(matches!(s.take(&a, "n", &owner), Taken::Found(_)));
        assert!(matches!(s.take(&a, "n", &owner), Taken::Unknown));
        assert!(matches!(s.take(&b, "n", &owner), Taken::Unknown));
        assert!(matches!(s.take(&c, "n", &owner), Taken::Found(_)));
        let d = s.start(session("a@x/r", Duration::ZERO)).unwrap();
        assert!(matches!(s.take(&d, "n", &owner), Taken::Expired));
    }
}
