//! The module registry: what every XEP module plugs into, built once at start.
//!
//! A module (`src/modules/*.rs`) implements [`Module`] and, in `register`, tells the
//! [`Registrar`] what it handles: iq payload namespaces, services addressed by domain,
//! message hooks, route filters, presence, offline storage, session events, outbound
//! filters and nonzas, stream features, disco entries, background tasks, per-session
//! flags and shared state. The router and the c2s/s2s layers call the [`Registry`] at
//! fixed points and import no module: a new XEP needs its own file and one line in
//! `modules::standard()`.

mod extensions;
mod responses;

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::addr::{BareJid, DomainPart, FullJid, Jid};
use crate::config::Config;
use crate::context::Context;
use crate::hashing::FastMap;
use crate::stream::{StanzaError, StreamErrorCondition};
use crate::xml::Element;

use extensions::FlagTable;
pub use extensions::{Extensions, SessionFlag, SessionFlags, SharedState};
pub use responses::ResponseHandler;
use responses::Responses;

/// Whom an iq request is addressed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IqTarget {
    /// The server (a vhost domain).
    Server(DomainPart),
    /// An account, answered by the server on the account's behalf (bare JID).
    Account(BareJid),
}

/// Answers iq get/set requests for payload namespaces, addressed to the server and/or to
/// accounts.
#[async_trait]
pub trait IqHandler: Send + Sync {
    /// Payload namespaces this handler answers.
    fn namespaces(&self) -> &'static [&'static str];
    /// Features for the server's disco#info.
    fn server_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Features for an account's disco#info.
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Answers a get/set. `Ok(payload)` becomes the result; `Err` an error reply.
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError>;
    /// Work that must reach the wire after the result (e.g. the roster push that follows
    /// a roster set's result, RFC 6121 §2.3.2). Called only after a successful `handle`.
    async fn after_result(&self, _ctx: &Arc<Context>, _target: &IqTarget, _iq: &Element) {}
}

/// A service owns a domain (e.g. `conference.example.org`): every stanza to that domain
/// or to a JID under it is handed over whole.
#[async_trait]
pub trait Service: Send + Sync {
    async fn handle(&self, ctx: &Arc<Context>, stanza: Element);
}

/// Whether a message goes on after a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Refused (the hook told the sender where the XEPs say so).
    Stop,
}

/// A local client's message on its way out: the sender's account and full JID (its
/// `from`, stamped) and its parsed `to`.
pub struct Outgoing<'a> {
    pub user: &'a BareJid,
    pub from: &'a FullJid,
    pub to: &'a Jid,
}

/// Told after a local account's roster item was saved (a roster set, or a subscription
/// state change), with the item as it was before, if any.
#[async_trait]
pub trait RosterObserver: Send + Sync {
    async fn roster_changed(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        before: Option<&crate::storage::RosterItem>,
        after: &crate::storage::RosterItem,
    );
}

/// Lists disco#items of an account (e.g. its PEP nodes) for a requester.
#[async_trait]
pub trait AccountItems: Send + Sync {
    /// `<item/>` elements (disco#items namespace) that `requester` (a bare JID; none for an anonymous one) may see.
    async fn items(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        requester: Option<&BareJid>,
    ) -> Vec<Element>;
}

/// Sees presence as the presence module handles it: a local session's available
/// presence before it is broadcast (and may amend it, e.g. XEP-0153's photo hash), and
/// available or unavailable presence that arrived for a local account (e.g. a remote
/// contact's capabilities).
#[async_trait]
pub trait PresenceObserver: Send + Sync {
    async fn outbound_available(
        &self,
        _ctx: &Arc<Context>,
        _user: &BareJid,
        _stanza: &mut Element,
    ) {
    }
    /// A local session of `user` became unavailable (its presence, or one made at the
    /// end of the session).
    async fn outbound_unavailable(&self, _ctx: &Arc<Context>, _user: &BareJid, _stanza: &Element) {}
    async fn inbound(&self, _ctx: &Arc<Context>, _user: &BareJid, _stanza: &Element) {}
}

