//! Loading the TOML file and checking the values serde cannot check.
//!
//! Every error names the key (`vhost[1].domain`, `limits.max_stanza_bytes`), the offending
//! value and the reason, so `xmppd check` output can be acted on without reading the code.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::{Config, Limits, ListenerKind, TlsMode};

/// RFC 6120 §13.12: a server must accept stanzas of at least 10000 bytes.
pub const MIN_STANZA_BYTES: usize = 10_000;
/// RFC 7677 §4 / RFC 5802: fewer PBKDF2 iterations than this are not acceptable.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or a value of the wrong type.
    #[error("{}", DisplayParse(self))]
    Parse {
        /// The file, when parsing one.
        path: Option<PathBuf>,
        /// 1-based; 0 when toml gave no position.
        line: usize,
        /// 1-based, in characters; 0 when toml gave no position.
        column: usize,
        /// Dotted key path (`limits.max_depth`, `vhost[0].domain`) when it could be worked out.
        key: Option<String>,
        message: String,
    },
    /// A well-formed value that is not acceptable.
    #[error("{}", DisplayInvalid(self))]
    Invalid {
        key: String,
        /// The value as written in TOML; `None` for errors about a whole section.
        value: Option<String>,
        reason: String,
    },
}

struct DisplayParse<'a>(&'a ConfigError);

impl fmt::Display for DisplayParse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConfigError::Parse {
            path,
            line,
            column,
            key,
            message,
        } = self.0
        else {
            return Ok(());
        };
        match path {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("<config>")?,
        }
        if *line > 0 {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(k) = key {
            write!(f, "{k}: ")?;
        }
        f.write_str(message)
    }
}

struct DisplayInvalid<'a>(&'a ConfigError);

impl fmt::Display for DisplayInvalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConfigError::Invalid { key, value, reason } = self.0 else {
            return Ok(());
        };
        match value {
            Some(v) => write!(f, "{key} = {v}: {reason}"),
            None => write!(f, "{key}: {reason}"),
        }
    }
}

impl ConfigError {
    fn invalid(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: Some(value.into()),
            reason: reason.into(),
        }
    }

    fn section(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: None,
            reason: reason.into(),
        }
    }

    /// The key the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// Reads and parses a configuration file. Keys left out take their defaults; unknown keys
/// are errors. The values are NOT checked: call [`validate`] (or use [`load_and_validate`]).
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, Some(path))
}

/// Parses configuration text; `path` is only used in error messages.
pub fn parse_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let (line, column, key) = match e.span() {
            Some(span) => {
                let (line, column, mut key) = locate(text, span.start);
                // Inside an inline table the line's key is the table's; the unknown
                // field's own name is the spanned text.
                if e.message().starts_with("unknown field") {
                    let field = text
                        .get(span.clone())
                        .unwrap_or("")
                        .trim()
                        .trim_matches(|c| c == '"' || c == '\'');
                    if let Some(k) = &key {
                        let last = k.rsplit('.').next().unwrap_or(k);
                        if !field.is_empty() && last != field {
                            key = Some(format!("{k}.{field}"));
                        }
                    }
                }
                (line, column, key)
            }
            None => (0, 0, None),
        };
        ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            line,
            column,
            key,
            message: e.message().trim_end().to_string(),
        }
    })
}

/// [`load_file`] then [`validate`], all errors together.
pub fn load_and_validate(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let cfg = load_file(path).map_err(|e| vec![e])?;
    validate(&cfg)?;
    Ok(cfg)
}

/// Line, column and (best effort) dotted key path of a byte offset in TOML text.
///
/// toml's errors carry a span but not the key path, and the path is what a user searches
/// the file for, so it is rebuilt from the nearest table header and the `key =` on the line.
fn locate(text: &str, offset: usize) -> (usize, usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(1, |s| s.chars().count() + 1);

    // Table context from the headers above (and including) the error line.
    let mut header: Option<String> = None;
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let upto = &text[..line_end];
    for raw in upto.lines() {
        let l = raw.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = array_counts.entry(name.clone()).or_insert(0);
            header = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            header = Some(name.trim().to_string());
        }
    }

    let line = text.get(line_start..line_end).unwrap_or("");
    let trimmed = line.trim_start();
    let key = if trimmed.starts_with('[') || trimmed.starts_with('#') {
        None
    } else {
        trimmed
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .filter(|k| !k.is_empty())
    };
    let path = match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (Some(h), None) => Some(h),
        (None, k) => k,
    };
    (line_no, column, path)
}

