//! A bound client session: stanzas from the client are stamped and routed in order;
//! stanzas for the client arrive on a bounded queue and are written in batches, through
//! the XEP-0352 filter and, with XEP-0198, recorded until the client acknowledges them.
//!
//! All of a session's state is one [`SessionState`], so that it can outlive its
//! connection (hibernation) and move to another one (resumption, see `sm.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::negotiate::Bound;
use super::sm::{self, StreamManagement, TakeoverRequest};
use super::{Connection, Ending};
use crate::addr::{self, Jid};
use crate::context::Context;
use crate::metrics::{Direction, Stream};
use crate::registry::{Extensions, Outgoing, SessionCtx, SessionEvent};
use crate::router::{TryRecvError, route_addressed, route_reply, serve_own_session};
use crate::server::Shaper;
use crate::stream::{StanzaError, StreamError, StreamErrorCondition};
use crate::xml::{Element, StreamEvent, ns};

/// Outbound stanzas written in one go before the socket is flushed.
const WRITE_BATCH: usize = 64;

/// Everything a bound session owns besides its connection.
pub(crate) struct SessionState {
    pub bound: Bound,
    /// Modules' per-session state (presence, CSI, …).
    pub ext: Extensions,
    /// XEP-0198, once the client enabled it.
    pub sm: Option<StreamManagement>,
    /// What the session's own work sent to it (see `router::serve_own_session`), written
    /// before its queue, in steps, with stream management's flow control.
    pub backlog: VecDeque<Element>,
    /// Receipts of stanzas written on a stream without XEP-0198, reported once the
    /// write is flushed.
    written_receipts: Vec<String>,
    /// The last `to` the client wrote and what it parsed to: clients write to the same
    /// contact many times in a row, and preparing a JID (PRECIS) was about 2 % of the
    /// instructions of routing a message. Boxed: a pointer in sessions that never send.
    last_to: Option<Box<(Box<str>, Jid)>>,
}

impl SessionState {
    pub fn new(bound: Bound) -> Box<Self> {
        Box::new(SessionState {
            bound,
            ext: Extensions::default(),
            sm: None,
            backlog: VecDeque::new(),
            written_receipts: Vec::new(),
            last_to: None,
        })
    }

    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|s| s.id.is_some())
    }

    /// The session as modules see it; `out` collects what they send to its client.
    pub fn module_view<'a>(&'a mut self, out: &'a mut Vec<Element>) -> SessionCtx<'a> {
        module_view(&self.bound, &mut self.ext, out)
    }

    /// Tells the modules about `event`, then sends what they produced for the client.
    pub async fn event(
        &mut self,
        ctx: &Arc<Context>,
        conn: Option<&mut Connection>,
        event: &SessionEvent<'_>,
    ) {
        let mut out = Vec::new();
        ctx.registry
            .session_event(ctx, &mut self.module_view(&mut out), event)
            .await;
        self.emit_all(ctx, conn, out);
    }

    /// One stanza for the client: through the outbound filters (CSI), then written to
    /// `conn` (none while hibernated) and, with stream management, kept until
    /// acknowledged.
    pub fn emit(&mut self, ctx: &Context, conn: Option<&mut Connection>, el: Element) {
        let hibernated = conn.is_none();
        if !hibernated && ctx.registry.passes_through(&self.ext) {
            ctx.metrics.stanza(Stream::C2s, Direction::Out, &el.name);
            self.write(conn, el);
            return;
        }
        let mut out = Vec::new();
        ctx.registry
            .filter_outbound(ctx, &mut self.ext, el, hibernated, &mut out);
        let mut conn = conn;
        for el in out {
            if !hibernated {
                ctx.metrics.stanza(Stream::C2s, Direction::Out, &el.name);
            }
            self.write(conn.as_deref_mut(), el);
        }
    }

    pub fn emit_all(
        &mut self,
        ctx: &Context,
        mut conn: Option<&mut Connection>,
        out: impl IntoIterator<Item = Element>,
    ) {
        for el in out {
            self.emit(ctx, conn.as_deref_mut(), el);
        }
    }

    fn write(&mut self, conn: Option<&mut Connection>, mut el: Element) {
        let receipt = crate::registry::take_receipt(&mut el);
        let written = conn.is_some();
        if let Some(conn) = conn {
            conn.queue(&el);
        }
        match (&mut self.sm, receipt) {
            (Some(sm), Some(receipt)) => sm.record_sent_with_receipt(el, receipt),
            (Some(sm), None) => sm.record_sent(el),
            (None, Some(receipt)) if written => self.written_receipts.push(receipt),
            (None, _) => {}
        }
    }

    /// Tells the modules which of their tracked stanzas the client has: acknowledged
    /// (XEP-0198) or, without stream management, written and flushed. Call after a
    /// successful flush.
    async fn report_delivered(&mut self, ctx: &Arc<Context>, conn: &mut Connection) {
        let mut receipts = std::mem::take(&mut self.written_receipts);
        if let Some(sm) = &mut self.sm {
            receipts.append(&mut sm.take_delivered());
        }
        if receipts.is_empty() {
            return;
        }
        let event = SessionEvent::Delivered {
            receipts: &receipts,
        };
        Box::pin(self.event(ctx, Some(conn), &event)).await;
    }

    /// [`report_delivered`](Self::report_delivered), then flushes what the modules
    /// answered. Cheap when nothing tracked was delivered.
    async fn flush_receipts(
        &mut self,
        ctx: &Arc<Context>,
        conn: &mut Connection,
    ) -> Result<(), Ending> {
        let pending = !self.written_receipts.is_empty()
            || self
                .sm
                .as_ref()
                .is_some_and(StreamManagement::has_delivered);
        if !pending {
            return Ok(());
        }
        self.report_delivered(ctx, conn).await;
        conn.flush().await
    }

    /// Flushes the connection, then reports what was delivered by it.
    async fn flush(&mut self, ctx: &Arc<Context>, conn: &mut Connection) -> Result<(), Ending> {
        conn.flush().await?;
        self.flush_receipts(ctx, conn).await
    }

    /// Queues an `<r/>` if stream management wants an ack for what was written.
    fn request_ack(&mut self, conn: &mut Connection) {
        if let Some(sm) = &mut self.sm
            && sm.should_request()
        {
            conn.queue(&sm::request());
            sm.mark_requested();
        }
    }
}

