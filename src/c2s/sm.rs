//! XEP-0198 Stream Management: stanza counters and acks, the queue of unacknowledged
//! stanzas, hibernation of a session whose connection vanished, and resumption on a new
//! connection.
//!
//! The counting state ([`StreamManagement`]) is sans-I/O and lives in the session's
//! [`SessionState`]. A resumable session registers its SM-ID in the [`SmRegistry`] (in the
//! [`Context`]) together with a channel on which a resuming connection asks for the state.
//! Whichever task owns the session then (the live connection or the hibernating task)
//! hands the whole state over and stops; the router keeps delivering to the same queue
//! throughout, so nothing is lost in the handover.
//!
//! The handover must survive either side being cancelled (a handshake timeout, shutdown)
//! at any await point. The owner puts the state into a shared slot and says so; the
//! resuming connection takes it out and confirms in one synchronous step. If the confirm
//! never comes (the resumer is gone), the owner takes the state back from the slot and
//! carries on. Exactly one of them ends up with it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::router::queue;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::session::{SessionState, end_session, module_view};
use crate::addr::{BareJid, FullJid};
use crate::context::Context;
use crate::registry::SessionEvent;
use crate::router::{redeliver, route_reply};
use crate::stream::StanzaError;
use crate::xml::{Element, ns};

/// The stream management namespace (version 3).
pub const NS: &str = "urn:xmpp:sm:3";

/// Ask for an ack after this many stanzas even while an earlier request is outstanding.
const REQUEST_EVERY: u32 = 32;
/// How long a resuming connection waits for the old owner to hand the session over.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Box<SessionState>>>>;

/// A resuming connection asking for a session's state.
pub(crate) struct TakeoverRequest {
    /// Where the owner puts the state for the resumer to take.
    slot: Slot,
    /// Tells the resumer the state is in the slot; carries the channel of its confirm.
    ready: oneshot::Sender<oneshot::Sender<()>>,
}

fn lock_slot(slot: &Slot) -> MutexGuard<'_, Option<Box<SessionState>>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The owner's side of a resumption: gives `state` to the resuming connection, or gets
/// it back if that connection is gone.
pub(crate) async fn hand_over(
    req: TakeoverRequest,
    state: Box<SessionState>,
) -> Result<(), Box<SessionState>> {
    *lock_slot(&req.slot) = Some(state);
    let (confirm_tx, confirm_rx) = oneshot::channel();
    if req.ready.send(confirm_tx).is_ok() {
        // Confirmed, refused (the resumer is gone) or timed out: the slot tells which.
        let _ = tokio::time::timeout(HANDOVER_WAIT, confirm_rx).await;
    }
    // Whoever takes the state out of the slot owns it.
    match lock_slot(&req.slot).take() {
        Some(back) => Err(back),
        None => Ok(()),
    }
}

/// Counters and the unacknowledged queue of one stream-managed session.
#[derive(Debug)]
pub(crate) struct StreamManagement {
    /// SM-ID of a resumable session.
    pub id: Option<String>,
    /// How long the session may stay hibernated.
    pub resume_timeout: Duration,
    /// Takeover requests from resuming connections (resumable sessions only).
    pub takeover: Option<queue::Receiver<TakeoverRequest>>,
    /// Stanzas received from the client and handled (mod 2^32): our `h`.
    handled: u32,
    /// The client's last `h`: how many of our stanzas it has handled (mod 2^32).
    acked: u32,
    /// Stanzas sent (or queued while hibernated) and not yet acknowledged, oldest first.
    unacked: VecDeque<Element>,
    /// Their `Element::approx_bytes`, summed.
    unacked_bytes: usize,
    /// An `<r/>` is outstanding.
    requested: bool,
    /// Stanzas recorded since the last `<r/>`.
    since_request: u32,
    /// Receipts requested for unacknowledged stanzas, with each stanza's sequence
    /// number, oldest first.
    receipts: VecDeque<(u32, String)>,
    /// Receipts of stanzas the client acknowledged, not yet reported to the modules.
    delivered: Vec<String>,
}

/// The client acknowledged more stanzas than were sent (XEP-0198 §4).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HandledTooHigh {
    pub h: u32,
    pub sent: u32,
}

