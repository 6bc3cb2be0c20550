//! The HTTP side of XEP-0363: `PUT` and `GET`/`HEAD` at
//! `/upload/<owner>/<slot>/<filename>?e=<expiry>&s=<signature>`, and CORS preflights.
//!
//! A PUT is checked before a byte of its body is read (signature, expiry, slot, length,
//! type) and streamed into `data.part`, created exclusively; the finished file is synced
//! and linked to `data`, which fails if `data` exists, so a slot is filled once and a
//! GET never sees half a file.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::{Method, UploadService, is_id, now_secs, pct, read_meta};
use crate::context::Context;

struct Shared {
    service: Arc<UploadService>,
    body_timeout: Duration,
}

/// The signed part of an upload URL.
#[derive(Deserialize)]
pub struct Signed {
    e: Option<u64>,
    s: Option<String>,
}

pub fn routes(ctx: Arc<Context>, service: Arc<UploadService>) -> Router {
    let shared = Arc::new(Shared {
        service,
        body_timeout: Duration::from_secs(ctx.config.http.body_timeout_secs),
    });
    Router::new()
        .route("/upload/{owner}/{slot}/{name}", any(handle))
        .with_state(shared)
}

/// CORS: web clients upload and show files from pages of other origins; the URLs are
/// capabilities (signed), so no cookie or origin check protects anything here.
fn cors(headers: &mut HeaderMap) {
    let h = |s: &'static str| HeaderValue::from_static(s);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, h("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        h("GET, HEAD, PUT, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        h("Content-Type, Authorization"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, h("86400"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        h("Content-Disposition, Content-Length"),
    );
}

fn status(code: StatusCode, why: &'static str) -> Response {
    let mut r = (code, why).into_response();
    cors(r.headers_mut());
    r
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: HttpMethod,
    Path((owner, slot, name)): Path<(String, String, String)>,
    Query(query): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == HttpMethod::OPTIONS {
        return status(StatusCode::NO_CONTENT, "");
    }
    let kind = match method {
        HttpMethod::PUT => Method::Put,
        HttpMethod::GET | HttpMethod::HEAD => Method::Get,
        _ => {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
            );
            return r;
        }
    };
    if !is_id(&owner) || !is_id(&slot) {
        return status(StatusCode::NOT_FOUND, "not found\n");
    }
    let (Some(expires), Some(sig)) = (query.e, query.s) else {
        return status(StatusCode::FORBIDDEN, "unsigned URL\n");
    };
    let path = format!("{owner}/{slot}/{name}");
    let service = &shared.service;
    if !service.verify(kind, &path, expires, &sig) {
        debug!(slot, ?kind, "upload: bad signature");
        return status(StatusCode::FORBIDDEN, "bad signature\n");
    }
    // 0 marks a GET URL of a file kept forever; a PUT URL always expires.
    if (expires != 0 || kind == Method::Put) && expires < now_secs() {
        debug!(slot, ?kind, "upload: URL expired");
        return status(StatusCode::FORBIDDEN, "URL expired\n");
    }
    let dir = service.slot_dir(&owner, &slot);
    let Some(meta) = read_meta(&dir).await.filter(|m| m.filename == name) else {
        return status(StatusCode::NOT_FOUND, "not found\n");
    };
    match kind {
        Method::Put => put(&shared, &dir, &meta, &headers, body).await,
        Method::Get => get(&dir, &meta, method == HttpMethod::HEAD).await,
    }
}

async fn put(
    shared: &Shared,
    dir: &std::path::Path,
    meta: &super::SlotMeta,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        None => return status(StatusCode::LENGTH_REQUIRED, "Content-Length required\n"),
        Some(n) if n > meta.size => {
            return status(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot\n");
        }
        Some(n) if n != meta.size => {
            return status(StatusCode::BAD_REQUEST, "length differs from the slot\n");
        }
        Some(_) => {}
    }
    if let Some(expected) = &meta.content_type {
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !given.trim().eq_ignore_ascii_case(expected) {
            return status(
                StatusCode::BAD_REQUEST,
                "Content-Type differs from the slot\n",
            );
        }
    }
    let data = dir.join("data");
    if tokio::fs::try_exists(&data).await.unwrap_or(false) {
        return status(StatusCode::CONFLICT, "already uploaded\n");
    }
    let part = dir.join("data.part");
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .await;
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return status(StatusCode::CONFLICT, "upload in progress\n");
        }
        Err(e) => {
            warn!(error = %e, "upload: cannot create the file");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
    };
    let outcome = receive(shared, &mut file, body, meta.size).await;
    let outcome = match outcome {
        Ok(()) => file.sync_all().await.map_err(|e| {
            warn!(error = %e, "upload: cannot sync the file");
            status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n")
        }),
        Err(r) => Err(r),
    };
    drop(file);
    let outcome = match outcome {
        // A link, not a rename: it fails if `data` appeared meanwhile, never replacing it.
        Ok(()) => match tokio::fs::hard_link(&part, &data).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(status(StatusCode::CONFLICT, "already uploaded\n"))
            }
            Err(e) => {
                warn!(error = %e, "upload: cannot store the file");
                Err(status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n"))
            }
        },
        Err(r) => Err(r),
    };
    let _ = tokio::fs::remove_file(&part).await;
    match outcome {
        Ok(()) => {
            info!(owner = %meta.owner, size = meta.size, "upload: file stored");
            status(StatusCode::CREATED, "")
        }
        Err(r) => r,
    }
}

/// Streams the body to `file`: exactly `size` bytes, each chunk within the body timeout.
async fn receive(
    shared: &Shared,
    file: &mut tokio::fs::File,
    mut body: Body,
    size: u64,
) -> Result<(), Response> {
    let mut written = 0u64;
    loop {
        let frame = match tokio::time::timeout(shared.body_timeout, body.frame()).await {
            Err(_) => return Err(status(StatusCode::REQUEST_TIMEOUT, "body too slow\n")),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(error = %e, "upload: body failed");
                return Err(status(StatusCode::BAD_REQUEST, "body failed\n"));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        written = written.saturating_add(chunk.len() as u64);
        if written > size {
            return Err(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than the slot\n",
            ));
        }
        if let Err(e) = file.write_all(&chunk).await {
            warn!(error = %e, "upload: cannot write the file");
            return Err(status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n"));
        }
    }
    if written != size {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "body shorter than the slot\n",
        ));
    }
    Ok(())
}

async fn get(dir: &std::path::Path, meta: &super::SlotMeta, head: bool) -> Response {
    let file = match tokio::fs::File::open(dir.join("data")).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return status(StatusCode::NOT_FOUND, "not found\n");
        }
        Err(e) => {
            warn!(error = %e, "upload: cannot open the file");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n"),
    };
    let ct = meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| ct.starts_with(p));
    let ascii: String = meta
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "{}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        pct(&meta.filename)
    );
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::new(file))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    cors(h);
    let mut set = |name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, ct);
    set(header::CONTENT_LENGTH, &len.to_string());
    set(header::CONTENT_DISPOSITION, &disposition);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // An uploaded HTML or SVG file must not run scripts on this origin.
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    set(header::CACHE_CONTROL, "private, max-age=86400");
    r
}
