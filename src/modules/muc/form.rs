//! The room configuration form (`muc#roomconfig`, XEP-0045 §10.2 and §15.5.3) and the
//! room information form (`muc#roominfo`, §15.5.4).

// Parsers return the stanza error to answer with.
#![allow(clippy::result_large_err)]

use crate::addr::BareJid;
use crate::config::MucConfig;
use crate::storage::{RoomConfig, RoomPmPolicy};
use crate::stream::StanzaError;
use crate::xml::Element;

pub const DATA: &str = "jabber:x:data";
pub const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// Longest room name, description or password accepted.
const MAX_TEXT: usize = 1024;

fn value(v: impl Into<String>) -> Element {
    Element::new("value", DATA).with_text(v)
}

fn field(var: &str, kind: &str, label: &str) -> Element {
    let mut f = Element::new("field", DATA).with_attr("var", var);
    if !kind.is_empty() {
        f.set_attr("type", kind);
    }
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    f
}

fn boolean(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn option(label: &str, v: &str) -> Element {
    Element::new("option", DATA)
        .with_attr("label", label)
        .with_child(value(v))
}

fn pm_str(p: RoomPmPolicy) -> &'static str {
    match p {
        RoomPmPolicy::Anyone => "anyone",
        RoomPmPolicy::Participants => "participants",
        RoomPmPolicy::Moderators => "moderators",
        RoomPmPolicy::Nobody => "none",
    }
}

/// The form an owner fills in, with the current values.
pub fn config_form(c: &RoomConfig, room: &BareJid) -> Element {
    let hidden = field("FORM_TYPE", "hidden", "").with_child(value(ROOMCONFIG));
    let text =
        |var: &str, label: &str, v: &str| field(var, "text-single", label).with_child(value(v));
    let flag = |var: &str, label: &str, v: bool| {
        field(var, "boolean", label).with_child(value(boolean(v)))
    };
    let whois = field(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs?",
    )
    .with_child(value(if c.whois_anyone {
        "anyone"
    } else {
        "moderators"
    }))
    .with_child(option("Moderators only", "moderators"))
    .with_child(option("Anyone", "anyone"));
    let pm = field(
        "muc#roomconfig_allowpm",
        "list-single",
        "Who may send private messages?",
    )
    .with_child(value(pm_str(c.allow_pm)))
    .with_child(option("Anyone", "anyone"))
    .with_child(option("Participants", "participants"))
    .with_child(option("Moderators", "moderators"))
    .with_child(option("Nobody", "none"));
    Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", DATA).with_text(format!("Configuration of {room}")))
        .with_child(hidden)
        .with_child(text("muc#roomconfig_roomname", "Room name", &c.name))
        .with_child(text(
            "muc#roomconfig_roomdesc",
            "Description",
            &c.description,
        ))
        .with_child(flag(
            "muc#roomconfig_persistentroom",
            "Persistent",
            c.persistent,
        ))
        .with_child(flag(
            "muc#roomconfig_publicroom",
            "Publicly listed",
            c.public,
        ))
        .with_child(flag(
            "muc#roomconfig_membersonly",
            "Members only",
            c.members_only,
        ))
        .with_child(flag(
            "muc#roomconfig_moderatedroom",
            "Moderated",
            c.moderated,
        ))
        .with_child(flag(
            "muc#roomconfig_passwordprotectedroom",
            "Password required",
            c.password.is_some(),
        ))
        .with_child(
            field("muc#roomconfig_roomsecret", "text-private", "Password")
                .with_child(value(c.password.clone().unwrap_or_default())),
        )
        .with_child(text(
            "muc#roomconfig_maxusers",
            "Maximum number of occupants",
            &c.max_users.to_string(),
        ))
        .with_child(whois)
        .with_child(pm)
        .with_child(flag(
            "muc#roomconfig_changesubject",
            "Participants may change the subject",
            c.change_subject,
        ))
        .with_child(flag(
            "muc#roomconfig_allowinvites",
            "Members may invite",
            c.allow_invites,
        ))
        .with_child(text(
            "muc#roomconfig_historylength",
            "Messages sent as history",
            &c.history_length.to_string(),
        ))
}

fn parse_bool(v: &str) -> Result<bool, StanzaError> {
    match v.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(bad("not a boolean")),
    }
}

fn bad(why: &str) -> StanzaError {
    StanzaError::bad_request().with_text(why.to_string())
}

fn bounded_text(v: Option<&String>) -> Result<String, StanzaError> {
    let v = v.cloned().unwrap_or_default();
    if v.len() > MAX_TEXT {
        return Err(bad("value too long"));
    }
    Ok(v)
}

