//! A client stream carried by the HTTP server (WebSocket, BOSH) instead of a socket of its
//! own. The HTTP side turns its messages into stream syntax for the c2s task's parser and
//! receives the task's output element by element, so negotiation, SASL, sessions, XEP-0198
//! and CSI run the same code whatever the transport.

use std::net::IpAddr;

use tokio::sync::mpsc;

use crate::sasl::ChannelBindings;
use crate::stream::StreamErrorCondition;

/// What the HTTP side passes to the c2s task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Stream syntax for the parser (`</stream:stream>` when the client closed).
    Stream(Vec<u8>),
    /// The client broke the transport's rules: the stream ends with this error.
    Fault(StreamErrorCondition, &'static str),
}

/// One unit of the c2s task's output, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Our stream header (WebSocket `<open/>`; BOSH puts `from` and `id` on the session's
    /// first response).
    Header { from: String, id: String },
    /// One top-level element, serialized with its namespaces declared.
    Element(String),
    /// A stream error (then `Close`): BOSH ends the session with it.
    StreamError(String),
    /// The end of our stream.
    Close,
}

/// The c2s task's half.
#[derive(Debug)]
pub struct Link {
    /// The client's address, for per-IP authentication throttling.
    pub peer: IpAddr,
    /// Whether the transport is as private as TLS (https://, or a loopback listener behind
    /// a TLS-terminating proxy): no STARTTLS exists over HTTP transports.
    pub secure: bool,
    /// The HTTPS connection's channel bindings, where one connection carries the whole
    /// stream (WebSocket); empty otherwise.
    pub bindings: ChannelBindings,
    inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::Sender<Vec<Outbound>>,
    pending: Vec<Outbound>,
}

/// The HTTP side's half. Dropping `inbound` tells the task that the transport is gone.
#[derive(Debug)]
pub struct LinkEnd {
    pub inbound: mpsc::Sender<Inbound>,
    /// The task's output, one batch per flush; closed when the task is done.
    pub outbound: mpsc::Receiver<Vec<Outbound>>,
}

/// Batches in flight each way: enough to keep both sides busy; a side that stops taking
/// them blocks the other (a stalled writer then hits the write timeout).
const DEPTH: usize = 8;

pub fn pair(peer: IpAddr, secure: bool, bindings: ChannelBindings) -> (Link, LinkEnd) {
    let (in_tx, in_rx) = mpsc::channel(DEPTH);
    let (out_tx, out_rx) = mpsc::channel(DEPTH);
    (
        Link {
            peer,
            secure,
            bindings,
            inbound: in_rx,
            outbound: out_tx,
            pending: Vec::new(),
        },
        LinkEnd {
            inbound: in_tx,
            outbound: out_rx,
        },
    )
}

impl Link {
    /// What the client sent next; `None` once the transport is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }

    pub fn queue(&mut self, item: Outbound) {
        self.pending.push(item);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands what is queued to the HTTP side; fails when it is gone.
    pub async fn flush(&mut self) -> Result<(), mpsc::error::SendError<Vec<Outbound>>> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.outbound.send(batch).await
    }
}
