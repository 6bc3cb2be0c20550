//! BOSH (XEP-0124) carrying client streams (XEP-0206) at `/http-bind`.
//!
//! Each BOSH session is one task that owns the session's state (no locks): HTTP requests
//! reach it through a channel and wait for their answer; the client stream itself runs in
//! an ordinary c2s task on a [`Link`](crate::net::link), so negotiation, SASL, binding,
//! XEP-0198 and CSI are the same code as on TCP. The session task puts the client's
//! payloads in `rid` order, holds up to `hold` requests until there is something to send or
//! `wait` passes, replays answers to repeated `rid`s, and ends the session after
//! `inactivity` without requests (the stream is then lost, as a dropped TCP connection is).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use quick_xml::events::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use super::{ConnInfo, Transports};
use crate::config::BoshConfig;
use crate::net::link::{self, Inbound, LinkEnd, Outbound};
use crate::sasl::ChannelBindings;
use crate::server::limits::ConnectionLimits;
use crate::stream::STREAM_CLOSE;
use crate::xml::escape::escape_attr;

pub const PATH: &str = "/http-bind";
const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// Requests waiting for a session task to take them; more means the client is flooding.
const REQUEST_QUEUE: usize = 16;

/// The live BOSH sessions, by `sid`.
pub struct Sessions {
    by_sid: Mutex<HashMap<String, mpsc::Sender<Request>>>,
    /// BOSH sessions per IP address and in all (they hold no connection of their own).
    limits: Arc<ConnectionLimits>,
    conn_ids: Arc<AtomicU64>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Sessions {
    pub fn new(
        cfg: &BoshConfig,
        max_total: usize,
        conn_ids: Arc<AtomicU64>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Sessions {
        Sessions {
            by_sid: Mutex::new(HashMap::new()),
            limits: Arc::new(ConnectionLimits::new(cfg.max_sessions_per_ip, max_total)),
            conn_ids,
            tracker,
            shutdown,
        }
    }

    fn get(&self, sid: &str) -> Option<mpsc::Sender<Request>> {
        let map = self.by_sid.lock().unwrap_or_else(|e| e.into_inner());
        map.get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        let mut map = self.by_sid.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(sid);
    }

    /// How many sessions are live (for tests and metrics).
    pub fn len(&self) -> usize {
        self.by_sid.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn routes(transports: Arc<Transports>) -> Router {
    Router::new()
        .route(PATH, post(request).options(preflight).get(landing))
        .with_state(transports)
}

/// One parsed request `<body/>`.
#[derive(Debug, Default, PartialEq)]
pub struct BodyRequest {
    pub rid: Option<u64>,
    pub sid: Option<String>,
    pub to: Option<String>,
    pub lang: Option<String>,
    pub wait: Option<u64>,
    pub hold: Option<u64>,
    pub ack: Option<u64>,
    /// `xmpp:restart='true'` (XEP-0206 §5): a new stream after SASL.
    pub restart: bool,
    /// `type='terminate'`.
    pub terminate: bool,
    /// The children, as sent: stream syntax for the c2s parser.
    pub payload: Vec<u8>,
}

/// Parses a request body: the `<body/>` wrapper's attributes and its children's bytes
/// (which the c2s task's bounded parser checks as it does any stream input).
pub fn parse_body(bytes: &[u8]) -> Result<BodyRequest, &'static str> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    reader.config_mut().check_end_names = false;
    let (start, empty) = loop {
        match reader.read_event() {
            Ok(Event::Decl(_)) => continue,
            Ok(Event::Text(t)) if t.as_ref().trim().is_empty() => continue,
            Ok(Event::Start(s)) => break (s, false),
            Ok(Event::Empty(s)) => break (s, true),
            _ => return Err("not a BOSH <body/>"),
        }
    };
    let inner_start = usize::try_from(reader.buffer_position()).map_err(|_| "too large")?;
    let qname = start.name().into_inner().to_string();
    let (prefix, local) = qname.split_once(':').unwrap_or(("", &qname));
    if local != "body" {
        return Err("not a BOSH <body/>");
    }
    let mut body = BodyRequest::default();
    let mut own_ns = None;
    let mut xbosh_prefix = None;
    let mut prefixed = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|_| "malformed attribute")?;
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|_| "malformed attribute value")?
            .into_owned();
        let key = attr.key.into_inner();
        match key {
            "xmlns" if prefix.is_empty() => own_ns = Some(value),
            "rid" => body.rid = Some(value.trim().parse().map_err(|_| "bad rid")?),
            "sid" => body.sid = Some(value),
            "to" => body.to = Some(value),
            "xml:lang" => body.lang = Some(value),
            "wait" => body.wait = value.trim().parse().ok(),
            "hold" => body.hold = value.trim().parse().ok(),
            "ack" => body.ack = value.trim().parse().ok(),
            "type" => body.terminate = value == "terminate",
            _ => {
                if let Some(p) = key.strip_prefix("xmlns:") {
                    if p == prefix {
                        own_ns = Some(value.clone());
                    }
                    if value == NS_XBOSH {
                        xbosh_prefix = Some(p.to_string());
                    }
                } else if let Some((p, name)) = key.split_once(':') {
                    prefixed.push((p.to_string(), name.to_string(), value));
                }
            }
        }
    }
    if own_ns.as_deref() != Some(NS_HTTPBIND) {
        return Err("not in the httpbind namespace");
    }
    body.restart = prefixed.iter().any(|(p, name, value)| {
        Some(p) == xbosh_prefix.as_ref() && name == "restart" && value == "true"
    });
    if !empty {
        // The content runs to the wrapper's end tag, which must close the document.
        let trimmed = bytes.trim_ascii_end();
        let Some(end_at) = trimmed.iter().rposition(|b| *b == b'<') else {
            return Err("unterminated <body>");
        };
        let end_tag = &trimmed[end_at..];
        let closes = end_tag
            .strip_prefix(b"</")
            .and_then(|t| t.strip_suffix(b">"))
            .is_some_and(|name| name.trim_ascii_end() == qname.as_bytes());
        if !closes || end_at < inner_start {
            return Err("unterminated <body>");
        }
        body.payload = bytes[inner_start..end_at].to_vec();
    } else if bytes[inner_start..]
        .iter()
        .any(|b| !b.is_ascii_whitespace())
    {
        return Err("content after </body>");
    }
    Ok(body)
}