/// Sees a local client's message before it is routed (`from` stamped, `to` set).
/// `notes` carries what one hook tells a later one about this message (e.g. the archive
/// position for carbons).
#[async_trait]
pub trait OutboundMessageHook: Send + Sync {
    /// The part that needs no waiting, run first: `Now::Done` when it did the whole job
    /// (or there is none), saving the boxed future `outbound` costs per call.
    fn outbound_now(
        &self,
        _ctx: &Arc<Context>,
        _msg: &Outgoing<'_>,
        _el: &mut Element,
        _notes: &mut Extensions,
    ) -> Now<Flow> {
        Now::Later
    }
    /// The rest, after `outbound_now` said `Now::Later`.
    async fn outbound(
        &self,
        _ctx: &Arc<Context>,
        _msg: &Outgoing<'_>,
        _el: &mut Element,
        _notes: &mut Extensions,
    ) -> Flow {
        Flow::Continue
    }
}

/// What the synchronous part of a message hook left to its async part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Now<T> {
    /// Done: the async part is not called.
    Done(T),
    /// The async part goes on.
    Later,
}

/// A message accepted for the local account `user`, from `from` (parsed once by the
/// router), for its full JID (`resource`) or for the account.
pub struct Incoming<'a> {
    pub from: &'a Jid,
    pub user: &'a BareJid,
    pub resource: Option<&'a str>,
}

/// Sees a message accepted for delivery to the local account `user`: to its full JID
/// (`resource`), to its available resources, or to offline storage.
#[async_trait]
pub trait InboundMessageHook: Send + Sync {
    /// As [`OutboundMessageHook::outbound_now`].
    fn inbound_now(&self, _ctx: &Arc<Context>, _msg: &Incoming<'_>, _el: &mut Element) -> Now<()> {
        Now::Later
    }
    /// The rest, after `inbound_now` said `Now::Later`.
    async fn inbound(&self, _ctx: &Arc<Context>, _msg: &Incoming<'_>, _el: &mut Element) {}
}

/// Told when a message was stored for an offline user (and the user was not notified of
/// it already).
#[async_trait]
pub trait OfflineStoredHook: Send + Sync {
    async fn stored(&self, ctx: &Arc<Context>, user: &BareJid, el: &Element);
}

/// Every routed stanza with a `from` passes route filters first, with both addresses
/// parsed. `false`: dropped (and
/// answered where the XEPs say so).
#[async_trait]
pub trait RouteFilter: Send + Sync {
    /// A cheap check on every routed stanza: `false` lets it pass without `may_route`
    /// (which costs an allocation per call).
    fn concerns(&self, _ctx: &Context, _from: &Jid, _to: &Jid, _stanza: &Element) -> bool {
        true
    }
    async fn may_route(&self, ctx: &Arc<Context>, from: &Jid, to: &Jid, stanza: &Element) -> bool;
}

/// A bound local session as modules see it: who it is, its extensions and stanzas to
/// write to its own client once the call returns.
pub struct SessionCtx<'a> {
    pub bare: &'a BareJid,
    pub resource: &'a str,
    pub full: &'a FullJid,
    pub conn_id: u64,
    pub ext: &'a mut Extensions,
    /// For this session's client, written (through the outbound filters) after the call.
    pub out: &'a mut Vec<Element>,
}