/// A session as modules see it, from its parts (for callers that hold other fields).
pub(crate) fn module_view<'a>(
    bound: &'a Bound,
    ext: &'a mut Extensions,
    out: &'a mut Vec<Element>,
) -> SessionCtx<'a> {
    SessionCtx {
        bare: &bound.bare,
        resource: &bound.resource,
        full: &bound.full,
        conn_id: bound.conn_id,
        ext,
        out,
    }
}

/// How a session's time on a connection ended.
pub(crate) enum Outcome {
    /// The session is over (or moved to another connection); close like this, as our
    /// domain.
    Closed(Ending, String),
    /// The connection is lost but the session is resumable: close like this, then
    /// hibernate.
    Hibernate(Box<SessionState>, Ending),
}

enum LoopEnd {
    /// The session ends.
    Close(Ending),
    /// The connection vanished or went silent, without a clean close.
    Lost(Ending),
    /// A resuming connection wants this session.
    TakeOver(TakeoverRequest),
}

/// Serves a session on `conn`. `resumed`: the session was just taken over by this
/// connection, with the client's `h` from `<resume/>`.
pub(crate) async fn run(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    mut state: Box<SessionState>,
    mut resumed: Option<Option<u32>>,
    shutdown: &CancellationToken,
) -> Outcome {
    // The rarely-live steps (resumption, hand-over, the end) are boxed: a future is as
    // large as its largest state, and this one lives as long as the session.
    if resumed.is_none() {
        let sasl2 = super::sasl2::finish(ctx, conn, &mut state);
        Box::pin(state.event(ctx, Some(conn), &SessionEvent::Bound)).await;
        // The client waits for its `<success/>`; a failed write shows again at the
        // first read below, which ends the session as a lost connection.
        if sasl2 {
            let _ = conn.flush().await;
        }
    }
    loop {
        let end = serve_bound(ctx, conn, &mut state, resumed.take(), shutdown).await;
        match end {
            LoopEnd::Lost(ending) if state.resumable() => {
                return Outcome::Hibernate(state, ending);
            }
            LoopEnd::Close(ending) | LoopEnd::Lost(ending) => {
                let domain = state.bound.domain.clone();
                Box::pin(end_session(ctx, state, false)).await;
                return Outcome::Closed(ending, domain);
            }
            LoopEnd::TakeOver(req) => {
                let domain = state.bound.domain.clone();
                match Box::pin(sm::hand_over(req, state)).await {
                    Ok(()) => {
                        debug!("session taken over by a resuming connection");
                        return Outcome::Closed(
                            Ending::Error(StreamError::with_text(
                                StreamErrorCondition::Conflict,
                                "the session was resumed on another connection",
                            )),
                            domain,
                        );
                    }
                    // The resuming connection is gone already; carry on here.
                    Err(back) => state = back,
                }
            }
        }
    }
}