/// A request handed to its session's task, answered with the response body.
struct Request {
    body: BodyRequest,
    reply: oneshot::Sender<String>,
}

async fn request(
    State(web): State<Arc<Transports>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cors = cors_origin(&web, &headers);
    if headers.contains_key(header::ORIGIN) && cors.is_none() {
        return StatusCode::FORBIDDEN.into_response();
    }
    let cfg = &web.ctx.config;
    let limited = http_body_util::Limited::new(body, cfg.bosh.max_body_bytes);
    let collect = tokio::time::timeout(
        Duration::from_secs(cfg.http.body_timeout_secs),
        limited.collect(),
    );
    let bytes = match collect.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return respond(cors, terminate("policy-violation"));
        }
        Ok(Err(_)) | Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let body = match parse_body(&bytes) {
        Ok(body) => body,
        Err(why) => {
            debug!(peer = %conn.peer, why, "bad BOSH request");
            let mut r = respond(cors, terminate("bad-request"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    if body.rid.is_none() {
        return respond(cors, terminate("bad-request"));
    }
    let session = match &body.sid {
        Some(sid) => match web.bosh.get(sid) {
            Some(session) => session,
            None => return respond(cors, terminate("item-not-found")),
        },
        None => match create(&web, &conn, &body) {
            Ok(session) => session,
            Err(condition) => return respond(cors, terminate(condition)),
        },
    };
    let (reply, answer) = oneshot::channel();
    match session.try_send(Request { body, reply }) {
        Ok(()) => {}
        // A full queue means more requests at once than any client needs.
        Err(mpsc::error::TrySendError::Full(_)) => {
            return respond(cors, terminate("policy-violation"));
        }
        // The session ended and is about to leave the table: as if it had (§14.2).
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return respond(cors, terminate("item-not-found"));
        }
    }
    match answer.await {
        Ok(xml) => respond(cors, xml),
        // The session ended without answering this request.
        Err(_) => respond(cors, terminate("item-not-found")),
    }
}

/// Starts a session for a creation request; its task answers the request.
fn create(
    web: &Arc<Transports>,
    conn: &ConnInfo,
    body: &BodyRequest,
) -> Result<mpsc::Sender<Request>, &'static str> {
    let ctx = &web.ctx;
    let cfg = &ctx.config.bosh;
    let domain = body.to.as_deref().unwrap_or_default().to_ascii_lowercase();
    if !ctx.is_local_domain(&domain) {
        return Err("host-unknown");
    }
    let Some(permit) = web.bosh.limits.try_acquire(conn.peer.ip()) else {
        debug!(peer = %conn.peer, "BOSH session limit reached");
        return Err("policy-violation");
    };
    let sid = crate::stream::random_id();
    let conn_id = web.bosh.conn_ids.fetch_add(1, Ordering::Relaxed);
    // A BOSH session outlives the connections its requests come on: no channel binding.
    let (link, end) = link::pair(conn.peer.ip(), conn.secure, ChannelBindings::default());
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let hold = body.hold.unwrap_or(1).min(u64::from(cfg.max_requests - 1)) as usize;
    let session = Session {
        sid: sid.clone(),
        domain,
        wait: Duration::from_secs(
            body.wait
                .unwrap_or(cfg.max_wait_secs)
                .min(cfg.max_wait_secs),
        ),
        hold,
        requests: hold + 1,
        inactivity: Duration::from_secs(cfg.inactivity_secs),
        polling: Duration::from_secs(cfg.polling_secs),
        acks: body.ack == Some(1),
        max_pending: ctx.config.limits.session_max_bytes,
        next_rid: body.rid.unwrap_or_default(),
        held: VecDeque::new(),
        early: BTreeMap::new(),
        answered: VecDeque::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        to_c2s: VecDeque::new(),
        to_c2s_bytes: 0,
        authid: None,
        created: false,
        stream_done: false,
        closing: false,
        last_request: Instant::now(),
        last_empty_poll: None,
        shutdown: web.bosh.shutdown.clone(),
    };
    web.bosh
        .by_sid
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(sid.clone(), tx.clone());
    let stream = crate::c2s::serve_link(
        ctx.clone(),
        web.tls.clone(),
        link,
        crate::metrics::Transport::Bosh,
        conn_id,
        web.bosh.shutdown.child_token(),
        (),
    );
    web.bosh.tracker.spawn(stream);
    let span = info_span!("bosh", conn = conn_id, peer = %conn.peer);
    let web = web.clone();
    web.bosh.tracker.clone().spawn(
        async move {
            session.run(rx, end).await;
            web.bosh.remove(&sid);
            drop(permit);
        }
        .instrument(span),
    );
    Ok(tx)
}

struct Held {
    rid: u64,
    reply: oneshot::Sender<String>,
    deadline: Instant,
}

struct Session {
    sid: String,
    domain: String,
    wait: Duration,
    hold: usize,
    requests: usize,
    inactivity: Duration,
    polling: Duration,
    /// The client asked for acknowledgements (XEP-0124 §9).
    acks: bool,
    max_pending: usize,
    /// The `rid` of the next request to process.
    next_rid: u64,
    /// Requests waiting for an answer, oldest first (answered in that order).
    held: VecDeque<Held>,
    /// Requests that came ahead of their predecessors, by `rid`.
    early: BTreeMap<u64, Request>,
    /// Recent answers, for clients that repeat a request whose answer they lost.
    answered: VecDeque<(u64, String)>,
    /// The stream's output not yet given to a request.
    pending: Vec<Outbound>,
    pending_bytes: usize,
    /// Client payloads not yet taken by the c2s task.
    to_c2s: VecDeque<Inbound>,
    /// Bytes in `to_c2s`: while the stream is not reading (its input shaper paused it),
    /// no more requests are taken past `max_pending` (the client then gets
    /// `policy-violation` when the request queue is full).
    to_c2s_bytes: usize,
    /// The stream id (XEP-0206 `authid`), from the c2s task's stream header.
    authid: Option<String>,
    /// The session creation response was sent.
    created: bool,
    /// The c2s task's stream ended.
    stream_done: bool,
    /// The client terminated the session: finish handing its last payload over.
    closing: bool,
    last_request: Instant,
    /// When an empty request of a polling client (hold 0) got an empty answer.
    last_empty_poll: Option<Instant>,
    /// Cancelled when the server stops: then nobody waits for a client to pick up the
    /// stream's last words.
    shutdown: CancellationToken,
}

enum Step {
    Continue,
    End,
}

impl Session {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>, mut end: LinkEnd) {
        // The stream header the client's `<body/>` stands for (XEP-0206 §4).
        self.queue_input(Inbound::Stream(self.stream_header(None)));
        let shutdown = self.shutdown.clone();
        loop {
            if self.closing && self.to_c2s.is_empty() {
                return;
            }
            if self.stream_done && self.held.is_empty() && shutdown.is_cancelled() {
                return;
            }
            let deadline = self.next_deadline();
            let take_output = !self.stream_done && self.pending_bytes < self.max_pending;
            let step = tokio::select! {
                req = requests.recv(), if !self.closing && self.to_c2s_bytes <= self.max_pending => match req {
                    Some(req) => self.on_request(req),
                    None => Step::End,
                },
                batch = end.outbound.recv(), if take_output => {
                    match batch {
                        Some(batch) => self.on_output(batch),
                        None => self.stream_done = true,
                    }
                    self.answer_ready()
                }
                permit = end.inbound.reserve(), if !self.to_c2s.is_empty() => {
                    match (permit, self.to_c2s.pop_front()) {
                        (Ok(permit), Some(item)) => {
                            self.to_c2s_bytes = self.to_c2s_bytes.saturating_sub(inbound_len(&item));
                            permit.send(item)
                        }
                        // The stream is gone; what the client sent has nowhere to go.
                        _ => {
                            self.to_c2s.clear();
                            self.to_c2s_bytes = 0;
                        }
                    }
                    Step::Continue
                }
                _ = tokio::time::sleep_until(deadline) => self.on_timer(),
                // The stream ends by itself (its task sees the same token); this just
                // wakes the loop to notice.
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => Step::Continue,
            };
            if let Step::End = step {
                return;
            }
        }
    }

    /// Queues client input for the stream.
    fn queue_input(&mut self, item: Inbound) {
        self.to_c2s_bytes += inbound_len(&item);
        self.to_c2s.push_back(item);
    }

    /// When the oldest held request is due, or the session is idle for too long.
    fn next_deadline(&self) -> Instant {
        match self.held.front() {
            Some(h) => h.deadline,
            None => self.last_request + self.inactivity,
        }
    }

    fn on_timer(&mut self) -> Step {
        let now = Instant::now();
        if self.held.is_empty() {
            if now >= self.last_request + self.inactivity {
                debug!(sid = %self.sid, "BOSH session inactive; ending it");
                return Step::End;
            }
            return Step::Continue;
        }
        while self.held.front().is_some_and(|h| h.deadline <= now) {
            self.answer_oldest();
        }
        Step::Continue
    }

    fn on_request(&mut self, req: Request) -> Step {
        self.last_request = Instant::now();
        let Some(rid) = req.body.rid else {
            let _ = req.reply.send(terminate("bad-request"));
            return Step::Continue;
        };
        if rid < self.next_rid {
            return self.repeated(rid, req);
        }
        if rid >= self.next_rid + self.requests as u64 {
            // Beyond the window: the client lost track (XEP-0124 §14.2).
            let _ = req.reply.send(terminate("item-not-found"));
            return self.end_all("item-not-found");
        }
        if self.held.len() + self.early.len() + 1 > self.requests {
            let _ = req.reply.send(terminate("policy-violation"));
            return self.end_all("policy-violation");
        }
        if rid > self.next_rid {
            self.early.insert(rid, req);
            return Step::Continue;
        }
        if let Step::End = self.process(req) {
            return Step::End;
        }
        while let Some(req) = self.early.remove(&self.next_rid) {
            if let Step::End = self.process(req) {
                return Step::End;
            }
        }
        Step::Continue
    }

    /// A request whose `rid` was seen: its answer again, or the new connection's reply
    /// slot for a request still held.
    fn repeated(&mut self, rid: u64, req: Request) -> Step {
        if let Some((_, xml)) = self.answered.iter().find(|(r, _)| *r == rid) {
            let _ = req.reply.send(xml.clone());
            return Step::Continue;
        }
        if let Some(held) = self.held.iter_mut().find(|h| h.rid == rid) {
            held.reply = req.reply;
            return Step::Continue;
        }
        let _ = req.reply.send(terminate("item-not-found"));
        self.end_all("item-not-found")
    }

    fn process(&mut self, req: Request) -> Step {
        let Request { body, reply } = req;
        let rid = self.next_rid;
        self.next_rid += 1;
        if let Some(ack) = body.ack.filter(|_| self.created) {
            self.answered.retain(|(r, _)| *r > ack);
        }
        let empty = body.payload.iter().all(u8::is_ascii_whitespace);
        if body.terminate {
            if !empty {
                self.queue_input(Inbound::Stream(body.payload));
            }
            self.queue_input(Inbound::Stream(STREAM_CLOSE.to_vec()));
            let _ = reply.send(terminate_with(&[], None));
            self.end_held(None);
            self.closing = true;
            return Step::Continue;
        }
        if body.restart {
            self.queue_input(Inbound::Stream(self.stream_header(body.lang.as_deref())));
        } else if !empty {
            self.queue_input(Inbound::Stream(body.payload));
        } else {
            // Activity all the same: the stream's idle timer must not end a quiet client.
            self.queue_input(Inbound::Stream(Vec::new()));
            if self.hold == 0 && self.created && self.pending.is_empty() {
                let now = Instant::now();
                if self
                    .last_empty_poll
                    .is_some_and(|t| now.duration_since(t) < self.polling)
                {
                    let _ = reply.send(terminate("policy-violation"));
                    return self.end_all("policy-violation");
                }
                self.last_empty_poll = Some(now);
            }
        }
        self.held.push_back(Held {
            rid,
            reply,
            deadline: Instant::now() + self.wait,
        });
        // The session creation response waits for the stream's features.
        while self.held.len() > self.hold && self.created {
            self.answer_oldest();
        }
        self.answer_ready()
    }

    fn on_output(&mut self, batch: Vec<Outbound>) {
        for item in batch {
            self.pending_bytes += match &item {
                Outbound::Element(xml) | Outbound::StreamError(xml) => xml.len(),
                _ => 0,
            };
            if matches!(item, Outbound::Close) {
                self.stream_done = true;
            }
            self.pending.push(item);
        }
    }

    /// Gives pending output to the oldest held request, if both exist; once the stream
    /// has ended, ends the session with it.
    fn answer_ready(&mut self) -> Step {
        if self.stream_done {
            if self.held.is_empty() {
                // Kept until a request picks up the end (or the session times out).
                return Step::Continue;
            }
            return self.finish_stream();
        }
        let has_output = self
            .pending
            .iter()
            .any(|o| !matches!(o, Outbound::Header { .. }))
            || (!self.created && self.authid_known());
        if has_output && !self.held.is_empty() {
            self.answer_oldest();
        }
        Step::Continue
    }

    fn authid_known(&self) -> bool {
        self.authid.is_some()
            || self
                .pending
                .iter()
                .any(|o| matches!(o, Outbound::Header { .. }))
    }

    fn answer_oldest(&mut self) {
        let Some(held) = self.held.pop_front() else {
            return;
        };
        let items = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let xml = self.response(&items, held.rid);
        self.remember(held.rid, &xml);
        let _ = held.reply.send(xml);
    }

    /// The stream ended: its last output (a stream error, say) goes to the oldest held
    /// request with the session's end, the others just end.
    fn finish_stream(&mut self) -> Step {
        let items = std::mem::take(&mut self.pending);
        let error = items.iter().find_map(|o| match o {
            Outbound::StreamError(xml) => Some(xml.as_str()),
            _ => None,
        });
        let condition = error.map(|_| "remote-stream-error");
        let xml = terminate_with(&items, condition);
        if let Some(held) = self.held.pop_front() {
            self.remember(held.rid, &xml);
            let _ = held.reply.send(xml);
        }
        self.end_held(condition);
        Step::End
    }

    /// Ends the session, answering every waiting request with `condition`.
    fn end_all(&mut self, condition: &'static str) -> Step {
        self.end_held(Some(condition));
        Step::End
    }

    fn end_held(&mut self, condition: Option<&str>) {
        for held in self.held.drain(..) {
            let _ = held.reply.send(terminate_with(&[], condition));
        }
        for (_, req) in std::mem::take(&mut self.early) {
            let _ = req.reply.send(terminate_with(&[], condition));
        }
    }

    fn remember(&mut self, rid: u64, xml: &str) {
        self.answered.push_back((rid, xml.to_string()));
        while self.answered.len() > self.requests {
            self.answered.pop_front();
        }
    }

    /// A response `<body/>` carrying `items` for request `rid`.
    fn response(&mut self, items: &[Outbound], rid: u64) -> String {
        let mut out = format!("<body xmlns='{NS_HTTPBIND}'").into_bytes();
        for item in items {
            if let Outbound::Header { id, .. } = item {
                self.authid = Some(id.clone());
            }
        }
        if !self.created {
            self.created = true;
            let attrs = [
                ("sid", self.sid.clone()),
                ("wait", self.wait.as_secs().to_string()),
                ("inactivity", self.inactivity.as_secs().to_string()),
                ("polling", self.polling.as_secs().to_string()),
                ("requests", self.requests.to_string()),
                ("hold", self.hold.to_string()),
                ("ver", "1.11".to_string()),
                ("from", self.domain.clone()),
                ("authid", self.authid.clone().unwrap_or_default()),
                ("xmpp:version", "1.0".to_string()),
                ("xmpp:restartlogic", "true".to_string()),
            ];
            for (name, value) in attrs {
                push_attr(&mut out, name, &value);
            }
            if self.acks {
                push_attr(&mut out, "ack", &rid.to_string());
            }
            push_attr(&mut out, "xmlns:xmpp", NS_XBOSH);
        } else if self.acks && rid + 1 < self.next_rid {
            // Answering an older request: tell how far requests came (XEP-0124 §9.3).
            push_attr(&mut out, "ack", &(self.next_rid - 1).to_string());
        }
        push_attr(&mut out, "xmlns:stream", crate::xml::ns::STREAM);
        out.push(b'>');
        for item in items {
            if let Outbound::Element(xml) | Outbound::StreamError(xml) = item {
                out.extend_from_slice(xml.as_bytes());
            }
        }
        out.extend_from_slice(b"</body>");
        String::from_utf8(out).unwrap_or_default()
    }

    fn stream_header(&self, lang: Option<&str>) -> Vec<u8> {
        let mut out = b"<stream:stream xmlns='jabber:client' \
            xmlns:stream='http://etherx.jabber.org/streams' version='1.0'"
            .to_vec();
        push_attr(&mut out, "to", &self.domain);
        if let Some(lang) = lang {
            push_attr(&mut out, "xml:lang", lang);
        }
        out.push(b'>');
        out
    }
}

