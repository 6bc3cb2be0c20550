//! XEP-0313 Message Archive Management for accounts, with XEP-0059 paging, XEP-0359
//! stanza ids and XEP-0441 preferences.
//!
//! Messages are archived by the message hooks, at the two points where the server accepts
//! them: when a local client sends one (outbound) and when one is accepted for delivery to
//! a local account (inbound, before live delivery or offline storage). A message between
//! two resources of one account is archived once, on the way out.

// Request parsers return the stanza error to answer with; it is built once per request,
// so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{IqHandler, IqTarget, internal, own_account};
use crate::addr::{self, BareJid, FullJid, Jid};
use crate::config::ArchivePolicy;
use crate::context::Context;
use crate::hashing::FastMap;
use crate::registry::{
    AccountRemoved, BoundInfo, Extensions, Flow, InboundMessageHook, Incoming, Module, Now,
    OutboundMessageHook, Outgoing, Registrar, RouteFilter,
};
use crate::router::deliver_to_session;
use crate::storage::{
    ArchiveDefault, ArchivePage, ArchivePos, ArchivePrefs, ArchiveQuery, ArchiveStamp,
    ArchivedMessage, NewArchived, SharedStanza, StorageError,
};
use crate::stream::{StanzaError, random_id};
use crate::xml::{Element, Node, ns};

pub const NS: &str = "urn:xmpp:mam:2";
/// before-id/after-id/ids, flipped pages, metadata (XEP-0313 §7).
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const SID: &str = "urn:xmpp:sid:0";
pub const RSM: &str = "http://jabber.org/protocol/rsm";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const DATA: &str = "jabber:x:data";
pub const HINTS: &str = "urn:xmpp:hints";
const XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";

/// Page size when the client gives no RSM `<max/>`.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page sent for one query, whatever the client asks.
pub const MAX_PAGE: usize = 250;
/// Expired messages deleted per storage call while pruning (one user at a time).
const PRUNE_BATCH: usize = 256;

/// Payloads of end-to-end encrypted messages that carry no body but are conversation.
const ENCRYPTED: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("encryption", "urn:xmpp:eme:0"),
];

/// The module. It also remembers the archive queries local clients send to other
/// archives (a chat room's, another server's), so that only their answers may carry
/// `<result/>` wrappers: a forged one would put words in someone's mouth.
#[derive(Default)]
pub struct Mam {
    queries: RemoteQueries,
    prefs: PrefsCache,
    sent: SentStanzas,
}

/// The stanzas that local clients' messages to local accounts were last archived as, by
/// sender, so that the recipient's copy shares the sender's buffer when it serializes to
/// the same bytes: the store then keeps the message once (see `SharedStanza`). The
/// recipient's hook runs right after the sender's, in the same task, so a few slots
/// suffice; one another sender took meanwhile only costs the sharing, never correctness
/// (the bytes are compared).
struct SentStanzas {
    slots: Box<[SentSlot]>,
    hasher: foldhash::quality::RandomState,
}

/// The hash of the sender's full JID, and the stanza.
type SentSlot = std::sync::Mutex<Option<(u64, SharedStanza)>>;

const SENT_SLOTS: usize = 64;
/// Larger stanzas are not kept for sharing: bounds what the slots hold to 512 KB.
const SENT_MAX_BYTES: usize = 8 * 1024;

