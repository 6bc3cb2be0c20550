//! Import of a Prosody data dir written by its `internal` storage (the default):
//! `<data>/<host>/accounts/<user>.dat`, `roster/`, `offline/`, `vcard/`, `private/`, `pep/`,
//! `pep_<node>/` and `archive/` (`.list` files), path components %-encoded. The files are
//! Lua, read by the bounded parser in [`super::lua`]; nothing is executed.
//!
//! Passwords: `internal_hashed` keeps SCRAM-SHA-1 verifiers (hex keys, the salt as a
//! string), which become SHA-1-only credentials: SCRAM-SHA-1 and PLAIN work with the old
//! password at once. `internal_plain` keeps the password, from which both sets are derived.

use std::path::{Path, PathBuf};

use super::lua::{self, Table, Value};
use super::{ArchiveEntry, Limits, MigrateError, PepNode, UserData};
use crate::addr::{self, BareJid};
use crate::sasl::credentials::{ScramCredentials, StoredCredentials};
use crate::storage::{NodeRecord, RosterItem, StoredItem, Subscription};
use crate::xml::{Element, Node, ns};

/// Prosody's path encoding: every byte outside `[A-Za-z0-9]` as `%xx`.
pub fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Options of a Prosody import.
pub struct ProsodyImport<'a> {
    pub data_dir: &'a Path,
    /// Hosts to import (`None`: every host directory with accounts).
    pub hosts: Option<Vec<String>>,
    /// PBKDF2 iterations for accounts whose password is stored in clear.
    pub iterations: u32,
    pub limits: Limits,
}