/// Checks everything about a parsed configuration that the types cannot express.
/// Returns every problem found, not just the first.
pub fn validate(cfg: &Config) -> Result<(), Vec<ConfigError>> {
    let mut errs = Vec::new();

    if cfg.data_dir.as_os_str().is_empty() {
        errs.push(ConfigError::invalid(
            "data_dir",
            "\"\"",
            "must not be empty",
        ));
    }
    if let Err(why) = simple_log_filter(&cfg.log_level) {
        errs.push(ConfigError::invalid(
            "log_level",
            quote(&cfg.log_level),
            why,
        ));
    } else if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&cfg.log_level) {
        errs.push(ConfigError::invalid(
            "log_level",
            quote(&cfg.log_level),
            format!("not a valid log filter: {e}"),
        ));
    }

    validate_vhosts(cfg, &mut errs);
    validate_listeners(cfg, &mut errs);
    validate_limits(cfg, &mut errs);
    validate_s2s(cfg, &mut errs);
    validate_websocket(cfg, &mut errs);
    validate_upload(cfg, &mut errs);
    validate_http(cfg, &mut errs);
    validate_metrics(cfg, &mut errs);

    if cfg.c2s.scram_iterations < MIN_SCRAM_ITERATIONS {
        errs.push(ConfigError::invalid(
            "c2s.scram_iterations",
            cfg.c2s.scram_iterations.to_string(),
            format!("must be at least {MIN_SCRAM_ITERATIONS} (RFC 7677)"),
        ));
    }

    let ranges: [(&str, u64, RangeInclusive<u64>, String); 6] = [
        (
            "storage.cache_mb",
            cfg.storage.cache_mb,
            1..=MAX_CACHE_MB,
            format!("1 and {MAX_CACHE_MB}"),
        ),
        (
            "storage.archive_partition_mb",
            cfg.storage.archive_partition_mb,
            1..=MAX_PARTITION_MB,
            format!("1 and {MAX_PARTITION_MB}"),
        ),
        (
            "archive.prune_interval_secs",
            cfg.archive.prune_interval_secs,
            1..=MAX_PRUNE_INTERVAL_SECS,
            format!("1 and {MAX_PRUNE_INTERVAL_SECS} (a week)"),
        ),
        (
            "c2s.sm_resume_timeout_secs",
            cfg.c2s.sm_resume_timeout_secs,
            1..=MAX_RESUME_TIMEOUT_SECS,
            format!("1 and {MAX_RESUME_TIMEOUT_SECS} (one day)"),
        ),
        (
            "c2s.fast_token_lifetime_secs",
            cfg.c2s.fast_token_lifetime_secs,
            MIN_FAST_TOKEN_LIFETIME_SECS..=MAX_FAST_TOKEN_LIFETIME_SECS,
            format!(
                "{MIN_FAST_TOKEN_LIFETIME_SECS} (an hour) and {MAX_FAST_TOKEN_LIFETIME_SECS} (a year)"
            ),
        ),
        (
            "server.shutdown_timeout_secs",
            cfg.server.shutdown_timeout_secs,
            1..=MAX_SHUTDOWN_TIMEOUT_SECS,
            format!("1 and {MAX_SHUTDOWN_TIMEOUT_SECS} (an hour)"),
        ),
    ];
    for (key, value, range, bounds) in ranges {
        if !range.contains(&value) {
            errs.push(ConfigError::invalid(
                key,
                value.to_string(),
                format!("must be between {bounds}"),
            ));
        }
    }
    if !(1..=1000).contains(&cfg.c2s.fast_max_clients) {
        errs.push(ConfigError::invalid(
            "c2s.fast_max_clients",
            cfg.c2s.fast_max_clients.to_string(),
            "must be between 1 and 1000".to_string(),
        ));
    }

    validate_muc(&cfg.muc, &mut errs);
    for (key, value) in [
        ("pep.max_nodes_per_account", cfg.pep.max_nodes_per_account),
        ("pep.max_items_per_node", cfg.pep.max_items_per_node),
        ("pep.max_item_bytes", cfg.pep.max_item_bytes),
        ("pep.max_vcard_bytes", cfg.pep.max_vcard_bytes),
        ("pep.max_private_bytes", cfg.pep.max_private_bytes),
        ("pep.max_private_entries", cfg.pep.max_private_entries),
        ("pep.caps_cache_entries", cfg.pep.caps_cache_entries),
        ("pubsub.max_nodes", cfg.pubsub.max_nodes),
        (
            "pubsub.max_subscriptions_per_node",
            cfg.pubsub.max_subscriptions_per_node,
        ),
    ] {
        if value == 0 {
            errs.push(ConfigError::invalid(key, "0", "must be at least 1"));
        }
    }

    validate_accounts(cfg, &mut errs);

    for admin in &cfg.pubsub.admins {
        if crate::addr::parse_bare(admin).is_none_or(|b| b.node().is_none()) {
            errs.push(ConfigError::invalid(
                "pubsub.admins",
                admin.clone(),
                "must be a bare JID (user@domain)",
            ));
        }
    }

    for (i, svc) in cfg.external_services.iter().enumerate() {
        let key = |field: &str| format!("external_service[{i}].{field}");
        if !matches!(svc.kind.as_str(), "stun" | "stuns" | "turn" | "turns") {
            errs.push(ConfigError::invalid(
                key("type"),
                svc.kind.clone(),
                "must be stun, stuns, turn or turns",
            ));
        }
        if svc.host.is_empty() || svc.host.contains(char::is_whitespace) {
            errs.push(ConfigError::invalid(
                key("host"),
                svc.host.clone(),
                "must be a host name",
            ));
        }
        if svc.port == 0 {
            errs.push(ConfigError::invalid(
                key("port"),
                "0",
                "must be a port number",
            ));
        }
        if let Some(t) = &svc.transport
            && !matches!(t.as_str(), "udp" | "tcp")
        {
            errs.push(ConfigError::invalid(
                key("transport"),
                t.clone(),
                "must be udp or tcp",
            ));
        }
        if svc.ttl_secs == 0 {
            errs.push(ConfigError::invalid(
                key("ttl_secs"),
                "0",
                "must be at least 1",
            ));
        }
    }

    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The `[muc]` section: a service name that makes a domain under every vhost, and
/// limits that leave rooms usable.
fn validate_muc(m: &super::MucConfig, errs: &mut Vec<ConfigError>) {
    let label_ok = !m.subdomain.is_empty()
        && !m.subdomain.contains('.')
        && check_domain(&format!("{}.example", m.subdomain)).is_ok();
    if !label_ok {
        errs.push(ConfigError::invalid(
            "muc.subdomain",
            quote(&m.subdomain),
            "must be one lowercase DNS label (e.g. \"conference\")",
        ));
    }
    let nonzero: [(&str, u64); 6] = [
        ("muc.max_rooms", m.max_rooms as u64),
        ("muc.max_rooms_per_user", m.max_rooms_per_user as u64),
        ("muc.max_occupants", m.max_occupants as u64),
        ("muc.max_history_length", m.max_history_length as u64),
        ("muc.messages_per_sec", u64::from(m.messages_per_sec)),
        ("muc.message_burst", u64::from(m.message_burst)),
    ];
    for (key, value) in nonzero {
        if value == 0 {
            errs.push(ConfigError::invalid(key, "0", "must be at least 1"));
        }
    }
    if m.history_length > m.max_history_length {
        errs.push(ConfigError::invalid(
            "muc.history_length",
            m.history_length.to_string(),
            format!(
                "must not exceed muc.max_history_length ({})",
                m.max_history_length
            ),
        ));
    }
}