/// Presence (RFC 6121): what local sessions send and what arrives for local accounts.
#[async_trait]
pub trait PresenceHandler: Send + Sync {
    /// Presence addressed to the local account `user` (bare JID, or a full JID for
    /// subscriptions and probes).
    async fn inbound(&self, ctx: &Arc<Context>, user: &BareJid, stanza: Element);
    /// Presence sent by a local session (`from` stamped with its full JID).
    async fn outbound(&self, ctx: &Arc<Context>, session: &mut SessionCtx<'_>, stanza: Element);
}

/// Keeps messages for accounts with no available resource (XEP-0160).
#[async_trait]
pub trait OfflineHandler: Send + Sync {
    /// Stores `el` for `user`, or bounces it. `already_notified`: the user's devices were
    /// told about it already (no second notification). Returns whether it was stored.
    async fn store(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        el: Element,
        already_notified: bool,
    ) -> bool;
    /// Whether `store` would take `el` for `user` now; if not, the sender is told (the
    /// bounce `store` would send). Asked before a message is accepted for an account with
    /// no available resource, so that a message bounced for the quota is not archived
    /// either.
    async fn admits(&self, _ctx: &Arc<Context>, _user: &BareJid, _el: &Element) -> bool {
        true
    }
}

/// The attribute that carries a receipt request on a stanza until the session writes it.
/// A NUL cannot be in a parsed XML name, so no stanza from the wire has it; the session
/// removes it before the stanza is written, recorded or rerouted.
const RECEIPT_ATTR: &str = "\0receipt";

/// Asks the session that writes `el` to report it back in [`SessionEvent::Delivered`]
/// with `tag` once the client has it: acknowledged with XEP-0198, else written and
/// flushed to the socket. A tagged stanza that never got there is dropped when the session
/// ends (not rerouted): the module that sent it still holds it (offline storage).
pub fn request_receipt(el: &mut Element, tag: String) {
    el.set_attr(RECEIPT_ATTR, tag);
}

/// The receipt requested for `el`, removed from it.
pub fn take_receipt(el: &mut Element) -> Option<String> {
    el.remove_attr(RECEIPT_ATTR)
}

/// Whether `el` carries a receipt request.
pub fn has_receipt(el: &Element) -> bool {
    el.attr(RECEIPT_ATTR).is_some()
}

/// A moment in a local session's life.
pub enum SessionEvent<'a> {
    /// The resource was bound.
    Bound,
    /// The session sent available presence; `initial` the first since it was
    /// unavailable.
    Available { initial: bool, priority: i8 },
    /// The session sent unavailable presence.
    Unavailable,
    /// The connection vanished and the session waits for resumption (XEP-0198), holding
    /// what the client never acknowledged.
    Hibernated { unacked: &'a [&'a Element] },
    /// A stanza arrived for the hibernated session (and is kept for it).
    QueuedWhileHibernated { stanza: &'a Element },
    /// A new stream took the session over (XEP-0198 resumption).
    Resumed,
    /// The client has these stanzas: the tags of their [`request_receipt`]s, in the
    /// order the stanzas were written.
    Delivered { receipts: &'a [String] },
    /// The session is over and has left the session table; `replaced`: a newer session
    /// took its full JID (conflict), so it must stay silent.
    Ended { replaced: bool },
}

#[async_trait]
pub trait SessionEvents: Send + Sync {
    async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    );
}

/// Sees every stanza on its way to a local client. `hold`: the client cannot or would
/// rather not receive unimportant stanzas now (hibernated or inactive); a filter may keep
/// stanzas in the session's extensions and release them later. Whatever goes on is
/// pushed to `out`.
pub trait OutboundFilter: Send + Sync {
    fn filter(
        &self,
        ctx: &Context,
        ext: &mut Extensions,
        el: Element,
        hold: bool,
        out: &mut Vec<Element>,
    );
    /// Whether every stanza would pass unchanged right now (nothing held, nothing to
    /// hold): lets the writer skip the filter on its hot path.
    fn passes_through(&self, ext: &Extensions) -> bool;
}

/// Top-level elements other than stanzas on a bound client stream (e.g. XEP-0352's
/// `<active/>`), by namespace. Before binding they are ignored.
pub trait NonzaHandler: Send + Sync {
    fn handle(
        &self,
        ctx: &Context,
        ext: &mut Extensions,
        el: &Element,
        out: &mut Vec<Element>,
    ) -> Result<(), StreamErrorCondition>;
}

/// A session feature a client may switch on inside its XEP-0386 bind request (e.g.
/// `<enable xmlns='urn:xmpp:carbons:2'/>`), by the request's namespace, which is listed
/// in the bind feature's `<inline/>`.
pub trait BindInline: Send + Sync {
    /// Applies `request` to the new session before anything is written to its client;
    /// what to put into `<bound/>` in answer, if anything.
    fn enable(
        &self,
        ctx: &Context,
        session: &mut SessionCtx<'_>,
        request: &Element,
    ) -> Option<Element>;
}

/// What a module says about the account in XEP-0386's `<bound/>` when a Bind 2 login
/// binds a resource (XEP-0313: the archive's first and last message).
#[async_trait]
pub trait BoundInfo: Send + Sync {
    async fn bound_info(&self, ctx: &Arc<Context>, user: &BareJid) -> Option<Element>;
}

/// In a session's extensions when it was bound with XEP-0386 Bind 2: its client catches
/// up from the archive (XEP-0313), so what is archived is not delivered to it again.
pub struct BoundByBind2;

/// Disco nodes of the server (XEP-0030 §3.3, §4.2), e.g. XEP-0050's command list: what
/// `<query node='…'/>` to a vhost returns, for the requester.
#[async_trait]
pub trait ServerNodes: Send + Sync {
    fn handles(&self, node: &str) -> bool;
    /// The disco#info children (identities, features) of `node` of the vhost `domain`;
    /// `None`: no such node for this requester.
    async fn info(
        &self,
        ctx: &Arc<Context>,
        domain: &str,
        node: &str,
        requester: &Jid,
    ) -> Option<Vec<Element>>;
    /// The disco#items of `node` of the vhost `domain`; `None`: no such node for this
    /// requester.
    async fn items(
        &self,
        ctx: &Arc<Context>,
        domain: &str,
        node: &str,
        requester: &Jid,
    ) -> Option<Vec<Element>>;
}

