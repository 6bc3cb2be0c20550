//! Bulk import and export, working on the stores directly (the server must be stopped:
//! sled locks its directory). Formats: XEP-0227 (import and export; ejabberd's
//! `export_piefxis` writes it), a Prosody `internal` data dir, and a users file.
//!
//! Every importer first reads and checks all of its input, then writes: a truncated or
//! malformed file is reported before anything is stored. An account that exists already
//! is left alone (reported), never merged into.

pub mod lua;
pub mod prosody;
pub mod users_file;
pub mod xep0227;

use std::path::{Path, PathBuf};

use crate::addr::BareJid;
use crate::sasl::credentials::StoredCredentials;
use crate::storage::{
    NewArchived, NodeRecord, RosterItem, Storage, StorageError, StoredItem, pubsub::CreateOutcome,
};

/// Bounds on what an import reads, whatever the input claims.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest file read whole (Prosody `.dat`/`.list` files, a users file).
    pub max_file_bytes: u64,
    /// Largest XML element kept in memory while streaming XEP-0227 (a vCard, a message,
    /// one roster).
    pub max_element_bytes: usize,
    /// Deepest XML or Lua nesting.
    pub max_depth: usize,
    /// Most bytes of one account's data held at once while reading XEP-0227 (its archive
    /// included): one user is stored at a time.
    pub max_user_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 256 << 20,
            max_element_bytes: 4 << 20,
            max_depth: 64,
            max_user_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad input: where (file and position) and what.
    #[error("{at}: {msg}")]
    Invalid { at: String, msg: String },
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl MigrateError {
    pub fn invalid(at: impl Into<String>, msg: impl Into<String>) -> Self {
        MigrateError::Invalid {
            at: at.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        MigrateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a whole file, refusing one above `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, MigrateError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| MigrateError::io(path, e))?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| MigrateError::io(path, e))?;
    if out.len() as u64 > max {
        return Err(MigrateError::invalid(
            path.display().to_string(),
            format!("larger than the limit of {max} bytes (raise it with --max-file-bytes)"),
        ));
    }
    Ok(out)
}

/// A PEP node with its items, oldest first.
#[derive(Clone, Debug, Default)]
pub struct PepNode {
    pub name: String,
    pub record: NodeRecord,
    pub items: Vec<StoredItem>,
}

/// One archived message.
#[derive(Clone, Debug)]
pub struct ArchiveEntry {
    pub micros: u64,
    pub with: String,
    pub stanza: String,
}

/// Everything imported for one account.
#[derive(Clone, Debug)]
pub struct UserData {
    pub jid: BareJid,
    pub creds: StoredCredentials,
    pub roster: Vec<RosterItem>,
    /// Contacts waiting for the user's answer to their subscription request.
    pub pending_in: Vec<BareJid>,
    /// (stored at, seconds since the epoch; message stanza serialized), oldest first.
    pub offline: Vec<(u64, String)>,
    pub vcard: Option<String>,
    /// (storage key `namespace\x1fname`, element XML).
    pub private: Vec<(String, String)>,
    pub pep: Vec<PepNode>,
    pub archive: Vec<ArchiveEntry>,
}

impl UserData {
    pub fn new(jid: BareJid, creds: StoredCredentials) -> Self {
        UserData {
            jid,
            creds,
            roster: Vec::new(),
            pending_in: Vec::new(),
            offline: Vec::new(),
            vcard: None,
            private: Vec::new(),
            pep: Vec::new(),
            archive: Vec::new(),
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub accounts: usize,
    /// Accounts with SCRAM-SHA-1 verifiers only (see `c2s.offer_scram_sha256`).
    pub sha1_only: usize,
    /// Accounts that existed already: left untouched.
    pub existing: Vec<String>,
    pub roster_items: usize,
    pub offline: usize,
    pub vcards: usize,
    pub private: usize,
    pub pep_nodes: usize,
    pub pep_items: usize,
    pub archived: usize,
    /// Things read but not imported (unknown data, an account without a password…).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for jid in &self.existing {
            writeln!(f, "skipped: {jid} exists already (left unchanged)")?;
        }
        write!(
            f,
            "imported {} account(s), {} roster item(s), {} offline message(s), {} vCard(s), \
             {} private element(s), {} PEP node(s) with {} item(s), {} archived message(s)",
            self.accounts,
            self.roster_items,
            self.offline,
            self.vcards,
            self.private,
            self.pep_nodes,
            self.pep_items,
            self.archived
        )?;
        if self.sha1_only > 0 {
            write!(
                f,
                "\n{} account(s) have SCRAM-SHA-1 verifiers only: they log in with SCRAM-SHA-1 \
                 or PLAIN; set c2s.offer_scram_sha256 = false so that clients choose those \
                 (a PLAIN login upgrades an account to SHA-256 as well)",
                self.sha1_only
            )?;
        }
        Ok(())
    }
}

/// Archive appends per batch (one flush each).
const ARCHIVE_BATCH: usize = 1000;

/// Stores one account and its data, unless the account exists (then nothing is written).
pub async fn write_user(
    storage: &Storage,
    user: &UserData,
    report: &mut Report,
) -> Result<(), MigrateError> {
    let jid = &user.jid;
    if !storage.accounts.create(jid, &user.creds).await? {
        report.existing.push(jid.to_string());
        return Ok(());
    }
    report.accounts += 1;
    if !user.creds.has_sha256() {
        report.sha1_only += 1;
    }
    for item in &user.roster {
        storage.roster.put_item(jid, item).await?;
        report.roster_items += 1;
    }
    for from in &user.pending_in {
        let pending = crate::storage::PendingSubscription {
            from: from.clone(),
            stanza: None,
        };
        storage.roster.add_pending_in(jid, &pending).await?;
    }
    for (stored_at, stanza) in &user.offline {
        // No quota: what the old server kept is kept.
        storage
            .offline
            .push_at(jid, stanza, *stored_at, usize::MAX)
            .await?;
        report.offline += 1;
    }
    if let Some(v) = &user.vcard {
        storage.profiles.set_vcard(jid.as_str(), Some(v)).await?;
        report.vcards += 1;
    }
    for (key, xml) in &user.private {
        storage
            .profiles
            .set_private(jid.as_str(), key, Some(xml), usize::MAX)
            .await?;
        report.private += 1;
    }
    for node in &user.pep {
        let service = jid.as_str();
        match storage
            .pubsub
            .create_node(service, &node.name, &node.record, usize::MAX)
            .await?
        {
            CreateOutcome::Created => report.pep_nodes += 1,
            _ => report
                .warnings
                .push(format!("{jid}: PEP node {} not created", node.name)),
        }
        for item in &node.items {
            storage
                .pubsub
                .publish(service, &node.name, item, usize::MAX)
                .await?;
            report.pep_items += 1;
        }
    }
    for chunk in user.archive.chunks(ARCHIVE_BATCH) {
        let batch: Vec<NewArchived<'_>> = chunk
            .iter()
            .map(|e| NewArchived {
                with: &e.with,
                stanza: e.stanza.as_str().into(),
                micros: e.micros,
            })
            .collect();
        storage.archive.append_many(jid, &batch).await?;
        report.archived += chunk.len();
    }
    Ok(())
}

/// Writes every user, then makes it durable.
pub async fn write_all(storage: &Storage, users: &[UserData]) -> Result<Report, MigrateError> {
    let mut report = Report::default();
    for u in users {
        write_user(storage, u, &mut report).await?;
    }
    storage.flush().await?;
    Ok(report)
}

/// Whether credentials let anyone log in at all.
pub(crate) fn usable(c: &StoredCredentials) -> bool {
    c.has_sha256() || (c.sha1.iterations > 0 && !c.sha1.salt.is_empty())
}

/// The storage key the private-XML module uses for an element.
pub(crate) fn private_key(ns: &str, name: &str) -> String {
    format!("{ns}\u{1f}{name}")
}

/// Seconds since the epoch, now.
pub(crate) use crate::datetime::now_secs;

/// What `xmppd import` reads.
#[derive(Debug, Clone)]
pub enum Source {
    Xep0227(PathBuf),
    Prosody {
        data_dir: PathBuf,
        hosts: Option<Vec<String>>,
    },
    Users(PathBuf),
}

/// Opens the configured database once, for a stopped server.
pub fn open_storage(cfg: &crate::config::Config) -> Result<Storage, String> {
    crate::admin::ensure_data_dir(&cfg.data_dir)
        .map_err(|e| format!("data_dir {}: {e}", cfg.data_dir.display()))?;
    crate::admin::open_storage_offline(cfg).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("lock") || msg.contains("in use") {
            format!(
                "{msg}\nThe database is in use: stop the server first (import and export work \
                 on the database directly)"
            )
        } else {
            msg
        }
    })
}

/// `xmppd import`: reads and checks all of `source`, then stores it.
pub async fn run_import(
    cfg: &crate::config::Config,
    source: &Source,
    limits: &Limits,
) -> Result<Report, String> {
    let vhosts: Vec<String> = cfg.vhosts.iter().map(|v| v.domain.clone()).collect();
    let domain_ok = |d: &str| vhosts.iter().any(|v| v == d);
    let iterations = cfg.c2s.scram_iterations;
    match source {
        Source::Xep0227(path) => {
            let storage = open_storage(cfg)?;
            xep0227::import(path, &storage, limits, iterations, &domain_ok)
                .await
                .map_err(|e| e.to_string())
        }
        Source::Prosody { data_dir, hosts } => {
            let opts = prosody::ProsodyImport {
                data_dir,
                hosts: hosts.clone(),
                iterations,
                limits: limits.clone(),
            };
            let mut warnings = Vec::new();
            let users = prosody::read(&opts, &mut warnings).map_err(|e| e.to_string())?;
            let unknown: std::collections::BTreeSet<String> = users
                .iter()
                .map(|u| u.jid.domain().to_string())
                .filter(|d| !domain_ok(d))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "host(s) not configured as vhosts: {} (add them, or pick hosts with --host)",
                    unknown.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            let storage = open_storage(cfg)?;
            let mut report = write_all(&storage, &users)
                .await
                .map_err(|e| e.to_string())?;
            warnings.append(&mut report.warnings);
            report.warnings = warnings;
            Ok(report)
        }
        Source::Users(path) => {
            let users = users_file::read(path, limits, iterations, &domain_ok)
                .map_err(|e| e.to_string())?;
            let storage = open_storage(cfg)?;
            write_all(&storage, &users).await.map_err(|e| e.to_string())
        }
    }
}

/// `xmppd export`: XEP-0227 to `output` (created 0600: it holds password verifiers) or
/// standard output.
pub async fn run_export(
    cfg: &crate::config::Config,
    domain: Option<&str>,
    output: Option<&Path>,
) -> Result<usize, String> {
    let storage = open_storage(cfg)?;
    match output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            xep0227::export(&storage, domain, &mut w)
                .await
                .map_err(|e| e.to_string())
        }
        None => {
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            xep0227::export(&storage, domain, &mut w)
                .await
                .map_err(|e| e.to_string())
        }
    }
}