fn inbound_len(item: &Inbound) -> usize {
    match item {
        Inbound::Stream(bytes) => bytes.len(),
        Inbound::Fault(..) => 0,
    }
}

fn push_attr(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    escape_attr(value, out);
    out.push(b'\'');
}

/// A terminal response with `condition` (XEP-0124 §17).
fn terminate(condition: &str) -> String {
    terminate_with(&[], Some(condition))
}

fn terminate_with(items: &[Outbound], condition: Option<&str>) -> String {
    let mut out = format!("<body xmlns='{NS_HTTPBIND}' type='terminate'").into_bytes();
    if let Some(condition) = condition {
        push_attr(&mut out, "condition", condition);
    }
    push_attr(&mut out, "xmlns:stream", crate::xml::ns::STREAM);
    out.push(b'>');
    for item in items {
        if let Outbound::Element(xml) | Outbound::StreamError(xml) = item {
            out.extend_from_slice(xml.as_bytes());
        }
    }
    out.extend_from_slice(b"</body>");
    String::from_utf8(out).unwrap_or_default()
}

/// The `Access-Control-Allow-Origin` for the request's page, if it may use BOSH; `*`
/// for requests that are not from a page.
fn cors_origin(web: &Transports, headers: &HeaderMap) -> Option<HeaderValue> {
    match headers.get(header::ORIGIN) {
        None => Some(HeaderValue::from_static("*")),
        Some(origin) => web.origin_ok(headers).then(|| origin.clone()),
    }
}