impl StreamManagement {
    pub fn new(
        id: Option<String>,
        resume_timeout: Duration,
        takeover: Option<queue::Receiver<TakeoverRequest>>,
    ) -> Self {
        StreamManagement {
            id,
            resume_timeout,
            takeover,
            handled: 0,
            acked: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            requested: false,
            since_request: 0,
            receipts: VecDeque::new(),
            delivered: Vec::new(),
        }
    }

    /// Our `h`: stanzas handled from the client.
    pub fn handled(&self) -> u32 {
        self.handled
    }

    /// One more client stanza handled; wraps from 2^32-1 to 0 (XEP-0198 §4).
    pub fn count_handled(&mut self) {
        self.handled = self.handled.wrapping_add(1);
    }

    /// Sequence number of the last stanza sent (mod 2^32).
    pub fn sent_count(&self) -> u32 {
        // The queue is bounded far below 2^32, so the truncation cannot happen.
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Whether more may be sent before the client acknowledges: fewer unacknowledged
    /// stanzas than `limits.sm_max_unacked`, holding less than a quarter of
    /// `limits.session_max_bytes`.
    pub fn has_room(&self, limits: &crate::config::Limits) -> bool {
        self.unacked.len() < limits.sm_max_unacked
            && self.unacked_bytes < limits.session_max_bytes / 4
    }

    /// Memory the unacknowledged stanzas hold (`Element::approx_bytes`).
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    pub fn unacked(&self) -> impl DoubleEndedIterator<Item = &Element> {
        self.unacked.iter()
    }

    /// A stanza was written to the client (or queued for it while hibernated).
    pub fn record_sent(&mut self, el: Element) {
        self.unacked_bytes = self.unacked_bytes.saturating_add(el.approx_bytes());
        self.unacked.push_back(el);
        self.since_request = self.since_request.saturating_add(1);
    }

    /// Like [`record_sent`](Self::record_sent), for a stanza whose module wants a receipt
    /// once the client acknowledged it.
    pub fn record_sent_with_receipt(&mut self, el: Element, receipt: String) {
        self.record_sent(el);
        self.receipts.push_back((self.sent_count(), receipt));
    }

    pub fn has_delivered(&self) -> bool {
        !self.delivered.is_empty()
    }

    /// Receipts of stanzas acknowledged since the last call.
    pub fn take_delivered(&mut self) -> Vec<String> {
        std::mem::take(&mut self.delivered)
    }

    /// Applies the client's `h`; returns how many stanzas it acknowledged. An `h` behind
    /// the last one (a stale ack) acknowledges nothing; one beyond what was sent is an
    /// error.
    pub fn ack(&mut self, h: u32) -> Result<usize, HandledTooHigh> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly <= self.unacked.len() {
            let freed: usize = self.unacked.drain(..newly).map(|e| e.approx_bytes()).sum();
            self.unacked_bytes = self.unacked_bytes.saturating_sub(freed);
            if self.unacked.is_empty() {
                // All acknowledged: an idle session keeps no room for the last burst
                // (384 bytes for the first four stanzas), as the router's queue does.
                self.unacked = VecDeque::new();
            }
            // Sequence numbers wrap: a receipt is covered when its distance from the
            // previous ack is within what this one acknowledged.
            while let Some((seq, _)) = self.receipts.front()
                && seq.wrapping_sub(self.acked) as usize <= newly
            {
                if let Some((_, tag)) = self.receipts.pop_front() {
                    self.delivered.push(tag);
                }
            }
            self.acked = h;
            self.requested = false;
            return Ok(newly);
        }
        // Within half the sequence space behind: an old ack, arriving late.
        if self.acked.wrapping_sub(h) < 1 << 31 {
            return Ok(0);
        }
        Err(HandledTooHigh {
            h,
            sent: self.sent_count(),
        })
    }

    /// Whether an `<r/>` should follow what was just written.
    pub fn should_request(&self) -> bool {
        !self.unacked.is_empty() && (!self.requested || self.since_request >= REQUEST_EVERY)
    }

    pub fn mark_requested(&mut self) {
        self.requested = true;
        self.since_request = 0;
    }

