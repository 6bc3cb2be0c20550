//! Client-to-server connections (RFC 6120): stream negotiation (STARTTLS or Direct TLS,
//! SASL, resource binding), then the bound session, one task per connection.

mod negotiate;
mod sasl2;
mod session;
mod sm;

pub use sm::SmRegistry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::config::TlsMode;
use crate::context::Context;
use crate::metrics::Transport;
use crate::net::io::MaybeTls;
use crate::net::link::Link;
use crate::net::tls::TlsContext;
pub(crate) use crate::net::{Connection, connection::Ending, connection::xml_ending};
use crate::stream::{StreamErrorCondition, StreamKind};
use negotiate::Negotiated;
use session::{Outcome, SessionState};

/// Serves one accepted client connection until it closes, then, for a session that
/// hibernates (XEP-0198), until it is resumed elsewhere or ends. `permit` (the
/// connection's slot under the connection limits) is dropped with the socket.
///
/// Not an `async fn`: that would be a future around [`serve_stream`]'s keeping its own
/// arguments (socket, TLS context, permit) for the task's whole life.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    ctx: Arc<Context>,
    tls: TlsContext,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: TlsMode,
    conn_id: u64,
    shutdown: CancellationToken,
    permit: impl Send + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    let span = info_span!("c2s", conn = conn_id, %peer, jid = tracing::field::Empty);
    let _ = tcp.set_nodelay(true);
    let conn = Connection::new(MaybeTls::Plain(tcp), StreamKind::Client, &ctx.config);
    let transport = Transport::Tcp;
    serve_stream(
        ctx, tls, conn, mode, transport, conn_id, shutdown, permit, span,
    )
}

/// Serves a client stream the HTTP server carries (WebSocket, BOSH) as [`serve`] does a
/// socket's: the same negotiation, session, XEP-0198 and CSI.
pub fn serve_link(
    ctx: Arc<Context>,
    tls: TlsContext,
    link: Link,
    transport: Transport,
    conn_id: u64,
    shutdown: CancellationToken,
    permit: impl Send + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    let peer = link.peer;
    let span = info_span!(
        "c2s",
        conn = conn_id,
        %peer,
        transport = transport.label(),
        jid = tracing::field::Empty
    );
    let conn = Connection::new(
        MaybeTls::Link(Box::new(link)),
        StreamKind::Client,
        &ctx.config,
    );
    serve_stream(
        ctx,
        tls,
        conn,
        TlsMode::None,
        transport,
        conn_id,
        shutdown,
        permit,
        span,
    )
}

/// Not an `async fn`: the connection is moved into its boxed future right away, so the
/// task's own future (which lives as long as the connection) holds a pointer rather than
/// a dead slot as large as the `Connection` and everything else passed in.
#[allow(clippy::too_many_arguments)]
fn serve_stream(
    ctx: Arc<Context>,
    tls: TlsContext,
    conn: Connection,
    mode: TlsMode,
    transport: Transport,
    conn_id: u64,
    shutdown: CancellationToken,
    permit: impl Send + 'static,
    span: tracing::Span,
) -> impl std::future::Future<Output = ()> + Send {
    // Boxed: a task's future is as large as its largest state, and a hibernated session
    // should not keep the space its connection needed (buffers, negotiation, closing).
    let connection = Box::pin(
        serve_connection(
            ctx.clone(),
            tls,
            conn,
            mode,
            transport,
            conn_id,
            shutdown.clone(),
            permit,
        )
        .instrument(span.clone()),
    );
    async move {
        if let Some(state) = connection.await {
            Box::pin(sm::hibernate(&ctx, state, shutdown))
                .instrument(span)
                .await;
        }
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
///
/// Not an `async fn`: an `async fn` keeps its arguments twice (as passed, and as the
/// body's locals), and this future lives as long as the session; the block below uses
/// what it captured in place.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn serve_connection(
    ctx: Arc<Context>,
    tls: TlsContext,
    mut conn: Connection,
    mode: TlsMode,
    transport: Transport,
    conn_id: u64,
    shutdown: CancellationToken,
    permit: impl Send,
) -> impl std::future::Future<Output = Option<Box<SessionState>>> + Send {
    async move {
        let _permit = permit;
        let _counted = ctx.metrics.c2s_connection(transport);
        // Negotiation (and its end) in a box of its own: the session does not keep it.
        let negotiation = Box::pin(negotiated_or_closed(
            &ctx, tls, &mut conn, mode, conn_id, &shutdown,
        ));
        let (state, resumed) = negotiation.await?;
        tracing::Span::current().record("jid", state.bound.full.as_str());
        debug!(resumed = resumed.is_some(), "session bound");
        let session = Box::pin(session::run(&ctx, &mut conn, state, resumed, &shutdown));
        let outcome = session.await;
        debug!("connection closed");
        let (ending, hibernate, domain) = match outcome {
            Outcome::Closed(ending, domain) => (ending, None, domain),
            Outcome::Hibernate(state, ending) => {
                let domain = state.bound.domain.clone();
                (ending, Some(state), domain)
            }
        };
        Box::pin(conn.finish(ending, &domain)).await;
        hibernate
    }
}

/// Negotiation up to a bound or resumed session; a failed one is closed here.
async fn negotiated_or_closed(
    ctx: &Arc<Context>,
    tls: TlsContext,
    conn: &mut Connection,
    mode: TlsMode,
    conn_id: u64,
    shutdown: &CancellationToken,
) -> Option<(Box<SessionState>, Option<Option<u32>>)> {
    match negotiate_in_time(ctx, &tls, conn, mode, conn_id, shutdown).await {
        Ok(Negotiated::Bound(bound)) => Some((SessionState::new(bound), None)),
        Ok(Negotiated::Resumed(state, h)) => Some((state, Some(h))),
        Err(ending) => {
            conn.finish(ending, &ctx.default_domain()).await;
            debug!("connection closed");
            None
        }
    }
}