impl Default for SentStanzas {
    fn default() -> Self {
        SentStanzas {
            slots: (0..SENT_SLOTS).map(|_| Default::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl SentStanzas {
    fn slot(&self, hash: u64) -> std::sync::MutexGuard<'_, Option<(u64, SharedStanza)>> {
        let slot = &self.slots[(hash % SENT_SLOTS as u64) as usize];
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sent(&self, from: &FullJid, stanza: &SharedStanza) {
        if stanza.as_str().len() <= SENT_MAX_BYTES {
            let hash = self.hasher.hash_one(from.as_str());
            *self.slot(hash) = Some((hash, stanza.clone()));
        }
    }

    /// `serialized` as the recipient's copy of a message from `from`: the sender's
    /// stanza when it is the same text.
    fn received(&self, from: &Jid, serialized: &str) -> SharedStanza {
        let hash = self.hasher.hash_one(from.as_str());
        let mut slot = self.slot(hash);
        if slot.as_ref().is_some_and(|(h, _)| *h == hash)
            && let Some((_, sent)) = slot.take()
            && sent.as_str() == serialized
        {
            return sent;
        }
        serialized.into()
    }
}

/// The archive preferences of the users messages were lately accepted for: each message
/// asks for those of both ends, archive on or off, and the store's answer cost two boxed
/// futures and a tree lookup each time. Only this module writes preferences, and it hears
/// of account removal (which drops them), so it keeps the cache right itself.
#[derive(Default)]
struct PrefsCache {
    inner: std::sync::Mutex<CachedPrefs>,
}

#[derive(Default)]
struct CachedPrefs {
    /// `None`: the user has set none (the configured default applies).
    map: FastMap<BareJid, Option<Arc<ArchivePrefs>>>,
    /// Bumped by every change, so that a load which raced with one is not kept.
    epoch: u64,
}

/// Users whose preferences are kept; past this the cache starts again empty.
const MAX_CACHED_PREFS: usize = 10_000;

impl PrefsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedPrefs> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored preferences of `user` (`None`: none set), from the store on a miss.
    async fn get(
        &self,
        ctx: &Context,
        user: &BareJid,
    ) -> Result<Option<Arc<ArchivePrefs>>, StorageError> {
        let epoch = {
            let cache = self.lock();
            if let Some(prefs) = cache.map.get(user) {
                return Ok(prefs.clone());
            }
            cache.epoch
        };
        let prefs = ctx.storage.archive.prefs(user).await?.map(Arc::new);
        let mut cache = self.lock();
        if cache.epoch == epoch {
            if cache.map.len() >= MAX_CACHED_PREFS {
                cache.map.clear();
            }
            cache.map.insert(user.clone(), prefs.clone());
        }
        Ok(prefs)
    }

    /// What `user`'s cached preferences say about a message with `with`; `None` when they
    /// are not cached or the answer depends on the roster.
    fn decide_cached(&self, ctx: &Context, user: &BareJid, with: &Jid) -> Option<bool> {
        let cache = self.lock();
        let stored = cache.map.get(user)?;
        decide(ctx, stored.as_deref(), with)
    }

    /// Forgets `user`'s preferences after they changed in the store (or may have).
    fn changed(&self, user: &BareJid) {
        let mut cache = self.lock();
        cache.epoch += 1;
        cache.map.remove(user);
    }
}

/// Outstanding queries by (client full JID, archive bare JID).
#[derive(Default)]
struct RemoteQueries {
    map: std::sync::Mutex<HashMap<(FullJid, BareJid), Vec<SentQuery>>>,
}

struct SentQuery {
    queryid: String,
    iq_id: String,
    sent: Instant,
}

/// A query's results are accepted this long, and this many queries are remembered.
const QUERY_TTL: Duration = Duration::from_secs(300);
const MAX_QUERIES: usize = 10_000;

impl RemoteQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(FullJid, BareJid), Vec<SentQuery>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self, client: &FullJid, archive: &BareJid, queryid: &str, iq_id: &str) {
        let mut map = self.lock();
        if map.len() >= MAX_QUERIES {
            map.retain(|_, list| {
                list.retain(|q| q.sent.elapsed() < QUERY_TTL);
                !list.is_empty()
            });
        }
        if map.len() >= MAX_QUERIES {
            return;
        }
        let list = map.entry((client.clone(), archive.clone())).or_default();
        if list.len() < 16 {
            list.push(SentQuery {
                queryid: queryid.to_string(),
                iq_id: iq_id.to_string(),
                sent: Instant::now(),
            });
        }
    }

    fn expects(&self, client: &FullJid, archive: &BareJid, queryid: &str) -> bool {
        let map = self.lock();
        map.get(&(client.clone(), archive.clone()))
            .is_some_and(|l| {
                l.iter()
                    .any(|q| q.queryid == queryid && q.sent.elapsed() < QUERY_TTL)
            })
    }

    fn answered(&self, client: &FullJid, archive: &BareJid, iq_id: &str) {
        let mut map = self.lock();
        let key = (client.clone(), archive.clone());
        if let Some(list) = map.get_mut(&key) {
            list.retain(|q| q.iq_id != iq_id);
            if list.is_empty() {
                map.remove(&key);
            }
        }
    }
}

pub(crate) use crate::datetime::now_micros;

/// XEP-0082 DateTime with microseconds, UTC.
pub fn stamp(micros: u64) -> String {
    let nanos = i128::from(micros) * 1000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// Parses an XEP-0082 DateTime into µs since the epoch (earlier instants clamp to 0).
pub fn parse_stamp(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(u64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0))
}

/// XEP-0313 §6.1.1 and XEP-0334: messages that hold conversation, not state.
pub fn archivable(el: &Element) -> bool {
    if matches!(el.attr("type"), Some("groupchat" | "error" | "headline")) {
        return false;
    }
    if el.has_child("no-store", HINTS) || el.has_child("no-permanent-store", HINTS) {
        return false;
    }
    el.has_child("body", ns::CLIENT)
        || el.has_child("store", HINTS)
        || ENCRYPTED.iter().any(|(name, ns)| el.has_child(name, ns))
}

/// The same rule for a chat room's archive, where groupchat messages are the
/// conversation.
pub fn archivable_groupchat(el: &Element) -> bool {
    if el.has_child("no-store", HINTS) || el.has_child("no-permanent-store", HINTS) {
        return false;
    }
    el.has_child("body", ns::CLIENT)
        || el.has_child("store", HINTS)
        || ENCRYPTED.iter().any(|(name, ns)| el.has_child(name, ns))
}

/// Removes `<stanza-id/>` elements claiming to come from `user`'s archive: only this
/// server may set them (XEP-0359 §4).
pub fn strip_own_stanza_ids(user: &BareJid, el: &mut Element) {
    el.children.retain(|n| match n {
        Node::Element(e) if e.is("stanza-id", SID) => {
            let by = e.attr("by").and_then(addr::parse);
            by.is_none_or(|by| by != *user)
        }
        _ => true,
    });
}

pub fn stanza_id(user: &BareJid, id: &str) -> Element {
    Element::new("stanza-id", SID)
        .with_attr("by", user.as_str())
        .with_attr("id", id)
}

/// Whether `el` carries the stanza-id of `user`'s archive (it was archived for them).
pub fn has_stanza_id(el: &Element, user: &BareJid) -> bool {
    el.elements()
        .any(|e| e.is("stanza-id", SID) && e.attr("by") == Some(user.as_str()))
}

/// Adds this archive's stanza-id unless the message already carries it.
pub fn add_stanza_id(el: &mut Element, user: &BareJid, id: &str) {
    if !has_stanza_id(el, user) {
        el.push_child(stanza_id(user, id));
    }
}

fn default_prefs(ctx: &Context) -> ArchivePrefs {
    ArchivePrefs {
        default: match ctx.config.archive.default_policy {
            ArchivePolicy::Always => ArchiveDefault::Always,
            ArchivePolicy::Roster => ArchiveDefault::Roster,
            ArchivePolicy::Never => ArchiveDefault::Never,
        },
        always: Vec::new(),
        never: Vec::new(),
    }
}

/// The preferences in force for `user`, read from the store (requests of the user).
async fn load_prefs(ctx: &Arc<Context>, user: &BareJid) -> Result<ArchivePrefs, StorageError> {
    Ok(ctx
        .storage
        .archive
        .prefs(user)
        .await?
        .unwrap_or_else(|| default_prefs(ctx)))
}

/// XEP-0441: whether the user's preferences let a message with `with` be archived.
async fn allowed(cache: &PrefsCache, ctx: &Arc<Context>, user: &BareJid, with: &Jid) -> bool {
    let stored = match cache.get(ctx, user).await {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "loading archive preferences failed");
            None
        }
    };
    match decide(ctx, stored.as_deref(), with) {
        Some(allowed) => allowed,
        None => {
            let bare = with.to_bare();
            matches!(ctx.storage.roster.item(user, &bare).await, Ok(Some(_)))
        }
    }
}

