//! Client-to-server connections (RFC 6120): stream negotiation (STARTTLS or Direct TLS,
//! SASL, resource binding), then the bound session, one task per connection.

mod negotiate;
mod session;
mod sm;

pub use sm::SmRegistry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::config::TlsMode;
use crate::context::Context;
use crate::net::io::MaybeTls;
use crate::net::tls::TlsContext;
use crate::net::websocket::{self, WsDecoder, WsError};
use crate::stream::{STREAM_CLOSE, StreamError, StreamErrorCondition};
use crate::xml::{Element, ParserLimits, StreamEvent, StreamParser, XmlError, ns};
use negotiate::Negotiated;
use session::{Outcome, SessionState};

/// Why a connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Send this stream error, then close.
    Error(StreamError),
    /// The peer closed its stream; answer with our close.
    PeerClosed,
    /// The socket is gone (EOF, reset); nothing more can be sent.
    Gone,
    /// Send this prepared `<stream:error/>` (one with an application condition), then close.
    Custom(Element),
}

impl From<StreamErrorCondition> for Ending {
    fn from(c: StreamErrorCondition) -> Self {
        Ending::Error(StreamError::new(c))
    }
}

/// One client connection's transport and parser.
pub(crate) struct Connection {
    pub io: MaybeTls,
    pub parser: StreamParser,
    pub out: Vec<u8>,
    /// Our stream header has been sent for the current stream (errors need one first).
    pub header_sent: bool,
    /// XMPP over WebSocket (RFC 7395): frames are translated to and from stream syntax.
    pub ws: Option<Box<WsDecoder>>,
    /// How long a write may make no progress before the client counts as gone.
    write_timeout: Duration,
}

/// Feeds received bytes to the parser, through the WebSocket decoder when there is one.
pub(crate) fn feed_input(
    parser: &mut StreamParser,
    ws: &mut Option<Box<WsDecoder>>,
    bytes: &[u8],
) -> Result<(), XmlError> {
    let Some(ws) = ws else {
        return parser.feed(bytes);
    };
    match ws.feed(bytes, |message| parser.feed(message)) {
        Ok(fed) => fed,
        // The close handshake ends the stream like `<close/>` would (RFC 7395 §3.6).
        Err(WsError::Closed) => parser.feed(STREAM_CLOSE),
        Err(WsError::TooBig) => Err(XmlError::PolicyViolation(
            "WebSocket message larger than the stanza size limit".into(),
        )),
        Err(WsError::Protocol(why)) => Err(XmlError::NotWellFormed(format!("WebSocket: {why}"))),
    }
}

impl Connection {
    fn new(io: MaybeTls, limits: ParserLimits, write_timeout: Duration) -> Self {
        Connection {
            io,
            parser: StreamParser::new(limits),
            out: Vec::new(),
            header_sent: false,
            ws: None,
            write_timeout,
        }
    }

    /// Queues our stream header (or, over WebSocket, `<open/>`).
    pub fn queue_header(&mut self, from: &str, to: Option<&str>, id: &str) {
        if self.ws.is_some() {
            websocket::text_frame(&websocket::open_element(from, to, id), &mut self.out);
        } else {
            self.out.extend_from_slice(&crate::stream::response_header(
                ns::CLIENT,
                from,
                to,
                id,
                &[],
            ));
        }
        self.header_sent = true;
    }

