//! Starting and stopping the server: storage, TLS, listeners and their accept loops,
//! and one cancellation tree from the root to every connection.

pub(crate) mod limits;
mod shaper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, ListenerKind, StorageBackend, TlsMode};
use crate::context::Context;
use crate::net::tls::TlsContext;
use crate::storage::Storage;
use crate::stream::{StreamError, StreamErrorCondition};

pub use limits::ConnectionLimits;
pub use shaper::{Shaper, ShaperConfig};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {source}")]
    OpenDatabase {
        path: std::path::PathBuf,
        source: crate::storage::StorageError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    pub ctx: Arc<Context>,
    /// Bound listener addresses (useful with port 0), in config order.
    pub listeners: Vec<(ListenerKind, TlsMode, SocketAddr)>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ServerHandle {
    /// The first bound address of a listener of this kind and TLS mode.
    pub fn addr(&self, kind: ListenerKind, tls: TlsMode) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, t, _)| *k == kind && *t == tls)
            .map(|(_, _, a)| *a)
    }

    /// Stops accepting, tells every session `system-shutdown` (hibernated sessions move
    /// what they hold to offline storage, s2s queues are bounced), waits for the
    /// connection tasks, then flushes storage; all within `server.shutdown_timeout_secs`
    /// (the flush gets at least a second even when the tasks used up the time).
    pub async fn shutdown(self) {
        let limit = Duration::from_secs(self.ctx.config.server.shutdown_timeout_secs);
        let deadline = tokio::time::Instant::now() + limit;
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.tracker.len(),
                "connections did not close within {} s; abandoning them",
                limit.as_secs()
            );
        }
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        match tokio::time::timeout(left, self.ctx.storage.flush()).await {
            Ok(Ok(())) => info!("storage flushed"),
            Ok(Err(e)) => warn!(error = %e, "final storage flush failed"),
            Err(_) => warn!("final storage flush did not finish in time"),
        }
    }

    /// Resolves once the shutdown token is cancelled from elsewhere.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn open_storage(config: &Config) -> Result<Storage, ServerError> {
    match config.storage.backend {
        StorageBackend::Memory => Ok(Storage::memory()),
        StorageBackend::Sled => {
            crate::admin::ensure_data_dir(&config.data_dir).map_err(|source| {
                ServerError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                }
            })?;
            let path = config.data_dir.join("db");
            let storage = &config.storage;
            Storage::open_sled_configured(
                &path,
                storage.cache_mb,
                storage.sync_writes,
                storage.archive_partition_mb,
            )
            .map_err(|source| ServerError::OpenDatabase { path, source })
        }
    }
}

/// Starts everything the config describes, with the standard modules, and returns once
/// listeners are bound.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    start_with_modules(config, crate::modules::standard()).await
}

/// Like [`start`], with the given modules (e.g. the standard ones and one of a test's).
pub async fn start_with_modules(
    config: Config,
    modules: Vec<Box<dyn crate::registry::Module>>,
) -> Result<ServerHandle, ServerError> {
    validate(&config)?;
    let storage = open_storage(&config)?;
    start_with_storage(config, storage, modules).await
}

fn validate(config: &Config) -> Result<(), ServerError> {
    crate::config::validate(config).map_err(|errors| {
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ServerError::Config(text)
    })
}

