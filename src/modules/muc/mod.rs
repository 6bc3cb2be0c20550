//! XEP-0045 Multi-User Chat: a chat room service at `<subdomain>.<vhost>` for each vhost,
//! with XEP-0313 archives on rooms, XEP-0421 occupant ids and XEP-0410 self-pings.
//!
//! The service owns its domain (the registry hands it every stanza to the domain or to
//! a JID under it). Each room is behind its own lock, and a stanza to a room is handled
//! and answered (fan-out included) while holding it, so that every occupant sees the
//! room's events in one order.
//!
//! Files: `room.rs` (state, roles, the presence the room sends), `form.rs` (the
//! configuration and information forms), `admin.rs` (admin and owner requests),
//! `history.rs` (history on join), `archive.rs` (MAM on rooms).

// Request handlers return the stanza error to answer with.
#![allow(clippy::result_large_err)]

mod admin;
mod archive;
pub mod form;
pub mod history;
mod moderation;
mod register;
pub mod room;
mod voice;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::{debug, warn};

use crate::addr::{self, BareJid, DomainRef, Jid};
use crate::config::MucConfig;
use crate::context::Context;
use crate::registry::{Module, Registrar, Service};
use crate::router::route;
use crate::storage::RoomAffiliation;
use crate::stream::{ErrorType, StanzaError, error_reply, iq_result};
use crate::xml::{Element, ns};

use room::{MAX_NICK_BYTES, OccupantSession, Role, Room};

pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0410 §3.2: the service answers self-pings itself.
pub const SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub const UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
pub const STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
/// XEP-0249 direct invitations (client to client; passed through like any message).
pub const CONFERENCE: &str = "jabber:x:conference";
pub const SID: &str = "urn:xmpp:sid:0";

/// The largest available presence a room keeps for an occupant session.
const MAX_PRESENCE_BYTES: usize = 16 * 1024;
/// Sessions of one user under one nick (a remote server could claim any number).
const MAX_SESSIONS: usize = 32;
/// Invitations one message may carry.
const MAX_INVITES: usize = 10;

/// The module: registers one service per vhost.
pub struct Muc;

impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let cfg = r.config().muc.clone();
        if !cfg.enabled {
            return;
        }
        let domains: Vec<String> = r
            .config()
            .vhosts
            .iter()
            .map(|v| format!("{}.{}", cfg.subdomain, v.domain.to_ascii_lowercase()))
            .collect();
        let (archive, max_rooms) = (cfg.archive, cfg.max_rooms);
        let service = Arc::new(MucService::new(cfg));
        for d in &domains {
            r.service(d, service.clone());
            r.server_item(d);
        }
        r.shared(service);
        if archive {
            let domains: Vec<addr::DomainPart> = domains
                .iter()
                .filter_map(|d| addr::parse_domain(d))
                .collect();
            r.task(Box::new(move |ctx, shutdown| {
                Box::pin(archive::run_pruner(ctx, domains, max_rooms, shutdown))
            }));
        }
    }
}

/// The rooms of every MUC domain of this server (room JIDs include the domain).
pub struct MucService {
    cfg: MucConfig,
    rooms: Mutex<HashMap<BareJid, Arc<RoomSlot>>>,
    /// Rooms created per user in this run (the per-user limit).
    created: Mutex<HashMap<BareJid, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use crate::datetime::now_micros;

fn err(kind: ErrorType, condition: &'static str) -> StanzaError {
    StanzaError::new(kind, condition)
}

fn not_acceptable() -> StanzaError {
    err(ErrorType::Modify, "not-acceptable")
}

/// Stanzas a handler produced, routed in order. Anything addressed back into a MUC
/// domain is dropped: the caller holds a room lock, and no room talks to a room.
async fn send_all(ctx: &Arc<Context>, out: Vec<Element>) {
    for el in out {
        let to_service = el
            .attr("to")
            .and_then(addr::parse)
            .is_some_and(|to| ctx.registry.service(to.domain().as_str()).is_some());
        if to_service {
            debug!(to = ?el.attr("to"), "room stanza to a service dropped");
            continue;
        }
        route(ctx, el).await;
    }
}

fn reply_error(out: &mut Vec<Element>, stanza: &Element, error: StanzaError) {
    if let Some(e) = error_reply(stanza, &error) {
        out.push(e);
    }
}

/// A room behind its lock, and the errors that arrived for it while it was held.
///
/// The router answers a delivery to a vanished session at once, on the delivering task:
/// the bounce comes back to the room while the room is still delivering under its lock.
/// Errors therefore wait here for whoever holds the room instead of waiting for the lock
/// (that is, for themselves).
pub(crate) struct RoomSlot {
    room: tokio::sync::Mutex<Room>,
    pending: Mutex<VecDeque<Element>>,
}

impl RoomSlot {
    fn new(room: Room) -> Arc<RoomSlot> {
        Arc::new(RoomSlot {
            room: tokio::sync::Mutex::new(room),
            pending: Mutex::new(VecDeque::new()),
        })
    }
}

/// Errors queued for one room at most; more are dropped (they only report departures).
const MAX_PENDING: usize = 1024;

/// Where a stanza to the service goes.
enum Target {
    Service,
    Room { jid: BareJid, nick: Option<String> },
}

impl MucService {
    pub fn new(cfg: MucConfig) -> MucService {
        MucService {
            cfg,
            rooms: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
        }
    }