/// A client stream before authentication, as a [`PreAuthHandler`] sees it.
pub struct PreAuthStream<'a> {
    /// The vhost the stream is for.
    pub domain: &'a str,
    /// The client's address, if the transport tells.
    pub peer_ip: Option<std::net::IpAddr>,
    /// The stream's own state for the modules (e.g. an accepted invitation token).
    pub ext: &'a mut Extensions,
}

/// Answers iq requests on a client stream before authentication (XEP-0077 in-band
/// registration, XEP-0445 tokens), by payload namespace. Offered only on encrypted
/// streams; an iq no handler takes ends the stream with `not-authorized` (RFC 6120 §7.1).
#[async_trait]
pub trait PreAuthHandler: Send + Sync {
    fn namespaces(&self) -> &'static [&'static str];
    /// Stream features to offer before authentication (with the SASL mechanisms).
    fn stream_features(&self, ctx: &Context, domain: &str) -> Vec<Element>;
    /// The reply to `iq` (a result or an error stanza), or a stream error that ends the
    /// stream (e.g. too many attempts).
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        stream: &mut PreAuthStream<'_>,
        iq: &Element,
    ) -> Result<Element, StreamErrorCondition>;
}

/// Told when an account was removed while the server runs, after its stores were cleared:
/// for what a module keeps outside the stores (files, caches).
#[async_trait]
pub trait AccountRemoved: Send + Sync {
    async fn account_removed(&self, ctx: &Arc<Context>, user: &BareJid);
}

/// A long-running task started with the server (e.g. archive expiry).
pub type Task = Box<
    dyn FnOnce(
            Arc<Context>,
            CancellationToken,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// One RFC/XEP implementation.
pub trait Module: Send + Sync {
    fn name(&self) -> &'static str;
    /// Registers everything the module handles.
    fn register(self: Box<Self>, r: &mut Registrar<'_>);
}

/// A disco#info identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    pub name: Option<String>,
}

/// What modules register; becomes the [`Registry`].
pub struct Registrar<'a> {
    config: &'a Config,
    module: &'static str,
    reg: Registry,
    errors: Vec<String>,
}

