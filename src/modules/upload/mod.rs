//! XEP-0363 HTTP File Upload: a service at `<subdomain>.<vhost>` that hands local users
//! upload slots, and (in `http.rs`) the HTTP side that takes the PUT and serves the GET.
//!
//! A slot is a directory `<data_dir>/upload/<owner>/<slot>/` holding `meta.json` (written
//! when the slot is given out, so a pending slot counts against the quota) and, once
//! uploaded, `data`. `<owner>` is a hash of the owner's bare JID, `<slot>` 128 random
//! bits. URLs carry an expiry and an HMAC-SHA256 over path and expiry, so the HTTP side
//! checks a URL before it touches the disk and nobody can forge or extend one.
//!
//! Files go when they expire (`expiry_days`) and when their owner's account is gone: a
//! background sweep checks both, which covers accounts removed by the admin socket and by
//! `xmppd user remove` on a stopped server alike (there is no account-removal hook).

// Request handlers return the stanza error to answer with.
#![allow(clippy::result_large_err)]

pub mod http;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::addr::{self, BareJid};
use crate::config::{ListenerKind, TlsMode, UploadConfig};
use crate::context::Context;
use crate::modules::internal_io;
use crate::registry::{Module, Registrar, Service};
use crate::router::{route, route_reply};
use crate::stream::{ErrorType, StanzaError, iq_result};
use crate::xml::{Element, ns};

pub const NS: &str = "urn:xmpp:http:upload:0";
const DATA_FORMS: &str = "jabber:x:data";
/// Longest file name kept (bytes, after cleaning).
const MAX_FILENAME_BYTES: usize = 200;
/// Longest content type accepted.
const MAX_CONTENT_TYPE_BYTES: usize = 128;
/// How often expired files and files of removed accounts are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// The module: one service per vhost, all sharing one [`UploadService`].
pub struct Upload;

impl Module for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let cfg = r.config().upload.clone();
        if !cfg.enabled {
            return;
        }
        let has_listener = r
            .config()
            .listeners
            .iter()
            .any(|l| l.kind == ListenerKind::Http);
        // Disco advertises only what works: without a way in over HTTP, no service.
        if !has_listener && cfg.public_url.is_none() {
            info!("upload: no http listener and no upload.public_url; service not started");
            return;
        }
        let service = Arc::new(UploadService::new(cfg, r.config().data_dir.join("upload")));
        let domains: Vec<String> = r
            .config()
            .vhosts
            .iter()
            .map(|v| {
                format!(
                    "{}.{}",
                    service.cfg.subdomain,
                    v.domain.to_ascii_lowercase()
                )
            })
            .collect();
        for d in &domains {
            r.service(d, service.clone());
            r.server_item(d);
        }
        // The key is read (or made) now, not on the first request's task.
        let _ = service.secret();
        r.shared(service.clone());
        r.account_removed(service.clone());
        r.task(Box::new(move |ctx, shutdown| {
            Box::pin(async move {
                loop {
                    if let Err(e) = sweep(&ctx, &service).await {
                        warn!(error = %e, "upload: sweep failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                    }
                }
            })
        }));
    }
}

/// What is known of a slot, kept beside its file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlotMeta {
    pub owner: String,
    pub filename: String,
    pub size: u64,
    pub content_type: Option<String>,
    /// Seconds since the epoch when the slot was given out.
    pub created: u64,
}

/// The service's shared state: configuration, where files live, the URL key.
pub struct UploadService {
    pub cfg: UploadConfig,
    root: PathBuf,
    secret: OnceLock<Vec<u8>>,
    /// Serializes quota checks with slot creation, so parallel requests cannot both
    /// pass the quota.
    quota_lock: tokio::sync::Mutex<()>,
}

