//! XEP-0156: `/.well-known/host-meta` (XRD) and `/.well-known/host-meta.json`, so a web
//! client given only a domain finds the WebSocket and BOSH endpoints.
//!
//! The URLs are those of the HTTP listeners this server has bound (TLS first), named by
//! the vhost the request's `Host` header asks for, or the configured `http.websocket_urls`
//! and `http.bosh_urls` when a reverse proxy publishes them elsewhere.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::{ListenerKind, TlsMode};
use crate::context::Context;
use crate::xml::Element;

const XRD: &str = "http://docs.oasis-open.org/ns/xri/xrd-1.0";
const WEBSOCKET_REL: &str = "urn:xmpp:alt-connections:websocket";
const BOSH_REL: &str = "urn:xmpp:alt-connections:xbosh";

pub fn routes(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/.well-known/host-meta", get(xrd))
        .route("/.well-known/host-meta.json", get(json))
        .with_state(ctx)
}

/// The vhost the request names (its `Host` without port), else the first vhost.
fn vhost(ctx: &Context, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            // `[::1]:5280`, `example.org:5280`, `example.org`
            match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            }
            .to_ascii_lowercase()
        });
    match host {
        Some(h) if ctx.is_local_domain(&h) => h,
        _ => ctx.default_domain(),
    }
}

/// The WebSocket URLs served for `domain`.
pub fn websocket_urls(ctx: &Context, domain: &str) -> Vec<String> {
    if !ctx.config.http.websocket_urls.is_empty() {
        return ctx.config.http.websocket_urls.clone();
    }
    listener_urls(ctx, domain, ["wss", "ws"], super::websocket::PATH)
}

/// The BOSH URLs served for `domain` (none when BOSH is off).
pub fn bosh_urls(ctx: &Context, domain: &str) -> Vec<String> {
    if !ctx.config.bosh.enabled {
        return Vec::new();
    }
    if !ctx.config.http.bosh_urls.is_empty() {
        return ctx.config.http.bosh_urls.clone();
    }
    listener_urls(ctx, domain, ["https", "http"], super::bosh::PATH)
}

/// `path` on every HTTP listener, TLS ones first (`schemes`: with TLS, without).
fn listener_urls(ctx: &Context, domain: &str, schemes: [&str; 2], path: &str) -> Vec<String> {
    let Some(listeners) = ctx.listeners.get() else {
        return Vec::new();
    };
    let mut urls = Vec::new();
    for (mode, scheme) in [TlsMode::DirectTls, TlsMode::None].into_iter().zip(schemes) {
        for (_, _, addr) in listeners
            .iter()
            .filter(|(k, t, _)| *k == ListenerKind::Http && *t == mode)
        {
            urls.push(format!("{scheme}://{domain}:{}{path}", addr.port()));
        }
    }
    urls
}

/// Every endpoint for `domain`, as (rel, href).
fn links(ctx: &Context, domain: &str) -> Vec<(&'static str, String)> {
    let mut links: Vec<_> = bosh_urls(ctx, domain)
        .into_iter()
        .map(|u| (BOSH_REL, u))
        .collect();
    links.extend(
        websocket_urls(ctx, domain)
            .into_iter()
            .map(|u| (WEBSOCKET_REL, u)),
    );
    links
}

/// Browsers on any page may read where to connect (XEP-0156 §3.1).
fn with_cors(body: Vec<u8>, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

async fn xrd(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let domain = vhost(&ctx, &headers);
    let mut doc = Element::new("XRD", XRD);
    for (rel, url) in links(&ctx, &domain) {
        doc.push_child(
            Element::new("Link", XRD)
                .with_attr("rel", rel)
                .with_attr("href", url),
        );
    }
    let mut out = b"<?xml version='1.0' encoding='utf-8'?>\n".to_vec();
    doc.write_standalone(&mut out);
    with_cors(out, "application/xrd+xml")
}

async fn json(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let domain = vhost(&ctx, &headers);
    let links: Vec<serde_json::Value> = links(&ctx, &domain)
        .into_iter()
        .map(|(rel, href)| serde_json::json!({ "rel": rel, "href": href }))
        .collect();
    let body = serde_json::json!({ "links": links })
        .to_string()
        .into_bytes();
    with_cors(body, "application/json")
}
