//! Voice requests (XEP-0045 §7.13) and their approval by moderators (§8.6).

use super::room::{Role, Room};
use super::{MucService, not_acceptable, reply_error};
use crate::addr::Jid;
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

const DATA: &str = "jabber:x:data";
pub const REQUEST: &str = "http://jabber.org/protocol/muc#request";

/// The `muc#request` form of a message, if it carries one.
pub fn request_form(msg: &Element) -> Option<&Element> {
    msg.elements().find(|x| {
        x.is("x", DATA)
            && x.elements().any(|f| {
                f.attr("var") == Some("FORM_TYPE")
                    && f.child_text("value", DATA).as_deref().map(str::trim) == Some(REQUEST)
            })
    })
}

fn value(x: &Element, var: &str) -> Option<String> {
    x.elements()
        .find(|f| f.is("field", DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.child_text("value", DATA))
        .map(|v| v.trim().to_string())
}

fn field(var: &str, kind: &str, label: &str, v: &str) -> Element {
    Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label)
        .with_child(Element::new("value", DATA).with_text(v))
}

/// A visitor asks for voice (the form goes to every moderator), or a moderator answers
/// one (voice granted when `muc#request_allow` is true).
pub fn handle(
    svc: &MucService,
    room: &mut Room,
    from: &Jid,
    stanza: &Element,
    form: &Element,
    out: &mut Vec<Element>,
) {
    let Some(idx) = room.by_session(from) else {
        return reply_error(out, stanza, not_acceptable());
    };
    if let Some(allow) = value(form, "muc#request_allow") {
        if room.occupants[idx].role != Role::Moderator {
            return reply_error(out, stanza, StanzaError::forbidden());
        }
        if !matches!(allow.as_str(), "1" | "true") {
            return;
        }
        let Some(nick) = value(form, "muc#roomnick") else {
            return reply_error(out, stanza, StanzaError::bad_request());
        };
        let Some(target) = room.by_nick(&nick) else {
            return reply_error(out, stanza, StanzaError::item_not_found());
        };
        if room.occupants[target].role == Role::Visitor {
            room.occupants[target].role = Role::Participant;
            room.broadcast_presence(target, false, &[], &[], None, out);
        }
        return;
    }
    let occupant = &mut room.occupants[idx];
    if occupant.role != Role::Visitor {
        return;
    }
    // Every request reaches every moderator: the message allowance bounds them.
    if !occupant.take_token(&svc.cfg) {
        return reply_error(out, stanza, StanzaError::resource_constraint());
    }
    let nick = occupant.nick.clone();
    let x = Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", DATA).with_text("Voice request"))
        .with_child(
            Element::new("field", DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", DATA).with_text(REQUEST)),
        )
        .with_child(field(
            "muc#role",
            "list-single",
            "Requested role",
            "participant",
        ))
        .with_child(field("muc#jid", "jid-single", "User ID", from.as_str()))
        .with_child(field("muc#roomnick", "text-single", "Room nickname", &nick))
        .with_child(field(
            "muc#request_allow",
            "boolean",
            "Grant voice to this person?",
            "false",
        ));
    for o in room.occupants.iter().filter(|o| o.role == Role::Moderator) {
        for s in &o.sessions {
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", room.jid.as_str())
                    .with_attr("to", s.jid.as_str())
                    .with_attr("id", crate::stream::random_id())
                    .with_child(x.clone()),
            );
        }
    }
}