/// Applies a submitted form to a copy of `current`. Unknown fields are ignored (§10.2:
/// a service MAY ignore fields it does not understand); bad values are `bad-request`.
pub fn apply(
    x: &Element,
    current: &RoomConfig,
    cfg: &MucConfig,
) -> Result<RoomConfig, StanzaError> {
    let mut c = current.clone();
    let mut password_protected: Option<bool> = None;
    let mut secret: Option<String> = None;
    for f in x.elements().filter(|e| e.is("field", DATA)) {
        let values: Vec<String> = f
            .elements()
            .filter(|v| v.is("value", DATA))
            .map(Element::text)
            .collect();
        if values.len() > 1 {
            return Err(bad("one value expected"));
        }
        let v = values.first();
        let flag = || parse_bool(v.map_or("", String::as_str));
        let number = |max: u64| -> Result<u32, StanzaError> {
            let s = v.map_or("", |s| s.trim());
            let n = if s == "none" {
                max
            } else {
                s.parse::<u64>().map_err(|_| bad("not a number"))?
            };
            if n > max {
                return Err(bad("number too large"));
            }
            u32::try_from(n).map_err(|_| bad("number too large"))
        };
        match f.attr("var").unwrap_or("") {
            "FORM_TYPE" if v.map(|s| s.trim()) != Some(ROOMCONFIG) => {
                return Err(bad("wrong FORM_TYPE"));
            }
            "muc#roomconfig_roomname" => c.name = bounded_text(v)?,
            "muc#roomconfig_roomdesc" => c.description = bounded_text(v)?,
            "muc#roomconfig_persistentroom" => c.persistent = flag()?,
            "muc#roomconfig_publicroom" => c.public = flag()?,
            "muc#roomconfig_membersonly" => c.members_only = flag()?,
            "muc#roomconfig_moderatedroom" => c.moderated = flag()?,
            "muc#roomconfig_passwordprotectedroom" => password_protected = Some(flag()?),
            "muc#roomconfig_roomsecret" => secret = Some(bounded_text(v)?),
            "muc#roomconfig_maxusers" => {
                let n = number(cfg.max_occupants as u64)?;
                if n == 0 {
                    return Err(bad("a room needs room for someone"));
                }
                c.max_users = n;
            }
            "muc#roomconfig_whois" => {
                c.whois_anyone = match v.map(|s| s.trim()) {
                    Some("anyone") => true,
                    Some("moderators") => false,
                    _ => return Err(bad("whois must be anyone or moderators")),
                }
            }
            "muc#roomconfig_allowpm" => {
                c.allow_pm = match v.map(|s| s.trim()) {
                    Some("anyone") => RoomPmPolicy::Anyone,
                    Some("participants") => RoomPmPolicy::Participants,
                    Some("moderators") => RoomPmPolicy::Moderators,
                    Some("none") => RoomPmPolicy::Nobody,
                    _ => return Err(bad("unknown private message policy")),
                }
            }
            "muc#roomconfig_changesubject" => c.change_subject = flag()?,
            "muc#roomconfig_allowinvites" => c.allow_invites = flag()?,
            "muc#roomconfig_historylength" => {
                c.history_length = number(cfg.max_history_length as u64)?;
            }
            _ => {}
        }
    }
    // The secret without the flag keeps the flag as it was; the flag without a secret
    // keeps the old secret.
    let protected = password_protected.unwrap_or(c.password.is_some());
    let secret = secret.or_else(|| c.password.clone()).unwrap_or_default();
    c.password = match (protected, secret.is_empty()) {
        (false, _) => None,
        (true, false) => Some(secret),
        (true, true) => return Err(bad("a password-protected room needs a password")),
    };
    Ok(c)
}

/// The `muc#roominfo` form of disco#info (§15.5.4).
pub fn roominfo(c: &RoomConfig, occupants: usize, subject: Option<&str>) -> Element {
    let text =
        |var: &str, label: &str, v: &str| field(var, "text-single", label).with_child(value(v));
    Element::new("x", DATA)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", "").with_child(value(ROOMINFO)))
        .with_child(text(
            "muc#roominfo_description",
            "Description",
            &c.description,
        ))
        .with_child(text(
            "muc#roominfo_occupants",
            "Number of occupants",
            &occupants.to_string(),
        ))
        .with_child(text(
            "muc#roominfo_subject",
            "Subject",
            subject.unwrap_or(""),
        ))
        .with_child(text("muc#roomconfig_roomname", "Name", &c.name))
        .with_child(
            field(
                "muc#roomconfig_changesubject",
                "boolean",
                "Occupants may change the subject",
            )
            .with_child(value(boolean(c.change_subject))),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::muc::room::default_config;
    use crate::xml::parse_stanza;

    fn submit(fields: &str) -> Element {
        parse_stanza(&format!(
            "<x xmlns='jabber:x:data' type='submit'>{fields}</x>"
        ))
        .unwrap()
    }

    fn f(var: &str, v: &str) -> String {
        format!("<field var='{var}'><value>{v}</value></field>")
    }

    #[test]
    fn applies_values_and_refuses_bad_ones() {
        let cfg = MucConfig::default();
        let base = default_config(&cfg);
        let x = submit(
            &[
                f("FORM_TYPE", ROOMCONFIG),
                f("muc#roomconfig_roomname", "Cave"),
                f("muc#roomconfig_persistentroom", "1"),
                f("muc#roomconfig_membersonly", "true"),
                f("muc#roomconfig_passwordprotectedroom", "1"),
                f("muc#roomconfig_roomsecret", "s3cret"),
                f("muc#roomconfig_maxusers", "10"),
                f("muc#roomconfig_whois", "anyone"),
                f("muc#roomconfig_allowpm", "none"),
                f("muc#roomconfig_historylength", "5"),
            ]
            .concat(),
        );
        let c = apply(&x, &base, &cfg).unwrap();
        assert_eq!(c.name, "Cave");
        assert!(c.persistent && c.members_only && c.whois_anyone);
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!((c.max_users, c.history_length), (10, 5));
        assert_eq!(c.allow_pm, RoomPmPolicy::Nobody);

        for bad in [
            f("muc#roomconfig_persistentroom", "maybe"),
            f("muc#roomconfig_maxusers", "-1"),
            f("muc#roomconfig_maxusers", "100000"),
            f("muc#roomconfig_whois", "everyone"),
            f("muc#roomconfig_historylength", "9999"),
            f("muc#roomconfig_passwordprotectedroom", "1"),
            f("FORM_TYPE", "urn:other"),
        ] {
            let err = apply(&submit(&bad), &base, &cfg).unwrap_err();
            assert_eq!(err.condition, "bad-request", "{bad}");
        }
        // The empty form accepts the current configuration (instant room).
        assert_eq!(apply(&submit(""), &base, &cfg).unwrap(), base);
    }
}
