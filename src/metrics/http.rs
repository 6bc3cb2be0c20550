//! `GET /metrics` on the HTTP listeners, for the peer addresses in `metrics.allow` only.
//!
//! The peer is the TCP peer the connection came from (`ConnectInfo`, put on each request
//! by `web::Web`); `X-Forwarded-For` is never consulted, since anyone can send it. A
//! request without a known peer is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use tracing::debug;

use crate::context::Context;

/// OpenMetrics text, which Prometheus negotiates and parses.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An allow-list entry: a CIDR network (`10.0.0.0/8`, `fd00::/8`) or one address.
pub fn parse_allowed(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

struct MetricsRoute {
    ctx: Arc<Context>,
    allow: Vec<IpNet>,
}

impl MetricsRoute {
    fn allows(&self, peer: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// The `/metrics` route, or nothing when metrics are disabled (the fallback's 404).
pub fn routes(ctx: Arc<Context>) -> Option<Router> {
    if !ctx.config.metrics.enabled {
        return None;
    }
    // Validation refused entries that do not parse.
    let allow = ctx
        .config
        .metrics
        .allow
        .iter()
        .filter_map(|e| parse_allowed(e))
        .collect();
    let state = Arc::new(MetricsRoute { ctx, allow });
    Some(
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(state),
    )
}

async fn scrape(State(route): State<Arc<MetricsRoute>>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    match peer {
        Some(peer) if route.allows(peer.ip()) => {}
        _ => {
            debug!(?peer, "metrics scrape from an address not allowed; refused");
            return (StatusCode::FORBIDDEN, "forbidden\n").into_response();
        }
    }
    let body = route.ctx.metrics.render(&route.ctx).await;
    if body.is_empty() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries() {
        assert!(parse_allowed("127.0.0.1").is_some());
        assert!(parse_allowed("::1").is_some());
        assert!(parse_allowed("10.0.0.0/8").is_some());
        assert!(parse_allowed("fd00::/8").is_some());
        assert!(parse_allowed("localhost").is_none());
        assert!(parse_allowed("10.0.0.0/33").is_none());
        assert!(parse_allowed("").is_none());
        let net = parse_allowed("10.0.0.0/8").unwrap();
        assert!(net.contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lo = parse_allowed("127.0.0.1").unwrap();
        assert!(lo.contains(&mapped.to_canonical()));
    }
}