    /// Rooms currently held (loaded or created).
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// The room, from memory or from storage.
    async fn find(
        &self,
        ctx: &Arc<Context>,
        jid: &BareJid,
    ) -> Result<Option<Arc<RoomSlot>>, StanzaError> {
        if let Some(r) = lock(&self.rooms).get(jid) {
            return Ok(Some(r.clone()));
        }
        let stored = ctx
            .storage
            .rooms
            .room(jid)
            .await
            .map_err(crate::modules::internal)?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let mut rooms = lock(&self.rooms);
        // Another task may have loaded it meanwhile: keep that one.
        let room = rooms
            .entry(jid.clone())
            .or_insert_with(|| RoomSlot::new(Room::from_stored(stored)))
            .clone();
        Ok(Some(room))
    }

    /// Creates the room for `creator`, unless a limit forbids it; `Ok(None)` if it exists.
    fn create(
        &self,
        jid: &BareJid,
        creator: &BareJid,
        locked: bool,
    ) -> Result<Arc<RoomSlot>, StanzaError> {
        let mut rooms = lock(&self.rooms);
        if let Some(r) = rooms.get(jid) {
            return Ok(r.clone());
        }
        if rooms.len() >= self.cfg.max_rooms {
            return Err(err(ErrorType::Cancel, "not-allowed").with_text("too many rooms"));
        }
        let mut created = lock(&self.created);
        let count = created.entry(creator.clone()).or_default();
        if *count >= self.cfg.max_rooms_per_user {
            return Err(
                err(ErrorType::Cancel, "not-allowed").with_text("you created too many rooms")
            );
        }
        *count += 1;
        let room = RoomSlot::new(Room::new(jid.clone(), &self.cfg, creator, locked));
        rooms.insert(jid.clone(), room.clone());
        Ok(room)
    }

