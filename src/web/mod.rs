//! The embedded HTTP(S) server: listeners of kind `http`, serving web clients over
//! WebSocket (RFC 7395) and BOSH (XEP-0206), XEP-0156 host-meta, and what the modules put
//! on the web (XEP-0363 file upload).
//!
//! Built on axum over hyper: axum is a thin, well-kept router on the tower ecosystem, and
//! hyper gives HTTP/1.1 and HTTP/2 (ALPN `h2` on https://, prior knowledge on http://)
//! without any parsing of our own. The accept loop in `crate::server` stays ours, so an
//! HTTP connection takes a slot under the same per-IP and total connection limits as
//! every other listener, and its TLS uses the vhost certificates chosen by SNI.

pub mod bosh;
pub mod hostmeta;
pub mod origin;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{Instrument, debug, info_span};

use crate::config::{HttpConfig, TlsMode};
use crate::context::Context;
use crate::net::server_tls::ServerTls;
use crate::net::tls::TlsContext;
use crate::sasl::ChannelBindings;

/// What a request's handler knows about the connection it came on (a request extension).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub conn_id: u64,
    /// https://, or a loopback listener (behind a TLS-terminating proxy): as private as TLS.
    pub secure: bool,
    /// The TLS connection's channel bindings (empty on http://).
    pub bindings: ChannelBindings,
    /// The connection's slot under the connection limits, held by whatever outlives the
    /// HTTP exchange on it (an upgraded WebSocket).
    pub permit: Arc<Permit>,
    /// Cancelled when the server stops.
    pub shutdown: CancellationToken,
}

/// A connection's slot under the limits, shared by what uses the connection; released
/// when the last holder drops it. (In a mutex only so that it is `Sync`.)
pub struct Permit {
    _slot: std::sync::Mutex<Box<dyn Send>>,
}

/// What the client transports (WebSocket, BOSH) share: the server, and who may use them.
pub struct Transports {
    pub ctx: Arc<Context>,
    pub tls: TlsContext,
    pub bosh: bosh::Sessions,
}

impl Transports {
    /// Whether the page that sent the request (if any) may use the transports.
    pub fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Not a page: browsers always send Origin on these requests.
            return true;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        origin.to_str().is_ok_and(|origin| {
            origin::origin_allowed(
                origin.trim(),
                host.map(str::trim),
                &self.ctx.config.websocket.allowed_origins,
                |d| self.ctx.is_local_domain(d),
            )
        })
    }
}

/// Seconds a connection may take to finish what it was doing once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One HTTP listener's router and TLS setup, cloned into each connection.
#[derive(Clone)]
pub struct Web {
    router: Router,
    tls: TlsContext,
    tls_config: Arc<rustls::ServerConfig>,
    cfg: Arc<HttpConfig>,
    handshake: Duration,
    /// A loopback listener: reachable only from this machine (a proxy in front of it).
    loopback: bool,
}

/// The routes: the client transports and what every module contributes.
pub fn router(ctx: &Arc<Context>, transports: Arc<Transports>) -> Router {
    let mut router = Router::new()
        .route(websocket::PATH, axum::routing::get(websocket::upgrade))
        .with_state(transports.clone());
    if ctx.config.bosh.enabled {
        router = router.merge(bosh::routes(transports));
    }
    router = router.merge(hostmeta::routes(ctx.clone()));
    if let Some(upload) = ctx
        .registry
        .state::<crate::modules::upload::UploadService>()
    {
        router = router.merge(crate::modules::upload::http::routes(ctx.clone(), upload));
    }
    if ctx.config.invites.enabled {
        router = router.merge(crate::modules::invites::page::routes(ctx.clone()));
    }
    if let Some(metrics) = crate::metrics::http::routes(ctx.clone()) {
        router = router.merge(metrics);
    }
    router.fallback(|| async { StatusCode::NOT_FOUND })
}

impl Web {
    /// `transports` is shared by all HTTP listeners (BOSH sessions may move between them).
    pub fn new(
        ctx: &Arc<Context>,
        tls: &TlsContext,
        transports: Arc<Transports>,
        listener: SocketAddr,
    ) -> Web {
        Web {
            router: router(ctx, transports),
            tls: tls.clone(),
            tls_config: tls.http_config(),
            cfg: Arc::new(ctx.config.http.clone()),
            handshake: Duration::from_secs(ctx.config.limits.handshake_timeout_secs),
            loopback: listener.ip().is_loopback(),
        }
    }

    /// Serves one accepted connection until the client closes it, a timeout hits, or the
    /// server stops (then in-flight requests get [`SHUTDOWN_GRACE`] to finish). `permit`
    /// (its slot under the connection limits) is released with the socket.
    pub async fn serve(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        mode: TlsMode,
        conn_id: u64,
        shutdown: CancellationToken,
        permit: impl Send + 'static,
    ) {
        let span = info_span!("http", conn = conn_id, %peer);
        async move {
            let mut info = ConnInfo {
                peer,
                conn_id,
                secure: self.loopback,
                bindings: ChannelBindings::default(),
                permit: Arc::new(Permit {
                    _slot: std::sync::Mutex::new(Box::new(permit)),
                }),
                shutdown: shutdown.clone(),
            };
            match mode {
                TlsMode::DirectTls => {
                    let accept = ServerTls::accept(tcp, self.tls_config.clone());
                    let tls = tokio::select! {
                        r = tokio::time::timeout(self.handshake, accept) => r,
                        _ = shutdown.cancelled() => return,
                    };
                    match tls {
                        Ok(Ok(tls)) => {
                            let b = self.tls.channel_bindings(&tls);
                            info.secure = true;
                            info.bindings = ChannelBindings {
                                tls_exporter: b.tls_exporter,
                                tls_server_end_point: b.tls_server_end_point,
                            };
                            self.serve_io(tls, info, &shutdown).await
                        }
                        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
                // Validation refuses STARTTLS on HTTP listeners.
                TlsMode::None | TlsMode::Starttls => self.serve_io(tcp, info, &shutdown).await,
            }
        }
        .instrument(span)
        .await;
    }

    async fn serve_io<I>(&self, io: I, info: ConnInfo, shutdown: &CancellationToken)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(self.cfg.header_timeout_secs))
            .max_buf_size(self.cfg.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.cfg.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(64)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(self.cfg.header_timeout_secs));
        let router = self.router.clone();
        let peer = info.peer;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                if tokio::time::timeout(SHUTDOWN_GRACE, conn).await.is_err() {
                    debug!("HTTP connection cut at shutdown");
                }
            }
        }
    }
}

/// Tells a plain-HTTP client over the connection limit to come back later, without
/// reading its request.
pub async fn refuse(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\n\
        Connection: close\r\nRetry-After: 10\r\n\r\ntoo many connections\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(BODY)).await;
}