    /// Everything still unacknowledged, for rerouting when the session ends, except the
    /// stanzas with a receipt request: their modules still hold them (offline storage),
    /// and rerouting would store them a second time.
    pub fn take_unacked(&mut self) -> VecDeque<Element> {
        let unacked = std::mem::take(&mut self.unacked);
        self.unacked_bytes = 0;
        let receipts = std::mem::take(&mut self.receipts);
        if receipts.is_empty() {
            return unacked;
        }
        // Position in the queue of each tracked stanza (its sequence number - 1 - acked).
        let tracked: std::collections::HashSet<usize> = receipts
            .iter()
            .map(|(seq, _)| seq.wrapping_sub(self.acked).wrapping_sub(1) as usize)
            .collect();
        unacked
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !tracked.contains(i))
            .map(|(_, el)| el)
            .collect()
    }
}

pub(crate) fn request() -> Element {
    Element::new("r", NS)
}

pub(crate) fn answer(h: u32) -> Element {
    Element::new("a", NS).with_attr("h", h.to_string())
}

pub(crate) fn failed(condition: &'static str) -> Element {
    Element::new("failed", NS).with_child(Element::new(condition, ns::STANZA_ERRORS))
}

/// The stream error for an ack beyond what was sent (XEP-0198 §4).
pub(crate) fn handled_too_high(e: &HandledTooHigh) -> Element {
    Element::new("error", ns::STREAM)
        .with_child(Element::new("undefined-condition", ns::STREAM_ERRORS))
        .with_child(
            Element::new("text", ns::STREAM_ERRORS)
                .with_attr("xml:lang", "en")
                .with_text("acknowledged more stanzas than were sent"),
        )
        .with_child(
            Element::new("handled-count-too-high", NS)
                .with_attr("h", e.h.to_string())
                .with_attr("send-count", e.sent.to_string()),
        )
}

/// Parses an `h` attribute (xs:unsignedInt).
pub(crate) fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.trim().parse().ok()
}

/// XEP-0198 booleans: "true" or "1".
pub(crate) fn parse_bool(value: Option<&str>) -> bool {
    matches!(value.map(str::trim), Some("true" | "1"))
}

struct Entry {
    bare: BareJid,
    takeover: queue::Sender<TakeoverRequest>,
}

#[derive(Default)]
struct Registered {
    by_id: HashMap<String, Entry>,
    /// Hibernated sessions: full JID → the binding's connection id.
    hibernated: HashMap<FullJid, u64>,
}

/// Resumable sessions by SM-ID, and which sessions are hibernated.
#[derive(Default)]
pub struct SmRegistry {
    inner: Mutex<Registered>,
}

