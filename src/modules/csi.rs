//! XEP-0352 Client State Indication. While a client says it is inactive, presence updates
//! and bare chat-state notifications for it are held back, only the latest per sender
//! full JID, so a screen-off phone is not woken by every contact's status change. Anything
//! important (a message with a body or other payload, an iq, a subscription request) first
//! flushes what is held, then goes out, so the client sees stanzas in a sensible order;
//! `<active/>` flushes too. Memory stays bounded: one held stanza per (kind, sender) and at
//! most `cap` of them, beyond which everything is flushed.
//!
//! The module registers an outbound filter that the session writer runs on every stanza
//! for the client. A hibernated XEP-0198 session uses the same filter (hold = true), so a
//! presence flood does not fill its queue of unacknowledged stanzas.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;

use crate::context::Context;
use crate::registry::{
    BindInline, Extensions, Module, NonzaHandler, OutboundFilter, Registrar, SessionCtx,
    SessionEvent, SessionEvents,
};
use crate::stream::StreamErrorCondition;
use crate::xml::{Element, ns};

/// The stream feature and nonza namespace.
pub const NS: &str = "urn:xmpp:csi:0";

pub struct Csi;

impl Module for Csi {
    fn name(&self) -> &'static str {
        "csi"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let me = Arc::new(*self);
        r.bound_stream_feature(Element::new("csi", NS));
        r.nonza(NS, me.clone());
        r.bind_inline(NS, me.clone());
        r.outbound_filter(me.clone());
        r.session_events(me);
    }
}

impl NonzaHandler for Csi {
    fn handle(
        &self,
        _ctx: &Context,
        ext: &mut Extensions,
        el: &Element,
        out: &mut Vec<Element>,
    ) -> Result<(), StreamErrorCondition> {
        let state = ext.get_or_insert_with(CsiState::default);
        match el.name.as_str() {
            "active" => state.set_active(out),
            "inactive" => state.set_inactive(),
            _ => return Err(StreamErrorCondition::UnsupportedStanzaType),
        }
        Ok(())
    }
}

/// XEP-0386: the session starts in the state the bind request names (XEP-0352 §5 has no
/// answer to either).
impl BindInline for Csi {
    fn enable(
        &self,
        ctx: &Context,
        session: &mut SessionCtx<'_>,
        request: &Element,
    ) -> Option<Element> {
        // Nothing is held yet, so nothing can be flushed.
        let mut nothing = Vec::new();
        let _ = NonzaHandler::handle(self, ctx, session.ext, request, &mut nothing);
        None
    }
}

impl OutboundFilter for Csi {
    fn filter(
        &self,
        ctx: &Context,
        ext: &mut Extensions,
        el: Element,
        hold: bool,
        out: &mut Vec<Element>,
    ) {
        let Some(state) = ext.get_mut::<CsiState>() else {
            // Never told anything: active, nothing held; a hibernated session still holds.
            if !hold {
                out.push(el);
                return;
            }
            let state = ext.get_or_insert_with(CsiState::default);
            state.filter(el, true, HoldLimit::of(&ctx.config.limits), out);
            return;
        };
        let hold = hold || state.is_inactive();
        // One held stanza per contact is expected; the queue length bounds the rest.
        state.filter(el, hold, HoldLimit::of(&ctx.config.limits), out);
    }

    fn passes_through(&self, ext: &Extensions) -> bool {
        ext.get::<CsiState>()
            .is_none_or(|s| !s.is_inactive() && s.held_len() == 0)
    }
}

#[async_trait]
impl SessionEvents for Csi {
    /// A new stream starts active (XEP-0352 §3): what was held goes out.
    async fn session_event(
        &self,
        _ctx: &Arc<Context>,
        session: &mut SessionCtx<'_>,
        event: &SessionEvent<'_>,
    ) {
        if let SessionEvent::Resumed = event
            && let Some(state) = session.ext.get_mut::<CsiState>()
        {
            state.set_active(session.out);
        }
    }
}

/// What a held stanza replaces: the previous one of the same kind from the same sender.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Presence(String),
    ChatState(String),
}