/// 64 GiB: anything larger is a typo (the unit is MiB).
const MAX_CACHE_MB: u64 = 65_536;
/// The newest archive partition is held in memory (see `storage.archive_partition_mb`).
const MAX_PARTITION_MB: u64 = 1024;
/// A week: expired messages are hidden at once anyway; this only bounds disk growth.
const MAX_PRUNE_INTERVAL_SECS: u64 = 7 * 86_400;

/// A hibernated session holds memory and keeps its presence online; a day is plenty.
const MAX_RESUME_TIMEOUT_SECS: u64 = 86_400;
const MIN_FAST_TOKEN_LIFETIME_SECS: u64 = 3_600;
const MAX_FAST_TOKEN_LIFETIME_SECS: u64 = 365 * 86_400;
/// Longest graceful shutdown: beyond that an operator's supervisor gives up anyway.
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 3600;

fn validate_vhosts(cfg: &Config, errs: &mut Vec<ConfigError>) {
    if cfg.vhosts.is_empty() {
        errs.push(ConfigError::section(
            "vhost",
            "at least one [[vhost]] is required",
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, v) in cfg.vhosts.iter().enumerate() {
        let key = format!("vhost[{i}].domain");
        if let Err(reason) = check_domain(&v.domain) {
            errs.push(ConfigError::invalid(&key, quote(&v.domain), reason));
        } else if let Some(first) = seen.insert(v.domain.as_str(), i) {
            errs.push(ConfigError::invalid(
                &key,
                quote(&v.domain),
                format!("duplicate of vhost[{first}].domain"),
            ));
            // Keep pointing at the first occurrence for later duplicates.
            seen.insert(v.domain.as_str(), first);
        }
        match (&v.certificate, &v.key) {
            (Some(c), None) => errs.push(ConfigError::invalid(
                format!("vhost[{i}].certificate"),
                quote_path(c),
                format!("vhost[{i}].key is missing; set both or neither"),
            )),
            (None, Some(k)) => errs.push(ConfigError::invalid(
                format!("vhost[{i}].key"),
                quote_path(k),
                format!("vhost[{i}].certificate is missing; set both or neither"),
            )),
            _ => {}
        }
        for (name, p) in [("certificate", &v.certificate), ("key", &v.key)] {
            let Some(p) = p else { continue };
            if let Err(reason) = check_readable_file(p) {
                errs.push(ConfigError::invalid(
                    format!("vhost[{i}].{name}"),
                    quote_path(p),
                    reason,
                ));
            }
        }
    }
}

/// A domain usable as an XMPP vhost: a valid, already-normalized domainpart that is also a
/// DNS name (it appears in certificates and file names).
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("not a valid domain: empty".into());
    }
    if !domain.is_ascii() {
        // SNI and certificates carry A-labels, and JIDs must match the vhost exactly.
        return Err(
            "not a valid domain: internationalized domains must be written in their ASCII \
             (xn--) form"
                .into(),
        );
    }
    match jid::DomainPart::new(domain) {
        Err(e) => return Err(format!("not a valid domain: {e}")),
        Ok(norm) if norm.as_str() != domain => {
            return Err(format!(
                "not a valid domain: not in normalized form (write {})",
                quote(norm.as_str())
            ));
        }
        Ok(_) => {}
    }
    if domain.len() > 253 {
        return Err("not a valid domain: longer than 253 bytes".into());
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err("not a valid domain: empty label".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "not a valid domain: label {} longer than 63 bytes",
                quote(label)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "not a valid domain: label {} starts or ends with '-'",
                quote(label)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("not a valid domain: character {c:?} not allowed"));
        }
    }
    Ok(())
}

fn check_readable_file(p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Err(e) => Err(format!("cannot read file: {e}")),
        Ok(m) if !m.is_file() => Err("not a regular file".into()),
        Ok(_) => std::fs::File::open(p)
            .map(|_| ())
            .map_err(|e| format!("cannot read file: {e}")),
    }
}

fn validate_listeners(cfg: &Config, errs: &mut Vec<ConfigError>) {
    if !cfg.listeners.iter().any(|l| l.kind == ListenerKind::C2s) {
        errs.push(ConfigError::section(
            "listener",
            "no listener with kind = \"c2s\"; clients could not connect",
        ));
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tls_problem = match (l.kind, l.tls) {
            (ListenerKind::C2s | ListenerKind::S2s, TlsMode::None) => {
                Some("\"none\" is only for kind = \"http\"")
            }
            (ListenerKind::Http, TlsMode::Starttls) => {
                Some("HTTP has no STARTTLS: use \"direct_tls\" (https://) or \"none\"")
            }
            _ => None,
        };
        if let Some(why) = tls_problem {
            errs.push(ConfigError::invalid(
                format!("listener[{i}].tls"),
                format!("{:?}", l.tls).to_ascii_lowercase(),
                why,
            ));
        }
        // Port 0 asks the OS for a free port, so those never collide.
        if l.address.port() == 0 {
            continue;
        }
        if let Some((j, _)) = cfg.listeners[..i]
            .iter()
            .enumerate()
            .find(|(_, other)| other.address.port() != 0 && overlaps(other.address, l.address))
        {
            let why = if cfg.listeners[j].address == l.address {
                format!("already used by listener[{j}]")
            } else {
                format!(
                    "overlaps listener[{j}].address = \"{}\" (same port, one is a wildcard)",
                    cfg.listeners[j].address
                )
            };
            errs.push(ConfigError::invalid(
                format!("listener[{i}].address"),
                format!("\"{}\"", l.address),
                why,
            ));
        }
    }
}