impl SmRegistry {
    fn lock(&self) -> MutexGuard<'_, Registered> {
        // Every critical section is a single insert/remove; a poisoned map is consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a resumable session; returns its SM-ID and takeover receiver.
    pub(crate) fn register(&self, bare: &BareJid) -> (String, queue::Receiver<TakeoverRequest>) {
        // Our own queue, not tokio's mpsc: it holds nothing until a request comes, and a
        // resumable session keeps it all its life.
        let (tx, rx) = queue::bounded(4);
        let mut inner = self.lock();
        // 96 random bits; a collision is as good as impossible, but never reuse an id.
        let mut id = crate::stream::random_id();
        while inner.by_id.contains_key(&id) {
            id = crate::stream::random_id();
        }
        inner.by_id.insert(
            id.clone(),
            Entry {
                bare: bare.clone(),
                takeover: tx,
            },
        );
        (id, rx)
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    /// The takeover channel of `id`, if it exists and belongs to `bare`.
    fn lookup(&self, id: &str, bare: &BareJid) -> Option<queue::Sender<TakeoverRequest>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|e| e.bare == *bare)
            .map(|e| e.takeover.clone())
    }

    pub(crate) fn set_hibernated(&self, full: &FullJid, conn_id: u64, hibernated: bool) {
        let mut inner = self.lock();
        if hibernated {
            inner.hibernated.insert(full.clone(), conn_id);
        } else if inner.hibernated.get(full) == Some(&conn_id) {
            inner.hibernated.remove(full);
        }
    }

    /// Whether the session bound as `full` by connection `conn_id` is hibernated.
    pub fn is_hibernated(&self, full: &FullJid, conn_id: u64) -> bool {
        self.lock().hibernated.get(full) == Some(&conn_id)
    }

    /// How many sessions of the account `bare` are hibernated now.
    fn hibernated_of(&self, bare: &BareJid) -> usize {
        self.lock()
            .hibernated
            .keys()
            .filter(|full| full.node() == bare.node() && full.domain() == bare.domain())
            .count()
    }

    /// How many sessions are hibernated now.
    pub fn hibernated_count(&self) -> usize {
        self.lock().hibernated.len()
    }

    /// How many resumable sessions exist (live or hibernated).
    pub fn resumable_count(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// Asks the owner of SM session `previd` (which must belong to `bare`) for its state.
/// `Err` is the `<failed/>` to send; the client may then bind a new resource.
pub(crate) async fn take_over(
    ctx: &Arc<Context>,
    bare: &BareJid,
    previd: &str,
) -> Result<Box<SessionState>, Element> {
    let not_found = || failed("item-not-found");
    let Some(owner) = ctx.sm.lookup(previd, bare) else {
        debug!(previd, "resume: unknown or foreign SM-ID");
        return Err(not_found());
    };
    let slot = Slot::default();
    let (ready, ready_rx) = oneshot::channel();
    let req = TakeoverRequest {
        slot: slot.clone(),
        ready,
    };
    if owner.try_send(req).is_err() {
        return Err(not_found());
    }
    // The session ended meanwhile, or its owner is stuck.
    let Ok(Ok(confirm)) = tokio::time::timeout(HANDOVER_WAIT, ready_rx).await else {
        return Err(not_found());
    };
    // No await between taking and returning: a cancelled resumer cannot lose the state.
    let state = lock_slot(&slot).take();
    match state {
        Some(state) => {
            let _ = confirm.send(());
            Ok(state)
        }
        // The owner gave up waiting and took it back.
        None => Err(not_found()),
    }
}

/// Waits for a takeover request; never resolves for a session that is not resumable.
pub(crate) async fn next_takeover(sm: &mut Option<StreamManagement>) -> TakeoverRequest {
    if let Some(rx) = sm.as_mut().and_then(|s| s.takeover.as_mut())
        && let Some(req) = rx.recv().await
    {
        return req;
    }
    std::future::pending().await
}

/// Keeps a session whose connection vanished: still bound and available, queueing what
/// arrives for it (bounded), until it is resumed, replaced, shut down or times out.
pub(crate) async fn hibernate(
    ctx: &Arc<Context>,
    mut state: Box<SessionState>,
    shutdown: CancellationToken,
) {
    let Some(timeout) = state.sm.as_ref().map(|s| s.resume_timeout) else {
        Box::pin(end_session(ctx, state, false)).await;
        return;
    };
    // Each hibernated session holds its queues: an account cannot pile them up.
    if ctx.sm.hibernated_of(&state.bound.bare) >= ctx.config.limits.max_hibernated_per_account {
        info!(jid = %state.bound.full, "too many hibernated sessions for the account; ended");
        Box::pin(end_session(ctx, state, false)).await;
        return;
    }
    let (full, conn_id) = (state.bound.full.clone(), state.bound.conn_id);
    ctx.sm.set_hibernated(&full, conn_id, true);
    info!(jid = %full, timeout_secs = timeout.as_secs(), "session hibernated");
    // What the session's own work left for it waits with the rest.
    while let Some(el) = state.backlog.pop_front() {
        state.emit(ctx, None, el);
    }
    // What the client never acknowledged may be news it has not seen (push).
    let mut out = Vec::new();
    {
        let SessionState { bound, ext, sm, .. } = &mut *state;
        let unacked: Vec<&Element> = sm.iter().flat_map(StreamManagement::unacked).collect();
        let event = SessionEvent::Hibernated { unacked: &unacked };
        let view = &mut module_view(bound, ext, &mut out);
        Box::pin(ctx.registry.session_event(ctx, view, &event)).await;
    }
    state.emit_all(ctx, None, out);
    let limits = &ctx.config.limits;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let control = state.bound.control.clone();
    loop {
        let room = state.sm.as_ref().is_some_and(|s| s.has_room(limits));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = control.token().cancelled() => break,
            req = next_takeover(&mut state.sm) => {
                ctx.sm.set_hibernated(&full, conn_id, false);
                match Box::pin(hand_over(req, state)).await {
                    Ok(()) => {
                        debug!(jid = %full, "hibernated session handed to a resuming connection");
                        return;
                    }
                    Err(back) => {
                        state = back;
                        ctx.sm.set_hibernated(&full, conn_id, true);
                    }
                }
            }
            // When the queue is full, stanzas wait in the router's session queue, which
            // closes the session once that is full too.
            cmd = state.bound.rx.recv(), if room => {
                let Some(cmd) = cmd else { break };
                let el = cmd.take(&state.bound.control);
                let event = SessionEvent::QueuedWhileHibernated { stanza: &el };
                // Boxed: a rare path should not enlarge every hibernated task.
                Box::pin(state.event(ctx, None, &event)).await;
                state.emit(ctx, None, el);
            }
            _ = &mut deadline => {
                info!(jid = %full, "hibernated session timed out");
                break;
            }
        }
    }
    ctx.sm.set_hibernated(&full, conn_id, false);
    // Anything the client never acknowledged was already announced by push.
    Box::pin(end_session(ctx, state, true)).await;
}

