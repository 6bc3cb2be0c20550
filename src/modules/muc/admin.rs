//! Admin (`muc#admin`, XEP-0045 §8–§9: roles, affiliation lists) and owner
//! (`muc#owner`, §10: configuration, destruction) requests to a room.

use std::sync::Arc;

use super::form::{self, DATA};
use super::room::{self, Role, Room, affiliation_str, parse_affiliation};
use super::{MUC_ADMIN, MUC_OWNER, MUC_USER, MucService, err};
use crate::addr::{self, BareJid, Jid};
use crate::context::Context;
use crate::storage::RoomAffiliation;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::Element;

/// Items one admin request may carry.
const MAX_ITEMS: usize = 100;

enum Change {
    Role {
        nick: String,
        role: Role,
        reason: Option<Element>,
    },
    Affiliation {
        jid: BareJid,
        affiliation: Option<RoomAffiliation>,
        reason: Option<Element>,
    },
}

fn requester_role(room: &Room, from: &Jid) -> Role {
    room.by_session(from)
        .map_or(Role::None, |i| room.occupants[i].role)
}

fn requester_nick(room: &Room, from: &Jid) -> Option<String> {
    room.by_session(from)
        .map(|i| room.occupants[i].nick.clone())
}

fn not_allowed() -> StanzaError {
    StanzaError::not_allowed()
}