    /// The next event, reading from the socket as needed.
    pub async fn next_event(&mut self) -> Result<StreamEvent, Ending> {
        loop {
            if let Some(ev) = self.parser.next_event().map_err(xml_ending)? {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    /// Reads once and feeds the parser.
    pub async fn read_some(&mut self) -> Result<(), Ending> {
        let (parser, ws) = (&mut self.parser, &mut self.ws);
        let read = crate::net::io::read_with(&mut self.io, |bytes| feed_input(parser, ws, bytes));
        match read.await {
            Ok(Some(fed)) => fed.map_err(xml_ending),
            Ok(None) | Err(_) => Err(Ending::Gone),
        }
    }

    pub fn queue(&mut self, el: &Element) {
        match &self.ws {
            // Every message is a complete element that declares its namespaces.
            Some(_) => {
                let mut xml = Vec::new();
                el.write_standalone(&mut xml);
                websocket::text_frame(&xml, &mut self.out);
            }
            None => el.write_to(&mut self.out, ns::CLIENT),
        }
    }

    pub async fn flush(&mut self) -> Result<(), Ending> {
        if let Some(ws) = &mut self.ws
            && !ws.replies.is_empty()
        {
            // Pongs go before what was queued after the ping arrived.
            let mut out = std::mem::take(&mut ws.replies);
            out.append(&mut self.out);
            self.out = out;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let res =
            crate::net::io::write_all_within(&mut self.io, &self.out, self.write_timeout).await;
        self.out.clear();
        // A burst (offline messages, a big roster) must not pin its buffer forever.
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        res.map_err(|e| {
            debug!(error = %e, "write failed; connection lost");
            Ending::Gone
        })
    }

    pub async fn send(&mut self, el: &Element) -> Result<(), Ending> {
        self.queue(el);
        self.flush().await
    }

    /// Ends the connection as `ending` says, best effort and bounded in time.
    async fn finish(&mut self, ending: Ending, domain: &str) {
        let error = match ending {
            Ending::Gone => return,
            Ending::PeerClosed => None,
            Ending::Error(err) => {
                debug!(
                    condition = err.condition.name(),
                    "closing with stream error"
                );
                Some(err.to_element())
            }
            Ending::Custom(el) => {
                debug!(error = ?el, "closing with stream error");
                Some(el)
            }
        };
        // Anything still queued (a stream header) goes first.
        if let Some(error) = error {
            if !self.header_sent {
                self.queue_header(domain, None, &crate::stream::random_id());
            }
            self.queue(&error);
        }
        let mut bytes = std::mem::take(&mut self.out);
        match &mut self.ws {
            Some(ws) => {
                websocket::text_frame(&websocket::close_element(), &mut bytes);
                // One close frame: the answer to the client's (among the replies), or ours.
                bytes.append(&mut ws.replies);
                if !ws.saw_close {
                    websocket::close_frame(&mut bytes);
                }
            }
            None => bytes.extend_from_slice(STREAM_CLOSE),
        }
        let io = &mut self.io;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            io.write_all(&bytes).await?;
            io.flush().await?;
            io.shutdown().await
        })
        .await;
        // Read (and discard) what the peer still sends for a moment, so closing with
        // unread input does not reset the connection before our error is read.
        // On the heap: only a closing connection needs it (a future holds its locals).
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut drained = 0usize;
            while drained < 1 << 20 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
}

fn xml_ending(e: XmlError) -> Ending {
    Ending::Error(StreamError::with_text(
        StreamErrorCondition::from_xml_error(&e),
        e.to_string(),
    ))
}

/// Serves one accepted client connection until it closes, then, for a session that
/// hibernates (XEP-0198), until it is resumed elsewhere or ends. `permit` (the
/// connection's slot under the connection limits) is dropped with the socket.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    ctx: Arc<Context>,
    tls: TlsContext,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: TlsMode,
    websocket: bool,
    conn_id: u64,
    shutdown: CancellationToken,
    permit: impl Send + 'static,
) {
    let span = info_span!("c2s", conn = conn_id, %peer, jid = tracing::field::Empty);
    // Boxed: a task's future is as large as its largest state, and a hibernated session
    // should not keep the space its connection needed (buffers, negotiation, closing).
    let connection = serve_connection(&ctx, tls, tcp, mode, websocket, conn_id, &shutdown, permit);
    let hibernating = Box::pin(connection).instrument(span.clone()).await;
    if let Some(state) = hibernating {
        Box::pin(sm::hibernate(&ctx, state, shutdown))
            .instrument(span)
            .await;
    }
}

/// Stream negotiation up to a bound or resumed session, within the handshake timeout.
async fn negotiate_in_time(
    ctx: &Arc<Context>,
    tls: &TlsContext,
    conn: &mut Connection,
    mode: TlsMode,
    conn_id: u64,
    shutdown: &CancellationToken,
) -> Result<Negotiated, Ending> {
    let handshake = Duration::from_secs(ctx.config.limits.handshake_timeout_secs);
    let negotiation = negotiate::negotiate(ctx, tls, conn, mode, conn_id);
    tokio::select! {
        r = tokio::time::timeout(handshake, negotiation) => match r {
            Ok(r) => r,
            Err(_) => Err(Ending::from(StreamErrorCondition::ConnectionTimeout)),
        },
        _ = shutdown.cancelled() => Err(Ending::from(StreamErrorCondition::SystemShutdown)),
    }
}

/// The connection's life; returns the session if it is to hibernate.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    ctx: &Arc<Context>,
    tls: TlsContext,
    tcp: TcpStream,
    mode: TlsMode,
    websocket: bool,
    conn_id: u64,
    shutdown: &CancellationToken,
    _permit: impl Send,
) -> Option<Box<SessionState>> {
    let _ = tcp.set_nodelay(true);
    let limits = ParserLimits {
        max_stanza_bytes: ctx.config.limits.max_stanza_bytes,
        max_depth: ctx.config.limits.max_depth,
        max_attributes: ctx.config.limits.max_attributes,
    };
    let write_timeout = Duration::from_secs(ctx.config.limits.write_timeout_secs);
    let mut conn = Connection::new(MaybeTls::Plain(tcp), limits, write_timeout);
    if websocket {
        conn.ws = Some(Box::new(WsDecoder::new(limits.max_stanza_bytes)));
    }
    let default_domain = ctx
        .config
        .vhosts
        .first()
        .map(|v| v.domain.clone())
        .unwrap_or_default();
    let negotiation = Box::pin(negotiate_in_time(
        ctx, &tls, &mut conn, mode, conn_id, shutdown,
    ));
    let negotiated = negotiation.await;
    let (state, resumed) = match negotiated {
        Ok(Negotiated::Bound(bound)) => (SessionState::new(bound), None),
        Ok(Negotiated::Resumed(state, h)) => (state, Some(h)),
        Err(ending) => {
            Box::pin(conn.finish(ending, &default_domain)).await;
            debug!("connection closed");
            return None;
        }
    };
    tracing::Span::current().record("jid", state.bound.full.as_str());
    debug!(resumed = resumed.is_some(), "session bound");
    let domain = state.bound.domain.clone();
    let session = Box::pin(session::run(ctx, &mut conn, state, resumed, shutdown));
    let outcome = session.await;
    debug!("connection closed");
    match outcome {
        Outcome::Closed(ending) => {
            Box::pin(conn.finish(ending, &domain)).await;
            None
        }
        Outcome::Hibernate(state, ending) => {
            Box::pin(conn.finish(ending, &domain)).await;
            Some(state)
        }
    }
}