/// Two addresses that cannot both be bound: equal, or same port and family with a wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    if a.ip() == b.ip() {
        return true;
    }
    a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[registration]`, `[invites]` and `server.admins`.
fn validate_accounts(cfg: &Config, errs: &mut Vec<ConfigError>) {
    for admin in &cfg.server.admins {
        if crate::addr::parse_bare(admin).is_none_or(|b| b.node().is_none()) {
            errs.push(ConfigError::invalid(
                "server.admins",
                admin.clone(),
                "must be a bare JID (user@domain)",
            ));
        }
    }
    let r = &cfg.registration;
    for (key, value) in [
        ("registration.min_password_length", r.min_password_length),
        ("registration.tracked_ips", r.tracked_ips),
        ("registration.rate_window_secs", r.rate_window_secs as usize),
        (
            "invites.default_expiry_secs",
            cfg.invites.default_expiry_secs as usize,
        ),
        (
            "invites.max_expiry_secs",
            cfg.invites.max_expiry_secs as usize,
        ),
    ] {
        if value == 0 {
            errs.push(ConfigError::invalid(key, "0", "must be at least 1"));
        }
    }
    if r.min_password_length > 1024 {
        errs.push(ConfigError::invalid(
            "registration.min_password_length",
            r.min_password_length.to_string(),
            "must be at most 1024",
        ));
    }
    let i = &cfg.invites;
    if i.default_expiry_secs > i.max_expiry_secs {
        errs.push(ConfigError::invalid(
            "invites.default_expiry_secs",
            i.default_expiry_secs.to_string(),
            "must not exceed invites.max_expiry_secs",
        ));
    }
    if let Some(url) = &i.base_url {
        let ok = (url.starts_with("https://") || url.starts_with("http://"))
            && !url.contains(['?', '#', ' ', '<', '>', '"', '\'', '&'])
            && url.len() <= 512;
        if !ok {
            errs.push(ConfigError::invalid(
                "invites.base_url",
                quote(url),
                "must be an http(s) URL without query, fragment or spaces",
            ));
        }
    }
}

fn validate_upload(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let u = &cfg.upload;
    if !u.enabled {
        return;
    }
    if u.max_file_size == 0 {
        errs.push(ConfigError::invalid(
            "upload.max_file_size",
            "0",
            "must be at least 1",
        ));
    }
    if u.put_ttl_secs == 0 {
        errs.push(ConfigError::invalid(
            "upload.put_ttl_secs",
            "0",
            "must be at least 1",
        ));
    }
    let sub = &u.subdomain;
    if sub.is_empty() || !sub.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        errs.push(ConfigError::invalid(
            "upload.subdomain",
            quote(sub),
            "must be one DNS label (letters, digits, '-')",
        ));
    }
    if let Some(url) = &u.public_url {
        let ok = (url.starts_with("https://") || url.starts_with("http://"))
            && !url.contains(['?', '#', ' '])
            && url.len() <= 512;
        if !ok {
            errs.push(ConfigError::invalid(
                "upload.public_url",
                quote(url),
                "must be an http:// or https:// URL without query or fragment",
            ));
        }
    }
    if u.secret.as_ref().is_some_and(|s| s.len() < 16) {
        errs.push(ConfigError::invalid(
            "upload.secret",
            "\"…\"",
            "must be at least 16 characters",
        ));
    }
}

fn validate_http(cfg: &Config, errs: &mut Vec<ConfigError>) {
    for (name, v) in [
        ("http.header_timeout_secs", cfg.http.header_timeout_secs),
        ("http.body_timeout_secs", cfg.http.body_timeout_secs),
    ] {
        if v == 0 {
            errs.push(ConfigError::invalid(name, "0", "must be at least 1"));
        }
    }
    for (i, url) in cfg.http.websocket_urls.iter().enumerate() {
        if !(url.starts_with("wss://") || url.starts_with("ws://")) || url.contains(['"', '<', ' '])
        {
            errs.push(ConfigError::invalid(
                format!("http.websocket_urls[{i}]"),
                quote(url),
                "must be a ws:// or wss:// URL",
            ));
        }
    }
    for (i, url) in cfg.http.bosh_urls.iter().enumerate() {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(['"', '<', ' '])
        {
            errs.push(ConfigError::invalid(
                format!("http.bosh_urls[{i}]"),
                quote(url),
                "must be an http:// or https:// URL",
            ));
        }
    }
    let bosh = &cfg.bosh;
    for (name, v) in [
        ("bosh.max_wait_secs", bosh.max_wait_secs),
        ("bosh.inactivity_secs", bosh.inactivity_secs),
        ("bosh.max_requests", u64::from(bosh.max_requests)),
        ("bosh.max_sessions_per_ip", bosh.max_sessions_per_ip as u64),
    ] {
        if v == 0 {
            errs.push(ConfigError::invalid(name, "0", "must be at least 1"));
        }
    }
    if bosh.max_body_bytes < 1024 {
        errs.push(ConfigError::invalid(
            "bosh.max_body_bytes",
            bosh.max_body_bytes.to_string(),
            "must be at least 1024",
        ));
    }
    if cfg.http.max_header_bytes < 8192 {
        errs.push(ConfigError::invalid(
            "http.max_header_bytes",
            cfg.http.max_header_bytes.to_string(),
            "must be at least 8192",
        ));
    }
}

fn validate_metrics(cfg: &Config, errs: &mut Vec<ConfigError>) {
    for (i, entry) in cfg.metrics.allow.iter().enumerate() {
        if crate::metrics::http::parse_allowed(entry).is_none() {
            errs.push(ConfigError::invalid(
                format!("metrics.allow[{i}]"),
                quote(entry),
                "must be an IP address or a CIDR network (\"10.0.0.0/8\")",
            ));
        }
    }
}

fn validate_limits(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let l = &cfg.limits;
    if l.max_stanza_bytes < MIN_STANZA_BYTES {
        errs.push(ConfigError::invalid(
            "limits.max_stanza_bytes",
            l.max_stanza_bytes.to_string(),
            format!("must be at least {MIN_STANZA_BYTES} (RFC 6120 §13.12)"),
        ));
    }
    // Stanza, its child and a grandchild: anything shallower breaks ordinary stanzas.
    if l.max_depth < 3 {
        errs.push(ConfigError::invalid(
            "limits.max_depth",
            l.max_depth.to_string(),
            "must be at least 3",
        ));
    }
    let nonzero: [(&str, u64); 29] = [
        ("limits.max_attributes", l.max_attributes as u64),
        ("limits.handshake_timeout_secs", l.handshake_timeout_secs),
        ("limits.idle_timeout_secs", l.idle_timeout_secs),
        ("limits.write_timeout_secs", l.write_timeout_secs),
        ("limits.connections_per_ip", l.connections_per_ip as u64),
        ("limits.max_connections", l.max_connections as u64),
        ("limits.max_auth_attempts", u64::from(l.max_auth_attempts)),
        ("limits.session_queue_len", l.session_queue_len as u64),
        ("limits.session_max_bytes", l.session_max_bytes as u64),
        ("limits.offline_quota", l.offline_quota as u64),
        ("limits.max_resources", l.max_resources as u64),
        ("limits.sm_max_unacked", l.sm_max_unacked as u64),
        (
            "limits.sm_max_resume_failures",
            u64::from(l.sm_max_resume_failures),
        ),
        ("limits.session_backlog_len", l.session_backlog_len as u64),
        ("limits.c2s_bytes_per_sec", l.c2s_bytes_per_sec),
        ("limits.c2s_burst_bytes", l.c2s_burst_bytes),
        ("limits.c2s_stanzas_per_sec", l.c2s_stanzas_per_sec),
        ("limits.c2s_burst_stanzas", l.c2s_burst_stanzas),
        ("limits.s2s_bytes_per_sec", l.s2s_bytes_per_sec),
        ("limits.s2s_burst_bytes", l.s2s_burst_bytes),
        ("limits.s2s_stanzas_per_sec", l.s2s_stanzas_per_sec),
        ("limits.s2s_burst_stanzas", l.s2s_burst_stanzas),
        ("limits.max_roster_items", l.max_roster_items as u64),
        ("limits.max_blocklist_items", l.max_blocklist_items as u64),
        (
            "limits.max_hibernated_per_account",
            l.max_hibernated_per_account as u64,
        ),
        (
            "limits.max_pending_subscriptions",
            l.max_pending_subscriptions as u64,
        ),
        (
            "limits.ip_auth_failures_max",
            u64::from(l.ip_auth_failures_max),
        ),
        (
            "limits.ip_auth_failure_window_secs",
            l.ip_auth_failure_window_secs,
        ),
        ("limits.ip_auth_tracked_max", l.ip_auth_tracked_max as u64),
    ];
    for (key, v) in nonzero {
        if v == 0 {
            errs.push(ConfigError::invalid(key, "0", "must be at least 1"));
        }
    }
    if l.c2s_burst_bytes < l.max_stanza_bytes as u64 {
        errs.push(ConfigError::invalid(
            "limits.c2s_burst_bytes",
            l.c2s_burst_bytes.to_string(),
            format!(
                "smaller than limits.max_stanza_bytes = {}: every large stanza would pause its stream",
                l.max_stanza_bytes
            ),
        ));
    }
    if l.session_max_bytes / 4 < l.max_stanza_bytes {
        errs.push(ConfigError::invalid(
            "limits.session_max_bytes",
            l.session_max_bytes.to_string(),
            format!(
                "less than 4 × limits.max_stanza_bytes = {}: one large stanza must fit each part of it",
                l.max_stanza_bytes.saturating_mul(4)
            ),
        ));
    }
    // At login one session gets every offline message and pending request at once.
    let login_backlog = l.offline_quota.saturating_add(l.max_pending_subscriptions);
    if l.session_backlog_len < login_backlog {
        errs.push(ConfigError::invalid(
            "limits.session_backlog_len",
            l.session_backlog_len.to_string(),
            format!(
                "smaller than limits.offline_quota + limits.max_pending_subscriptions = {login_backlog}: \
                 a login could never receive them"
            ),
        ));
    }
    if l.connections_per_ip > l.max_connections && l.max_connections > 0 {
        errs.push(ConfigError::invalid(
            "limits.connections_per_ip",
            l.connections_per_ip.to_string(),
            format!("larger than limits.max_connections = {}", l.max_connections),
        ));
    }
    validate_auth_throttle(l, errs);
}

/// The per-address failed-authentication throttle: the first delay is no longer than the
/// longest, and the hard cap does not come before the delays. (A delay longer than the
/// handshake timeout is allowed: that client then gets `connection-timeout` instead.)
fn validate_auth_throttle(l: &Limits, errs: &mut Vec<ConfigError>) {
    if l.ip_auth_failures_before_delay > l.ip_auth_failures_max {
        errs.push(ConfigError::invalid(
            "limits.ip_auth_failures_before_delay",
            l.ip_auth_failures_before_delay.to_string(),
            format!(
                "larger than limits.ip_auth_failures_max = {}",
                l.ip_auth_failures_max
            ),
        ));
    }
    if l.ip_auth_failure_delay_ms > l.ip_auth_failure_max_delay_ms {
        errs.push(ConfigError::invalid(
            "limits.ip_auth_failure_delay_ms",
            l.ip_auth_failure_delay_ms.to_string(),
            format!(
                "larger than limits.ip_auth_failure_max_delay_ms = {}",
                l.ip_auth_failure_max_delay_ms
            ),
        ));
    }
}

fn validate_s2s(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let s = &cfg.s2s;
    for (key, v) in [
        ("s2s.connect_timeout_secs", s.connect_timeout_secs),
        ("s2s.idle_timeout_secs", s.idle_timeout_secs),
        ("s2s.queue_len", s.queue_len as u64),
        (
            "s2s.max_inbound_streams_per_domain",
            s.max_inbound_streams_per_domain as u64,
        ),
    ] {
        if v == 0 {
            errs.push(ConfigError::invalid(key, "0", "must be at least 1"));
        }
    }
    if let Some(secret) = &s.dialback_secret
        && secret.len() < 16
    {
        errs.push(ConfigError::invalid(
            "s2s.dialback_secret",
            "\"…\"",
            "must be at least 16 characters",
        ));
    }
    if let Some(p) = &s.ca_file
        && let Err(reason) = check_readable_file(p)
    {
        errs.push(ConfigError::invalid("s2s.ca_file", quote_path(p), reason));
    }
    for (domain, target) in &s.routes {
        let key = format!("s2s.routes.{domain}");
        if let Err(reason) = check_domain(domain) {
            errs.push(ConfigError::invalid(&key, quote(domain), reason));
        }
        if let Err(reason) = check_host_port(target) {
            errs.push(ConfigError::invalid(&key, quote(target), reason));
        }
    }
}

fn validate_websocket(cfg: &Config, errs: &mut Vec<ConfigError>) {
    for (i, origin) in cfg.websocket.allowed_origins.iter().enumerate() {
        if let Err(reason) = check_origin(origin) {
            errs.push(ConfigError::invalid(
                format!("websocket.allowed_origins[{i}]"),
                quote(origin),
                reason,
            ));
        }
    }
}

/// An origin as browsers serialize it (RFC 6454 §6.2): `scheme://host[:port]` or `null`.
/// Matching is exact, so anything a browser never sends is a mistake worth reporting.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "null" || origin == "*" {
        return Ok(());
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err("expected scheme://host[:port], e.g. \"https://chat.example.org\"".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(format!("not a URL scheme: {}", quote(scheme)));
    }
    if authority.contains(['/', '?', '#', '@']) || authority.contains(char::is_whitespace) {
        return Err("an origin has no path (not even a trailing '/'), query or user".into());
    }
    Ok(())
}