/// What `stored` preferences (`None`: the configured default) say about archiving a
/// message with `with`; `None` when that depends on the user's roster.
fn decide(ctx: &Context, stored: Option<&ArchivePrefs>, with: &Jid) -> Option<bool> {
    let default;
    let prefs = match stored {
        Some(p) => p,
        None => {
            default = default_prefs(ctx);
            &default
        }
    };
    // Most users list nobody: building the bare JID (a formatted string) for them was a
    // twentieth of the server's instructions per message, archive on or off.
    if !prefs.never.is_empty() || !prefs.always.is_empty() {
        let bare = with.to_bare();
        let listed = |list: &[String]| {
            list.iter()
                .any(|j| j == with.as_str() || j == bare.as_str())
        };
        if listed(&prefs.never) {
            return Some(false);
        }
        if listed(&prefs.always) {
            return Some(true);
        }
    }
    match prefs.default {
        ArchiveDefault::Always => Some(true),
        ArchiveDefault::Never => Some(false),
        ArchiveDefault::Roster => None,
    }
}

/// The first position queries may see: messages older than the retention period are gone
/// for the protocol even before they are deleted.
fn retention_floor(ctx: &Context) -> ArchivePos {
    match ctx.config.archive.retention_days {
        0 => ArchivePos::MIN,
        days => ArchivePos {
            micros: now_micros().saturating_sub(u64::from(days) * 86_400 * 1_000_000),
            seq: 0,
        },
    }
}

async fn archive(
    ctx: &Arc<Context>,
    user: &BareJid,
    with: &Jid,
    stanza: SharedStanza,
) -> Option<ArchiveStamp> {
    let msg = NewArchived {
        with: with.as_str(),
        stanza,
        micros: now_micros(),
    };
    // Durable by the sender's next XEP-0198 ack (the c2s session waits for it there),
    // so one flush covers the messages of many sessions instead of one per hop.
    match ctx.storage.archive.append_deferred(user, msg).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "archiving a message failed");
            None
        }
    }
}

/// With a retention period, deletes expired messages from every account's archive every
/// `archive.prune_interval_secs`, until `shutdown`. Queries hide expired messages at once
/// (`retention_floor`); this only gives the space back, away from the message path.
async fn run_pruner(ctx: Arc<Context>, shutdown: CancellationToken) {
    if ctx.config.archive.retention_days == 0 {
        return;
    }
    let interval = Duration::from_secs(ctx.config.archive.prune_interval_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let removed = prune_expired(&ctx, &shutdown).await;
        debug!(removed, "archive pruning pass done");
    }
}

/// One pruning pass over all accounts; returns how many messages went.
async fn prune_expired(ctx: &Arc<Context>, shutdown: &CancellationToken) -> usize {
    let users = match ctx.storage.accounts.list().await {
        Ok(users) => users,
        Err(e) => {
            warn!(error = %e, "listing accounts for archive pruning failed");
            return 0;
        }
    };
    let mut removed = 0;
    for user in users {
        loop {
            if shutdown.is_cancelled() {
                return removed;
            }
            let floor = retention_floor(ctx);
            match ctx
                .storage
                .archive
                .remove_before(&user, floor.micros, PRUNE_BATCH)
                .await
            {
                Ok(n) => {
                    removed += n;
                    if n < PRUNE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, %user, "pruning the archive failed");
                    break;
                }
            }
            // Other work (routing) goes first between batches.
            tokio::task::yield_now().await;
        }
    }
    removed
}

/// Where archiving acts among the message hooks: after blocking, before carbons.
const HOOK_ORDER: i32 = 20;

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.iq(me.clone());
        r.outbound_message(HOOK_ORDER, me.clone());
        r.inbound_message(HOOK_ORDER, me.clone());
        r.account_removed(me.clone());
        r.bound_info(me.clone());
        r.route_filter(me);
        r.task(Box::new(|ctx, shutdown| {
            Box::pin(run_pruner(ctx, shutdown))
        }));
    }
}