/// Handles stanzas that never reached the client when its session ends (XEP-0198 §4,
/// RFC 6121 §8.5.3.2): messages go to the user's other available resources or to offline
/// storage, requests are answered with `service-unavailable`, the rest is dropped.
/// `pushed`: the user was already notified of them (no second push notification).
pub(crate) async fn reroute_undelivered(
    ctx: &Arc<Context>,
    bare: &BareJid,
    stanzas: VecDeque<Element>,
    pushed: bool,
) {
    if stanzas.is_empty() {
        return;
    }
    debug!(count = stanzas.len(), "rerouting undelivered stanzas");
    for el in stanzas {
        let kind = el.attr("type").unwrap_or("");
        match el.name.as_str() {
            "message" => match kind {
                "error" => {}
                "groupchat" => route_reply(ctx, &el, StanzaError::service_unavailable()).await,
                _ => redeliver(ctx, bare, el, pushed).await,
            },
            "iq" if matches!(kind, "get" | "set") => {
                route_reply(ctx, &el, StanzaError::service_unavailable()).await
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> Element {
        Element::new("message", ns::CLIENT).with_attr("id", i.to_string())
    }

    #[test]
    fn acks_drop_from_the_front() {
        let mut sm = StreamManagement::new(None, Duration::from_secs(1), None);
        for i in 0..5 {
            sm.record_sent(msg(i));
        }
        assert_eq!(sm.sent_count(), 5);
        assert!(sm.should_request());
        sm.mark_requested();
        assert!(!sm.should_request());
        assert_eq!(sm.ack(2), Ok(2));
        assert_eq!(sm.unacked().next().and_then(|e| e.attr("id")), Some("2"));
        // Stale and repeated acks change nothing.
        assert_eq!(sm.ack(1), Ok(0));
        assert_eq!(sm.ack(2), Ok(0));
        assert_eq!(sm.unacked_len(), 3);
        assert_eq!(sm.ack(6), Err(HandledTooHigh { h: 6, sent: 5 }));
        assert_eq!(sm.ack(5), Ok(3));
        assert_eq!(sm.unacked_len(), 0);
        assert!(!sm.should_request());
        // Emptied, the queue gives its room back.
        assert_eq!(sm.unacked.capacity(), 0);
    }

    #[test]
    fn unacked_bytes_bound_what_is_sent() {
        let mut limits = crate::config::Limits::default();
        let big = Element::new("message", ns::CLIENT).with_text("x".repeat(1000));
        let per = big.approx_bytes();
        limits.session_max_bytes = 4 * 3 * per;
        let mut sm = StreamManagement::new(None, Duration::from_secs(1), None);
        for _ in 0..3 {
            assert!(sm.has_room(&limits));
            sm.record_sent(big.clone());
        }
        assert_eq!(sm.unacked_bytes(), 3 * per);
        assert!(!sm.has_room(&limits), "a quarter of the budget is held");
        assert_eq!(sm.ack(1), Ok(1));
        assert_eq!(sm.unacked_bytes(), 2 * per);
        assert!(sm.has_room(&limits));
        sm.take_unacked();
        assert_eq!(sm.unacked_bytes(), 0);
    }

    #[test]
    fn receipts_follow_acks_and_tracked_stanzas_are_not_rerouted() {
        let mut sm = StreamManagement::new(None, Duration::from_secs(1), None);
        sm.acked = u32::MAX - 1;
        sm.record_sent(msg(0));
        sm.record_sent_with_receipt(msg(1), "one".into());
        sm.record_sent(msg(2));
        sm.record_sent_with_receipt(msg(3), "three".into());
        sm.record_sent_with_receipt(msg(4), "four".into());
        assert_eq!(sm.ack(u32::MAX), Ok(1));
        assert!(sm.take_delivered().is_empty());
        // Across the wrap: stanzas 1 and 2.
        assert_eq!(sm.ack(1), Ok(2));
        assert_eq!(sm.take_delivered(), vec!["one".to_string()]);
        assert_eq!(sm.ack(2), Ok(1));
        assert_eq!(sm.take_delivered(), vec!["three".to_string()]);
        sm.record_sent(msg(5));
        let left: Vec<_> = sm
            .take_unacked()
            .iter()
            .map(|e| e.attr("id").unwrap_or("").to_string())
            .collect();
        assert_eq!(left, ["5"]);
    }

    #[test]
    fn counters_wrap_at_2_pow_32() {
        let mut sm = StreamManagement::new(None, Duration::from_secs(1), None);
        sm.handled = u32::MAX - 1;
        sm.count_handled();
        assert_eq!(sm.handled(), u32::MAX);
        sm.count_handled();
        assert_eq!(sm.handled(), 0);
        sm.count_handled();
        assert_eq!(sm.handled(), 1);

        sm.acked = u32::MAX - 1;
        for i in 0..4 {
            sm.record_sent(msg(i));
        }
        assert_eq!(sm.sent_count(), 2);
        // MAX-1 → MAX → 0 → 1: three stanzas across the wrap.
        assert_eq!(sm.ack(1), Ok(3));
        assert_eq!(sm.unacked_len(), 1);
        assert_eq!(sm.unacked().next().and_then(|e| e.attr("id")), Some("3"));
        // u32::MAX is behind 1 now: stale, not too high.
        assert_eq!(sm.ack(u32::MAX), Ok(0));
        assert_eq!(sm.ack(3), Err(HandledTooHigh { h: 3, sent: 2 }));
        assert_eq!(sm.ack(2), Ok(1));
    }

    #[test]
    fn requests_again_after_many_stanzas() {
        let mut sm = StreamManagement::new(None, Duration::from_secs(1), None);
        sm.record_sent(msg(0));
        sm.mark_requested();
        for i in 1..REQUEST_EVERY {
            sm.record_sent(msg(i));
        }
        assert!(!sm.should_request());
        sm.record_sent(msg(REQUEST_EVERY));
        assert!(sm.should_request());
    }

    fn b(s: &str) -> BareJid {
        crate::addr::parse_bare(s).unwrap()
    }

    fn f(s: &str) -> FullJid {
        crate::addr::parse_full(s).unwrap()
    }

    #[test]
    fn registry_checks_the_owner_and_tracks_hibernation() {
        let reg = SmRegistry::default();
        let (id, _rx) = reg.register(&b("a@x"));
        let (id2, _rx2) = reg.register(&b("a@x"));
        assert_ne!(id, id2);
        assert!(reg.lookup(&id, &b("a@x")).is_some());
        assert!(reg.lookup(&id, &b("b@x")).is_none());
        assert!(reg.lookup("nope", &b("a@x")).is_none());
        reg.remove(&id);
        assert!(reg.lookup(&id, &b("a@x")).is_none());
        assert_eq!(reg.resumable_count(), 1);

        reg.set_hibernated(&f("a@x/r"), 7, true);
        assert!(reg.is_hibernated(&f("a@x/r"), 7));
        assert!(!reg.is_hibernated(&f("a@x/r"), 8));
        // A replaced session's cleanup must not clear its successor's state.
        reg.set_hibernated(&f("a@x/r"), 8, false);
        assert!(reg.is_hibernated(&f("a@x/r"), 7));
        reg.set_hibernated(&f("a@x/r"), 7, false);
        assert_eq!(reg.hibernated_count(), 0);
    }

    fn test_state(bare: &str) -> Box<SessionState> {
        let (_tx, rx) = crate::router::session_queue(1);
        SessionState::new(super::super::negotiate::Bound {
            bare: b(bare),
            resource: "r".into(),
            full: f(&format!("{bare}/r")),
            domain: "x".into(),
            conn_id: 1,
            rx,
            control: Default::default(),
            lang: None,
            sasl2: None,
        })
    }

    fn test_ctx() -> Arc<Context> {
        let ctx = Context::new(
            crate::config::Config::default(),
            crate::storage::Storage::memory(),
        );
        Arc::new(ctx.expect("the standard modules register without conflicts"))
    }

    /// An owner task like a session's: answers takeover requests with `hand_over`,
    /// after `delay`; reports whether it still has the state afterwards.
    fn owner(
        mut rx: queue::Receiver<TakeoverRequest>,
        delay: Duration,
    ) -> tokio::task::JoinHandle<bool> {
        tokio::spawn(async move {
            let req = rx.recv().await.unwrap();
            tokio::time::sleep(delay).await;
            hand_over(req, test_state("a@x")).await.is_err()
        })
    }

    #[tokio::test]
    async fn handover_moves_the_state_exactly_once() {
        let ctx = test_ctx();
        let (id, rx) = ctx.sm.register(&b("a@x"));
        let kept = owner(rx, Duration::ZERO);
        let state = take_over(&ctx, &b("a@x"), &id).await.unwrap();
        assert_eq!(state.bound.full.as_str(), "a@x/r");
        assert!(!kept.await.unwrap(), "the owner must let go");
    }

    #[tokio::test]
    async fn a_cancelled_resumer_leaves_the_state_with_its_owner() {
        let ctx = test_ctx();
        let (id, rx) = ctx.sm.register(&b("a@x"));
        let kept = owner(rx, Duration::from_millis(50));
        // The resuming connection gives up (handshake timeout) before the owner answers.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(10), take_over(&ctx, &b("a@x"), &id)).await;
        assert!(cancelled.is_err());
        assert!(kept.await.unwrap(), "the owner must get its state back");
    }

    #[tokio::test]
    async fn a_resumer_that_never_takes_leaves_the_state_with_its_owner() {
        let (tx, rx) = queue::bounded(1);
        let kept = owner(rx, Duration::ZERO);
        let (ready, ready_rx) = oneshot::channel();
        let slot = Slot::default();
        tx.try_send(TakeoverRequest {
            slot: slot.clone(),
            ready,
        })
        .unwrap();
        // Told the state is there, the resumer drops the confirm channel untouched.
        drop(ready_rx.await.unwrap());
        assert!(kept.await.unwrap());
        assert!(lock_slot(&slot).is_none());
    }

    #[tokio::test]
    async fn resume_needs_the_same_user() {
        let ctx = test_ctx();
        let (id, _rx) = ctx.sm.register(&b("a@x"));
        let failed = take_over(&ctx, &b("b@x"), &id).await.err().unwrap();
        assert!(failed.has_child("item-not-found", ns::STANZA_ERRORS));
    }

    #[test]
    fn parses_attributes() {
        let a = Element::new("a", NS).with_attr("h", "4294967295");
        assert_eq!(parse_h(&a), Some(u32::MAX));
        assert_eq!(parse_h(&Element::new("a", NS).with_attr("h", "-1")), None);
        assert_eq!(parse_h(&Element::new("a", NS)), None);
        assert!(parse_bool(Some("1")) && parse_bool(Some("true")));
        assert!(!parse_bool(Some("false")) && !parse_bool(None));
    }
}