impl Registrar<'_> {
    pub fn config(&self) -> &Config {
        self.config
    }

    /// Dispatches iq requests for the handler's namespaces (to the server and to
    /// accounts) and advertises its disco features.
    pub fn iq(&mut self, handler: Arc<dyn IqHandler>) {
        for ns in handler.namespaces() {
            if self.reg.iq.insert(ns, handler.clone()).is_some() {
                self.errors
                    .push(format!("{}: namespace {ns} registered twice", self.module));
            }
        }
        self.reg
            .server_features
            .extend_from_slice(handler.server_features());
        self.reg
            .account_features
            .extend_from_slice(handler.account_features());
    }

    /// A disco feature of the server not tied to an iq namespace.
    pub fn server_feature(&mut self, var: &'static str) {
        self.reg.server_features.push(var);
    }

    pub fn server_identity(&mut self, identity: Identity) {
        self.reg.server_identities.push(identity);
    }

    /// An extended-information data form (XEP-0128) in the server's disco#info.
    pub fn server_info_form(&mut self, form: Element) {
        self.reg.server_forms.push(form);
    }

    /// An identity of every account's disco#info, besides `account/registered`.
    pub fn account_identity(&mut self, identity: Identity) {
        self.reg.account_identities.push(identity);
    }

    pub fn presence_observer(&mut self, observer: Arc<dyn PresenceObserver>) {
        self.reg.presence_observers.push(observer);
    }

    /// Contributes to every account's disco#items.
    pub fn account_items(&mut self, provider: Arc<dyn AccountItems>) {
        self.reg.account_items.push(provider);
    }

    /// Told of every saved roster item change of a local account.
    pub fn roster_observer(&mut self, observer: Arc<dyn RosterObserver>) {
        self.reg.roster_observers.push(observer);
    }

    /// A JID listed in the server's disco#items (its services).
    pub fn server_item(&mut self, jid: &str) {
        match crate::addr::parse_bare(jid) {
            Some(jid) => self.reg.server_items.push(jid),
            None => self
                .errors
                .push(format!("{}: disco item {jid:?} is not a JID", self.module)),
        }
    }

    /// Every stanza to `domain` (and JIDs under it) goes to `service`.
    pub fn service(&mut self, domain: &str, service: Arc<dyn Service>) {
        let Some(domain) = crate::addr::parse_domain(domain).map(DomainPart::into_inner) else {
            self.errors.push(format!(
                "{}: service domain {domain:?} is not a domain",
                self.module
            ));
            return;
        };
        if self.reg.services.insert(domain.clone(), service).is_some() {
            self.errors.push(format!(
                "{}: service {domain} registered twice",
                self.module
            ));
        }
    }

    /// Hooks run in ascending `order`, then registration order.
    pub fn outbound_message(&mut self, order: i32, hook: Arc<dyn OutboundMessageHook>) {
        self.reg.outbound_messages.push((order, hook));
    }

    pub fn inbound_message(&mut self, order: i32, hook: Arc<dyn InboundMessageHook>) {
        self.reg.inbound_messages.push((order, hook));
    }

    pub fn offline_stored(&mut self, hook: Arc<dyn OfflineStoredHook>) {
        self.reg.offline_stored.push(hook);
    }

    pub fn route_filter(&mut self, filter: Arc<dyn RouteFilter>) {
        self.reg.route_filters.push(filter);
    }

    pub fn presence(&mut self, handler: Arc<dyn PresenceHandler>) {
        if self.reg.presence.replace(handler).is_some() {
            self.errors
                .push(format!("{}: a second presence handler", self.module));
        }
    }

    pub fn offline(&mut self, handler: Arc<dyn OfflineHandler>) {
        if self.reg.offline.replace(handler).is_some() {
            self.errors
                .push(format!("{}: a second offline handler", self.module));
        }
    }

    pub fn session_events(&mut self, handler: Arc<dyn SessionEvents>) {
        self.reg.session_events.push(handler);
    }

    pub fn outbound_filter(&mut self, filter: Arc<dyn OutboundFilter>) {
        self.reg.outbound_filters.push(filter);
    }

    pub fn nonza(&mut self, ns: &'static str, handler: Arc<dyn NonzaHandler>) {
        if self.reg.nonzas.insert(ns, handler).is_some() {
            self.errors.push(format!(
                "{}: nonza namespace {ns} registered twice",
                self.module
            ));
        }
    }

    /// A session feature clients may switch on in a XEP-0386 bind request.
    pub fn bind_inline(&mut self, ns: &'static str, handler: Arc<dyn BindInline>) {
        if self.reg.bind_inline.insert(ns, handler).is_some() {
            self.errors.push(format!(
                "{}: bind inline namespace {ns} registered twice",
                self.module
            ));
        }
    }

    /// Adds to XEP-0386's `<bound/>`.
    pub fn bound_info(&mut self, handler: Arc<dyn BoundInfo>) {
        self.reg.bound_info.push(handler);
    }

    /// A stream feature offered to clients once they are authenticated.
    pub fn bound_stream_feature(&mut self, feature: Element) {
        self.reg.bound_stream_features.push(feature);
    }

    /// Disco nodes of every vhost.
    pub fn server_nodes(&mut self, nodes: Arc<dyn ServerNodes>) {
        self.reg.server_nodes.push(nodes);
    }

    /// Shared state registered so far (by this or an earlier module), e.g. a table other
    /// modules add to while registering.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.reg.shared.get::<T>()
    }

    /// Answers iqs of the handler's namespaces before authentication.
    pub fn pre_auth(&mut self, handler: Arc<dyn PreAuthHandler>) {
        for ns in handler.namespaces() {
            if self
                .reg
                .pre_auth
                .iter()
                .any(|h| h.namespaces().contains(ns))
            {
                self.errors.push(format!(
                    "{}: pre-auth namespace {ns} registered twice",
                    self.module
                ));
            }
        }
        self.reg.pre_auth.push(handler);
    }

    pub fn account_removed(&mut self, handler: Arc<dyn AccountRemoved>) {
        self.reg.account_removed.push(handler);
    }

    pub fn task(&mut self, task: Task) {
        self.reg
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// A per-session flag for marker type `T`, readable on every session of an account
    /// (see [`Registry::flag`]).
    pub fn session_flag<T: Any>(&mut self) -> SessionFlag {
        match self.reg.flags.allocate::<T>() {
            Some(f) => f,
            None => {
                self.errors
                    .push(format!("{}: more than 32 session flags", self.module));
                SessionFlag::NONE
            }
        }
    }

    /// State the module shares between tasks, found later with [`Registry::state`].
    pub fn shared<T: Any + Send + Sync>(&mut self, value: Arc<T>) {
        self.reg.shared.insert(value);
    }
}