    /// Drops the room from memory (and storage, if `forget`).
    async fn remove(&self, ctx: &Arc<Context>, room: &mut Room, forget: bool) {
        room.gone = true;
        lock(&self.rooms).remove(&room.jid);
        if let Some(creator) = room.creator.take() {
            let mut created = lock(&self.created);
            if let Some(n) = created.get_mut(&creator) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    created.remove(&creator);
                }
            }
        }
        if forget {
            if let Err(e) = ctx.storage.rooms.remove_room(&room.jid).await {
                warn!(error = %e, room = %room.jid, "removing a room from storage failed");
            }
            if let Err(e) = ctx.storage.archive.remove_user(&room.jid).await {
                warn!(error = %e, room = %room.jid, "removing a room's archive failed");
            }
        }
    }

    /// Saves a persistent room (configuration, affiliations, subject), or forgets a room
    /// that stopped being persistent.
    async fn save(&self, ctx: &Arc<Context>, room: &Room) {
        let result = if room.config.persistent {
            ctx.storage.rooms.put_room(&room.to_stored()).await
        } else {
            ctx.storage.rooms.remove_room(&room.jid).await.map(|_| ())
        };
        if let Err(e) = result {
            warn!(error = %e, room = %room.jid, "saving a room failed");
        }
    }

    /// After a departure: a temporary room with nobody left goes away (§10.9, a room
    /// is destroyed when its last occupant leaves unless it is persistent).
    async fn maybe_vanish(&self, ctx: &Arc<Context>, room: &mut Room) {
        if room.is_empty() && !room.config.persistent {
            debug!(room = %room.jid, "temporary room empty; removed");
            self.remove(ctx, room, true).await;
        }
    }

    async fn handle_stanza(&self, ctx: &Arc<Context>, stanza: Element) {
        let Some(from) = stanza.attr("from").and_then(addr::parse) else {
            return;
        };
        let Some(to) = stanza.attr("to").and_then(addr::parse) else {
            return;
        };
        let target = match to.node() {
            None => Target::Service,
            Some(_) => Target::Room {
                jid: to.to_bare(),
                nick: to.resource().map(|r| r.as_str().to_string()),
            },
        };
        let mut out = Vec::new();
        match target {
            Target::Service => self.to_service(ctx, to.domain(), &stanza, &mut out).await,
            Target::Room { jid, nick } => {
                // A room removed while we waited for its lock is looked up again.
                for _ in 0..3 {
                    match self
                        .to_room(ctx, &jid, nick.as_deref(), &from, &stanza, &mut out)
                        .await
                    {
                        Ok(()) => return,
                        Err(Retry) => continue,
                    }
                }
            }
        }
        send_all(ctx, out).await;
    }

    async fn to_service(
        &self,
        ctx: &Arc<Context>,
        domain: &DomainRef,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
            return;
        }
        let payload = stanza.first_element();
        let answer = match (stanza.attr("type"), payload) {
            (Some("get"), Some(q)) if q.is("query", ns::DISCO_INFO) && q.attr("node").is_none() => {
                Ok(Some(service_info()))
            }
            (Some("get"), Some(q))
                if q.is("query", ns::DISCO_ITEMS) && q.attr("node").is_none() =>
            {
                self.public_rooms(ctx, domain).await.map(Some)
            }
            (Some("get"), Some(q)) if q.is("ping", ns::PING) => Ok(None),
            // §10.1.4: a room name nobody uses (random, so never taken in practice).
            (Some("get"), Some(q)) if q.is("unique", UNIQUE) => Ok(Some(
                Element::new("unique", UNIQUE).with_text(crate::stream::random_id()),
            )),
            _ => Err(StanzaError::service_unavailable()),
        };
        match answer {
            Ok(payload) => out.push(iq_result(stanza, payload)),
            Err(e) => reply_error(out, stanza, e),
        }
    }

    /// disco#items of the service: public, unlocked rooms, loaded or stored.
    async fn public_rooms(
        &self,
        ctx: &Arc<Context>,
        domain: &DomainRef,
    ) -> Result<Element, StanzaError> {
        let mut found: std::collections::BTreeMap<BareJid, String> = Default::default();
        let loaded: Vec<Arc<RoomSlot>> = lock(&self.rooms)
            .iter()
            .filter(|(jid, _)| jid.domain() == domain)
            .map(|(_, r)| r.clone())
            .collect();
        for r in loaded {
            let r = r.room.lock().await;
            if r.config.public && !r.locked && !r.gone {
                found.insert(r.jid.clone(), r.config.name.clone());
            }
        }
        let stored = ctx
            .storage
            .rooms
            .rooms(domain, self.cfg.max_rooms)
            .await
            .map_err(crate::modules::internal)?;
        for r in stored {
            if r.config.public {
                found.entry(r.jid.clone()).or_insert(r.config.name);
            }
        }
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        for (jid, name) in found {
            let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid.as_str());
            item.set_attr(
                "name",
                if name.is_empty() {
                    node_of(&jid)
                } else {
                    &name
                },
            );
            q.push_child(item);
        }
        Ok(q)
    }

    async fn to_room(
        &self,
        ctx: &Arc<Context>,
        jid: &BareJid,
        nick: Option<&str>,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) -> Result<(), Retry> {
        let room = match self.find(ctx, jid).await {
            Ok(r) => r,
            Err(e) => {
                reply_error(out, stanza, e);
                send_all(ctx, std::mem::take(out)).await;
                return Ok(());
            }
        };
        let room = match room {
            Some(r) => r,
            None => {
                let is_join =
                    stanza.name == "presence" && stanza.attr("type").is_none() && nick.is_some();
                if !is_join {
                    // Nothing to answer for presence or errors to a room that is not.
                    if stanza.name != "presence" {
                        reply_error(out, stanza, StanzaError::item_not_found());
                    }
                    send_all(ctx, std::mem::take(out)).await;
                    return Ok(());
                }
                if let Err(e) = self.may_create(ctx, from) {
                    reply_error(out, stanza, e);
                    send_all(ctx, std::mem::take(out)).await;
                    return Ok(());
                }
                // A client that speaks MUC gets a locked room to configure (§10.1.1);
                // an old groupchat-1.0 client an instant room.
                let locked = stanza.has_child("x", MUC);
                match self.create(jid, &from.to_bare(), locked) {
                    Ok(r) => r,
                    Err(e) => {
                        reply_error(out, stanza, e);
                        send_all(ctx, std::mem::take(out)).await;
                        return Ok(());
                    }
                }
            }
        };
        if stanza.attr("type") == Some("error") {
            {
                let mut pending = lock(&room.pending);
                if pending.len() < MAX_PENDING {
                    pending.push_back(stanza.clone());
                }
            }
            self.drain(ctx, &room).await;
            return Ok(());
        }
        let slot = room;
        let mut room = slot.room.lock().await;
        if room.gone {
            return Err(Retry);
        }
        self.dispatch(ctx, &mut room, nick, from, stanza, out).await;
        // Routed while the room is held: occupants see one order of events.
        send_all(ctx, std::mem::take(out)).await;
        self.drain_locked(ctx, &slot, &mut room).await;
        drop(room);
        // An error queued after the last look, while the room was being let go.
        self.drain(ctx, &slot).await;
        Ok(())
    }

    async fn dispatch(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        nick: Option<&str>,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        match (stanza.name.as_str(), nick) {
            // A message from the room that could not be delivered (whatever occupant JID
            // it came from): that session is gone (333).
            ("message", _) if stanza.attr("type") == Some("error") => {
                if let Some(idx) = room.by_session(from) {
                    self.leave(ctx, room, idx, from, &[333], out).await;
                }
            }
            ("presence", Some(nick)) => self.presence(ctx, room, nick, from, stanza, out).await,
            // §7.2.1: a join needs a nickname.
            ("presence", None) if stanza.attr("type").is_none() => {
                reply_error(out, stanza, StanzaError::jid_malformed());
            }
            ("message", None) => self.room_message(ctx, room, from, stanza, out).await,
            ("message", Some(nick)) => private_message(room, nick, from, stanza, out),
            ("iq", None) => self.room_iq(ctx, room, from, stanza, out).await,
            ("iq", Some(nick)) => occupant_iq(room, nick, from, stanza, out),
            _ => {}
        }
    }

    /// Handles the queued errors if nobody holds the room; whoever holds it looks at the
    /// queue before and after letting it go.
    async fn drain(&self, ctx: &Arc<Context>, slot: &Arc<RoomSlot>) {
        while !lock(&slot.pending).is_empty() {
            let Ok(mut room) = slot.room.try_lock() else {
                return;
            };
            self.drain_locked(ctx, slot, &mut room).await;
        }
    }

    /// Handles the queued errors with the room held. It ends: an error is never
    /// answered, so what these produce can only queue errors for other deliveries.
    async fn drain_locked(&self, ctx: &Arc<Context>, slot: &RoomSlot, room: &mut Room) {
        loop {
            let next = lock(&slot.pending).pop_front();
            let Some(stanza) = next else {
                return;
            };
            if room.gone {
                continue;
            }
            let (Some(from), Some(to)) = (
                stanza.attr("from").and_then(addr::parse),
                stanza.attr("to").and_then(addr::parse),
            ) else {
                continue;
            };
            let nick = to.resource().map(|r| r.as_str().to_string());
            let mut out = Vec::new();
            self.dispatch(ctx, room, nick.as_deref(), &from, &stanza, &mut out)
                .await;
            send_all(ctx, out).await;
        }
    }

    /// Who may create rooms: users of this server's vhosts.
    fn may_create(&self, ctx: &Context, from: &Jid) -> Result<(), StanzaError> {
        if !ctx.is_local_domain(from.domain().as_str()) || from.node().is_none() {
            return Err(err(ErrorType::Cancel, "not-allowed")
                .with_text("only users of this server may create rooms"));
        }
        Ok(())
    }

    async fn presence(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        nick: &str,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        let existing = room.by_session(from);
        if stanza.attr("type").is_none() && stanza.to_stanza_string().len() > MAX_PRESENCE_BYTES {
            // The room keeps it and shows it to everyone, again to each newcomer.
            return reply_error(
                out,
                stanza,
                not_acceptable().with_text("presence too large for a room"),
            );
        }
        match stanza.attr("type") {
            None => match existing {
                None => self.join(room, nick, from, stanza, out),
                // A join from a session the room still counts in (its client reconnected
                // with the same resource and never left): the whole join again, so the
                // client gets what it waits for.
                Some(idx) if stanza.has_child("x", MUC) => {
                    if room.occupants[idx].nick == nick {
                        self.rejoin(room, idx, from, stanza, out);
                    } else {
                        self.leave(ctx, room, idx, from, &[], out).await;
                        self.join(room, nick, from, stanza, out);
                    }
                }
                Some(idx) if room.occupants[idx].nick == nick => {
                    update_presence(room, idx, from, stanza, out)
                }
                Some(idx) => self.change_nick(room, idx, nick, from, stanza, out),
            },
            Some("unavailable") => {
                if let Some(idx) = existing {
                    self.leave(ctx, room, idx, from, &[], out).await;
                }
            }
            // A presence error from an occupant's server: the occupant is gone (§7.2.x,
            // "removed due to a technical problem", 333).
            Some("error") => {
                if let Some(idx) = existing {
                    self.leave(ctx, room, idx, from, &[333], out).await;
                }
            }
            _ => {}
        }
    }

    fn join(
        &self,
        room: &mut Room,
        nick: &str,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        let bare = from.to_bare();
        let affiliation = room.affiliation(from);
        let created = room.locked && room.is_empty() && room.creator.as_ref() == Some(&bare);
        let fresh_instant = !room.locked
            && room.is_empty()
            && room.creator.as_deref() == Some(&bare)
            && room.history.is_empty()
            && room.subject.is_none()
            && !room.config.persistent;
        let refuse = |out: &mut Vec<Element>, e: StanzaError| reply_error(out, stanza, e);
        if nick.is_empty() || nick.len() > MAX_NICK_BYTES {
            return refuse(out, not_acceptable().with_text("nickname too long"));
        }
        if affiliation == Some(RoomAffiliation::Outcast) {
            return refuse(out, StanzaError::forbidden());
        }
        if room.locked && affiliation != Some(RoomAffiliation::Owner) {
            // §10.1.1: a room not configured yet is not there for anyone else.
            return refuse(out, StanzaError::item_not_found());
        }
        let same_nick = room.by_nick(nick);
        if let Some(idx) = same_nick
            && room.occupants[idx].bare != bare
        {
            return refuse(out, err(ErrorType::Cancel, "conflict"));
        }
        if room.nick_owner(nick).is_some_and(|owner| *owner != bare) {
            return refuse(out, err(ErrorType::Cancel, "conflict"));
        }
        let affiliated = affiliation.is_some_and(|a| a >= RoomAffiliation::Member);
        if room.config.members_only && !affiliated {
            return refuse(out, err(ErrorType::Auth, "registration-required"));
        }
        if let Some(secret) = &room.config.password
            && affiliation != Some(RoomAffiliation::Owner)
        {
            let given = stanza
                .child("x", MUC)
                .and_then(|x| x.child_text("password", MUC));
            if given.as_deref() != Some(secret.as_str()) {
                return refuse(out, err(ErrorType::Auth, "not-authorized"));
            }
        }
        let privileged = affiliation.is_some_and(|a| a >= RoomAffiliation::Admin);
        if same_nick.is_none() && room.occupants.len() >= room.max_users(&self.cfg) && !privileged {
            return refuse(out, err(ErrorType::Wait, "service-unavailable"));
        }
        if let Some(idx) = same_nick
            && room.occupants[idx].sessions.len() >= MAX_SESSIONS
        {
            return refuse(out, StanzaError::resource_constraint());
        }
        let session = OccupantSession {
            jid: from.clone(),
            presence: stanza.clone(),
        };
        let idx = match same_nick {
            // Another session of the same user under the same nick (§7.2.x multi-session).
            Some(idx) => {
                room.occupants[idx].sessions.push(session);
                idx
            }
            None => {
                let role = room.default_role(affiliation);
                let mut o = room.new_occupant(nick.to_string(), bare.clone(), role, &self.cfg);
                o.sessions.push(session);
                room.occupants.push(o);
                room.occupants.len() - 1
            }
        };
        let mut codes = self.join_codes(room);
        if created || fresh_instant {
            codes.push(201);
        }
        debug!(room = %room.jid, nick, "occupant joined");
        // A second session of an occupant: the others know it already.
        send_join(room, idx, from, stanza, &codes, same_nick.is_none(), out);
    }

    /// Status codes of every self-presence on joining (§7.2.3–§7.2.5).
    fn join_codes(&self, room: &Room) -> Vec<u16> {
        let mut codes: Vec<u16> = vec![110];
        if room.config.whois_anyone {
            codes.push(100);
        }
        if self.cfg.archive {
            codes.push(170);
        }
        codes
    }

    fn rejoin(
        &self,
        room: &mut Room,
        idx: usize,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        if let Some(s) = room.occupants[idx]
            .sessions
            .iter_mut()
            .find(|s| s.jid == *from)
        {
            s.presence = stanza.clone();
        }
        let codes = self.join_codes(room);
        send_join(room, idx, from, stanza, &codes, true, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn change_nick(
        &self,
        room: &mut Room,
        idx: usize,
        nick: &str,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        let bare = room.occupants[idx].bare.clone();
        if nick.is_empty() || nick.len() > MAX_NICK_BYTES {
            return reply_error(out, stanza, not_acceptable().with_text("nickname too long"));
        }
        if room.by_nick(nick).is_some() || room.nick_owner(nick).is_some_and(|o| *o != bare) {
            return reply_error(out, stanza, err(ErrorType::Cancel, "conflict"));
        }
        // §7.6: unavailable for the old nick with 303 and the new one, then available.
        let item = Element::new("item", MUC_USER).with_attr("nick", nick);
        room.broadcast_presence(idx, true, &[303], &[], Some(&item), out);
        let o = &mut room.occupants[idx];
        o.nick = nick.to_string();
        if let Some(s) = o.sessions.iter_mut().find(|s| s.jid == *from) {
            s.presence = stanza.clone();
        }
        room.broadcast_presence(idx, false, &[], &[], None, out);
    }

    /// One session leaves; the occupant leaves with its last session.
    async fn leave(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        idx: usize,
        from: &Jid,
        codes: &[u16],
        out: &mut Vec<Element>,
    ) {
        let o = &mut room.occupants[idx];
        if o.sessions.len() > 1 {
            o.sessions.retain(|s| s.jid != *from);
            let o = &room.occupants[idx];
            let mut mine = codes.to_vec();
            mine.push(110);
            out.push(room.presence_of(o, from, o.role, true, &mine, None));
            return;
        }
        room.remove_occupant(idx, codes, None, out);
        debug!(room = %room.jid, "occupant left");
        self.maybe_vanish(ctx, room).await;
    }

    async fn room_message(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        let kind = stanza.attr("type").unwrap_or("normal");
        if kind != "groupchat" {
            if let Some(x) = stanza.child("x", MUC_USER) {
                return self.invites(ctx, room, from, stanza, x, out).await;
            }
            if let Some(form) = voice::request_form(stanza) {
                return voice::handle(self, room, from, stanza, form, out);
            }
            return reply_error(out, stanza, not_acceptable());
        }
        let Some(idx) = room.by_session(from) else {
            // §7.4: only occupants speak in the room.
            return reply_error(out, stanza, not_acceptable());
        };
        let role = room.occupants[idx].role;
        let subject = stanza.child("subject", ns::CLIENT).map(Element::text);
        let has_body = stanza.has_child("body", ns::CLIENT);
        if role < Role::Participant {
            return reply_error(out, stanza, StanzaError::forbidden());
        }
        if subject.is_some() && !has_body && !room.may_set_subject(role) {
            return reply_error(out, stanza, StanzaError::forbidden());
        }
        if !room.occupants[idx].take_token(&self.cfg) {
            return reply_error(
                out,
                stanza,
                StanzaError::resource_constraint().with_text("too many messages; slow down"),
            );
        }
        if stanza.has_child("retract", moderation::RETRACT) {
            if !self.cfg.archive {
                return reply_error(out, stanza, StanzaError::feature_not_implemented());
            }
            if let Err(e) = moderation::check_retraction(ctx, room, idx, stanza).await {
                return reply_error(out, stanza, e);
            }
        }
        let nick = room.occupants[idx].nick.clone();
        let mut msg = stanza.clone();
        msg.set_attr("from", room.nick_jid(&nick));
        msg.remove_attr("to");
        // Only the room says who sent what and where it sits in its archive.
        msg.remove_children("occupant-id", OCCUPANT_ID);
        crate::modules::mam::strip_own_stanza_ids(&room.jid, &mut msg);
        msg.push_child(
            Element::new("occupant-id", OCCUPANT_ID)
                .with_attr("id", room.occupants[idx].id.clone()),
        );
        let micros = now_micros();
        if let Some(subject) = subject.filter(|_| !has_body) {
            room.subject = Some((subject, nick));
            self.save(ctx, room).await;
        } else if has_body {
            if self.cfg.archive
                && let Some(id) = archive::append(ctx, &room.jid, &msg, micros).await
            {
                msg.push_child(crate::modules::mam::stanza_id(&room.jid, &id));
            }
            let len = room.config.history_length as usize;
            history::push(
                &mut room.history,
                history::HistoryItem::new(msg.clone(), micros),
                len,
            );
        }
        for (jid, _) in room.audience() {
            let mut copy = msg.clone();
            copy.set_attr("to", jid.as_str());
            out.push(copy);
        }
    }

    /// Mediated invitations (§7.8.2) and declines (§7.8.3).
    async fn invites(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        from: &Jid,
        stanza: &Element,
        x: &Element,
        out: &mut Vec<Element>,
    ) {
        let invites: Vec<&Element> = x.elements().filter(|e| e.is("invite", MUC_USER)).collect();
        if let Some(decline) = x.child("decline", MUC_USER) {
            let Some(to) = decline.attr("to").and_then(addr::parse) else {
                return reply_error(out, stanza, StanzaError::jid_malformed());
            };
            let mut d =
                Element::new("decline", MUC_USER).with_attr("from", from.to_bare().as_str());
            if let Some(reason) = decline.child("reason", MUC_USER) {
                d.push_child(reason.clone());
            }
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", room.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_child(Element::new("x", MUC_USER).with_child(d)),
            );
            return;
        }
        if invites.is_empty() || invites.len() > MAX_INVITES {
            return reply_error(out, stanza, StanzaError::bad_request());
        }
        let Some(idx) = room.by_session(from) else {
            return reply_error(out, stanza, not_acceptable());
        };
        let affiliation = room.affiliation(from);
        let may_invite = !room.config.members_only
            || affiliation.is_some_and(|a| a >= RoomAffiliation::Admin)
            || (room.config.allow_invites && affiliation == Some(RoomAffiliation::Member));
        if !may_invite || room.occupants[idx].role < Role::Participant {
            return reply_error(out, stanza, StanzaError::forbidden());
        }
        let mut changed = false;
        for invite in invites {
            let Some(to) = invite.attr("to").and_then(addr::parse) else {
                return reply_error(out, stanza, StanzaError::jid_malformed());
            };
            // An invitation into a members-only room makes the invitee a member (§7.8.2).
            if room.config.members_only
                && room.affiliation(&to.to_bare()).is_none()
                && room.affiliations.len() < room::MAX_AFFILIATIONS
            {
                room.set_affiliation(&to.to_bare(), Some(RoomAffiliation::Member), None);
                changed = true;
            }
            let mut inv = Element::new("invite", MUC_USER).with_attr("from", from.as_str());
            if let Some(reason) = invite.child("reason", MUC_USER) {
                inv.push_child(reason.clone());
            }
            let mut ux = Element::new("x", MUC_USER).with_child(inv);
            if let Some(secret) = &room.config.password {
                ux.push_child(Element::new("password", MUC_USER).with_text(secret.clone()));
            }
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", room.jid.as_str())
                    .with_attr("to", to.as_str())
                    .with_attr("id", crate::stream::random_id())
                    .with_child(ux)
                    .with_child(
                        Element::new("body", ns::CLIENT)
                            .with_text(format!("{from} invites you to the room {}", room.jid)),
                    ),
            );
        }
        if changed {
            self.save(ctx, room).await;
        }
    }

    async fn room_iq(
        &self,
        ctx: &Arc<Context>,
        room: &mut Room,
        from: &Jid,
        stanza: &Element,
        out: &mut Vec<Element>,
    ) {
        let kind = stanza.attr("type").unwrap_or("");
        if !matches!(kind, "get" | "set") {
            return;
        }
        let Some(payload) = stanza.first_element() else {
            return reply_error(out, stanza, StanzaError::bad_request());
        };
        let answer = match (kind, payload.name.as_str(), payload.ns.as_str()) {
            ("get", "query", ns::DISCO_INFO) if payload.attr("node").is_none() => {
                Ok(Some(self.room_info(room)))
            }
            ("get", "query", ns::DISCO_INFO)
                if payload.attr("node") == Some(register::ROOMUSER_NODE) =>
            {
                Ok(Some(register::reserved_nick(room, from)))
            }
            ("get", "ping", ns::PING) => Ok(None),
            ("get", "query", register::REGISTER) => register::get(room, from),
            ("set", "query", register::REGISTER) => {
                register::set(self, ctx, room, from, payload, out).await
            }
            ("get", "query", ns::DISCO_ITEMS) if payload.attr("node").is_none() => {
                Ok(Some(Element::new("query", ns::DISCO_ITEMS)))
            }
            (_, "query", MUC_ADMIN) => {
                admin::admin(self, ctx, room, from, stanza, payload, out).await
            }
            (_, "query", MUC_OWNER) => {
                admin::owner(self, ctx, room, from, stanza, payload, out).await
            }
            ("set", "query", crate::modules::mam::NS) if self.cfg.archive => {
                archive::query(ctx, room, from, stanza, payload, out).await
            }
            ("get", "query", crate::modules::mam::NS) if self.cfg.archive => {
                archive::form(room, from)
            }
            ("set", "moderate", moderation::MODERATE) => {
                moderation::moderate(self, ctx, room, from, payload, out).await
            }
            _ => Err(StanzaError::service_unavailable()),
        };
        match answer {
            Ok(payload) => out.push(iq_result(stanza, payload)),
            Err(e) => reply_error(out, stanza, e),
        }
    }

    fn room_info(&self, room: &Room) -> Element {
        let c = &room.config;
        let mut q = Element::new("query", ns::DISCO_INFO);
        let mut identity = Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text");
        identity.set_attr(
            "name",
            if c.name.is_empty() {
                node_of(&room.jid)
            } else {
                &c.name
            },
        );
        q.push_child(identity);
        let mut features = vec![
            MUC,
            ns::DISCO_INFO,
            register::REGISTER,
            voice::REQUEST,
            ns::PING,
            SELF_PING,
            STABLE_ID,
            OCCUPANT_ID,
            if c.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if c.public { "muc_public" } else { "muc_hidden" },
            if c.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if c.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if c.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
            if c.whois_anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
        ];
        if self.cfg.archive {
            features.extend([
                crate::modules::mam::NS,
                SID,
                moderation::RETRACT,
                moderation::MODERATE,
            ]);
        }
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q.push_child(form::roominfo(
            c,
            room.occupants.len(),
            room.subject.as_ref().map(|(s, _)| s.as_str()),
        ));
        q
    }
}