pub(super) async fn admin(
    svc: &MucService,
    ctx: &Arc<Context>,
    room: &mut Room,
    from: &Jid,
    stanza: &Element,
    query: &Element,
    out: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    let my_aff = room.affiliation(from);
    let my_role = requester_role(room, from);
    let items: Vec<&Element> = query
        .elements()
        .filter(|e| e.is("item", MUC_ADMIN))
        .collect();
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(StanzaError::bad_request());
    }
    if stanza.attr("type") == Some("get") {
        let item = items[0];
        let mut q = Element::new("query", MUC_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let Some(Some(wanted)) = parse_affiliation(a) else {
                return Err(StanzaError::bad_request());
            };
            // §9: admins and owners see the lists; in a members-only room members see who
            // belongs (members, admins, owners: clients such as Conversations list them).
            let may = my_aff.is_some_and(|m| m >= RoomAffiliation::Admin)
                || (room.config.members_only
                    && my_aff == Some(RoomAffiliation::Member)
                    && wanted != RoomAffiliation::Outcast);
            if !may {
                return Err(StanzaError::forbidden());
            }
            for e in room
                .affiliations
                .values()
                .filter(|e| e.affiliation == wanted)
            {
                let mut it = Element::new("item", MUC_ADMIN)
                    .with_attr("affiliation", wanted.as_str())
                    .with_attr("jid", e.jid.as_str());
                if let Some(nick) = &e.nick {
                    it.set_attr("nick", nick.clone());
                }
                if let Some(r) = &e.reason {
                    it.push_child(Element::new("reason", MUC_ADMIN).with_text(r.clone()));
                }
                q.push_child(it);
            }
            return Ok(Some(q));
        }
        if let Some(r) = item.attr("role") {
            let Some(wanted) = Role::parse(r) else {
                return Err(StanzaError::bad_request());
            };
            if my_role != Role::Moderator {
                return Err(StanzaError::forbidden());
            }
            for o in room.occupants.iter().filter(|o| o.role == wanted) {
                q.push_child(
                    Element::new("item", MUC_ADMIN)
                        .with_attr("role", wanted.as_str())
                        .with_attr("nick", o.nick.clone())
                        .with_attr("affiliation", affiliation_str(room.affiliation(&o.bare)))
                        .with_attr("jid", o.bare.as_str()),
                );
            }
            return Ok(Some(q));
        }
        return Err(StanzaError::bad_request());
    }

    // Checked as a whole first: a refused item leaves the room unchanged.
    let mut changes = Vec::with_capacity(items.len());
    for item in items {
        let reason = item
            .child("reason", MUC_ADMIN)
            .map(|r| Element::new("reason", MUC_USER).with_text(r.text()));
        match (item.attr("role"), item.attr("affiliation")) {
            (Some(r), None) => {
                let role = Role::parse(r).ok_or_else(StanzaError::bad_request)?;
                let nick = item.attr("nick").ok_or_else(StanzaError::bad_request)?;
                let target = room.by_nick(nick).ok_or_else(StanzaError::item_not_found)?;
                if my_role != Role::Moderator {
                    return Err(StanzaError::forbidden());
                }
                let target_aff = room.affiliation(&room.occupants[target].bare);
                let admin_target = target_aff.is_some_and(|a| a >= RoomAffiliation::Admin);
                // §8.2, §8.4: nobody kicks or silences an admin or owner; granting or
                // revoking moderator is for admins (§9.6).
                let touches_moderator =
                    role == Role::Moderator || room.occupants[target].role == Role::Moderator;
                if (admin_target && role < Role::Moderator)
                    || (touches_moderator && my_aff.is_none_or(|a| a < RoomAffiliation::Admin))
                {
                    return Err(not_allowed());
                }
                changes.push(Change::Role {
                    nick: nick.to_string(),
                    role,
                    reason,
                });
            }
            (None, Some(a)) => {
                let affiliation = parse_affiliation(a).ok_or_else(StanzaError::bad_request)?;
                let jid = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => addr::parse(j)
                        .ok_or_else(StanzaError::jid_malformed)?
                        .into_bare(),
                    (None, Some(n)) => {
                        let i = room.by_nick(n).ok_or_else(StanzaError::item_not_found)?;
                        room.occupants[i].bare.clone()
                    }
                    (None, None) => return Err(StanzaError::bad_request()),
                };
                if my_aff.is_none_or(|m| m < RoomAffiliation::Admin) {
                    return Err(StanzaError::forbidden());
                }
                let current = room.affiliation(&jid);
                let high =
                    |x: Option<RoomAffiliation>| x.is_some_and(|x| x >= RoomAffiliation::Admin);
                if (high(current) || high(affiliation)) && my_aff != Some(RoomAffiliation::Owner) {
                    return Err(not_allowed());
                }
                if current == Some(RoomAffiliation::Owner)
                    && affiliation != Some(RoomAffiliation::Owner)
                    && room.owners() <= 1
                {
                    // §10.6: a room keeps at least one owner.
                    return Err(err(ErrorType::Cancel, "conflict"));
                }
                if affiliation.is_some()
                    && current.is_none()
                    && room.affiliations.len() >= room::MAX_AFFILIATIONS
                {
                    return Err(StanzaError::resource_constraint());
                }
                changes.push(Change::Affiliation {
                    jid,
                    affiliation,
                    reason,
                });
            }
            _ => return Err(StanzaError::bad_request()),
        }
    }

    let actor = requester_nick(room, from);
    let mut affiliations_changed = false;
    for change in changes {
        match change {
            Change::Role { nick, role, reason } => {
                let Some(idx) = room.by_nick(&nick) else {
                    continue;
                };
                let extra = item_extra(actor.as_deref(), reason);
                if role == Role::None {
                    // §8.2: kicked, 307.
                    room.remove_occupant(idx, &[307], Some(&extra), out);
                } else {
                    room.occupants[idx].role = role;
                    room.broadcast_presence(idx, false, &[], &[], Some(&extra), out);
                }
            }
            Change::Affiliation {
                jid,
                affiliation,
                reason,
            } => {
                let text = reason.as_ref().map(Element::text);
                room.set_affiliation(&jid, affiliation, text);
                affiliations_changed = true;
                let extra = item_extra(actor.as_deref(), reason);
                // Everyone in the room under that JID: banned (301), removed from a
                // members-only room (321), or shown with the new affiliation.
                while let Some(idx) = room.occupants.iter().position(|o| {
                    o.bare == jid
                        && (affiliation == Some(RoomAffiliation::Outcast)
                            || (room.config.members_only && affiliation.is_none()))
                }) {
                    let code = if affiliation == Some(RoomAffiliation::Outcast) {
                        301
                    } else {
                        321
                    };
                    room.remove_occupant(idx, &[code], Some(&extra), out);
                }
                let present: Vec<usize> = room
                    .occupants
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.bare == jid)
                    .map(|(i, _)| i)
                    .collect();
                for idx in present {
                    let role = room.default_role(affiliation);
                    room.occupants[idx].role = role;
                    room.broadcast_presence(idx, false, &[], &[], Some(&extra), out);
                }
            }
        }
    }
    if affiliations_changed {
        svc.save(ctx, room).await;
    }
    svc.maybe_vanish(ctx, room).await;
    Ok(None)
}

