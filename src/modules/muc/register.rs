//! Room registration (XEP-0045 §7.10): a user reserves a nickname in a room and becomes
//! a member; §7.12: a user asks which nickname it reserved.

use std::sync::Arc;

use super::room::{MAX_AFFILIATIONS, MAX_NICK_BYTES, Room};
use super::{MucService, err};
use crate::addr::Jid;
use crate::context::Context;
use crate::storage::RoomAffiliation;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, ns};

pub const REGISTER: &str = "jabber:iq:register";
const DATA: &str = "jabber:x:data";
const FORM_TYPE: &str = "http://jabber.org/protocol/muc#register";
const NICK_FIELD: &str = "muc#register_roomnick";
/// The disco node of §7.12.
pub const ROOMUSER_NODE: &str = "x-roomuser-item";

fn registered_nick<'a>(room: &'a Room, from: &Jid) -> Option<&'a str> {
    room.affiliations
        .get(&from.to_bare())
        .and_then(|e| e.nick.as_deref())
}

/// Outcasts may not register; in a members-only room only those already affiliated may
/// (reserving a nick, not gaining entry).
fn may_register(room: &Room, from: &Jid) -> Result<(), StanzaError> {
    match room.affiliation(from) {
        Some(RoomAffiliation::Outcast) => Err(StanzaError::forbidden()),
        None if room.config.members_only => Err(err(ErrorType::Auth, "registration-required")),
        _ => Ok(()),
    }
}

pub fn get(room: &Room, from: &Jid) -> Result<Option<Element>, StanzaError> {
    may_register(room, from)?;
    let mut q = Element::new("query", REGISTER);
    if let Some(nick) = registered_nick(room, from) {
        // §7.10: already registered.
        q.push_child(Element::new("registered", REGISTER));
        q.push_child(Element::new("username", REGISTER).with_text(nick.to_string()));
        return Ok(Some(q));
    }
    let field = |var: &str, kind: &str| {
        Element::new("field", DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
    };
    q.push_child(
        Element::new("x", DATA)
            .with_attr("type", "form")
            .with_child(Element::new("title", DATA).with_text("Nickname registration"))
            .with_child(
                field("FORM_TYPE", "hidden")
                    .with_child(Element::new("value", DATA).with_text(FORM_TYPE)),
            )
            .with_child(
                field(NICK_FIELD, "text-single")
                    .with_attr("label", "Nickname")
                    .with_child(Element::new("required", DATA)),
            ),
    );
    Ok(Some(q))
}

pub async fn set(
    svc: &MucService,
    ctx: &Arc<Context>,
    room: &mut Room,
    from: &Jid,
    query: &Element,
    out: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    may_register(room, from)?;
    let bare = from.to_bare();
    if query.has_child("remove", REGISTER) {
        // Unregistering gives up the nick, and the membership it brought.
        if let Some(e) = room.affiliations.get_mut(&bare) {
            e.nick = None;
            if e.affiliation == RoomAffiliation::Member {
                room.affiliations.remove(&bare);
            }
            svc.save(ctx, room).await;
        }
        return Ok(None);
    }
    let Some(x) = query.child("x", DATA) else {
        return Err(StanzaError::bad_request());
    };
    if x.attr("type") == Some("cancel") {
        return Ok(None);
    }
    if x.attr("type") != Some("submit") {
        return Err(StanzaError::bad_request());
    }
    let value = |var: &str| {
        x.elements()
            .find(|f| f.is("field", DATA) && f.attr("var") == Some(var))
            .and_then(|f| f.child_text("value", DATA))
    };
    if value("FORM_TYPE").is_some_and(|t| t.trim() != FORM_TYPE) {
        return Err(StanzaError::bad_request());
    }
    let raw = value(NICK_FIELD).unwrap_or_default();
    // The nick as a resource part, normalized like the occupant JIDs it will be used in.
    let nick = crate::addr::parse(&format!("{}/{}", room.jid, raw.trim()))
        .and_then(|a| a.resource().map(|r| r.as_str().to_string()))
        .filter(|n| !n.is_empty() && n.len() <= MAX_NICK_BYTES)
        .ok_or_else(|| {
            StanzaError::new(ErrorType::Modify, "not-acceptable").with_text("invalid nickname")
        })?;
    let taken_by_other = room.nick_owner(&nick).is_some_and(|o| *o != bare)
        || room
            .occupants
            .iter()
            .any(|o| o.nick == nick && o.bare != bare);
    if taken_by_other {
        return Err(err(ErrorType::Cancel, "conflict"));
    }
    if room.affiliation(&bare).is_none() {
        if room.affiliations.len() >= MAX_AFFILIATIONS {
            return Err(StanzaError::resource_constraint());
        }
        room.set_affiliation(&bare, Some(RoomAffiliation::Member), None);
        // Present under another nick: everyone sees the new membership (and voice).
        for idx in 0..room.occupants.len() {
            if room.occupants[idx].bare == bare {
                let role = room.default_role(Some(RoomAffiliation::Member));
                room.occupants[idx].role = room.occupants[idx].role.max(role);
                room.broadcast_presence(idx, false, &[], &[], None, out);
            }
        }
    }
    if let Some(e) = room.affiliations.get_mut(&bare) {
        e.nick = Some(nick);
    }
    svc.save(ctx, room).await;
    Ok(None)
}

/// §7.12: the nick `from` reserved, as an identity of the `x-roomuser-item` node.
pub fn reserved_nick(room: &Room, from: &Jid) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_attr("node", ROOMUSER_NODE);
    if let Some(nick) = registered_nick(room, from) {
        q.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("name", nick.to_string())
                .with_attr("type", "text"),
        );
    }
    q
}