/// The handler found the room gone after waiting for it.
struct Retry;

fn node_of(jid: &BareJid) -> &str {
    jid.node().map_or("", |n| n.as_str())
}

/// What a (re)joining session `from` of occupant `idx` gets (§7.2.3): the others'
/// presence, its own (to everyone when `broadcast`, else to itself), the history it asked
/// for, then the subject. The subject ends every join, even into a room still locked for
/// configuration: clients (slixmpp's join_muc_wait, Conversations) take it as "joined".
fn send_join(
    room: &Room,
    idx: usize,
    from: &Jid,
    stanza: &Element,
    codes: &[u16],
    broadcast: bool,
    out: &mut Vec<Element>,
) {
    let viewer = room.occupants[idx].role;
    for (i, o) in room.occupants.iter().enumerate() {
        if i != idx {
            out.push(room.presence_of(o, from, viewer, false, &[], None));
        }
    }
    if broadcast {
        room.broadcast_presence(idx, false, &[], codes, None, out);
    } else {
        let o = &room.occupants[idx];
        out.push(room.presence_of(o, from, o.role, false, codes, None));
    }
    let req = history::request(stanza, now_micros());
    out.extend(history::select(&room.history, &req, &room.jid, from));
    out.push(room.subject_message(from));
}

/// A presence change of an occupant session (same nick): to everyone.
fn update_presence(
    room: &mut Room,
    idx: usize,
    from: &Jid,
    stanza: &Element,
    out: &mut Vec<Element>,
) {
    if let Some(s) = room.occupants[idx]
        .sessions
        .iter_mut()
        .find(|s| s.jid == *from)
    {
        s.presence = stanza.clone();
    }
    // The session that changed goes last among the occupant's sessions: its presence is
    // the one shown.
    let o = &mut room.occupants[idx];
    if let Some(pos) = o.sessions.iter().position(|s| s.jid == *from) {
        let s = o.sessions.remove(pos);
        o.sessions.push(s);
    }
    room.broadcast_presence(idx, false, &[], &[], None, out);
}