#[async_trait]
impl OutboundMessageHook for Mam {
    /// Only this server may say where a message sits in the user's archive. Messages that
    /// are certainly not archived end here.
    fn outbound_now(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        el: &mut Element,
        _: &mut Extensions,
    ) -> Now<Flow> {
        strip_own_stanza_ids(msg.user, el);
        if self.may_archive(ctx, msg.user, msg.to, el) {
            Now::Later
        } else {
            Now::Done(Flow::Continue)
        }
    }

    /// Archives a message a local client sends, in the sender's archive with the
    /// recipient as `with`; the position goes into `notes` for carbons.
    async fn outbound(
        &self,
        ctx: &Arc<Context>,
        msg: &Outgoing<'_>,
        el: &mut Element,
        notes: &mut Extensions,
    ) -> Flow {
        // `archivable` was checked by the synchronous part.
        if !allowed(&self.prefs, ctx, msg.user, msg.to).await {
            return Flow::Continue;
        }
        let stanza = SharedStanza::of(el);
        if let Some(archived) = archive(ctx, msg.user, msg.to, stanza.clone()).await {
            if of_account(msg.to, msg.user) {
                // To another resource of the same account: archived once, and that
                // resource may see where (the inbound side skips archiving for it).
                add_stanza_id(el, msg.user, &archived.id);
            } else if ctx.is_local_domain(msg.to.domain().as_str()) {
                self.sent.sent(msg.from, &stanza);
            }
            notes.insert(archived);
        }
        Flow::Continue
    }
}

impl Mam {
    /// `false` when `el` is certainly not archived for `user`, as far as can be told
    /// without waiting (preferences not cached, or a roster to look at: maybe).
    fn may_archive(&self, ctx: &Context, user: &BareJid, with: &Jid, el: &Element) -> bool {
        archivable(el) && self.prefs.decide_cached(ctx, user, with) != Some(false)
    }

    /// Keeps `<result/>` wrappers only in answers to a query the addressed client sent to
    /// the sender's archive; the user's own archive answers straight to the session.
    fn strip_forged_results(
        &self,
        user: &BareJid,
        resource: Option<&str>,
        from: &Jid,
        el: &mut Element,
    ) {
        let results: Vec<String> = el
            .elements()
            .filter(|c| c.is("result", NS))
            .map(|c| c.attr("queryid").unwrap_or_default().to_string())
            .collect();
        if results.is_empty() {
            return;
        }
        let client = resource.and_then(|r| user.with_resource_str(r).ok());
        let archive = from.to_bare();
        let expected = client.is_some_and(|client| {
            results
                .iter()
                .all(|q| self.queries.expects(&client, &archive, q))
        });
        if !expected {
            debug!(%user, %from, "unsolicited archive results removed");
            el.remove_children("result", NS);
        }
    }
}

#[async_trait]
impl RouteFilter for Mam {
    fn concerns(&self, _: &Context, _: &Jid, _: &Jid, stanza: &Element) -> bool {
        stanza.name == "iq"
    }
    /// Notes queries local clients send to other archives, and their final answers.
    async fn may_route(&self, ctx: &Arc<Context>, from: &Jid, to: &Jid, stanza: &Element) -> bool {
        if stanza.name != "iq" {
            return true;
        }
        let Some(id) = stanza.attr("id") else {
            return true;
        };
        match stanza.attr("type") {
            Some("set") => {
                let query = stanza.first_element().filter(|q| q.is("query", NS));
                if let Some(query) = query
                    && let Ok(client) = from.try_as_full()
                    && ctx.is_local_domain(from.domain().as_str())
                    && !of_account(to, &from.to_bare())
                {
                    let queryid = query.attr("queryid").unwrap_or_default();
                    self.queries.sent(client, &to.to_bare(), queryid, id);
                }
            }
            Some("result" | "error") => {
                if let Ok(client) = to.try_as_full() {
                    self.queries.answered(client, &from.to_bare(), id);
                }
            }
            _ => {}
        }
        true
    }
}

#[async_trait]
impl AccountRemoved for Mam {
    /// The store dropped the account's preferences; so does the cache.
    async fn account_removed(&self, _ctx: &Arc<Context>, user: &BareJid) {
        self.prefs.changed(user);
    }
}

#[async_trait]
impl InboundMessageHook for Mam {
    /// Drops what only this server may say; messages certainly not archived end here.
    fn inbound_now(&self, ctx: &Arc<Context>, msg: &Incoming<'_>, el: &mut Element) -> Now<()> {
        let (user, from) = (msg.user, msg.from);
        self.strip_forged_results(user, msg.resource, from, el);
        if of_account(from, user) {
            return Now::Done(());
        }
        strip_own_stanza_ids(user, el);
        if self.may_archive(ctx, user, from, el) {
            Now::Later
        } else {
            Now::Done(())
        }
    }

    /// Archives a message accepted for delivery to `user` and stamps its stanza-id.
    async fn inbound(&self, ctx: &Arc<Context>, msg: &Incoming<'_>, el: &mut Element) {
        let (user, from) = (msg.user, msg.from);
        // `archivable` was checked by the synchronous part.
        if !allowed(&self.prefs, ctx, user, from).await {
            return;
        }
        let stanza = el.with_stanza_text(|text| self.sent.received(from, text));
        if let Some(stamp) = archive(ctx, user, from, stanza).await {
            el.push_child(stanza_id(user, &stamp.id));
        }
    }
}