/// Everything the modules registered, read-only after start.
#[derive(Default)]
pub struct Registry {
    iq: FastMap<&'static str, Arc<dyn IqHandler>>,
    services: HashMap<String, Arc<dyn Service>>,
    outbound_messages: Vec<(i32, Arc<dyn OutboundMessageHook>)>,
    inbound_messages: Vec<(i32, Arc<dyn InboundMessageHook>)>,
    offline_stored: Vec<Arc<dyn OfflineStoredHook>>,
    route_filters: Vec<Arc<dyn RouteFilter>>,
    presence: Option<Arc<dyn PresenceHandler>>,
    offline: Option<Arc<dyn OfflineHandler>>,
    session_events: Vec<Arc<dyn SessionEvents>>,
    outbound_filters: Vec<Arc<dyn OutboundFilter>>,
    nonzas: FastMap<&'static str, Arc<dyn NonzaHandler>>,
    bind_inline: FastMap<&'static str, Arc<dyn BindInline>>,
    bound_info: Vec<Arc<dyn BoundInfo>>,
    bound_stream_features: Vec<Element>,
    server_features: Vec<&'static str>,
    account_features: Vec<&'static str>,
    server_identities: Vec<Identity>,
    account_identities: Vec<Identity>,
    server_forms: Vec<Element>,
    account_items: Vec<Arc<dyn AccountItems>>,
    roster_observers: Vec<Arc<dyn RosterObserver>>,
    presence_observers: Vec<Arc<dyn PresenceObserver>>,
    server_items: Vec<BareJid>,
    tasks: std::sync::Mutex<Vec<Task>>,
    account_removed: Vec<Arc<dyn AccountRemoved>>,
    pre_auth: Vec<Arc<dyn PreAuthHandler>>,
    server_nodes: Vec<Arc<dyn ServerNodes>>,
    flags: FlagTable,
    shared: SharedState,
    responses: Responses,
}

impl Registry {
    /// Lets each module register; fails on conflicting registrations.
    pub fn build(config: &Config, modules: Vec<Box<dyn Module>>) -> Result<Registry, String> {
        let mut r = Registrar {
            config,
            module: "",
            reg: Registry::default(),
            errors: Vec::new(),
        };
        for m in modules {
            r.module = m.name();
            m.register(&mut r);
        }
        if !r.errors.is_empty() {
            return Err(r.errors.join("; "));
        }
        let mut reg = r.reg;
        // Stable sorts: equal orders keep registration order.
        reg.outbound_messages.sort_by_key(|(o, _)| *o);
        reg.inbound_messages.sort_by_key(|(o, _)| *o);
        for list in [&mut reg.server_features, &mut reg.account_features] {
            list.sort_unstable();
            list.dedup();
        }
        Ok(reg)
    }

    pub fn iq_handler(&self, ns: &str) -> Option<&Arc<dyn IqHandler>> {
        self.iq.get(ns)
    }

    /// The service owning `domain`, if any.
    pub fn service(&self, domain: &str) -> Option<&Arc<dyn Service>> {
        if self.services.is_empty() {
            return None;
        }
        self.services.get(domain)
    }

    pub fn has_services(&self) -> bool {
        !self.services.is_empty()
    }

    pub fn server_features(&self) -> &[&'static str] {
        &self.server_features
    }

    pub fn account_features(&self) -> &[&'static str] {
        &self.account_features
    }

    pub fn server_identities(&self) -> &[Identity] {
        &self.server_identities
    }

    /// The disco#items of the account `user` that `requester` may see.
    pub async fn account_items(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        requester: Option<&BareJid>,
    ) -> Vec<Element> {
        let mut out = Vec::new();
        for p in &self.account_items {
            out.extend(p.items(ctx, user, requester).await);
        }
        out
    }

    pub fn server_forms(&self) -> &[Element] {
        &self.server_forms
    }

    pub fn account_identities(&self) -> &[Identity] {
        &self.account_identities
    }

