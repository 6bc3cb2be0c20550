//! XEP-0424 retraction of one's own message and XEP-0425 moderation in rooms: the
//! archived message becomes a tombstone (also in the join history) and everyone is told.

use std::sync::Arc;

use super::room::{Role, Room};
use super::{MucService, OCCUPANT_ID, archive, err, now_micros};
use crate::addr::Jid;
use crate::context::Context;
use crate::modules::mam::stamp;
use crate::stream::{ErrorType, StanzaError};
use crate::xml::{Element, Node, ns};

pub const RETRACT: &str = "urn:xmpp:message-retract:1";
pub const MODERATE: &str = "urn:xmpp:message-moderate:1";
const FALLBACK: &str = "urn:xmpp:fallback:0";

/// The archived message `id` of the room, parsed.
async fn original(ctx: &Arc<Context>, room: &Room, id: &str) -> Result<Element, StanzaError> {
    let found = ctx
        .storage
        .archive
        .get(&room.jid, id)
        .await
        .map_err(crate::modules::internal)?
        .ok_or_else(StanzaError::item_not_found)?;
    crate::xml::parse_stanza(&found.stanza).map_err(|_| StanzaError::item_not_found())
}

fn occupant_id_of(el: &Element) -> Option<&str> {
    el.child("occupant-id", OCCUPANT_ID)
        .and_then(|o| o.attr("id"))
}

/// The original's envelope with the tombstone for its content (XEP-0424 §5.1).
fn tombstone(original: &Element, retracted: Element) -> Element {
    let mut t = Element::new("message", ns::CLIENT);
    t.attrs = original.attrs.clone();
    t.push_child(retracted);
    for child in &original.children {
        if let Node::Element(e) = child
            && (e.is("occupant-id", OCCUPANT_ID) || e.is("stanza-id", crate::modules::mam::SID))
        {
            t.push_child(e.clone());
        }
    }
    t
}

/// Puts the tombstone in the archive and in the join history.
async fn bury(
    ctx: &Arc<Context>,
    room: &mut Room,
    id: &str,
    tomb: &Element,
) -> Result<(), StanzaError> {
    let replaced = ctx
        .storage
        .archive
        .replace(&room.jid, id, &tomb.to_stanza_string())
        .await
        .map_err(crate::modules::internal)?;
    if !replaced {
        return Err(StanzaError::item_not_found());
    }
    for item in room.history.iter_mut() {
        let matches = item.stanza.elements().any(|e| {
            e.is("stanza-id", crate::modules::mam::SID)
                && e.attr("by") == Some(room.jid.as_str())
                && e.attr("id") == Some(id)
        });
        if matches {
            item.stanza = tomb.clone();
        }
    }
    Ok(())
}

/// XEP-0424 in a room: a groupchat message retracting the sender's own earlier message
/// (by the room's stanza-id). Checked here; the caller broadcasts it like any message.
pub async fn check_retraction(
    ctx: &Arc<Context>,
    room: &mut Room,
    sender_idx: usize,
    msg: &Element,
) -> Result<(), StanzaError> {
    let Some(retract) = msg.child("retract", RETRACT) else {
        return Ok(());
    };
    let id = retract
        .attr("id")
        .ok_or_else(StanzaError::bad_request)?
        .to_string();
    let orig = original(ctx, room, &id).await?;
    // Only the author retracts (the occupant id stays with the user across nicks).
    if occupant_id_of(&orig) != Some(room.occupants[sender_idx].id.as_str()) {
        return Err(StanzaError::forbidden());
    }
    let tomb = tombstone(
        &orig,
        Element::new("retracted", RETRACT)
            .with_attr("id", id.clone())
            .with_attr("stamp", stamp(now_micros())),
    );
    bury(ctx, room, &id, &tomb).await
}

/// XEP-0425: a moderator has a message retracted for everyone.
pub async fn moderate(
    svc: &MucService,
    ctx: &Arc<Context>,
    room: &mut Room,
    from: &Jid,
    payload: &Element,
    out: &mut Vec<Element>,
) -> Result<Option<Element>, StanzaError> {
    let Some(idx) = room.by_session(from) else {
        return Err(StanzaError::forbidden());
    };
    if room.occupants[idx].role != Role::Moderator {
        return Err(StanzaError::forbidden());
    }
    if !payload.has_child("retract", RETRACT) {
        return Err(StanzaError::bad_request());
    }
    if !svc.cfg.archive {
        return Err(err(ErrorType::Cancel, "feature-not-implemented"));
    }
    let id = payload
        .attr("id")
        .ok_or_else(StanzaError::bad_request)?
        .to_string();
    let reason = payload.child_text("reason", MODERATE);
    let orig = original(ctx, room, &id).await?;
    let moderator = &room.occupants[idx];
    let moderated = Element::new("moderated", MODERATE)
        .with_attr("by", room.nick_jid(&moderator.nick))
        .with_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", moderator.id.clone()));
    let mut retracted = Element::new("retracted", RETRACT)
        .with_attr("id", id.clone())
        .with_attr("stamp", stamp(now_micros()))
        .with_child(moderated.clone());
    let mut retract = Element::new("retract", RETRACT)
        .with_attr("id", id.clone())
        .with_child(moderated);
    if let Some(r) = &reason {
        retracted.push_child(Element::new("reason", MODERATE).with_text(r.clone()));
        retract.push_child(Element::new("reason", MODERATE).with_text(r.clone()));
    }
    bury(ctx, room, &id, &tombstone(&orig, retracted)).await?;
    // The announcement is archived too, so that clients catching up by MAM learn of it.
    let mut msg = Element::new("message", ns::CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_attr("type", "groupchat")
        .with_attr("id", crate::stream::random_id())
        .with_child(retract)
        .with_child(Element::new("fallback", FALLBACK).with_attr("for", RETRACT))
        .with_child(
            Element::new("body", ns::CLIENT).with_text("A message was retracted by a moderator."),
        );
    if let Some(sid) = archive::append(ctx, &room.jid, &msg, now_micros()).await {
        msg.push_child(crate::modules::mam::stanza_id(&room.jid, &sid));
    }
    for (jid, _) in room.audience() {
        let mut copy = msg.clone();
        copy.set_attr("to", jid.as_str());
        out.push(copy);
    }
    Ok(None)
}