/// Like [`start_with_modules`], on stores opened by the caller (e.g. a test's, failing
/// on purpose) instead of those `config.storage` names.
pub async fn start_with_storage(
    config: Config,
    storage: Storage,
    modules: Vec<Box<dyn crate::registry::Module>>,
) -> Result<ServerHandle, ServerError> {
    let started = std::time::Instant::now();
    validate(&config)?;
    let tls = TlsContext::load(&config).map_err(|e| ServerError::Tls(e.to_string()))?;
    let ctx =
        Arc::new(Context::with_modules(config, storage, modules).map_err(ServerError::Config)?);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let s2s = crate::s2s::S2s::new(&ctx.config, tls.clone(), shutdown.clone(), tracker.clone())
        .map_err(ServerError::Config)?;
    let _ = ctx.s2s.set(Arc::new(s2s));
    let limits = Arc::new(ConnectionLimits::new(
        ctx.config.limits.connections_per_ip,
        ctx.config.limits.max_connections,
    ));
    let conn_ids = Arc::new(AtomicU64::new(1));
    // Shared by every HTTP listener: a BOSH session's requests may come on any of them.
    let transports = Arc::new(crate::web::Transports {
        ctx: ctx.clone(),
        tls: tls.clone(),
        bosh: crate::web::bosh::Sessions::new(
            &ctx.config.bosh,
            ctx.config.limits.max_connections,
            conn_ids.clone(),
            tracker.clone(),
            shutdown.clone(),
        ),
    });
    let mut listeners = Vec::new();
    for l in &ctx.config.listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| ServerError::Bind {
                addr: l.address,
                source,
            })?;
        let addr = listener.local_addr()?;
        info!(%addr, kind = ?l.kind, tls = ?l.tls, "listening");
        listeners.push((l.kind, l.tls, addr));
        let web = (l.kind == ListenerKind::Http)
            .then(|| crate::web::Web::new(&ctx, &tls, transports.clone(), addr));
        tracker.spawn(accept(
            listener,
            l.kind,
            l.tls,
            web,
            ctx.clone(),
            tls.clone(),
            limits.clone(),
            conn_ids.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    let _ = ctx.listeners.set(listeners.clone());
    if ctx.config.storage.backend == StorageBackend::Sled {
        let path = crate::admin::control_socket_path(&ctx.config);
        let control = crate::admin::control::ControlServer::bind(&path)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let hook_ctx = Arc::downgrade(&ctx);
        let control = control
            .on_event(move |event| {
                if let Some(ctx) = hook_ctx.upgrade() {
                    crate::admin::live::after_change(&ctx, &event);
                }
            })
            .with_listeners(listeners.clone());
        tracker.spawn(control.serve(
            ctx.storage.clone(),
            Arc::new(ctx.config.clone()),
            shutdown.clone(),
        ));
    }
    ctx.registry.start_tasks(&ctx, &shutdown, &tracker);
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "server started"
    );
    Ok(ServerHandle {
        ctx,
        listeners,
        shutdown,
        tracker,
    })
}

/// Runs until `shutdown` is cancelled, then stops gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let handle = start(config).await?;
    shutdown.cancelled().await;
    info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn accept(
    listener: TcpListener,
    kind: ListenerKind,
    mode: TlsMode,
    web: Option<crate::web::Web>,
    ctx: Arc<Context>,
    tls: TlsContext,
    limits: Arc<ConnectionLimits>,
    conn_ids: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = limits.try_acquire(peer.ip()) else {
            warn!(%peer, "connection limit reached; refusing");
            if kind == ListenerKind::Http {
                // An HTTP client gets a status it understands (on plain HTTP; a TLS
                // client just sees the connection close).
                if mode == TlsMode::None {
                    tracker.spawn(crate::web::refuse(tcp));
                }
            } else {
                tracker.spawn(refuse(tcp));
            }
            continue;
        };
        let conn_id = conn_ids.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let tls = tls.clone();
        let token = shutdown.child_token();
        match kind {
            // The permit is released when the socket closes (a hibernated XEP-0198 session
            // keeps no connection).
            ListenerKind::C2s => {
                tracker.spawn(crate::c2s::serve(
                    ctx, tls, tcp, peer, mode, conn_id, token, permit,
                ));
            }
            ListenerKind::Http => {
                if let Some(web) = &web {
                    tracker.spawn(web.clone().serve(tcp, peer, mode, conn_id, token, permit));
                }
            }
            ListenerKind::S2s => {
                tracker.spawn(async move {
                    crate::s2s::serve_inbound(ctx, tls, tcp, peer, mode, conn_id, token).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Tells an over-limit client why, without reading from it.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut out = crate::stream::response_header(
        crate::xml::ns::CLIENT,
        "",
        None,
        &crate::stream::random_id(),
        &[],
    );
    StreamError::with_text(
        StreamErrorCondition::PolicyViolation,
        "too many connections",
    )
    .to_element()
    .write_to(&mut out, crate::xml::ns::CLIENT);
    out.extend_from_slice(crate::stream::STREAM_CLOSE);
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&out)).await;
}