    /// Whether any module observes roster changes (else the item before a change need
    /// not be read).
    pub fn has_roster_observers(&self) -> bool {
        !self.roster_observers.is_empty()
    }

    pub async fn roster_changed(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        before: Option<&crate::storage::RosterItem>,
        after: &crate::storage::RosterItem,
    ) {
        for o in &self.roster_observers {
            o.roster_changed(ctx, user, before, after).await;
        }
    }

    /// A local session of `user` broadcasts this available presence (observers may
    /// amend it).
    pub async fn presence_outbound_available(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        stanza: &mut Element,
    ) {
        for o in &self.presence_observers {
            o.outbound_available(ctx, user, stanza).await;
        }
    }

    pub async fn presence_outbound_unavailable(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        stanza: &Element,
    ) {
        for o in &self.presence_observers {
            o.outbound_unavailable(ctx, user, stanza).await;
        }
    }

    /// Available or unavailable presence arrived for the local account `user`.
    pub async fn presence_inbound_seen(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        stanza: &Element,
    ) {
        for o in &self.presence_observers {
            o.inbound(ctx, user, stanza).await;
        }
    }

    pub fn server_items(&self) -> &[BareJid] {
        &self.server_items
    }

    pub fn bound_stream_features(&self) -> &[Element] {
        &self.bound_stream_features
    }

    /// The namespaces a XEP-0386 bind request may switch on, sorted.
    pub fn bind_inline_features(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.bind_inline.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn bind_inline(&self, ns: &str) -> Option<&Arc<dyn BindInline>> {
        self.bind_inline.get(ns)
    }

    /// What the modules put into XEP-0386's `<bound/>` for `user`.
    pub async fn bound_info(&self, ctx: &Arc<Context>, user: &BareJid) -> Vec<Element> {
        let mut out = Vec::new();
        for h in &self.bound_info {
            out.extend(h.bound_info(ctx, user).await);
        }
        out
    }

    pub fn has_nonza(&self, ns: &str) -> bool {
        self.nonzas.contains_key(ns)
    }

    /// The flag of marker type `T` (never set if no module registered it).
    pub fn flag<T: Any>(&self) -> SessionFlag {
        self.flags.get::<T>().unwrap_or(SessionFlag::NONE)
    }

    /// A module's shared state.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.shared.get::<T>()
    }

    /// Stream features the pre-auth handlers offer on an encrypted client stream to
    /// `domain` before authentication.
    pub fn pre_auth_features(&self, ctx: &Context, domain: &str) -> Vec<Element> {
        self.pre_auth
            .iter()
            .flat_map(|h| h.stream_features(ctx, domain))
            .collect()
    }

    /// The provider of the server's disco node `node`.
    pub fn server_node(&self, node: &str) -> Option<&Arc<dyn ServerNodes>> {
        self.server_nodes.iter().find(|n| n.handles(node))
    }

    /// The pre-auth handler of payload namespace `ns`.
    pub fn pre_auth_handler(&self, ns: &str) -> Option<&Arc<dyn PreAuthHandler>> {
        self.pre_auth.iter().find(|h| h.namespaces().contains(&ns))
    }

    /// The account `user` was removed (its stores are cleared already).
    pub async fn account_removed(&self, ctx: &Arc<Context>, user: &BareJid) {
        for h in &self.account_removed {
            h.account_removed(ctx, user).await;
        }
    }