/// XEP-0386 §3.2: the archive's state at binding, so a client knows where to catch up.
#[async_trait]
impl BoundInfo for Mam {
    async fn bound_info(&self, ctx: &Arc<Context>, user: &BareJid) -> Option<Element> {
        metadata(ctx, user).await.ok()
    }
}

/// Whether `jid` is `user` or one of its resources.
fn of_account(jid: &Jid, user: &BareJid) -> bool {
    jid.node() == user.node() && jid.domain() == user.domain()
}

#[async_trait]
impl IqHandler for Mam {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }
    fn account_features(&self) -> &'static [&'static str] {
        // SID: archived messages carry <stanza-id by='the account'/> (XEP-0359 §4).
        &[NS, NS_EXTENDED, SID]
    }
    async fn handle(
        &self,
        ctx: &Arc<Context>,
        target: &IqTarget,
        iq: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        // XEP-0313 §9.1: an archive is its owner's only.
        let user = own_account(target, iq)?;
        let Some(payload) = iq.first_element() else {
            return Err(StanzaError::bad_request());
        };
        match (iq.attr("type"), payload.name.as_str()) {
            (Some("get"), "query") => Ok(Some(form())),
            (Some("set"), "query") => query(ctx, user, iq, payload).await,
            (Some("get"), "prefs") => {
                let prefs = load_prefs(ctx, user).await.map_err(internal)?;
                Ok(Some(prefs_element(&prefs)))
            }
            (Some("set"), "prefs") => {
                let prefs = parse_prefs(payload, load_prefs(ctx, user).await.map_err(internal)?)?;
                let stored = ctx.storage.archive.set_prefs(user, &prefs).await;
                // Failed too: the store may hold either version.
                self.prefs.changed(user);
                stored.map_err(internal)?;
                Ok(Some(prefs_element(&prefs)))
            }
            (Some("get"), "metadata") => metadata(ctx, user).await.map(Some),
            _ => Err(StanzaError::bad_request()),
        }
    }
}

fn field(var: &str, kind: &str) -> Element {
    Element::new("field", DATA)
        .with_attr("type", kind)
        .with_attr("var", var)
}

/// XEP-0313 §4.1.5: the query form.
pub(crate) fn form() -> Element {
    let x = Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden").with_child(Element::new("value", DATA).with_text(NS)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            field("ids", "list-multi").with_child(
                Element::new("validate", XDATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", XDATA_VALIDATE)),
            ),
        );
    Element::new("query", NS).with_child(x)
}

/// A parsed query: form fields and RSM, before any id is looked up.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    query_id: Option<String>,
    with: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    after_id: Option<String>,
    before_id: Option<String>,
    ids: Option<Vec<String>>,
    max: Option<usize>,
    rsm_after: Option<String>,
    /// `Some(None)`: an empty `<before/>`, the last page.
    rsm_before: Option<Option<String>>,
    flip: bool,
}

impl Request {
    /// Whether the result set is the whole archive (RSM count and index are then cheap).
    fn unfiltered(&self) -> bool {
        self.with.is_none()
            && self.start.is_none()
            && self.end.is_none()
            && self.after_id.is_none()
            && self.before_id.is_none()
            && self.ids.is_none()
    }
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn parse_request(query: &Element) -> Result<Request, StanzaError> {
    let mut req = Request {
        query_id: query.attr("queryid").map(str::to_string),
        ..Request::default()
    };
    for child in query.elements() {
        match (child.name.as_str(), child.ns.as_str()) {
            ("x", DATA) => parse_form(child, &mut req)?,
            ("set", RSM) => parse_rsm(child, &mut req)?,
            ("flip-page", NS) => req.flip = true,
            _ => return Err(StanzaError::bad_request().with_text("unexpected query element")),
        }
    }
    Ok(req)
}

fn parse_form(x: &Element, req: &mut Request) -> Result<(), StanzaError> {
    if x.attr("type").is_some_and(|t| t != "submit") {
        return Err(StanzaError::bad_request().with_text("the form must be submitted"));
    }
    for f in x.elements().filter(|e| e.is("field", DATA)) {
        let values: Vec<String> = f
            .elements()
            .filter(|v| v.is("value", DATA))
            .map(Element::text)
            .collect();
        let single = || values.first().cloned().and_then(non_empty);
        let bad = |what: &str| StanzaError::bad_request().with_text(format!("invalid {what}"));
        match f.attr("var").unwrap_or("") {
            "FORM_TYPE" => {
                if single().as_deref() != Some(NS) {
                    return Err(bad("FORM_TYPE"));
                }
            }
            "with" => {
                req.with = match single() {
                    Some(j) => Some(
                        addr::parse(&j)
                            .ok_or_else(StanzaError::jid_malformed)?
                            .into_inner(),
                    ),
                    None => None,
                }
            }
            "start" => {
                req.start = match single() {
                    Some(s) => Some(parse_stamp(&s).ok_or_else(|| bad("start"))?),
                    None => None,
                }
            }
            "end" => {
                req.end = match single() {
                    Some(s) => Some(parse_stamp(&s).ok_or_else(|| bad("end"))?),
                    None => None,
                }
            }
            "after-id" => req.after_id = single(),
            "before-id" => req.before_id = single(),
            "ids" => {
                let ids: Vec<String> = values.into_iter().filter_map(non_empty).collect();
                if ids.len() > MAX_PAGE {
                    return Err(StanzaError::bad_request().with_text("too many ids"));
                }
                req.ids = Some(ids);
            }
            // §4.1.5: unknown fields are an error, not silently ignored.
            other => {
                return Err(StanzaError::feature_not_implemented()
                    .with_text(format!("unsupported field '{other}'")));
            }
        }
    }
    Ok(())
}

fn parse_rsm(set: &Element, req: &mut Request) -> Result<(), StanzaError> {
    for e in set.elements() {
        match e.name.as_str() {
            "max" => {
                let max = e
                    .text()
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| StanzaError::bad_request().with_text("invalid RSM max"))?;
                req.max = Some(max);
            }
            "after" => {
                req.rsm_after = Some(
                    non_empty(e.text())
                        .ok_or_else(|| StanzaError::bad_request().with_text("empty RSM after"))?,
                )
            }
            "before" => req.rsm_before = Some(non_empty(e.text())),
            "index" => {
                return Err(StanzaError::feature_not_implemented()
                    .with_text("paging by index is not supported; use after/before"));
            }
            _ => return Err(StanzaError::bad_request().with_text("unexpected RSM element")),
        }
    }
    Ok(())
}