/// `host:port` or `[v6]:port`, with a non-zero port.
pub fn check_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port must not be 0".into());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("expected host:port".into());
    }
    Ok((host.to_string(), port))
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn quote_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `log_level` takes comma-separated `level`, `target` or `target=level` directives.
/// Span and field filters (`target[span{field=value}]`) are refused: tracing compiles
/// field values into automata whose construction can take minutes on a crafted value
/// (found by fuzzing the config loader); `RUST_LOG` still accepts them.
fn simple_log_filter(filter: &str) -> Result<(), String> {
    const MAX_LEN: usize = 4096;
    if filter.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes"));
    }
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (target.trim(), Some(level.trim())),
            None => (directive, None),
        };
        let level_ok =
            level.is_none_or(|l| l.parse::<tracing::level_filters::LevelFilter>().is_ok());
        if !is_name(target) || !level_ok {
            return Err(format!(
                "{directive:?} is not `level`, `target` or `target=level` \
                 (span and field filters are only taken from RUST_LOG)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_levels_and_targets_only() {
        for ok in [
            "info",
            "warn,xmppd::s2s=debug",
            " xmppd = TRACE , sled=off ",
            "",
        ] {
            assert_eq!(simple_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "xmppd[conn]=debug",
            "xmppd[{jid=.*.*.*}]=trace",
            "info,xmppd=loud",
            "a b",
            "=info",
        ] {
            assert!(simple_log_filter(bad).is_err(), "{bad}");
        }
        assert!(simple_log_filter(&"x,".repeat(3000)).is_err());
    }
    use crate::config::{ListenerConfig, TlsMode, VhostConfig};

    fn messages(cfg: &Config) -> Vec<String> {
        match validate(cfg) {
            Ok(()) => Vec::new(),
            Err(es) => es.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn shutdown_timeout_is_bounded() {
        let mut cfg = Config::default();
        for (secs, ok) in [(0, false), (1, true), (3600, true), (3601, false)] {
            cfg.server.shutdown_timeout_secs = secs;
            assert_eq!(messages(&cfg).is_empty(), ok, "{secs}");
        }
        cfg.server.shutdown_timeout_secs = 0;
        assert_eq!(
            messages(&cfg),
            ["server.shutdown_timeout_secs = 0: must be between 1 and 3600 (an hour)"]
        );
    }

    #[test]
    fn s2s_errors() {
        let mut cfg = Config::default();
        cfg.s2s.queue_len = 0;
        cfg.s2s
            .routes
            .insert("Bad Domain".into(), "host:5269".into());
        cfg.s2s.routes.insert("ok.example".into(), "host".into());
        cfg.s2s.dialback_secret = Some("short".into());
        let m = messages(&cfg);
        assert!(
            m.contains(&"s2s.queue_len = 0: must be at least 1".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter().any(|e| e.starts_with("s2s.routes.Bad Domain")),
            "{m:?}"
        );
        assert!(
            m.contains(&"s2s.routes.ok.example = \"host\": expected host:port".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter().any(|e| e.starts_with("s2s.dialback_secret")),
            "{m:?}"
        );
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(check_host_port("[::1]:5269"), Ok(("::1".into(), 5269)));
        assert!(check_host_port("h:0").is_err());
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(messages(&Config::default()), Vec::<String>::new());
    }

    #[test]
    fn limits_errors_name_key_value_reason() {
        let mut cfg = Config::default();
        cfg.limits.max_stanza_bytes = 100;
        cfg.limits.idle_timeout_secs = 0;
        cfg.limits.max_resources = 0;
        cfg.limits.sm_max_unacked = 0;
        cfg.c2s.scram_iterations = 1000;
        cfg.c2s.sm_resume_timeout_secs = 0;
        cfg.storage.cache_mb = 0;
        cfg.archive.prune_interval_secs = 0;
        let m = messages(&cfg);
        assert!(m.contains(&"storage.cache_mb = 0: must be between 1 and 65536".to_string()));
        assert!(m.contains(
            &"archive.prune_interval_secs = 0: must be between 1 and 604800 (a week)".to_string()
        ));
        assert!(m.contains(
            &"limits.max_stanza_bytes = 100: must be at least 10000 (RFC 6120 §13.12)".to_string()
        ));
        assert!(m.contains(&"limits.idle_timeout_secs = 0: must be at least 1".to_string()));
        assert!(m.contains(&"limits.max_resources = 0: must be at least 1".to_string()));
        assert!(m.contains(&"limits.sm_max_unacked = 0: must be at least 1".to_string()));
        assert!(m.contains(
            &"c2s.sm_resume_timeout_secs = 0: must be between 1 and 86400 (one day)".to_string()
        ));
        assert!(m.contains(
            &"c2s.scram_iterations = 1000: must be at least 4096 (RFC 7677)".to_string()
        ));
        assert_eq!(m.len(), 8, "{m:?}");
    }

    #[test]
    fn limits_that_cannot_work_together_are_refused() {
        let mut cfg = Config::default();
        cfg.limits.offline_quota = 1000;
        cfg.limits.max_pending_subscriptions = 500;
        cfg.limits.session_backlog_len = 1499;
        cfg.limits.c2s_burst_bytes = 1000;
        let m = messages(&cfg);
        assert!(
            m.iter()
                .any(|e| e.starts_with("limits.session_backlog_len = 1499: smaller than")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|e| e.starts_with("limits.c2s_burst_bytes = 1000: smaller than")),
            "{m:?}"
        );
        cfg.limits.session_backlog_len = 1500;
        cfg.limits.c2s_burst_bytes = cfg.limits.max_stanza_bytes as u64;
        assert!(messages(&cfg).is_empty(), "{:?}", messages(&cfg));
    }

    #[test]
    fn auth_throttle_errors() {
        let mut cfg = Config::default();
        cfg.limits.ip_auth_failures_before_delay = 20;
        cfg.limits.ip_auth_failures_max = 10;
        cfg.limits.ip_auth_failure_delay_ms = 2000;
        cfg.limits.ip_auth_failure_max_delay_ms = 1000;
        cfg.limits.ip_auth_failure_window_secs = 0;
        cfg.limits.ip_auth_tracked_max = 0;
        let m = messages(&cfg);
        assert!(m.contains(
            &"limits.ip_auth_failures_before_delay = 20: larger than limits.ip_auth_failures_max = 10"
                .to_string()
        ), "{m:?}");
        assert!(m.contains(
            &"limits.ip_auth_failure_delay_ms = 2000: larger than limits.ip_auth_failure_max_delay_ms = 1000"
                .to_string()
        ), "{m:?}");
        assert!(
            m.contains(&"limits.ip_auth_failure_window_secs = 0: must be at least 1".to_string())
        );
        assert!(m.contains(&"limits.ip_auth_tracked_max = 0: must be at least 1".to_string()));
        assert_eq!(m.len(), 4, "{m:?}");

        // No delays at all is fine.
        let mut cfg = Config::default();
        cfg.limits.ip_auth_failure_delay_ms = 0;
        cfg.limits.ip_auth_failure_max_delay_ms = 0;
        cfg.limits.ip_auth_failures_before_delay = 0;
        assert_eq!(messages(&cfg), Vec::<String>::new());
    }

    #[test]
    fn vhost_errors() {
        let vhosts = vec![
            VhostConfig {
                domain: "example.org".into(),
                certificate: None,
                key: None,
            },
            VhostConfig {
                domain: "a b".into(),
                certificate: None,
                key: None,
            },
            VhostConfig {
                domain: "example.org".into(),
                certificate: Some("/nonexistent/x.pem".into()),
                key: None,
            },
            VhostConfig {
                domain: "Example.NET".into(),
                certificate: None,
                key: None,
            },
        ];
        let mut cfg = Config {
            vhosts,
            ..Config::default()
        };
        let m = messages(&cfg);
        assert!(
            m.iter()
                .any(|s| s.starts_with("vhost[1].domain = \"a b\": not a valid domain")),
            "{m:?}"
        );
        assert!(m.contains(
            &"vhost[2].domain = \"example.org\": duplicate of vhost[0].domain".to_string()
        ));
        assert!(m.contains(
            &"vhost[2].certificate = \"/nonexistent/x.pem\": vhost[2].key is missing; set both or neither"
                .to_string()
        ));
        assert!(
            m.iter().any(|s| s
                .starts_with("vhost[2].certificate = \"/nonexistent/x.pem\": cannot read file:")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|s| s.starts_with("vhost[3].domain = \"Example.NET\"")
                    && s.contains("\"example.net\"")),
            "{m:?}"
        );
        cfg.vhosts.clear();
        assert!(messages(&cfg).contains(&"vhost: at least one [[vhost]] is required".to_string()));
    }

    #[test]
    fn websocket_origins() {
        let mut cfg = Config::default();
        cfg.websocket.allowed_origins = [
            "https://chat.example.org",
            "http://localhost:8080",
            "null",
            "file://",
            "https://chat.example.org/",
            "*",
            "chat.example.org",
        ]
        .map(String::from)
        .to_vec();
        let m = messages(&cfg);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("websocket.allowed_origins[4] = \"https://chat.example.org/\""));
        assert!(m[1].starts_with("websocket.allowed_origins[6]"), "{m:?}");
        assert!(m[1].contains("expected scheme://host"), "{m:?}");
    }

    #[test]
    fn domain_rules() {
        assert!(check_domain("example.org").is_ok());
        assert!(check_domain("localhost").is_ok());
        assert!(check_domain("xn--bcher-kva.example").is_ok());
        for bad in [
            "", "a..b", ".a", "a.", "-a.org", "a_b.org", "a/b", "a@b", "a b",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_listener_and_upload_rules() {
        let mut cfg = Config::default();
        let l = |kind, addr: &str, tls| ListenerConfig {
            kind,
            address: addr.parse().unwrap(),
            tls,
        };
        cfg.listeners = vec![
            l(ListenerKind::C2s, "127.0.0.1:5222", TlsMode::Starttls),
            l(ListenerKind::Http, "0.0.0.0:5443", TlsMode::DirectTls),
            l(ListenerKind::Http, "0.0.0.0:5444", TlsMode::None),
            l(ListenerKind::Http, "127.0.0.1:5445", TlsMode::Starttls),
        ];
        cfg.upload.public_url = Some("ftp://x".into());
        cfg.upload.secret = Some("short".into());
        cfg.upload.max_file_size = 0;
        cfg.http.websocket_urls = vec!["https://x/ws".into()];
        let m = messages(&cfg);
        assert_eq!(m.len(), 5, "{m:?}");
        assert!(m[0].starts_with("listener[3].tls = starttls: HTTP has no STARTTLS"));
        assert!(m[1].starts_with("upload.max_file_size = 0"), "{m:?}");
        assert!(m[2].starts_with("upload.public_url = \"ftp://x\""), "{m:?}");
        assert!(m[3].starts_with("upload.secret"), "{m:?}");
        assert!(m[4].starts_with("http.websocket_urls[0]"), "{m:?}");
    }

    #[test]
    fn websocket_listener_tls_rules() {
        let mut cfg = Config::default();
        let l = |kind, addr: &str, tls| ListenerConfig {
            kind,
            address: addr.parse().unwrap(),
            tls,
        };
        cfg.listeners = vec![
            l(ListenerKind::C2s, "127.0.0.1:5222", TlsMode::Starttls),
            l(ListenerKind::Http, "127.0.0.1:5280", TlsMode::None),
            l(ListenerKind::Http, "0.0.0.0:5281", TlsMode::DirectTls),
            l(ListenerKind::Http, "0.0.0.0:5282", TlsMode::None),
            l(ListenerKind::Http, "127.0.0.1:5283", TlsMode::Starttls),
            l(ListenerKind::C2s, "127.0.0.1:5284", TlsMode::None),
        ];
        let m = messages(&cfg);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("listener[4].tls = starttls: HTTP has no STARTTLS"));
        assert!(m[1].starts_with("listener[5].tls = none: \"none\" is only for kind"));
    }

    #[test]
    fn listener_errors() {
        let mut cfg = Config::default();
        let l = |kind, addr: &str| ListenerConfig {
            kind,
            address: addr.parse().unwrap(),
            tls: TlsMode::Starttls,
        };
        cfg.listeners = vec![
            l(ListenerKind::S2s, "127.0.0.1:5269"),
            l(ListenerKind::S2s, "127.0.0.1:5269"),
            l(ListenerKind::S2s, "0.0.0.0:5269"),
            l(ListenerKind::S2s, "[::1]:5269"),
            l(ListenerKind::S2s, "127.0.0.1:0"),
            l(ListenerKind::S2s, "127.0.0.1:0"),
        ];
        let m = messages(&cfg);
        assert!(m.contains(
            &"listener: no listener with kind = \"c2s\"; clients could not connect".to_string()
        ));
        assert!(m.contains(
            &"listener[1].address = \"127.0.0.1:5269\": already used by listener[0]".to_string()
        ));
        assert!(
            m.iter()
                .any(|s| s.starts_with("listener[2].address = \"0.0.0.0:5269\": overlaps")),
            "{m:?}"
        );
        assert_eq!(m.len(), 3, "{m:?}");
    }

    #[test]
    fn parse_errors_locate_key() {
        let text = "data_dir = \"d\"\n\n[limits]\nmax_depth = 5\nbogus = 1\n";
        let e = parse_str(text, Some(Path::new("x.toml"))).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("x.toml:5:1: limits.bogus: unknown field `bogus`"),
            "{s}"
        );
        assert!(s.contains("expected one of"), "{s}");

        let text = "[[vhost]]\ndomain = \"a.org\"\n[[vhost]]\ndomain = 5\n";
        let s = parse_str(text, None).unwrap_err().to_string();
        assert!(s.starts_with("<config>:4:10: vhost[1].domain: "), "{s}");

        let text = "log_level = \"info\"\nsurprise = true\n";
        let e = parse_str(text, None).unwrap_err();
        assert_eq!(e.key(), Some("surprise"));

        let text = "[c2s]\nscram_iterations = \"many\"\n";
        let s = parse_str(text, None).unwrap_err().to_string();
        assert!(s.contains("c2s.scram_iterations"), "{s}");

        let text = "vhost = [{domain=\"a\", foo=1}]\n";
        let e = parse_str(text, None).unwrap_err();
        assert_eq!(e.key(), Some("vhost.foo"), "{e}");

        let text = "[limits\n";
        let s = parse_str(text, None).unwrap_err().to_string();
        assert!(s.starts_with("<config>:1:"), "{s}");
    }

    #[test]
    fn load_file_reports_missing_file() {
        let e = load_file(Path::new("/nonexistent/xmppd.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/xmppd.toml: cannot read: "),
            "{e}"
        );
    }
}