fn respond(cors: Option<HeaderValue>, xml: String) -> Response {
    let mut r = (StatusCode::OK, xml).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(origin) = cors {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// CORS preflight: browsers ask before POSTing `text/xml` from another origin.
async fn preflight(State(web): State<Arc<Transports>>, headers: HeaderMap) -> Response {
    let Some(origin) = cors_origin(&web, &headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    r
}

/// Someone opened the endpoint in a browser.
async fn landing() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "This is an XMPP BOSH endpoint (XEP-0124, XEP-0206): point an XMPP web client at it.\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bodies() {
        let b = parse_body(
            b"<?xml version='1.0'?><body rid='10' to='example.org' xml:lang='en' wait='60' \
              hold='1' ack='1' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap();
        assert_eq!(b.rid, Some(10));
        assert_eq!(b.to.as_deref(), Some("example.org"));
        assert_eq!((b.wait, b.hold, b.ack), (Some(60), Some(1), Some(1)));
        assert!(b.payload.is_empty() && !b.restart && !b.terminate);

        let b = parse_body(
            b"<body rid='11' sid='s' xmlns='http://jabber.org/protocol/httpbind'>\
              <message xmlns='jabber:client' to='a@b'><body>x</body></message>\
              <presence xmlns='jabber:client'/></body >\n",
        )
        .unwrap();
        assert_eq!(b.sid.as_deref(), Some("s"));
        assert_eq!(
            b.payload,
            b"<message xmlns='jabber:client' to='a@b'><body>x</body></message>\
              <presence xmlns='jabber:client'/>"
        );

        let b = parse_body(
            b"<body rid='12' sid='s' x:restart='true' xmlns:x='urn:xmpp:xbosh' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap();
        assert!(b.restart);
        let b = parse_body(
            b"<body rid='12' sid='s' other:restart='true' xmlns:other='urn:example' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
        )
        .unwrap();
        assert!(!b.restart, "restart only in the xbosh namespace");
        let b = parse_body(
            b"<body rid='13' sid='s' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
              <presence type='unavailable' xmlns='jabber:client'/></body>",
        )
        .unwrap();
        assert!(b.terminate);
    }

    #[test]
    fn refuses_what_is_not_a_body() {
        for bad in [
            &b""[..],
            b"<body rid='1'/>",
            b"<body rid='1' xmlns='jabber:client'/>",
            b"<message xmlns='http://jabber.org/protocol/httpbind'/>",
            b"<body rid='x' xmlns='http://jabber.org/protocol/httpbind'/>",
            b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><message>",
            b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><a/></bodyx>",
            b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/><extra/>",
            b"<body rid='1' rid='2' xmlns='http://jabber.org/protocol/httpbind'/>",
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn terminal_bodies_carry_the_condition() {
        assert_eq!(
            terminate("item-not-found"),
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' \
             condition='item-not-found' xmlns:stream='http://etherx.jabber.org/streams'></body>"
        );
    }
}