async fn position(ctx: &Arc<Context>, user: &BareJid, id: &str) -> Result<ArchivePos, StanzaError> {
    ctx.storage
        .archive
        .position(user, id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            StanzaError::item_not_found().with_text(format!("no message '{id}' in the archive"))
        })
}

async fn query(
    ctx: &Arc<Context>,
    user: &BareJid,
    iq: &Element,
    payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    // The results go to the querying resource, ahead of the iq result.
    let Some(to) = iq.attr("from").and_then(addr::parse_full) else {
        return Err(StanzaError::bad_request());
    };
    let Some((tx, control)) = ctx.sessions.sender(user, to.resource().as_str()) else {
        return Err(StanzaError::service_unavailable());
    };
    let (results, fin) = answer_query(ctx, user, &to, payload).await?;
    for result in results {
        if !deliver_to_session(&tx, &control, result) {
            return Err(StanzaError::resource_constraint());
        }
    }
    Ok(Some(fin))
}

/// Answers a query on the archive `user` (an account, or a chat room) for `to`: the
/// result messages, in the order to send them, and the `<fin/>` for the iq result.
pub(crate) async fn answer_query(
    ctx: &Arc<Context>,
    user: &BareJid,
    to: &Jid,
    payload: &Element,
) -> Result<(Vec<Element>, Element), StanzaError> {
    let req = parse_request(payload)?;
    let mut q = ArchiveQuery {
        with: req.with.clone(),
        from: retention_floor(ctx),
        to: ArchivePos::MAX,
        max: req.max.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
        from_end: req.rsm_before.is_some(),
    };
    if let Some(start) = req.start {
        q.from = q.from.max(ArchivePos {
            micros: start,
            seq: 0,
        });
    }
    if let Some(end) = req.end {
        q.to = q.to.min(ArchivePos {
            micros: end,
            seq: u64::MAX,
        });
    }
    for id in [&req.after_id, &req.rsm_after].into_iter().flatten() {
        q.from = q.from.max(position(ctx, user, id).await?.next());
    }
    for id in [&req.before_id, &req.rsm_before.clone().flatten()]
        .into_iter()
        .flatten()
    {
        q.to = q.to.min(position(ctx, user, id).await?.prev());
    }
    let page = match &req.ids {
        Some(ids) => by_ids(ctx, user, ids, &q).await?,
        None => ctx
            .storage
            .archive
            .query(user, &q)
            .await
            .map_err(internal)?,
    };

    let mut sent = page.messages.iter().collect::<Vec<_>>();
    if req.flip {
        sent.reverse();
    }
    let results = sent
        .into_iter()
        .filter_map(|m| result_message(user, to.as_str(), req.query_id.as_deref(), m))
        .collect();

    let mut set = Element::new("set", RSM);
    let count = if req.unfiltered() && ctx.config.archive.retention_days == 0 {
        Some(ctx.storage.archive.count(user).await.map_err(internal)?)
    } else {
        None
    };
    if let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) {
        let mut first_el = Element::new("first", RSM).with_text(first.id.clone());
        let index = match (count, &req.rsm_after, &req.rsm_before) {
            (Some(_), None, None) => Some(0),
            (Some(c), None, Some(None)) => c.checked_sub(page.messages.len() as u64),
            _ => None,
        };
        if let Some(index) = index {
            first_el.set_attr("index", index.to_string());
        }
        set.push_child(first_el);
        set.push_child(Element::new("last", RSM).with_text(last.id.clone()));
    }
    if let Some(count) = count {
        set.push_child(Element::new("count", RSM).with_text(count.to_string()));
    }
    let mut fin = Element::new("fin", NS).with_child(set);
    if !page.more {
        fin.set_attr("complete", "true");
    }
    Ok((results, fin))
}