/// Ends a session for good: it leaves the router, the modules are told (presence sends
/// unavailable), and what never reached the client (unacknowledged or still queued) is
/// rerouted. `pushed`: the user was already notified of those stanzas by push.
pub(crate) async fn end_session(ctx: &Arc<Context>, mut state: Box<SessionState>, pushed: bool) {
    let mut undelivered = VecDeque::new();
    if let Some(mut sm) = state.sm.take() {
        if let Some(id) = &sm.id {
            ctx.sm.remove(id);
        }
        undelivered = sm.take_unacked();
    }
    undelivered.append(&mut state.backlog);
    // Stanzas with a receipt request are still held by their module (offline storage).
    undelivered.retain(|el| !crate::registry::has_receipt(el));
    // The session is gone for the router before its unavailable presence goes out. A
    // session replaced by a conflict stays silent: its successor has the same full JID.
    let bound = &state.bound;
    let removed = ctx
        .sessions
        .unbind(&bound.bare, &bound.resource, bound.conn_id);
    let mut out = Vec::new();
    let event = SessionEvent::Ended { replaced: !removed };
    ctx.registry
        .session_event(ctx, &mut state.module_view(&mut out), &event)
        .await;
    // Nothing can reach the client any more.
    undelivered.extend(out);
    state.bound.rx.close();
    while let Ok(cmd) = state.bound.rx.try_recv() {
        undelivered.push_back(cmd.take(&state.bound.control));
    }
    sm::reroute_undelivered(ctx, &state.bound.bare, undelivered, pushed).await;
}

/// The first steps on a connection that resumed a session (XEP-0198 §5): `<resumed/>`,
/// then everything the client has not acknowledged, then what CSI held back (a new
/// stream starts active, XEP-0352 §3).
async fn resume_stream(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    state: &mut SessionState,
    h: Option<u32>,
) -> Result<(), LoopEnd> {
    let Some(sm) = state.sm.as_mut() else {
        return Err(LoopEnd::Close(
            StreamErrorCondition::InternalServerError.into(),
        ));
    };
    if let Some(h) = h
        && let Err(e) = sm.ack(h)
    {
        return Err(LoopEnd::Close(Ending::Custom(sm::handled_too_high(&e))));
    }
    let previd = sm.id.clone().unwrap_or_default();
    acked_durable(ctx).await?;
    let resumed = Element::new("resumed", sm::NS)
        .with_attr("previd", previd)
        .with_attr("h", sm.handled().to_string());
    super::sasl2::resumed(ctx, conn, state, resumed);
    let Some(sm) = state.sm.as_mut() else {
        return Err(LoopEnd::Close(
            StreamErrorCondition::InternalServerError.into(),
        ));
    };
    for el in sm.unacked() {
        conn.queue(el);
    }
    Box::pin(state.event(ctx, Some(conn), &SessionEvent::Resumed)).await;
    // The resent stanzas keep their sequence numbers; ask for an ack of all of them.
    if let Some(sm) = &mut state.sm
        && sm.unacked_len() > 0
    {
        conn.queue(&sm::request());
        sm.mark_requested();
    }
    debug!(
        unacked = state.sm.as_ref().map_or(0, StreamManagement::unacked_len),
        unacked_bytes = state.sm.as_ref().map_or(0, StreamManagement::unacked_bytes),
        "session resumed"
    );
    // The `h` of `<resume/>` may have acknowledged tracked stanzas.
    state.flush(ctx, conn).await.map_err(LoopEnd::Lost)
}