/// One session's client state and the stanzas held back for it.
#[derive(Debug, Default)]
pub struct CsiState {
    inactive: bool,
    /// Keys in the order they were first held.
    order: VecDeque<Key>,
    held: HashMap<Key, Element>,
    /// `Element::approx_bytes` of what is held, summed.
    held_bytes: usize,
}

/// How much one session may hold back: stanzas, and bytes (a quarter of the session's
/// budget, `limits.session_max_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct HoldLimit {
    pub stanzas: usize,
    pub bytes: usize,
}

impl HoldLimit {
    fn of(limits: &crate::config::Limits) -> Self {
        HoldLimit {
            stanzas: limits.session_queue_len,
            bytes: limits.session_max_bytes / 4,
        }
    }
}

/// Whether a stanza can wait while the client is inactive, and under which key.
fn holdable(el: &Element) -> Option<Key> {
    let from = el.attr("from")?;
    match el.name.as_str() {
        // Available and unavailable only: subscription requests need the user.
        "presence" => match el.attr("type") {
            None | Some("unavailable") => Some(Key::Presence(from.to_string())),
            _ => None,
        },
        "message" => {
            if matches!(el.attr("type"), Some("error" | "groupchat")) {
                return None;
            }
            let mut states = 0;
            for child in el.elements() {
                if child.ns == ns::CHATSTATES {
                    states += 1;
                } else if !(child.ns == ns::CLIENT && child.name == "thread") {
                    return None;
                }
            }
            (states > 0).then(|| Key::ChatState(from.to_string()))
        }
        _ => None,
    }
}

impl CsiState {
    pub fn is_inactive(&self) -> bool {
        self.inactive
    }

    pub fn set_inactive(&mut self) {
        self.inactive = true;
    }

    /// The client is active again: everything held goes to `out`, oldest first.
    pub fn set_active(&mut self, out: &mut Vec<Element>) {
        self.inactive = false;
        self.flush(out);
    }

    /// How many stanzas are held.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Moves every held stanza to `out`, oldest first.
    pub fn flush(&mut self, out: &mut Vec<Element>) {
        self.held_bytes = 0;
        for key in self.order.drain(..) {
            if let Some(el) = self.held.remove(&key) {
                out.push(el);
            }
        }
    }

    /// Passes one outbound stanza through the filter. With `hold` (the client is inactive
    /// or its session hibernated) unimportant stanzas are kept, replacing the previous one
    /// from the same sender; everything else is appended to `out` after whatever was held.
    /// Beyond `limit` everything held is flushed.
    pub fn filter(&mut self, el: Element, hold: bool, limit: HoldLimit, out: &mut Vec<Element>) {
        if hold && let Some(key) = holdable(&el) {
            let bytes = el.approx_bytes();
            let replaced = self.held.get(&key).map_or(0, Element::approx_bytes);
            let held_bytes = self.held_bytes - replaced + bytes;
            let fits = held_bytes <= limit.bytes
                && (self.held.contains_key(&key) || self.held.len() < limit.stanzas);
            if fits {
                if self.held.insert(key.clone(), el).is_none() {
                    self.order.push_back(key);
                }
                self.held_bytes = held_bytes;
                return;
            }
        }
        self.flush(out);
        out.push(el);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanzas(n: usize) -> HoldLimit {
        HoldLimit {
            stanzas: n,
            bytes: usize::MAX,
        }
    }

    fn presence(from: &str, show: Option<&str>) -> Element {
        let mut p = Element::new("presence", ns::CLIENT).with_attr("from", from);
        if let Some(show) = show {
            p.push_child(Element::new("show", ns::CLIENT).with_text(show));
        }
        p
    }

    fn composing(from: &str) -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("from", from)
            .with_attr("type", "chat")
            .with_child(Element::new("composing", ns::CHATSTATES))
    }