/// The `ids` field: those messages, if they also match the rest of the query, in archive
/// order. Every id must exist (§4.1.3).
async fn by_ids(
    ctx: &Arc<Context>,
    user: &BareJid,
    ids: &[String],
    q: &ArchiveQuery,
) -> Result<ArchivePage, StanzaError> {
    let mut found: Vec<ArchivedMessage> = Vec::with_capacity(ids.len());
    for id in ids {
        let m = ctx
            .storage
            .archive
            .get(user, id)
            .await
            .map_err(internal)?
            .ok_or_else(StanzaError::item_not_found)?;
        let with_ok = q
            .with
            .as_deref()
            .is_none_or(|w| crate::storage::with_matches(w, &m.with));
        if with_ok && m.pos >= q.from && m.pos <= q.to {
            found.push(m);
        }
    }
    found.sort_by_key(|m| m.pos);
    found.dedup_by_key(|m| m.pos);
    let more = found.len() > q.max;
    if q.from_end {
        found.drain(..found.len().saturating_sub(q.max));
    } else {
        found.truncate(q.max);
    }
    Ok(ArchivePage {
        messages: found,
        more,
    })
}

/// `<message><result><forwarded><delay/><message/></forwarded></result></message>`.
fn result_message(
    user: &BareJid,
    to: &str,
    query_id: Option<&str>,
    m: &ArchivedMessage,
) -> Option<Element> {
    let original = match crate::xml::parse_stanza(&m.stanza) {
        Ok(el) => el,
        Err(e) => {
            warn!(error = %e, id = %m.id, "archived message unreadable; skipped");
            return None;
        }
    };
    let forwarded = Element::new("forwarded", FORWARD)
        .with_child(
            // XEP-0313 §4.1.2: the stamp alone (Prosody's scansion scripts match it strictly).
            Element::new("delay", ns::DELAY).with_attr("stamp", stamp(m.pos.micros)),
        )
        .with_child(original);
    let mut result = Element::new("result", NS).with_attr("id", m.id.clone());
    if let Some(qid) = query_id {
        result.set_attr("queryid", qid);
    }
    result.push_child(forwarded);
    Some(
        Element::new("message", ns::CLIENT)
            .with_attr("from", user.as_str())
            .with_attr("to", to)
            .with_attr("id", random_id())
            .with_child(result),
    )
}

/// Archive metadata (§5): first and last message.
async fn metadata(ctx: &Arc<Context>, user: &BareJid) -> Result<Element, StanzaError> {
    let mut out = Element::new("metadata", NS);
    let mut q = ArchiveQuery {
        from: retention_floor(ctx),
        max: 1,
        ..ArchiveQuery::default()
    };
    let first = ctx
        .storage
        .archive
        .query(user, &q)
        .await
        .map_err(internal)?;
    q.from_end = true;
    let last = ctx
        .storage
        .archive
        .query(user, &q)
        .await
        .map_err(internal)?;
    if let (Some(f), Some(l)) = (first.messages.first(), last.messages.first()) {
        for (name, m) in [("start", f), ("end", l)] {
            out.push_child(
                Element::new(name, NS)
                    .with_attr("id", m.id.clone())
                    .with_attr("timestamp", stamp(m.pos.micros)),
            );
        }
    }
    Ok(out)
}

fn prefs_element(prefs: &ArchivePrefs) -> Element {
    let default = match prefs.default {
        ArchiveDefault::Always => "always",
        ArchiveDefault::Never => "never",
        ArchiveDefault::Roster => "roster",
    };
    let list = |name: &str, jids: &[String]| {
        let mut el = Element::new(name, NS);
        for j in jids {
            el.push_child(Element::new("jid", NS).with_text(j.clone()));
        }
        el
    };
    Element::new("prefs", NS)
        .with_attr("default", default)
        .with_child(list("always", &prefs.always))
        .with_child(list("never", &prefs.never))
}