/// The session on its connection until it ends there. `resumed`: first the steps of a
/// connection that just resumed the session, with the client's `h`.
async fn serve_bound(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    state: &mut SessionState,
    resumed: Option<Option<u32>>,
    shutdown: &CancellationToken,
) -> LoopEnd {
    if let Some(h) = resumed
        && let Err(end) = Box::pin(resume_stream(ctx, conn, state, h)).await
    {
        return end;
    }
    let idle = Duration::from_secs(ctx.config.limits.idle_timeout_secs);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let control = state.bound.control.clone();
    let limits = &ctx.config.limits;
    let has_room = |sm: &Option<StreamManagement>| sm.as_ref().is_none_or(|s| s.has_room(limits));
    let own_limit = ctx.config.limits.session_backlog_len;
    let mut shaper = Shaper::new(ctx.config.limits.c2s_shaper(), std::time::Instant::now());
    // While the client is over its rate, its input is left unread (TCP pushes back).
    let mut paused: Option<Pause> = None;
    // Made once, not per pass of the loop: a new cancellation future registers with the
    // token's waiter list on its first poll and leaves it when dropped, a lock each way,
    // twice per token and pass (3 % of the instructions per chat message).
    let shutting_down = shutdown.cancelled();
    let kicked = control.token().cancelled();
    tokio::pin!(shutting_down, kicked);
    let kicked_end = || {
        LoopEnd::Close(match control.take_reason() {
            Some(reason) => Ending::Error(reason),
            None => Ending::from(StreamErrorCondition::PolicyViolation),
        })
    };
    // Checked at every pass rather than by polling the cancellation futures first in the
    // select below (which cost about as much again): they come last there, only to wake
    // a session that has nothing else to do.
    let stopped = || {
        if shutdown.is_cancelled() {
            Some(LoopEnd::Close(StreamErrorCondition::SystemShutdown.into()))
        } else if control.is_kicked() {
            Some(kicked_end())
        } else {
            None
        }
    };
    loop {
        if let Some(end) = stopped() {
            return end;
        }
        // Stream management flow control: with too much unacknowledged, stop sending until
        // the client acks; stanzas wait in the router's bounded session queue meanwhile.
        let room = has_room(&state.sm);
        let backlog = room && !state.backlog.is_empty();
        tokio::select! {
            biased;
            req = sm::next_takeover(&mut state.sm) => return LoopEnd::TakeOver(req),
            // What the session's own work produced goes first, a batch at a time.
            _ = std::future::ready(()), if backlog => {
                for _ in 0..WRITE_BATCH {
                    if !has_room(&state.sm) {
                        break;
                    }
                    let Some(el) = state.backlog.pop_front() else { break };
                    state.emit(ctx, Some(conn), el);
                }
                if state.backlog.is_empty() {
                    // Login's burst (roster, presence answers) is over: keep no room for it.
                    state.backlog = VecDeque::new();
                }
                state.request_ack(conn);
                if let Err(e) = state.flush(ctx, conn).await {
                    return LoopEnd::Lost(e);
                }
            }
            cmd = state.bound.rx.recv(), if room => {
                let Some(cmd) = cmd else {
                    // A kicked session's queue closes as it is replaced: the kick's reason
                    // is what the client must hear.
                    return stopped().unwrap_or_else(|| {
                        LoopEnd::Close(StreamErrorCondition::InternalServerError.into())
                    });
                };
                state.emit(ctx, Some(conn), cmd.take(&control));
                // Drain what else is queued so one TLS record and syscall carry many stanzas.
                for _ in 1..WRITE_BATCH {
                    if !has_room(&state.sm) {
                        break;
                    }
                    match state.bound.rx.try_recv() {
                        Ok(cmd) => state.emit(ctx, Some(conn), cmd.take(&control)),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                state.request_ack(conn);
                if let Err(e) = state.flush(ctx, conn).await {
                    return LoopEnd::Lost(e);
                }
            }
            _ = paused_for(&mut paused), if paused.is_some() => {
                // What was read before the pause is handled first.
                let handled = handle_input(ctx, conn, state, &control, own_limit, &mut shaper);
                let wait = match handled.await {
                    Ok(wait) => wait,
                    Err(end) => return end,
                };
                if let Err(e) = state.flush(ctx, conn).await {
                    return LoopEnd::Lost(e);
                }
                paused = pause(wait);
            }
            read = read_some(conn), if paused.is_none() => {
                let read_bytes = match read {
                    Ok(n) => n,
                    Err(ending) if matches!(*ending, Ending::Gone) => {
                        return LoopEnd::Lost(Ending::Gone);
                    }
                    Err(ending) => return LoopEnd::Close(*ending),
                };
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                let by_bytes = shaper.charge(read_bytes, 0, std::time::Instant::now());
                let handled = handle_input(ctx, conn, state, &control, own_limit, &mut shaper);
                let by_stanzas = match handled.await {
                    Ok(wait) => wait,
                    Err(end) => return end,
                };
                // Answers to nonzas (acks, a CSI flush) were queued on the connection.
                if let Err(e) = state.flush(ctx, conn).await {
                    return LoopEnd::Lost(e);
                }
                paused = pause(by_bytes.max(by_stanzas));
            }
            _ = &mut idle_timer => {
                debug!("idle timeout");
                return LoopEnd::Lost(StreamErrorCondition::ConnectionTimeout.into());
            }
            _ = &mut shutting_down => {
                return LoopEnd::Close(StreamErrorCondition::SystemShutdown.into());
            }
            _ = &mut kicked => return kicked_end(),
        }
    }
}

/// A client over its input rate waits this out. On the heap: only such a client has
/// one, and a timer in every session's future would cost each idle session its size.
type Pause = std::pin::Pin<Box<tokio::time::Sleep>>;

/// Until the pause is over; never without one (its branch is disabled then).
async fn paused_for(pause: &mut Option<Pause>) {
    match pause {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// [`Connection::read_some`], its rare error boxed: the session loop keeps what a branch
/// returned while that branch runs, and the loop lives as long as the session.
async fn read_some(conn: &mut Connection) -> Result<usize, Box<Ending>> {
    conn.read_some().await.map_err(Box::new)
}

/// The pause after a shaper's `wait` (none: read now).
fn pause(wait: Duration) -> Option<Pause> {
    if wait.is_zero() {
        return None;
    }
    debug!(
        wait_ms = wait.as_millis() as u64,
        "over the input rate; reading paused"
    );
    Some(Box::pin(tokio::time::sleep(wait)))
}

/// Handles what the parser holds, element by element, until it is empty or the client is
/// over its stanza rate; the rest then waits in the parser. Returns how long to pause.
async fn handle_input(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    state: &mut SessionState,
    control: &Arc<crate::router::SessionControl>,
    own_limit: usize,
    shaper: &mut Shaper,
) -> Result<Duration, LoopEnd> {
    let read_at = std::time::Instant::now();
    loop {
        // The element is taken out of the parser's result before anything is awaited:
        // the result (an event or an error) would otherwise be kept across the awaits.
        let el = match conn.parser.next_event() {
            Ok(None) => return Ok(Duration::ZERO),
            Ok(Some(StreamEvent::Stanza(el))) => el,
            Ok(Some(StreamEvent::Close)) => return Err(LoopEnd::Close(Ending::PeerClosed)),
            Ok(Some(StreamEvent::Open(_))) => {
                return Err(LoopEnd::Close(StreamErrorCondition::NotWellFormed.into()));
            }
            Err(e) => return Err(LoopEnd::Close(super::xml_ending(e))),
        };
        // Boxed: the stanza pipeline's state would otherwise be part of every idle
        // session's future. A message brings back at most an answer or two (it goes
        // through the queue); presence and iq can bring back many (probe answers,
        // archive pages), kept aside for this session.
        if el.name == "message" {
            Box::pin(handle_element(ctx, conn, state, el)).await?;
        } else {
            let handled = Box::pin(serve_own_session(
                control.clone(),
                own_limit,
                handle_element(ctx, conn, state, el),
            ));
            let (handled, mut kept) = handled.await;
            state.backlog.append(&mut kept);
            handled?;
        }
        // The read's time stands for the whole batch: no clock read per stanza.
        let wait = shaper.charge(0, 1, read_at);
        if !wait.is_zero() {
            return Ok(wait);
        }
    }
}

/// One top-level element from the client: a stanza, a SM nonza or one a module handles.
async fn handle_element(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    state: &mut SessionState,
    el: Element,
) -> Result<(), LoopEnd> {
    if el.ns == sm::NS {
        if el.name == "r" && state.sm.is_some() {
            acked_durable(ctx).await?;
        }
        return handle_sm(ctx, conn, state, &el);
    }
    let mut out = Vec::new();
    if let Some(handled) = ctx.registry.nonza(ctx, &mut state.ext, &el, &mut out) {
        handled.map_err(|c| LoopEnd::Close(c.into()))?;
        state.emit_all(ctx, Some(conn), out);
        state.request_ack(conn);
        return Ok(());
    }
    let handled = handle_stanza(ctx, state, &mut out, el).await;
    // Possibly many (offline messages at login): written in steps by the session loop.
    state.backlog.extend(out);
    handled.map_err(LoopEnd::Close)?;
    if let Some(sm) = &mut state.sm {
        sm.count_handled();
    }
    Ok(())
}

/// Before an `h` goes out: messages archived or stored offline on the way (deferred
/// writes, one flush for many) must be on disk once the client may forget them. A failure
/// ends the stream unacknowledged, so the client sends them again.
async fn acked_durable(ctx: &Arc<Context>) -> Result<(), LoopEnd> {
    let not_durable = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, "storage not durable; stream ended without an ack");
        LoopEnd::Close(StreamErrorCondition::InternalServerError.into())
    };
    // Offline first: its flush covers archive rows queued before it as well.
    ctx.storage
        .offline
        .pushed_durable()
        .await
        .map_err(not_durable)?;
    ctx.storage
        .archive
        .appended_durable()
        .await
        .map_err(not_durable)
}

/// Enables XEP-0198 on the session as `<enable/>` asks; the `<enabled/>` answer.
pub(super) fn enable_sm(ctx: &Context, state: &mut SessionState, el: &Element) -> Element {
    let mut timeout = ctx.config.c2s.sm_resume_timeout_secs;
    // The client may prefer a shorter resumption time (XEP-0198 §3).
    if let Some(max) = el.attr("max").and_then(|m| m.trim().parse::<u64>().ok())
        && max > 0
    {
        timeout = timeout.min(max);
    }
    let mut enabled = Element::new("enabled", sm::NS);
    let (id, takeover) = if sm::parse_bool(el.attr("resume")) {
        let (id, rx) = ctx.sm.register(&state.bound.bare);
        enabled.set_attr("id", id.clone());
        enabled.set_attr("resume", "true");
        enabled.set_attr("max", timeout.to_string());
        (Some(id), Some(rx))
    } else {
        (None, None)
    };
    state.sm = Some(StreamManagement::new(
        id,
        Duration::from_secs(timeout),
        takeover,
    ));
    enabled
}

/// XEP-0198 nonzas on a bound stream.
fn handle_sm(
    ctx: &Arc<Context>,
    conn: &mut Connection,
    state: &mut SessionState,
    el: &Element,
) -> Result<(), LoopEnd> {
    match el.name.as_str() {
        "enable" if state.sm.is_none() => {
            let enabled = enable_sm(ctx, state, el);
            conn.queue(&enabled);
        }
        // Enabled twice, or a resumption on a bound stream.
        "enable" | "resume" => conn.queue(&sm::failed("unexpected-request")),
        "r" => {
            if let Some(sm) = &state.sm {
                conn.queue(&sm::answer(sm.handled()));
            }
        }
        "a" => {
            let (Some(sm), Some(h)) = (&mut state.sm, sm::parse_h(el)) else {
                return Ok(());
            };
            if let Err(e) = sm.ack(h) {
                return Err(LoopEnd::Close(Ending::Custom(sm::handled_too_high(&e))));
            }
            // Stanzas written after the request this answers still need an ack.
            if sm.unacked_len() > 0 {
                conn.queue(&sm::request());
                sm.mark_requested();
            }
        }
        other => debug!(
            element = other,
            "unexpected stream management element ignored"
        ),
    }
    Ok(())
}

/// `raw` parsed as a JID, from `last` when it is the same string as the last time. Lent
/// from `last`: routing borrows it.
fn parse_to<'a>(last: &'a mut Option<Box<(Box<str>, Jid)>>, raw: &str) -> Option<&'a Jid> {
    if last
        .as_deref()
        .is_none_or(|(last_raw, _)| **last_raw != *raw)
    {
        let jid = addr::parse(raw)?;
        *last = Some(Box::new((raw.into(), jid)));
    }
    last.as_deref().map(|(_, jid)| jid)
}