/// Reads every account of the selected hosts with its data. Any unreadable or malformed
/// file is an error (nothing has been written yet).
pub fn read(
    opts: &ProsodyImport<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<UserData>, MigrateError> {
    let mut users = Vec::new();
    let entries = list_dir(opts.data_dir)?;
    for host_dir in entries {
        let Some(name) = host_dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(host) = decode_component(name) else {
            continue;
        };
        if !host_dir.join("accounts").is_dir() {
            continue;
        }
        if let Some(wanted) = &opts.hosts
            && !wanted.iter().any(|h| h == &host)
        {
            continue;
        }
        read_host(opts, &host_dir, &host, &mut users, warnings)?;
    }
    Ok(users)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, MigrateError> {
    let rd = std::fs::read_dir(dir).map_err(|e| MigrateError::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        out.push(e.map_err(|e| MigrateError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn read_host(
    opts: &ProsodyImport<'_>,
    dir: &Path,
    host: &str,
    users: &mut Vec<UserData>,
    warnings: &mut Vec<String>,
) -> Result<(), MigrateError> {
    // `pep_<node>` directories hold the items of each node.
    let mut pep_dirs = Vec::new();
    for d in list_dir(dir)? {
        if let Some(store) = d
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(decode_component)
            && let Some(node) = store.strip_prefix("pep_")
        {
            pep_dirs.push((node.to_string(), d));
        }
    }
    for file in list_dir(&dir.join("accounts"))? {
        let Some(stem) = file_stem(&file, "dat") else {
            continue;
        };
        let Some(node) = decode_component(&stem) else {
            warnings.push(format!("{}: undecodable file name", file.display()));
            continue;
        };
        let Some(jid) = addr::parse_bare(&format!("{node}@{host}")).filter(|j| j.node().is_some())
        else {
            warnings.push(format!("{node}@{host}: not a valid JID, skipped"));
            continue;
        };
        let at = |p: &Path| p.display().to_string();
        let account = read_dat(&file, &opts.limits)?;
        let Some(creds) = credentials(&account, opts.iterations)
            .map_err(|m| MigrateError::invalid(at(&file), m))?
        else {
            warnings.push(format!(
                "{jid}: no usable password or SCRAM verifiers, skipped"
            ));
            continue;
        };
        let mut user = UserData::new(jid.clone(), creds);
        let userfile = |store: &str, ext: &str| dir.join(store).join(format!("{stem}.{ext}"));
        let f = userfile("roster", "dat");
        if f.exists() {
            read_roster(&read_dat(&f, &opts.limits)?, &mut user, warnings);
        }
        let f = userfile("offline", "list");
        if f.exists() {
            for item in read_list(&f, &opts.limits)? {
                let el = stanza(&item, ns::CLIENT).map_err(|m| MigrateError::invalid(at(&f), m))?;
                let when = item.as_table().map_or_else(super::now_secs, when_secs);
                user.offline.push((when, el.to_stanza_string()));
            }
        }
        let f = userfile("vcard", "dat");
        if f.exists() {
            let v = read_dat(&f, &opts.limits)?;
            if v != Value::Nil {
                let el = stanza(&v, "vcard-temp").map_err(|m| MigrateError::invalid(at(&f), m))?;
                user.vcard = Some(el.to_stanza_string());
            }
        }
        let f = userfile("private", "dat");
        if f.exists()
            && let Value::Table(t) = read_dat(&f, &opts.limits)?
        {
            for (_, v) in &t.map {
                let el = stanza(v, "").map_err(|m| MigrateError::invalid(at(&f), m))?;
                user.private
                    .push((super::private_key(&el.ns, &el.name), el.to_stanza_string()));
            }
        }
        let f = userfile("pep", "dat");
        if f.exists()
            && let Value::Table(t) = read_dat(&f, &opts.limits)?
        {
            for (k, v) in &t.map {
                let (Some(name), Some(cfg)) = (k.as_string(), v.as_table()) else {
                    continue;
                };
                let mut node = PepNode {
                    name: name.clone(),
                    record: node_record(cfg),
                    items: Vec::new(),
                };
                if let Some((_, d)) = pep_dirs.iter().find(|(n, _)| *n == name) {
                    let items_file = d.join(format!("{stem}.list"));
                    if items_file.exists() {
                        for it in read_list(&items_file, &opts.limits)? {
                            node.items.push(
                                pep_item(&it, &jid)
                                    .map_err(|m| MigrateError::invalid(at(&items_file), m))?,
                            );
                        }
                    }
                }
                user.pep.push(node);
            }
        }
        if user.vcard.is_none() {
            // mod_vcard_legacy keeps the vCard as a vCard4 PEP item only.
            user.vcard = user
                .pep
                .iter()
                .find(|n| n.name == "urn:xmpp:vcard4")
                .and_then(|n| n.items.last())
                .and_then(|i| crate::xml::parse_stanza(&i.payload).ok())
                .map(|v4| vcard4_to_temp(&v4).to_stanza_string());
        }
        let f = userfile("archive", "list");
        if f.exists() {
            for item in read_list(&f, &opts.limits)? {
                user.archive
                    .push(archive_entry(&item).map_err(|m| MigrateError::invalid(at(&f), m))?);
            }
        }
        users.push(user);
    }
    Ok(())
}

fn file_stem(path: &Path, ext: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(&format!(".{ext}")).map(str::to_string)
}

fn read_dat(path: &Path, limits: &Limits) -> Result<Value, MigrateError> {
    let bytes = super::read_bounded(path, limits.max_file_bytes)?;
    lua::parse_dat(&bytes)
        .map_err(|e| MigrateError::invalid(path.display().to_string(), e.to_string()))
}

fn read_list(path: &Path, limits: &Limits) -> Result<Vec<Value>, MigrateError> {
    let bytes = super::read_bounded(path, limits.max_file_bytes)?;
    lua::parse_list(&bytes)
        .map_err(|e| MigrateError::invalid(path.display().to_string(), e.to_string()))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `Ok(None)`: the account has neither verifiers nor a password.
fn credentials(account: &Value, iterations: u32) -> Result<Option<StoredCredentials>, String> {
    let Some(t) = account.as_table() else {
        return Err("an account file must hold a table".into());
    };
    if let (Some(stored), Some(server), Some(salt), Some(iter)) = (
        t.str("stored_key"),
        t.str("server_key"),
        t.get("salt"),
        t.num("iteration_count"),
    ) {
        let (Some(stored_key), Some(server_key)) = (hex(&stored), hex(&server)) else {
            return Err("stored_key/server_key are not hex".into());
        };
        let Value::Str(salt) = salt else {
            return Err("salt is not a string".into());
        };
        if stored_key.len() != 20 || server_key.len() != 20 || salt.is_empty() {
            return Err("SCRAM-SHA-1 keys must be 20 bytes and the salt non-empty".into());
        }
        if !(1.0..=u32::MAX as f64).contains(&iter) || iter.fract() != 0.0 {
            return Err("iteration_count out of range".into());
        }
        return Ok(Some(StoredCredentials::sha1_only(ScramCredentials {
            salt: salt.clone(),
            iterations: iter as u32,
            stored_key,
            server_key,
        })));
    }
    if let Some(pw) = t.str("password") {
        return StoredCredentials::from_password(&pw, iterations)
            .map(Some)
            .map_err(|_| "the stored password fails SASLprep".into());
    }
    Ok(None)
}

fn read_roster(v: &Value, user: &mut UserData, warnings: &mut Vec<String>) {
    let Some(t) = v.as_table() else { return };
    for (k, item) in &t.map {
        match (k, item) {
            // Roster metadata: version and pending incoming subscriptions.
            (Value::Bool(false), Value::Table(meta)) => {
                if let Some(p) = meta.table("pending") {
                    for (from, _) in &p.map {
                        if let Some(j) = from.as_string().and_then(|s| addr::parse_bare(&s)) {
                            user.pending_in.push(j);
                        }
                    }
                }
            }
            (Value::Str(_), Value::Table(it)) => {
                let Some(jid) = k.as_string().and_then(|s| addr::parse_bare(&s)) else {
                    warnings.push(format!("{}: roster item with a bad JID skipped", user.jid));
                    continue;
                };
                let mut r = RosterItem::new(jid);
                r.name = it.str("name").filter(|n| !n.is_empty());
                r.subscription = match it.str("subscription").as_deref() {
                    Some("both") => Subscription::Both,
                    Some("to") => Subscription::To,
                    Some("from") => Subscription::From,
                    _ => Subscription::None,
                };
                r.ask = it.str("ask").as_deref() == Some("subscribe");
                if let Some(g) = it.table("groups") {
                    r.groups = g.map.iter().filter_map(|(k, _)| k.as_string()).collect();
                    r.groups.sort();
                }
                user.roster.push(r);
            }
            _ => {}
        }
    }
    user.roster
        .sort_by(|a, b| a.jid.as_str().cmp(b.jid.as_str()));
}

/// A stanza as Prosody serializes it (`{ name = …, attr = {…}, child or text… }`). `parent_ns`
/// is the namespace in scope (`""`: the element must declare its own).
pub fn stanza(v: &Value, parent_ns: &str) -> Result<Element, String> {
    stanza_at(v, parent_ns, 0)
}

fn stanza_at(v: &Value, parent_ns: &str, depth: usize) -> Result<Element, String> {
    if depth > lua::MAX_DEPTH {
        return Err("stanza nested too deeply".into());
    }
    let t = v.as_table().ok_or("a stanza must be a table")?;
    let name = t.str("name").ok_or("a stanza without a name")?;
    let mut el_ns = parent_ns.to_string();
    let mut attrs = Vec::new();
    if let Some(a) = t.table("attr") {
        for (k, v) in &a.map {
            let (Some(k), Some(v)) = (k.as_string(), v.as_string()) else {
                return Err("attribute names and values must be strings".into());
            };
            match k.as_str() {
                "xmlns" => el_ns = v,
                // Added by Prosody's archive store, not part of the stanza.
                "stamp" => {}
                _ => attrs.push((k, v)),
            }
        }
    }
    if el_ns.is_empty() {
        return Err(format!("element <{name}> has no namespace"));
    }
    let mut el = Element::new(name, el_ns.clone());
    el.attrs = attrs;
    for child in &t.array {
        match child {
            Value::Str(_) => {
                let text = child.as_string().ok_or("text is not UTF-8")?;
                el.children.push(Node::Text(text));
            }
            Value::Table(_) => el.push_child(stanza_at(child, &el_ns, depth + 1)?),
            _ => return Err("a stanza child must be text or an element".into()),
        }
    }
    Ok(el)
}

fn item_table(v: &Value) -> Result<&Table, String> {
    v.as_table()
        .ok_or_else(|| "a list item must be a table".to_string())
}

fn when_secs(t: &Table) -> u64 {
    t.num("when")
        .filter(|w| w.is_finite() && *w >= 0.0)
        .map(|w| w as u64)
        .unwrap_or_else(super::now_secs)
}

fn archive_entry(v: &Value) -> Result<ArchiveEntry, String> {
    let t = item_table(v)?;
    let el = stanza(v, ns::CLIENT)?;
    let with = t
        .str("with")
        .filter(|w| !w.is_empty() && !w.contains('\0'))
        .ok_or("an archived message without `with`")?;
    let micros = t
        .num("when")
        .filter(|w| w.is_finite() && *w >= 0.0)
        .map(|w| (w * 1e6) as u64)
        .ok_or("an archived message without `when`")?;
    Ok(ArchiveEntry {
        micros,
        with,
        stanza: el.to_stanza_string(),
    })
}

fn pep_item(v: &Value, owner: &BareJid) -> Result<StoredItem, String> {
    let t = item_table(v)?;
    let payload = stanza(v, "")?;
    Ok(StoredItem {
        id: t.str("key").ok_or("a PEP item without an id")?,
        publisher: t
            .str("with")
            .and_then(|w| addr::parse_bare(&w))
            .unwrap_or_else(|| owner.clone())
            .to_string(),
        payload: payload.to_stanza_string(),
        published_at: when_secs(t),
    })
}

/// Prosody's node options (`access_model`, `max_items`, …) as `pubsub#` options; the
/// pubsub module ignores those it does not know.
fn node_record(node: &Table) -> NodeRecord {
    let mut record = NodeRecord::default();
    if let Some(cfg) = node.table("config") {
        for (k, v) in &cfg.map {
            let Some(k) = k.as_string().filter(|k| !k.starts_with('_')) else {
                continue;
            };
            let value = match v {
                Value::Str(_) => v.as_string(),
                Value::Bool(b) => Some(if *b { "true" } else { "false" }.to_string()),
                Value::Num(n) if n.fract() == 0.0 => Some(format!("{}", *n as i64)),
                _ => None,
            };
            if let Some(value) = value {
                record.config.push((format!("pubsub#{k}"), value));
            }
        }
    }
    record
}

/// The fields of a vCard4 (RFC 6351 as XML, XEP-0292) that vcard-temp has too.
pub fn vcard4_to_temp(v4: &Element) -> Element {
    const V4: &str = "urn:ietf:params:xml:ns:vcard-4.0";
    let mut out = Element::new("vCard", "vcard-temp");
    let text = |el: &Element| {
        el.elements()
            .find(|c| matches!(c.name.as_str(), "text" | "uri"))
            .map(|c| c.text())
    };
    for field in v4.elements().filter(|e| e.ns == V4) {
        match field.name.as_str() {
            "fn" | "nickname" | "note" | "bday" | "url" => {
                let name = field.name.to_uppercase();
                if let Some(t) = text(field).filter(|t| !t.is_empty()) {
                    out.push_child(Element::new(name, "vcard-temp").with_text(t));
                }
            }
            "n" => {
                let mut n = Element::new("N", "vcard-temp");
                for (v4n, tn) in [
                    ("surname", "FAMILY"),
                    ("given", "GIVEN"),
                    ("additional", "MIDDLE"),
                    ("prefix", "PREFIX"),
                    ("suffix", "SUFFIX"),
                ] {
                    if let Some(t) = field.elements().find(|c| c.name == v4n).map(|c| c.text())
                        && !t.is_empty()
                    {
                        n.push_child(Element::new(tn, "vcard-temp").with_text(t));
                    }
                }
                if n.elements().next().is_some() {
                    out.push_child(n);
                }
            }
            "email" => {
                if let Some(t) = text(field) {
                    out.push_child(
                        Element::new("EMAIL", "vcard-temp")
                            .with_child(Element::new("USERID", "vcard-temp").with_text(t)),
                    );
                }
            }
            "tel" => {
                if let Some(t) = text(field) {
                    let t = t.strip_prefix("tel:").unwrap_or(&t).to_string();
                    out.push_child(
                        Element::new("TEL", "vcard-temp")
                            .with_child(Element::new("NUMBER", "vcard-temp").with_text(t)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_encoding_round_trips() {
        assert_eq!(encode_component("prosody.example"), "prosody%2eexample");
        assert_eq!(
            decode_component("pep_urn%3aexample%3amood").unwrap(),
            "pep_urn:example:mood"
        );
        assert_eq!(decode_component("bad%zz"), None);
        assert_eq!(decode_component("trunc%2"), None);
    }

    #[test]
    fn stanza_tables_become_elements() {
        let v = lua::parse_dat(
            br#"return { { "hi"; name = "body"; attr = {}; };
              name = "message"; attr = { to = "a@b"; stamp = "x"; ["xml:lang"] = "en" }; };"#,
        )
        .unwrap();
        let el = stanza(&v, ns::CLIENT).unwrap();
        assert_eq!(
            el.to_stanza_string(),
            "<message to='a@b' xml:lang='en'><body>hi</body></message>"
        );
        let no_ns = lua::parse_dat(br#"return { name = "x"; attr = {} }"#).unwrap();
        assert!(stanza(&no_ns, "").is_err());
    }

    #[test]
    fn account_files_give_credentials() {
        let v = lua::parse_dat(
            br#"return { ["iteration_count"] = 4096; ["salt"] = "s";
              ["server_key"] = "0fe09258b3ac852ba502cc62ba903eaacdbf7d31";
              ["stored_key"] = "e9d94660c39d65c38fbad91c358f14da0eef2bd6"; };"#,
        )
        .unwrap();
        let c = credentials(&v, 4096).unwrap().unwrap();
        assert!(!c.has_sha256());
        let bad = lua::parse_dat(
            br#"return { iteration_count = 4096; salt = "s"; server_key = "zz"; stored_key = "e9"; }"#,
        )
        .unwrap();
        assert!(credentials(&bad, 4096).is_err());
        let plain = lua::parse_dat(br#"return { password = "pw" }"#).unwrap();
        assert!(
            credentials(&plain, 4096)
                .unwrap()
                .unwrap()
                .verify_password("pw")
        );
    }
}
