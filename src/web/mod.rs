//! The embedded HTTP(S) server: listeners of kind `http`, serving what the modules put on
//! the web: XEP-0363 file upload and XEP-0156 host-meta so far.
//!
//! Built on axum over hyper: axum is a thin, well-kept router on the tower ecosystem, and
//! hyper gives HTTP/1.1 and HTTP/2 (ALPN `h2` on https://, prior knowledge on http://)
//! without any parsing of our own. The accept loop in `crate::server` stays ours, so an
//! HTTP connection takes a slot under the same per-IP and total connection limits as
//! every other listener, and its TLS uses the vhost certificates chosen by SNI.

pub mod hostmeta;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;
use tracing::{Instrument, debug, info_span};

use crate::config::{HttpConfig, TlsMode};
use crate::context::Context;
use crate::net::tls::TlsContext;

/// Seconds a connection may take to finish what it was doing once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One HTTP listener's router and TLS acceptor, cloned into each connection.
#[derive(Clone)]
pub struct Web {
    router: Router,
    tls: tokio_rustls::TlsAcceptor,
    cfg: Arc<HttpConfig>,
    handshake: Duration,
}

/// The routes every module contributes.
pub fn router(ctx: &Arc<Context>) -> Router {
    let mut router = hostmeta::routes(ctx.clone());
    if let Some(upload) = ctx
        .registry
        .state::<crate::modules::upload::UploadService>()
    {
        router = router.merge(crate::modules::upload::http::routes(ctx.clone(), upload));
    }
    if let Some(metrics) = crate::metrics::http::routes(ctx.clone()) {
        router = router.merge(metrics);
    }
    router.fallback(|| async { StatusCode::NOT_FOUND })
}

impl Web {
    pub fn new(ctx: &Arc<Context>, tls: &TlsContext) -> Web {
        Web {
            router: router(ctx),
            tls: tls.http_acceptor(),
            cfg: Arc::new(ctx.config.http.clone()),
            handshake: Duration::from_secs(ctx.config.limits.handshake_timeout_secs),
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
            let _permit = permit;
            match mode {
                TlsMode::DirectTls => {
                    let accept = self.tls.accept(tcp);
                    let tls = tokio::select! {
                        r = tokio::time::timeout(self.handshake, accept) => r,
                        _ = shutdown.cancelled() => return,
                    };
                    match tls {
                        Ok(Ok(tls)) => self.serve_io(tls, peer, &shutdown).await,
                        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
                // Validation refuses STARTTLS on HTTP listeners.
                TlsMode::None | TlsMode::Starttls => self.serve_io(tcp, peer, &shutdown).await,
            }
        }
        .instrument(span)
        .await;
    }

    async fn serve_io<I>(&self, io: I, peer: SocketAddr, shutdown: &CancellationToken)
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
        // Handlers that check who is asking (`/metrics`) read the TCP peer from here.
        let router = Extension(ConnectInfo(peer)).layer(self.router.clone());
        let service = TowerToHyperService::new(router);
        let conn = builder.serve_connection(TokioIo::new(io), service);
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