/// Validates addressing, stamps `from` and hands the stanza on (RFC 6120 §8.1).
async fn handle_stanza(
    ctx: &Arc<Context>,
    state: &mut SessionState,
    out: &mut Vec<Element>,
    mut el: Element,
) -> Result<(), Ending> {
    let bound = &state.bound;
    if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
        return Err(StreamErrorCondition::UnsupportedStanzaType.into());
    }
    ctx.metrics.stanza(Stream::C2s, Direction::In, &el.name);
    if let Some(from) = el.attr("from") {
        let ok = addr::parse(from).is_some_and(|a| a == bound.full || a == bound.bare);
        if !ok {
            return Err(StreamErrorCondition::InvalidFrom.into());
        }
    }
    el.set_attr("from", bound.full.as_str());
    if let Some(lang) = &bound.lang
        && el.attr("xml:lang").is_none()
    {
        el.set_attr("xml:lang", lang.clone());
    }
    let to = match el.attr("to").map(|raw| parse_to(&mut state.last_to, raw)) {
        Some(Some(to)) => {
            if el.attr("to") != Some(to.as_str()) {
                el.set_attr("to", to.as_str());
            }
            Some(to)
        }
        Some(None) => {
            route_reply(ctx, &el, StanzaError::jid_malformed()).await;
            return Ok(());
        }
        None => None,
    };
    match el.name.as_str() {
        "presence" => {
            ctx.registry
                .presence_outbound(ctx, &mut state.module_view(out), el)
                .await
        }
        "iq" => {
            let kind = el.attr("type").unwrap_or("");
            let valid = el.attr("id").is_some()
                && match kind {
                    "get" | "set" => el.elements().count() == 1,
                    "result" => el.elements().count() <= 1,
                    "error" => true,
                    _ => false,
                };
            if !valid {
                if kind != "error" {
                    route_reply(ctx, &el, StanzaError::bad_request()).await;
                }
                return Ok(());
            }
            // Without 'to', addressed to the user's own account (RFC 6120 §10.3.3).
            let to = to.unwrap_or_else(|| own_account(&mut el, bound));
            route_addressed(ctx, &bound.full, to, el).await;
        }
        _ => {
            let to = to.unwrap_or_else(|| own_account(&mut el, bound));
            let msg = Outgoing {
                user: &bound.bare,
                from: &bound.full,
                to,
            };
            if ctx.registry.outbound_message(ctx, &msg, &mut el).await {
                route_addressed(ctx, &bound.full, to, el).await;
            }
        }
    }
    Ok(())
}

/// Addresses `el` to the session's own account, for stanzas sent without 'to'.
fn own_account<'a>(el: &mut Element, bound: &'a Bound) -> &'a Jid {
    el.set_attr("to", bound.bare.as_str());
    &bound.bare
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_to_is_parsed_once_and_only_for_the_same_string() {
        let mut last = None;
        let first = parse_to(&mut last, "Juliet@Example.COM/Balcony")
            .unwrap()
            .clone();
        assert_eq!(first.as_str(), "juliet@example.com/Balcony");
        // The same string again: the cached value, still normalized.
        assert_eq!(
            parse_to(&mut last, "Juliet@Example.COM/Balcony"),
            Some(&first)
        );
        // A string that only normalizes to the same JID is parsed on its own.
        let other = parse_to(&mut last, "juliet@example.com/balcony").unwrap();
        assert_eq!(other.as_str(), "juliet@example.com/balcony");
        // Malformed: refused, and the cache keeps the last good one.
        assert_eq!(parse_to(&mut last, "a@b@c"), None);
        assert_eq!(parse_to(&mut last, "a@b@c"), None);
        assert_eq!(
            last.as_deref().map(|(raw, _)| &**raw),
            Some("juliet@example.com/balcony")
        );
    }
}