pub(crate) use crate::datetime::now_secs;

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A path segment of ours: lowercase hex of the expected length.
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Keeps a file name a file name: no path separators, control characters or leading
/// dots, at most [`MAX_FILENAME_BYTES`].
fn clean_filename(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_control() || matches!(c, '/' | '\\' | '"' | ':') {
            '_'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_FILENAME_BYTES {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        "file".into()
    } else {
        trimmed.to_string()
    }
}

/// A MIME type as `type/subtype` with token characters (parameters allowed).
fn valid_content_type(ct: &str) -> bool {
    ct.len() <= MAX_CONTENT_TYPE_BYTES
        && ct.contains('/')
        && ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn pct(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Which URL a signature is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Put,
    Get,
}

impl UploadService {
    pub fn new(cfg: UploadConfig, root: PathBuf) -> UploadService {
        UploadService {
            cfg,
            root,
            secret: OnceLock::new(),
            quota_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Deletes every file of `user` (account removal).
    pub async fn remove_owner(&self, user: &BareJid) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(self.root.join(Self::owner_dir(user))).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The owner directory name for an account.
    pub fn owner_dir(user: &BareJid) -> String {
        let digest = Sha256::digest(user.as_str().as_bytes());
        hex(&digest[..16])
    }

    pub(crate) fn slot_dir(&self, owner: &str, slot: &str) -> PathBuf {
        self.root.join(owner).join(slot)
    }

    /// The URL key: configured, else kept in `<data_dir>/upload.secret` (made once) so
    /// URLs stay valid across restarts; if that file cannot be had, a key for this run.
    fn secret(&self) -> &[u8] {
        self.secret.get_or_init(|| {
            if let Some(s) = &self.cfg.secret {
                return s.as_bytes().to_vec();
            }
            let path = self.root.parent().map_or_else(
                || PathBuf::from("upload.secret"),
                |p| p.join("upload.secret"),
            );
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Some(key) = unhex(text.trim())
                && key.len() >= 16
            {
                return key;
            }
            let key: [u8; 32] = rand::random();
            if let Err(e) = std::fs::write(&path, hex(&key)) {
                warn!(path = %path.display(), error = %e,
                      "upload: cannot keep the URL key; URLs will not survive a restart");
            }
            key.to_vec()
        })
    }

    /// The signature of a URL path (`owner/slot/filename`, decoded) and expiry.
    pub fn sign(&self, method: Method, path: &str, expires: u64) -> String {
        hex(&self.mac(method, path, expires).finalize().into_bytes())
    }

    fn mac(&self, method: Method, path: &str, expires: u64) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(self.secret()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts any key length"),
        };
        let m: &[u8] = match method {
            Method::Put => b"PUT\n",
            Method::Get => b"GET\n",
        };
        mac.update(m);
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// Whether `sig` (hex) signs this path and expiry (compared in constant time).
    pub fn verify(&self, method: Method, path: &str, expires: u64, sig: &str) -> bool {
        let Some(sig) = unhex(sig) else {
            return false;
        };
        self.mac(method, path, expires).verify_slice(&sig).is_ok()
    }

    /// Where URLs start: the configured public URL, or the first `http` listener
    /// (https first) named by `domain`.
    fn base_url(&self, ctx: &Context, domain: &str) -> Option<String> {
        if let Some(u) = &self.cfg.public_url {
            return Some(u.trim_end_matches('/').to_string());
        }
        let listeners = ctx.listeners.get()?;
        let pick = |mode| {
            listeners
                .iter()
                .find(|(k, t, _)| *k == ListenerKind::Http && *t == mode)
                .map(|(_, _, a)| a.port())
        };
        if let Some(port) = pick(TlsMode::DirectTls) {
            return Some(format!("https://{domain}:{port}"));
        }
        pick(TlsMode::None).map(|port| format!("http://{domain}:{port}"))
    }

    /// Bytes the account holds (uploaded files and slots given out).
    async fn used(&self, owner: &str) -> std::io::Result<u64> {
        let dir = self.root.join(owner);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut total = 0u64;
        while let Some(entry) = entries.next_entry().await? {
            if let Some(meta) = read_meta(&entry.path()).await {
                total = total.saturating_add(meta.size);
            }
        }
        Ok(total)
    }

    fn disco_info(&self) -> Element {
        let field = |var: &str, kind: Option<&str>, value: String| {
            let mut f = Element::new("field", DATA_FORMS).with_attr("var", var);
            if let Some(k) = kind {
                f.set_attr("type", k);
            }
            f.with_child(Element::new("value", DATA_FORMS).with_text(value))
        };
        let form = Element::new("x", DATA_FORMS)
            .with_attr("type", "result")
            .with_child(field("FORM_TYPE", Some("hidden"), NS.into()))
            .with_child(field(
                "max-file-size",
                None,
                self.cfg.max_file_size.to_string(),
            ));
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", "HTTP File Upload"),
        );
        for f in [ns::DISCO_INFO, ns::DISCO_ITEMS, NS] {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q.push_child(form);
        q
    }

    /// Answers a slot request from `requester` to the service at `domain`.
    async fn slot(
        &self,
        ctx: &Arc<Context>,
        domain: &str,
        requester: &BareJid,
        req: &Element,
    ) -> Result<Element, StanzaError> {
        let filename = req
            .attr("filename")
            .filter(|f| !f.is_empty())
            .ok_or_else(|| StanzaError::bad_request().with_text("filename missing"))?;
        let size: u64 = req
            .attr("size")
            .and_then(|s| s.parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| StanzaError::bad_request().with_text("size missing or invalid"))?;
        let content_type = match req.attr("content-type") {
            None | Some("") => None,
            Some(ct) if valid_content_type(ct) => Some(ct.to_string()),
            Some(_) => {
                return Err(StanzaError::bad_request().with_text("invalid content-type"));
            }
        };
        let max = self.cfg.max_file_size;
        if size > max {
            debug!(user = %requester, size, max, "upload: file too large");
            let mut e = StanzaError::new(ErrorType::Modify, "not-acceptable")
                .with_text(format!("File too large: the maximum is {max} bytes"));
            e.app = Some(
                Element::new("file-too-large", NS)
                    .with_child(Element::new("max-file-size", NS).with_text(max.to_string())),
            );
            return Err(e);
        }
        let base = self
            .base_url(ctx, requester.domain().as_str())
            .ok_or_else(StanzaError::service_unavailable)?;
        let owner = Self::owner_dir(requester);
        let slot = hex(&rand::random::<[u8; 16]>());
        let filename = clean_filename(filename);
        let created = now_secs();
        {
            let _guard = self.quota_lock.lock().await;
            if self.cfg.quota_bytes > 0 {
                let used = self.used(&owner).await.map_err(internal_io)?;
                if used.saturating_add(size) > self.cfg.quota_bytes {
                    debug!(user = %requester, used, size, "upload: quota reached");
                    return Err(StanzaError::resource_constraint().with_text(format!(
                        "Quota reached: {used} of {} bytes in use",
                        self.cfg.quota_bytes
                    )));
                }
            }
            let meta = SlotMeta {
                owner: requester.to_string(),
                filename: filename.clone(),
                size,
                content_type,
                created,
            };
            write_meta(&self.slot_dir(&owner, &slot), &meta)
                .await
                .map_err(internal_io)?;
        }
        let path = format!("{owner}/{slot}/{filename}");
        let url_path = format!("{base}/upload/{owner}/{slot}/{}", pct(&filename));
        let put_expires = created + self.cfg.put_ttl_secs;
        let get_expires = self.get_expiry(created);
        let put = format!(
            "{url_path}?e={put_expires}&s={}",
            self.sign(Method::Put, &path, put_expires)
        );
        let get = format!(
            "{url_path}?e={get_expires}&s={}",
            self.sign(Method::Get, &path, get_expires)
        );
        info!(user = %requester, %domain, slot, size, "upload: slot given");
        Ok(Element::new("slot", NS)
            .with_child(Element::new("put", NS).with_attr("url", put))
            .with_child(Element::new("get", NS).with_attr("url", get)))
    }

    /// When a file given out at `created` expires (0: never).
    pub fn get_expiry(&self, created: u64) -> u64 {
        match self.cfg.expiry_days {
            0 => 0,
            d => created + u64::from(d) * 86_400,
        }
    }
}

/// Seconds since `path` was last modified; `None` if it is not there.
async fn age_secs(path: &Path) -> Option<u64> {
    let modified = tokio::fs::metadata(path).await.ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .map_or(0, |d| d.as_secs()),
    )
}

pub(crate) async fn read_meta(slot_dir: &Path) -> Option<SlotMeta> {
    let bytes = tokio::fs::read(slot_dir.join("meta.json")).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the metadata atomically (temp file, then rename).
async fn write_meta(slot_dir: &Path, meta: &SlotMeta) -> std::io::Result<()> {
    tokio::fs::create_dir_all(slot_dir).await?;
    let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let tmp = slot_dir.join("meta.json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, slot_dir.join("meta.json")).await
}

/// Removes expired files, slots never uploaded in time, and the files of accounts that
/// no longer exist. Returns the slots removed.
pub async fn sweep(ctx: &Arc<Context>, service: &UploadService) -> std::io::Result<usize> {
    let now = now_secs();
    let mut removed = 0;
    let mut owners = match tokio::fs::read_dir(service.root()).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    while let Some(owner) = owners.next_entry().await? {
        let mut account_gone = None;
        let mut slots = match tokio::fs::read_dir(owner.path()).await {
            Ok(d) => d,
            Err(_) => continue,
        };
        let mut left = 0usize;
        while let Some(slot) = slots.next_entry().await? {
            let path = slot.path();
            let grace = service.cfg.put_ttl_secs + ctx.config.http.body_timeout_secs;
            let gone = match read_meta(&path).await {
                // A directory without metadata is a slot that failed half-way, unless
                // it is one being made right now.
                None => age_secs(&path).await.is_some_and(|age| age > grace),
                Some(meta) => {
                    if account_gone.is_none() {
                        account_gone = Some(match addr::parse_bare(&meta.owner) {
                            Some(jid) => matches!(ctx.storage.accounts.get(&jid).await, Ok(None)),
                            None => true,
                        });
                    }
                    let uploaded = tokio::fs::try_exists(path.join("data"))
                        .await
                        .unwrap_or(true);
                    // An upload still receiving its body (it writes at least once per
                    // body timeout) may outlast its PUT URL.
                    let receiving = age_secs(&path.join("data.part"))
                        .await
                        .is_some_and(|age| age <= 2 * ctx.config.http.body_timeout_secs);
                    let get_expiry = service.get_expiry(meta.created);
                    account_gone == Some(true)
                        || (get_expiry != 0 && get_expiry <= now)
                        // A slot never uploaded: gone once its PUT URL expired (and any
                        // upload still running had its body timeout to finish).
                        || (!uploaded && !receiving && meta.created + grace < now)
                }
            };
            if gone {
                match tokio::fs::remove_dir_all(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) => warn!(path = %path.display(), error = %e, "upload: cannot remove"),
                }
            } else {
                left += 1;
            }
        }
        if left == 0 {
            // Fails harmlessly if a new slot appeared meanwhile.
            let _ = tokio::fs::remove_dir(owner.path()).await;
        }
    }
    if removed > 0 {
        info!(removed, "upload: expired or orphaned files removed");
    }
    Ok(removed)
}

#[async_trait]
impl Service for UploadService {
    async fn handle(&self, ctx: &Arc<Context>, stanza: Element) {
        if stanza.name != "iq" {
            if stanza.name == "message" {
                route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            }
            return;
        }
        let kind = stanza.attr("type").unwrap_or("");
        if !matches!(kind, "get" | "set") {
            return;
        }
        let Some(to) = stanza.attr("to").and_then(addr::parse) else {
            return;
        };
        // Only the service's domain itself is an address here.
        if to.node().is_some() || to.is_full() {
            route_reply(ctx, &stanza, StanzaError::service_unavailable()).await;
            return;
        }
        let domain = to.domain().as_str().to_string();
        let result = match stanza.first_element() {
            Some(p) if p.is("query", ns::DISCO_INFO) && kind == "get" => {
                if p.attr("node").is_some() {
                    Err(StanzaError::item_not_found())
                } else {
                    Ok(self.disco_info())
                }
            }
            Some(p) if p.is("query", ns::DISCO_ITEMS) && kind == "get" => {
                Ok(Element::new("query", ns::DISCO_ITEMS))
            }
            Some(p) if p.is("request", NS) && kind == "get" => {
                match local_requester(ctx, &stanza) {
                    Some(user) => self.slot(ctx, &domain, &user, p).await,
                    // XEP-0363 §4 (the "not allowed to upload" example).
                    None => Err(StanzaError::forbidden()
                        .with_text("Only accounts of this server may upload")),
                }
            }
            _ => Err(StanzaError::service_unavailable()),
        };
        match result {
            Ok(payload) => route(ctx, iq_result(&stanza, Some(payload))).await,
            Err(e) => route_reply(ctx, &stanza, e).await,
        }
    }
}

/// The requester's account, if it is an account of this server.
fn local_requester(ctx: &Context, stanza: &Element) -> Option<BareJid> {
    let from = stanza.attr("from").and_then(addr::parse)?;
    from.node()?;
    ctx.is_local_domain(from.domain().as_str())
        .then(|| from.into_bare())
}

/// A removed account's files go at once (the sweep catches accounts removed while the
/// server was stopped).
#[async_trait::async_trait]
impl crate::registry::AccountRemoved for UploadService {
    async fn account_removed(&self, _ctx: &Arc<Context>, user: &BareJid) {
        match self.remove_owner(user).await {
            Ok(()) => info!(%user, "upload: files of the removed account deleted"),
            Err(e) => warn!(error = %e, %user, "upload: deleting a removed account's files failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_cleaned() {
        assert_eq!(clean_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(clean_filename("..."), "file");
        assert_eq!(clean_filename("a\u{0}b.txt"), "a_b.txt");
        assert_eq!(clean_filename("très cool.jpg"), "très cool.jpg");
        assert!(clean_filename(&"x".repeat(1000)).len() <= MAX_FILENAME_BYTES);
    }

    #[test]
    fn hex_round_trip_and_pct() {
        assert_eq!(unhex(&hex(&[0, 1, 255])), Some(vec![0, 1, 255]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(pct("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn signatures_bind_method_path_and_expiry() {
        let cfg = UploadConfig {
            secret: Some("0123456789abcdef0123".into()),
            ..UploadConfig::default()
        };
        let s = UploadService::new(cfg, PathBuf::from("/nonexistent/upload"));
        let sig = s.sign(Method::Put, "a/b/c", 10);
        assert!(s.verify(Method::Put, "a/b/c", 10, &sig));
        assert!(!s.verify(Method::Get, "a/b/c", 10, &sig));
        assert!(!s.verify(Method::Put, "a/b/d", 10, &sig));
        assert!(!s.verify(Method::Put, "a/b/c", 11, &sig));
    }
}
