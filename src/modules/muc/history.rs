//! Discussion history sent on join (XEP-0045 §7.2.14): the last messages of the room,
//! cut by the newcomer's `<history/>` request, each with an XEP-0203 delay.

use std::collections::VecDeque;

use super::MUC;
use crate::addr::{BareJid, Jid};
use crate::modules::mam::{parse_stamp, stamp};
use crate::xml::{Element, ns};

pub struct HistoryItem {
    /// The message as broadcast (from the occupant JID, without `to`).
    pub stanza: Element,
    /// When the room sent it, µs since the epoch.
    pub micros: u64,
    /// Its size as XML characters, for `maxchars`.
    pub chars: usize,
}

impl HistoryItem {
    pub fn new(stanza: Element, micros: u64) -> HistoryItem {
        let chars = stanza.to_stanza_string().chars().count();
        HistoryItem {
            stanza,
            micros,
            chars,
        }
    }
}

/// What one room's history holds at most, in XML characters, whatever its length: rooms
/// times history length times the largest stanza would be far too much memory.
pub const MAX_HISTORY_CHARS: usize = 256 * 1024;

/// Keeps the last `len` messages, within [`MAX_HISTORY_CHARS`] (the newest is always
/// kept).
pub fn push(history: &mut VecDeque<HistoryItem>, item: HistoryItem, len: usize) {
    if len == 0 {
        history.clear();
        return;
    }
    let mut total: usize = history.iter().map(|h| h.chars).sum::<usize>() + item.chars;
    while history.len() >= len || (total > MAX_HISTORY_CHARS && !history.is_empty()) {
        if let Some(old) = history.pop_front() {
            total -= old.chars;
        }
    }
    history.push_back(item);
}

/// The newcomer's limits; absent attributes (or unreadable ones, which are ignored as
/// the XEP leaves them undefined) do not limit.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Request {
    pub max_stanzas: Option<usize>,
    pub max_chars: Option<usize>,
    pub since: Option<u64>,
}

pub fn request(join: &Element, now_micros: u64) -> Request {
    let Some(h) = join.child("x", MUC).and_then(|x| x.child("history", MUC)) else {
        return Request::default();
    };
    let num = |name: &str| h.attr(name).and_then(|v| v.trim().parse::<u64>().ok());
    let seconds_floor =
        num("seconds").map(|s| now_micros.saturating_sub(s.saturating_mul(1_000_000)));
    let since = h.attr("since").and_then(parse_stamp);
    Request {
        max_stanzas: num("maxstanzas").map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_chars: num("maxchars").map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        since: match (seconds_floor, since) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    }
}

/// The history messages for `to`, oldest first.
pub fn select(
    history: &VecDeque<HistoryItem>,
    req: &Request,
    room: &BareJid,
    to: &Jid,
) -> Vec<Element> {
    let mut picked: Vec<&HistoryItem> = Vec::new();
    let mut chars = 0usize;
    for item in history.iter().rev() {
        if req.max_stanzas.is_some_and(|m| picked.len() >= m) {
            break;
        }
        if req.since.is_some_and(|s| item.micros < s) {
            break;
        }
        if let Some(max) = req.max_chars {
            chars = chars.saturating_add(item.chars);
            if chars > max {
                break;
            }
        }
        picked.push(item);
    }
    picked
        .into_iter()
        .rev()
        .map(|item| {
            let mut m = item.stanza.clone();
            m.set_attr("to", to.as_str());
            m.push_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", room.as_str())
                    .with_attr("stamp", stamp(item.micros)),
            );
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_stanza;

    fn history(n: u64) -> VecDeque<HistoryItem> {
        let mut h = VecDeque::new();
        for i in 0..n {
            let m = parse_stanza(&format!(
                "<message xmlns='jabber:client' type='groupchat' from='r@c/n'><body>m{i}</body></message>"
            ))
            .unwrap();
            push(&mut h, HistoryItem::new(m, 1_000_000 * (i + 1)), 5);
        }
        h
    }

    fn bodies(v: &[Element]) -> Vec<String> {
        v.iter()
            .map(|m| m.child_text("body", ns::CLIENT).unwrap())
            .collect()
    }

    #[test]
    fn keeps_the_last_messages_and_cuts_by_request() {
        let h = history(8);
        assert_eq!(h.len(), 5);
        let all = select(
            &h,
            &Request::default(),
            &crate::addr::parse_bare("r@c").unwrap(),
            &crate::addr::parse("u@x/r").unwrap(),
        );
        assert_eq!(bodies(&all), ["m3", "m4", "m5", "m6", "m7"]);
        let two = Request {
            max_stanzas: Some(2),
            ..Request::default()
        };
        assert_eq!(
            bodies(&select(
                &h,
                &two,
                &crate::addr::parse_bare("r@c").unwrap(),
                &crate::addr::parse("u@x/r").unwrap()
            )),
            ["m6", "m7"]
        );
        let none = Request {
            max_chars: Some(0),
            ..Request::default()
        };
        assert!(
            select(
                &h,
                &none,
                &crate::addr::parse_bare("r@c").unwrap(),
                &crate::addr::parse("u@x/r").unwrap()
            )
            .is_empty()
        );
        let since = Request {
            since: Some(7_000_000),
            ..Request::default()
        };
        assert_eq!(
            bodies(&select(
                &h,
                &since,
                &crate::addr::parse_bare("r@c").unwrap(),
                &crate::addr::parse("u@x/r").unwrap()
            )),
            ["m6", "m7"]
        );
    }

    #[test]
    fn history_is_bounded_in_size() {
        let big = "x".repeat(MAX_HISTORY_CHARS / 3);
        let mut h = VecDeque::new();
        for i in 0..5u64 {
            let m = parse_stanza(&format!(
                "<message xmlns='jabber:client' type='groupchat'><body>{i}{big}</body></message>"
            ))
            .unwrap();
            push(&mut h, HistoryItem::new(m, i), 100);
        }
        assert_eq!(h.len(), 2);
        assert!(h.iter().map(|i| i.chars).sum::<usize>() <= MAX_HISTORY_CHARS);
        assert_eq!(h.back().map(|i| i.micros), Some(4));
    }

    #[test]
    fn parses_the_request() {
        let join = parse_stanza(
            "<presence xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'>\
             <history maxstanzas='3' maxchars='x' seconds='10'/></x></presence>",
        )
        .unwrap();
        let r = request(&join, 100_000_000);
        assert_eq!(r.max_stanzas, Some(3));
        assert_eq!(r.max_chars, None);
        assert_eq!(r.since, Some(90_000_000));
    }
}