    /// Starts the registered background tasks (once; later calls start nothing).
    pub fn start_tasks(
        &self,
        ctx: &Arc<Context>,
        shutdown: &CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            tracker.spawn(task(ctx.clone(), shutdown.clone()));
        }
    }

    /// Runs the outbound hooks on a local client's message. `false`: not to be routed.
    pub async fn outbound_message(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        el: &mut Element,
    ) -> bool {
        let mut notes = Extensions::default();
        for (_, hook) in &self.outbound_messages {
            let flow = match hook.outbound_now(ctx, msg, el, &mut notes) {
                Now::Done(flow) => flow,
                Now::Later => hook.outbound(ctx, msg, el, &mut notes).await,
            };
            if flow == Flow::Stop {
                return false;
            }
        }
        true
    }

    pub async fn inbound_message(&self, ctx: &Arc<Context>, msg: &Incoming<'_>, el: &mut Element) {
        for (_, hook) in &self.inbound_messages {
            if hook.inbound_now(ctx, msg, el) == Now::Later {
                hook.inbound(ctx, msg, el).await;
            }
        }
    }

    pub async fn offline_stored(&self, ctx: &Arc<Context>, user: &BareJid, el: &Element) {
        for hook in &self.offline_stored {
            hook.stored(ctx, user, el).await;
        }
    }

    pub async fn may_route(
        &self,
        ctx: &Arc<Context>,
        from: &Jid,
        to: &Jid,
        stanza: &Element,
    ) -> bool {
        for f in &self.route_filters {
            if f.concerns(ctx, from, to, stanza) && !f.may_route(ctx, from, to, stanza).await {
                return false;
            }
        }
        true
    }

    pub async fn presence_inbound(&self, ctx: &Arc<Context>, user: &BareJid, stanza: Element) {
        if let Some(p) = &self.presence {
            p.inbound(ctx, user, stanza).await;
        }
    }

    pub async fn presence_outbound(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        stanza: Element,
    ) {
        if let Some(p) = &self.presence {
            p.outbound(ctx, session, stanza).await;
        }
    }

    /// Stores a message for an offline user; without an offline module it bounces with
    /// `service-unavailable` (RFC 6121 §8.5.2.2.1).
    pub async fn store_offline(
        &self,
        ctx: &Arc<Context>,
        user: &BareJid,
        el: Element,
        already_notified: bool,
    ) -> bool {
        match &self.offline {
            Some(o) => o.store(ctx, user, el, already_notified).await,
            None => {
                crate::router::route_reply(ctx, &el, StanzaError::service_unavailable()).await;
                false
            }
        }
    }

    /// See [`OfflineHandler::admits`]; without an offline module nothing is admitted
    /// (`service-unavailable`, as [`Registry::store_offline`] would answer).
    pub async fn offline_admits(&self, ctx: &Arc<Context>, user: &BareJid, el: &Element) -> bool {
        match &self.offline {
            Some(o) => o.admits(ctx, user, el).await,
            None => {
                crate::router::route_reply(ctx, el, StanzaError::service_unavailable()).await;
                false
            }
        }
    }

    pub async fn session_event(
        &self,
        ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        for h in &self.session_events {
            h.session_event(ctx, session, event).await;
        }
    }

    /// Whether every outbound filter would pass any stanza unchanged right now.
    pub fn passes_through(&self, ext: &Extensions) -> bool {
        self.outbound_filters.iter().all(|f| f.passes_through(ext))
    }

    /// Passes one stanza for a local client through the outbound filters into `out`.
    pub fn filter_outbound(
        &self,
        ctx: &Context,
        ext: &mut Extensions,
        el: Element,
        hold: bool,
        out: &mut Vec<Element>,
    ) {
        let Some((first, rest)) = self.outbound_filters.split_first() else {
            out.push(el);
            return;
        };
        if rest.is_empty() {
            first.filter(ctx, ext, el, hold, out);
            return;
        }
        let mut stage = Vec::new();
        first.filter(ctx, ext, el, hold, &mut stage);
        for f in rest {
            let mut next = Vec::new();
            for el in stage {
                f.filter(ctx, ext, el, hold, &mut next);
            }
            stage = next;
        }
        out.append(&mut stage);
    }

    /// A nonza on a bound stream; `None` if no module handles its namespace.
    pub fn nonza(
        &self,
        ctx: &Context,
        ext: &mut Extensions,
        el: &Element,
        out: &mut Vec<Element>,
    ) -> Option<Result<(), StreamErrorCondition>> {
        let h = self.nonzas.get(el.ns.as_str())?;
        Some(h.handle(ctx, ext, el, out))
    }

    /// Remembers that a module sent the iq `id` to `to` and wants the answer.
    pub fn expect_response(
        &self,
        id: String,
        to: Jid,
        handler: Arc<dyn ResponseHandler>,
        context: Box<dyn Any + Send>,
    ) {
        self.responses.expect(id, to, handler, context);
    }

    /// An iq result or error addressed to the server or an account: handed to the module
    /// that sent the request, if one waits for it.
    pub async fn iq_response(&self, ctx: &Arc<Context>, iq: &Element) {
        let (Some(id), Some(from)) = (iq.attr("id"), iq.attr("from").and_then(crate::addr::parse))
        else {
            return;
        };
        if let Some((handler, context)) = self.responses.take(id, &from) {
            handler.response(ctx, iq, context).await;
        }
    }

    /// Requests still waiting for an answer.
    pub fn pending_responses(&self) -> usize {
        self.responses.len()
    }
}