    fn chat(from: &str, body: &str) -> Element {
        Element::new("message", ns::CLIENT)
            .with_attr("from", from)
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text(body))
    }

    fn shows(out: &[Element]) -> Vec<String> {
        out.iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.name,
                    e.attr("from").unwrap_or(""),
                    e.child_text("show", ns::CLIENT)
                        .or_else(|| e.child_text("body", ns::CLIENT))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn active_passes_everything() {
        let mut csi = CsiState::default();
        let mut out = Vec::new();
        csi.filter(presence("a@x/1", None), false, stanzas(10), &mut out);
        csi.filter(composing("a@x/1"), false, stanzas(10), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(csi.held_len(), 0);
    }

    #[test]
    fn inactive_keeps_latest_presence_per_full_jid_and_flushes_before_a_body() {
        let mut csi = CsiState::default();
        csi.set_inactive();
        let mut out = Vec::new();
        csi.filter(presence("a@x/1", Some("away")), true, stanzas(10), &mut out);
        csi.filter(presence("b@x/1", Some("dnd")), true, stanzas(10), &mut out);
        csi.filter(presence("a@x/1", Some("xa")), true, stanzas(10), &mut out);
        csi.filter(presence("a@x/2", None), true, stanzas(10), &mut out);
        csi.filter(composing("b@x/1"), true, stanzas(10), &mut out);
        assert!(out.is_empty());
        assert_eq!(csi.held_len(), 4);
        csi.filter(chat("c@x/1", "hi"), true, stanzas(10), &mut out);
        assert_eq!(
            shows(&out),
            [
                "presence a@x/1 xa",
                "presence b@x/1 dnd",
                "presence a@x/2 ",
                "message b@x/1 ",
                "message c@x/1 hi"
            ]
        );
        assert_eq!(csi.held_len(), 0);
    }

    #[test]
    fn important_stanzas_are_never_held() {
        let mut csi = CsiState::default();
        let mut out = Vec::new();
        let subscribe = presence("a@x", None).with_attr("type", "subscribe");
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("from", "x")
            .with_attr("type", "get");
        let encrypted = Element::new("message", ns::CLIENT)
            .with_attr("from", "a@x/1")
            .with_child(Element::new("encrypted", "eu.siacs.conversations.axolotl"))
            .with_child(Element::new("active", ns::CHATSTATES));
        let no_from = Element::new("presence", ns::CLIENT);
        for el in [subscribe, iq, encrypted, no_from] {
            csi.filter(el, true, stanzas(10), &mut out);
        }
        assert_eq!(out.len(), 4);
        assert_eq!(csi.held_len(), 0);
    }

    #[test]
    fn active_flushes_in_order_and_cap_bounds_memory() {
        let mut csi = CsiState::default();
        csi.set_inactive();
        let mut out = Vec::new();
        for i in 0..3 {
            csi.filter(
                presence(&format!("u{i}@x/r"), None),
                true,
                stanzas(3),
                &mut out,
            );
        }
        assert!(out.is_empty());
        // A fourth sender: over the cap, everything goes.
        csi.filter(presence("u3@x/r", None), true, stanzas(3), &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(csi.held_len(), 0);
        out.clear();
        csi.filter(presence("u9@x/r", None), true, stanzas(3), &mut out);
        assert!(csi.is_inactive());
        csi.set_active(&mut out);
        assert!(!csi.is_inactive());
        assert_eq!(shows(&out), ["presence u9@x/r "]);
    }

    #[test]
    fn held_bytes_are_bounded_too() {
        let mut csi = CsiState::default();
        let mut out = Vec::new();
        let big = |from: &str| {
            presence(from, None)
                .with_child(Element::new("status", ns::CLIENT).with_text("s".repeat(500)))
        };
        let w = big("u0@x/r").approx_bytes();
        let limit = HoldLimit {
            stanzas: 100,
            bytes: 2 * w,
        };
        csi.filter(big("u0@x/r"), true, limit, &mut out);
        csi.filter(big("u1@x/r"), true, limit, &mut out);
        // The same sender again replaces its held presence: still within the bytes.
        csi.filter(big("u1@x/r"), true, limit, &mut out);
        assert!(out.is_empty());
        csi.filter(big("u2@x/r"), true, limit, &mut out);
        assert_eq!(out.len(), 3, "over the byte limit everything goes");
        assert_eq!(csi.held_len(), 0);
    }
}