/// XEP-0441 §4: new preferences; lists that are absent keep their current value.
fn parse_prefs(el: &Element, current: ArchivePrefs) -> Result<ArchivePrefs, StanzaError> {
    let default = match el.attr("default") {
        Some("always") => ArchiveDefault::Always,
        Some("never") => ArchiveDefault::Never,
        Some("roster") => ArchiveDefault::Roster,
        None => current.default,
        Some(_) => return Err(StanzaError::bad_request().with_text("invalid default")),
    };
    let list = |name: &str, current: Vec<String>| -> Result<Vec<String>, StanzaError> {
        let Some(l) = el.child(name, NS) else {
            return Ok(current);
        };
        let mut out = Vec::new();
        for j in l.elements().filter(|j| j.is("jid", NS)) {
            let jid = addr::parse(j.text().trim())
                .ok_or_else(StanzaError::jid_malformed)?
                .into_inner();
            if !out.contains(&jid) {
                out.push(jid);
            }
        }
        if out.len() > 1000 {
            return Err(StanzaError::resource_constraint().with_text("too many JIDs"));
        }
        Ok(out)
    };
    Ok(ArchivePrefs {
        default,
        always: list("always", current.always)?,
        never: list("never", current.never)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        crate::xml::parse_stanza(xml).unwrap()
    }

    #[test]
    fn archive_rules() {
        let yes = [
            "<message type='chat'><body>hi</body></message>",
            "<message><body>normal</body></message>",
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
            "<message type='chat'><store xmlns='urn:xmpp:hints'/><x xmlns='urn:x'/></message>",
        ];
        let no = [
            "<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            "<message type='error'><body>x</body></message>",
            "<message type='headline'><body>x</body></message>",
            "<message type='groupchat'><body>x</body></message>",
            "<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        ];
        for x in yes {
            assert!(archivable(&parse(x)), "{x}");
        }
        for x in no {
            assert!(!archivable(&parse(x)), "{x}");
        }
    }

    #[test]
    fn forged_stanza_ids_are_stripped_others_kept() {
        let mut el = parse(
            "<message><stanza-id xmlns='urn:xmpp:sid:0' by='Alice@Localhost' id='f'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='k'/><body>x</body></message>",
        );
        strip_own_stanza_ids(
            &crate::addr::parse_bare("alice@localhost").unwrap(),
            &mut el,
        );
        let left: Vec<_> = el
            .elements()
            .filter(|e| e.is("stanza-id", SID))
            .map(|e| e.attr("id").unwrap().to_string())
            .collect();
        assert_eq!(left, ["k"]);
        add_stanza_id(
            &mut el,
            &crate::addr::parse_bare("alice@localhost").unwrap(),
            "n",
        );
        add_stanza_id(
            &mut el,
            &crate::addr::parse_bare("alice@localhost").unwrap(),
            "n",
        );
        assert_eq!(el.elements().filter(|e| e.is("stanza-id", SID)).count(), 2);
    }

    #[test]
    fn the_recipients_copy_shares_the_senders_stanza_only_when_it_is_the_same_text() {
        let sent = SentStanzas::default();
        let alice = addr::parse("alice@x/a").unwrap();
        let carol = addr::parse("carol@x/c").unwrap();
        let alice_full = alice.try_as_full().unwrap();
        let text = "<message to='bob@x'><body>hi</body></message>";
        let stanza = SharedStanza::from(text);
        sent.sent(alice_full, &stanza);
        // Another sender's message with the same text: not this one.
        assert!(!sent.received(&carol, text).is_shared_with(&stanza));
        let copy = sent.received(&alice, text);
        assert!(copy.is_shared_with(&stanza));
        // Taken: a second copy (another message) is its own.
        assert!(!sent.received(&alice, text).is_shared_with(&stanza));
        // Changed on the way (here: one byte), never shared.
        sent.sent(alice_full, &stanza);
        let changed = sent.received(&alice, &text.replace("hi", "ho"));
        assert!(!changed.is_shared_with(&stanza));
        assert_eq!(changed.as_str(), text.replace("hi", "ho"));
        // Too large to keep.
        let large = SharedStanza::from("x".repeat(SENT_MAX_BYTES + 1));
        sent.sent(alice_full, &large);
        assert!(!sent.received(&alice, large.as_str()).is_shared_with(&large));
    }

    #[test]
    fn stamps_round_trip() {
        let t = 1_700_000_000_123_456;
        assert_eq!(stamp(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(parse_stamp(&stamp(t)), Some(t));
        assert_eq!(
            parse_stamp("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(parse_stamp("1969-12-31T23:59:59Z"), Some(0));
        assert_eq!(parse_stamp("yesterday"), None);
    }

    #[test]
    fn parses_form_rsm_and_flip() {
        let q = parse(
            "<query xmlns='urn:xmpp:mam:2' queryid='q1'>\
               <x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
                 <field var='with'><value>Bob@Localhost</value></field>\
                 <field var='start'><value>1970-01-01T00:00:01Z</value></field>\
                 <field var='after-id'><value>a1</value></field>\
                 <field var='ids'><value>x</value><value>y</value></field>\
               </x>\
               <set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set>\
               <flip-page/>\
             </query>",
        );
        let req = parse_request(&q).unwrap();
        assert_eq!(
            req,
            Request {
                query_id: Some("q1".into()),
                with: Some("bob@localhost".into()),
                start: Some(1_000_000),
                after_id: Some("a1".into()),
                ids: Some(vec!["x".into(), "y".into()]),
                max: Some(10),
                rsm_before: Some(None),
                flip: true,
                ..Request::default()
            }
        );
        assert!(!req.unfiltered());
    }

    #[test]
    fn rejects_unknown_fields_index_and_bad_values() {
        let wrap = |inner: &str| parse(&format!("<query xmlns='urn:xmpp:mam:2'>{inner}</query>"));
        let field = |var: &str, value: &str| {
            wrap(&format!(
                "<x xmlns='jabber:x:data' type='submit'><field var='{var}'><value>{value}</value></field></x>"
            ))
        };
        let cond = |q: Element| parse_request(&q).unwrap_err().condition;
        assert_eq!(cond(field("fulltext", "x")), "feature-not-implemented");
        assert_eq!(cond(field("start", "noon")), "bad-request");
        assert_eq!(cond(field("with", "@bad")), "jid-malformed");
        assert_eq!(cond(field("FORM_TYPE", "urn:other")), "bad-request");
        assert_eq!(
            cond(wrap(
                "<set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set>"
            )),
            "feature-not-implemented"
        );
        assert_eq!(
            cond(wrap(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>"
            )),
            "bad-request"
        );
        // Empty values count as absent.
        let q = field("with", "");
        assert!(parse_request(&q).unwrap().unfiltered());
    }

    #[test]
    fn prefs_parse_and_keep_absent_lists() {
        let current = ArchivePrefs {
            default: ArchiveDefault::Always,
            always: vec!["a@x".into()],
            never: vec!["n@x".into()],
        };
        let el = parse(
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'><never><jid>B@X</jid><jid>b@x</jid></never></prefs>",
        );
        let p = parse_prefs(&el, current.clone()).unwrap();
        assert_eq!(p.default, ArchiveDefault::Roster);
        assert_eq!(p.always, ["a@x"]);
        assert_eq!(p.never, ["b@x"]);
        let back = prefs_element(&p);
        assert_eq!(back.attr("default"), Some("roster"));
        let bad = parse("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>");
        assert!(parse_prefs(&bad, current).is_err());
    }
}