/// §7.5: a private message through an occupant JID.
fn private_message(room: &Room, nick: &str, from: &Jid, stanza: &Element, out: &mut Vec<Element>) {
    let kind = stanza.attr("type").unwrap_or("normal");
    if kind == "error" {
        return;
    }
    if kind == "groupchat" {
        return reply_error(out, stanza, StanzaError::bad_request());
    }
    let Some(sender) = room.by_session(from) else {
        return reply_error(out, stanza, not_acceptable());
    };
    let Some(target) = room.by_nick(nick) else {
        return reply_error(out, stanza, StanzaError::item_not_found());
    };
    if !room.may_send_pm(room.occupants[sender].role) {
        return reply_error(out, stanza, StanzaError::forbidden());
    }
    let sender = &room.occupants[sender];
    let mut msg = stanza.clone();
    msg.set_attr("from", room.nick_jid(&sender.nick));
    msg.remove_children("occupant-id", OCCUPANT_ID);
    msg.push_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", sender.id.clone()));
    if !msg.has_child("x", MUC_USER) {
        msg.push_child(Element::new("x", MUC_USER));
    }
    for s in &room.occupants[target].sessions {
        let mut copy = msg.clone();
        copy.set_attr("to", s.jid.as_str());
        out.push(copy);
    }
}