/// `<item>` additions for a role or affiliation change: the actor and the reason.
fn item_extra(actor: Option<&str>, reason: Option<Element>) -> Element {
    let mut item = Element::new("item", MUC_USER);
    if let Some(nick) = actor {
        item.push_child(Element::new("actor", MUC_USER).with_attr("nick", nick));
    }
    if let Some(r) = reason {
        item.push_child(r);
    }
    item
}

pub(super) async fn owner(
    svc: &MucService,
    ctx: &Arc<Context>,
    room: &mut Room,
    from: &Jid,
    stanza: &Element,
    query: &Element,
    out: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    if room.affiliation(from) != Some(RoomAffiliation::Owner) {
        return Err(StanzaError::forbidden());
    }
    if stanza.attr("type") == Some("get") {
        return Ok(Some(
            Element::new("query", MUC_OWNER).with_child(form::config_form(&room.config, &room.jid)),
        ));
    }
    if let Some(destroy) = query.child("destroy", MUC_OWNER) {
        destroy_room(svc, ctx, room, destroy, out).await;
        return Ok(None);
    }
    let Some(x) = query.child("x", DATA) else {
        return Err(StanzaError::bad_request());
    };
    match x.attr("type") {
        Some("cancel") => {
            if room.locked {
                // §10.1.3: cancelling the initial configuration destroys the room.
                let empty = Element::new("destroy", MUC_OWNER);
                destroy_room(svc, ctx, room, &empty, out).await;
            }
            Ok(None)
        }
        Some("submit") => {
            let new = form::apply(x, &room.config, &svc.cfg)?;
            let old = std::mem::replace(&mut room.config, new);
            let was_locked = std::mem::take(&mut room.locked);
            let cut = room.config.history_length as usize;
            while room.history.len() > cut {
                room.history.pop_front();
            }
            // §10.2: a room turned members-only loses its non-members (322).
            if room.config.members_only && !old.members_only {
                while let Some(idx) = room.occupants.iter().position(|o| {
                    room.affiliation(&o.bare)
                        .is_none_or(|a| a < RoomAffiliation::Member)
                }) {
                    room.remove_occupant(idx, &[322], None, out);
                }
            }
            if !was_locked {
                let mut codes = vec![104];
                if room.config.whois_anyone != old.whois_anyone {
                    codes.push(if room.config.whois_anyone { 172 } else { 173 });
                }
                room.status_message(&codes, out);
            }
            svc.save(ctx, room).await;
            Ok(None)
        }
        _ => Err(StanzaError::bad_request()),
    }
}

/// §10.9: everyone leaves with the destroy notice (and the alternate venue), and the
/// room is forgotten.
async fn destroy_room(
    svc: &MucService,
    ctx: &Arc<Context>,
    room: &mut Room,
    destroy: &Element,
    out: &mut Vec<Element>,
) {
    let mut notice = Element::new("destroy", MUC_USER);
    if let Some(alt) = destroy.attr("jid").and_then(addr::parse) {
        notice.set_attr("jid", alt.into_inner());
    }
    if let Some(reason) = destroy.child_text("reason", MUC_OWNER) {
        notice.push_child(Element::new("reason", MUC_USER).with_text(reason));
    }
    if let Some(pw) = destroy.child_text("password", MUC_OWNER) {
        notice.push_child(Element::new("password", MUC_USER).with_text(pw));
    }
    while !room.occupants.is_empty() {
        room.remove_occupant(0, &[], Some(&notice), out);
    }
    tracing::info!(room = %room.jid, "room destroyed");
    svc.remove(ctx, room, true).await;
}