/// An iq to an occupant JID: a self-ping is answered here (XEP-0410); other requests
/// between occupants are passed on with the sender's occupant JID, and answers back.
fn occupant_iq(room: &Room, nick: &str, from: &Jid, stanza: &Element, out: &mut Vec<Element>) {
    let kind = stanza.attr("type").unwrap_or("");
    let sender = room.by_session(from);
    if matches!(kind, "result" | "error") {
        // An answer from an occupant to another's request: `nick` is the requester.
        let (Some(answerer), Some(requester)) = (sender, room.by_nick(nick)) else {
            return;
        };
        let Some(s) = room.occupants[requester].sessions.first() else {
            return;
        };
        let mut a = stanza.clone();
        a.set_attr("from", room.nick_jid(&room.occupants[answerer].nick));
        a.set_attr("to", s.jid.as_str());
        out.push(a);
        return;
    }
    let Some(sender) = sender else {
        // XEP-0410 §3.1: not (or no longer) an occupant.
        return reply_error(out, stanza, err(ErrorType::Cancel, "not-acceptable"));
    };
    let Some(target) = room.by_nick(nick) else {
        return reply_error(out, stanza, StanzaError::item_not_found());
    };
    let is_ping = stanza
        .first_element()
        .is_some_and(|p| p.is("ping", ns::PING));
    if target == sender && is_ping {
        out.push(iq_result(stanza, None));
        return;
    }
    let Some(s) = room.occupants[target].sessions.first() else {
        return reply_error(out, stanza, StanzaError::item_not_found());
    };
    let mut fwd = stanza.clone();
    fwd.set_attr("from", room.nick_jid(&room.occupants[sender].nick));
    fwd.set_attr("to", s.jid.as_str());
    out.push(fwd);
}

fn service_info() -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", "Chat rooms"),
    );
    for f in [
        MUC,
        UNIQUE,
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        OCCUPANT_ID,
        SELF_PING,
    ] {
        q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
    }
    q
}

#[async_trait]
impl Service for MucService {
    async fn handle(&self, ctx: &Arc<Context>, stanza: Element) {
        self.handle_stanza(ctx, stanza).await;
    }
}
