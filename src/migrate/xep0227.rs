//! XEP-0227 (Portable Import/Export Format) import and export.
//!
//! Import streams the file with quick-xml: only one user's data is held at a time, every
//! element kept is bounded (`Limits::max_element_bytes`, depth) and so is every single
//! read (a huge text node or tag is refused, not buffered). The file is read twice: first
//! to check all of it, then to store it, so a truncated or malformed file stores nothing.
//! Both namespaces are read: `urn:xmpp:pie:0` (what ejabberd and Prosody write, with
//! `<scram-credentials/>`) and the older `http://www.xmpp.org/extensions/xep-0227.html#ns`.
//! XInclude is not supported (an error says so).
//!
//! Export writes `urn:xmpp:pie:0`, one `<user/>` at a time, with SCRAM verifiers (never a
//! password, which xmppd does not have), roster, offline messages, vCard, private XML, PEP
//! nodes and items, and the message archive.

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use quick_xml::NsReader;
use quick_xml::events::Event;

use super::{ArchiveEntry, Limits, MigrateError, PepNode, Report, UserData};
use crate::addr::{self, BareJid};
use crate::sasl::credentials::{ScramCredentials, StoredCredentials};
use crate::storage::{ArchiveQuery, NodeRecord, RosterItem, Storage, StoredItem, Subscription};
use crate::xml::parser::{element_from_start, is_xml_char, push_text};
use crate::xml::{Element, Node, ParserLimits, ns};

pub const NS: &str = "urn:xmpp:pie:0";
pub const NS_OLD: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
pub const NS_MAM_ARCHIVE: &str = "urn:xmpp:pie:0#mam";
const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PRIVATE: &str = "jabber:iq:private";
const NS_VCARD: &str = "vcard-temp";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DATA: &str = "jabber:x:data";

/// Counts the bytes read since the last reset: one XML event larger than the budget is an
/// error instead of a buffer that grows without limit.
struct Budget<R> {
    inner: R,
    used: Arc<AtomicUsize>,
    max: usize,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.used.load(Ordering::Relaxed) > self.max {
            return Err(std::io::Error::other(format!(
                "an XML element larger than {} bytes (raise --max-element-bytes)",
                self.max
            )));
        }
        let n = self.inner.read(buf)?;
        self.used.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

fn is_pie(ns: &str) -> bool {
    ns == NS || ns == NS_OLD
}

/// Reads the file; `sink` gets each complete user (nothing for an invalid file's users
/// after the error).
async fn read_file<F>(
    path: &Path,
    limits: &Limits,
    iterations: u32,
    mut sink: F,
    report: &mut Report,
) -> Result<(), MigrateError>
where
    F: AsyncFnMut(UserData, &mut Report) -> Result<(), MigrateError>,
{
    let file = std::fs::File::open(path).map_err(|e| MigrateError::io(path, e))?;
    let used = Arc::new(AtomicUsize::new(0));
    let budget = Budget {
        inner: file,
        used: used.clone(),
        // Plus one buffer's worth: BufReader reads ahead.
        max: limits.max_element_bytes + 64 * 1024,
    };
    let mut reader = NsReader::from_reader(BufReader::new(budget));
    let plimits = ParserLimits {
        max_stanza_bytes: limits.max_element_bytes,
        max_depth: limits.max_depth,
        max_attributes: 64,
    };
    let at =
        |reader: &NsReader<_>| format!("{} at byte {}", path.display(), reader.buffer_position());
    let mut buf = Vec::new();
    // Open containers: (local name, namespace).
    let mut path_stack: Vec<(String, String)> = Vec::new();
    let mut host: Option<String> = None;
    let mut user: Option<PendingUser> = None;
    // A subtree being collected at depth 4+ (user children, or children of containers).
    let mut tree: Vec<Element> = Vec::new();
    let mut tree_bytes = 0usize;
    let mut seen_root = false;
    loop {
        buf.clear();
        used.store(0, Ordering::Relaxed);
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("end of input") {
                msg.push_str(" (the file is truncated?)");
            }
            MigrateError::invalid(at(&reader), msg)
        })?;
        let invalid = |msg: &str| MigrateError::invalid(at(&reader), msg.to_string());
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                let empty = matches!(event, Event::Empty(_));
                let el = element_from_start(s, reader.resolver(), &plimits)
                    .map_err(|e| invalid(&e.to_string()))?;
                if el.ns == NS_XINCLUDE {
                    return Err(invalid(
                        "XInclude is not supported: merge the files into one first",
                    ));
                }
                if !tree.is_empty() || collects(&path_stack, &el) {
                    tree_bytes += el.approx_bytes();
                    if tree_bytes > limits.max_element_bytes {
                        return Err(invalid("an element is larger than --max-element-bytes"));
                    }
                    if tree.len() >= limits.max_depth {
                        return Err(invalid("elements nested too deeply"));
                    }
                    if empty {
                        finish_element(el, &mut tree, &mut user, &path_stack)
                            .map_err(|m| invalid(&m))?;
                        if tree.is_empty() {
                            tree_bytes = 0;
                        }
                    } else {
                        tree.push(el);
                    }
                    continue;
                }
                match (path_stack.len(), el.name.as_str()) {
                    (0, "server-data") if is_pie(&el.ns) => seen_root = true,
                    (0, _) => {
                        return Err(invalid(
                            "the root element must be <server-data/> (XEP-0227)",
                        ));
                    }
                    (1, "host") if is_pie(&el.ns) => {
                        let jid = el
                            .attr("jid")
                            .ok_or_else(|| invalid("<host/> without jid"))?;
                        let domain = addr::parse_bare(jid)
                            .filter(|j| j.node().is_none())
                            .ok_or_else(|| invalid("<host/> jid is not a domain"))?;
                        host = Some(domain.to_string());
                    }
                    (2, "user") if is_pie(&el.ns) => {
                        let name = el
                            .attr("name")
                            .ok_or_else(|| invalid("<user/> without name"))?;
                        let domain = host.as_deref().unwrap_or_default();
                        let jid = addr::parse_bare(&format!("{name}@{domain}"))
                            .filter(|j| j.node().is_some())
                            .ok_or_else(|| invalid("<user/> name is not a valid JID node"))?;
                        user = Some(PendingUser {
                            jid,
                            password: el
                                .attr("password")
                                .map(|p| zeroize::Zeroizing::new(p.to_string())),
                            sha1: None,
                            sha256: None,
                            data: None,
                            warnings: Vec::new(),
                            bytes: 0,
                            max_bytes: limits.max_user_bytes,
                        });
                    }
                    // A container whose children are read one by one.
                    (3, "offline-messages") if is_pie(&el.ns) => {}
                    (3, "archive") if el.ns == NS_MAM_ARCHIVE => {}
                    _ => {
                        report.warnings.push(format!(
                            "{}: <{} xmlns='{}'/> not understood, skipped",
                            at(&reader),
                            el.name,
                            el.ns
                        ));
                        skip(&mut reader, empty, &used, &at)?;
                        continue;
                    }
                }
                if !empty {
                    path_stack.push((el.name, el.ns));
                } else if path_stack.len() == 2
                    && el.name == "user"
                    && let Some(u) = user.take()
                {
                    sink(u.finish(iterations, report)?, report).await?;
                }
            }
            Event::End(_) => {
                if let Some(el) = tree.pop() {
                    finish_element(el, &mut tree, &mut user, &path_stack)
                        .map_err(|m| invalid(&m))?;
                    if tree.is_empty() {
                        tree_bytes = 0;
                    }
                    continue;
                }
                let Some((name, _)) = path_stack.pop() else {
                    return Err(invalid("unexpected end tag"));
                };
                if path_stack.len() == 2
                    && name == "user"
                    && let Some(u) = user.take()
                {
                    sink(u.finish(iterations, report)?, report).await?;
                }
            }
            Event::Text(t) => {
                if let Some(top) = tree.last_mut() {
                    let text = t.xml10_content();
                    tree_bytes += text.len();
                    if tree_bytes > limits.max_element_bytes {
                        return Err(invalid("an element is larger than --max-element-bytes"));
                    }
                    push_text(top, &text);
                } else if !t.xml10_content().trim().is_empty() {
                    return Err(invalid("text outside of any data element"));
                }
            }
            Event::CData(t) => {
                let top = tree
                    .last_mut()
                    .ok_or_else(|| invalid("CDATA outside of any data element"))?;
                let text = t.xml10_content();
                tree_bytes += text.len();
                push_text(top, &text);
            }
            Event::GeneralRef(r) => {
                let top = tree
                    .last_mut()
                    .ok_or_else(|| invalid("a reference outside of any data element"))?;
                let mut utf8 = [0u8; 4];
                let text: &str = match r.resolve_char_ref().map_err(|e| invalid(&e.to_string()))? {
                    Some(c) if is_xml_char(c) => c.encode_utf8(&mut utf8),
                    Some(_) => return Err(invalid("reference to a non-XML character")),
                    None => match r.as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "apos" => "'",
                        "quot" => "\"",
                        _ => return Err(invalid("reference to an undeclared entity")),
                    },
                };
                push_text(top, text);
            }
            Event::DocType(_) => return Err(invalid("DOCTYPE is not allowed")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !seen_root || !path_stack.is_empty() || !tree.is_empty() {
        return Err(MigrateError::invalid(
            path.display().to_string(),
            "the file ends before </server-data> (truncated?)",
        ));
    }
    Ok(())
}

/// Skips an element not understood, with the same bounds.
fn skip<R: std::io::BufRead>(
    reader: &mut NsReader<R>,
    empty: bool,
    used: &AtomicUsize,
    at: &dyn Fn(&NsReader<R>) -> String,
) -> Result<(), MigrateError> {
    if empty {
        return Ok(());
    }
    let mut depth = 1usize;
    let mut buf = Vec::new();
    while depth > 0 {
        buf.clear();
        used.store(0, Ordering::Relaxed);
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| MigrateError::invalid(at(reader), e.to_string()))?
        {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            Event::Eof => {
                return Err(MigrateError::invalid(
                    at(reader),
                    "truncated inside an element",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether an element starting under `stack` is data kept whole.
fn collects(stack: &[(String, String)], el: &Element) -> bool {
    match stack.len() {
        // Containers are read child by child, so their size is not bounded as one.
        3 => {
            !((el.name == "offline-messages" && is_pie(&el.ns))
                || (el.name == "archive" && el.ns == NS_MAM_ARCHIVE))
        }
        4 => matches!(stack[3].0.as_str(), "offline-messages" | "archive"),
        _ => false,
    }
}

/// Attaches a finished element to its parent, or hands a complete one to the user.
fn finish_element(
    el: Element,
    tree: &mut [Element],
    user: &mut Option<PendingUser>,
    stack: &[(String, String)],
) -> Result<(), String> {
    if let Some(parent) = tree.last_mut() {
        parent.children.push(Node::Element(el));
        return Ok(());
    }
    let u = user.as_mut().ok_or("data outside of a <user/>")?;
    let container = stack.get(3).map(|(n, _)| n.as_str());
    u.take(el, container)
}

struct PendingUser {
    jid: BareJid,
    password: Option<zeroize::Zeroizing<String>>,
    sha1: Option<ScramCredentials>,
    sha256: Option<ScramCredentials>,
    data: Option<UserData>,
    warnings: Vec<String>,
    /// Bytes of data held so far, against `Limits::max_user_bytes`.
    bytes: usize,
    max_bytes: usize,
}

impl PendingUser {
    fn data(&mut self) -> &mut UserData {
        let jid = self.jid.clone();
        self.data.get_or_insert_with(|| {
            // Credentials are filled in by `finish`.
            UserData::new(jid, StoredCredentials::sha1_only(empty_creds()))
        })
    }

    fn take(&mut self, el: Element, container: Option<&str>) -> Result<(), String> {
        self.bytes += el.approx_bytes();
        if self.bytes > self.max_bytes {
            return Err(format!(
                "the data of {} exceeds --max-user-bytes ({})",
                self.jid, self.max_bytes
            ));
        }
        match container {
            Some("offline-messages") => {
                if el.is("message", ns::CLIENT) || el.is("message", "jabber:server") {
                    let mut el = el;
                    el.ns = ns::CLIENT.into();
                    let host = self.jid.domain().to_string();
                    let stored_at = take_offline_delay(&mut el, &host);
                    self.data().offline.push((stored_at, el.to_stanza_string()));
                }
                return Ok(());
            }
            Some("archive") => {
                let e = archive_entry(&el, &self.jid)?;
                self.data().archive.push(e);
                return Ok(());
            }
            _ => {}
        }
        match (el.name.as_str(), el.ns.as_str()) {
            ("scram-credentials", NS_SCRAM) => {
                let get = |n: &str| el.child_text(n, NS_SCRAM).map(|t| t.trim().to_string());
                let iterations: u32 = get("iter-count")
                    .and_then(|t| t.parse().ok())
                    .filter(|i| *i > 0)
                    .ok_or("scram-credentials: bad iter-count")?;
                let dec = |n: &str| {
                    get(n)
                        .and_then(|t| B64.decode(t).ok())
                        .ok_or_else(|| format!("scram-credentials: bad {n}"))
                };
                let c = ScramCredentials {
                    salt: dec("salt")?,
                    iterations,
                    stored_key: dec("stored-key")?,
                    server_key: dec("server-key")?,
                };
                let len = match el.attr("mechanism") {
                    Some("SCRAM-SHA-1") => 20,
                    Some("SCRAM-SHA-256") => 32,
                    // Other hashes (SHA-512) are of no use here; another set may follow.
                    _ => return Ok(()),
                };
                if c.salt.is_empty() || c.stored_key.len() != len || c.server_key.len() != len {
                    return Err("scram-credentials: keys of the wrong length".into());
                }
                if len == 20 {
                    self.sha1 = Some(c);
                } else {
                    self.sha256 = Some(c);
                }
            }
            ("query", NS_ROSTER) => {
                for item in el.elements().filter(|i| i.is("item", NS_ROSTER)) {
                    let jid = item
                        .attr("jid")
                        .and_then(addr::parse_bare)
                        .ok_or("roster item with a bad jid")?;
                    let mut r = RosterItem::new(jid);
                    r.name = item
                        .attr("name")
                        .filter(|n| !n.is_empty())
                        .map(str::to_string);
                    r.subscription = match item.attr("subscription") {
                        Some("both") => Subscription::Both,
                        Some("to") => Subscription::To,
                        Some("from") => Subscription::From,
                        _ => Subscription::None,
                    };
                    r.ask = item.attr("ask") == Some("subscribe");
                    r.approved = item.attr("approved") == Some("true");
                    r.groups = item
                        .elements()
                        .filter(|g| g.is("group", NS_ROSTER))
                        .map(|g| g.text())
                        .filter(|g| !g.is_empty())
                        .collect();
                    self.data().roster.push(r);
                }
            }
            ("vCard", NS_VCARD) => self.data().vcard = Some(el.to_stanza_string()),
            ("query", NS_PRIVATE) => {
                for child in el.elements() {
                    let key = super::private_key(&child.ns, &child.name);
                    self.data().private.push((key, child.to_stanza_string()));
                }
            }
            ("pubsub", NS_PUBSUB_OWNER) => {
                for cfg in el.elements().filter(|c| c.name == "configure") {
                    let node = cfg.attr("node").ok_or("<configure/> without node")?;
                    let record = node_record(cfg);
                    let d = self.data();
                    match d.pep.iter_mut().find(|n| n.name == node) {
                        Some(n) => n.record = record,
                        None => d.pep.push(PepNode {
                            name: node.to_string(),
                            record,
                            items: Vec::new(),
                        }),
                    }
                }
            }
            ("pubsub", NS_PUBSUB) => {
                let owner = self.jid.to_string();
                for items in el.elements().filter(|c| c.name == "items") {
                    let node = items.attr("node").ok_or("<items/> without node")?;
                    let mut list = Vec::new();
                    for item in items.elements().filter(|i| i.name == "item") {
                        let payload = item.elements().next().ok_or("a PEP item without payload")?;
                        list.push(StoredItem {
                            id: item.attr("id").ok_or("a PEP item without id")?.to_string(),
                            publisher: item.attr("publisher").unwrap_or(&owner).to_string(),
                            payload: payload.to_stanza_string(),
                            published_at: super::now_secs(),
                        });
                    }
                    let d = self.data();
                    match d.pep.iter_mut().find(|n| n.name == node) {
                        Some(n) => n.items.extend(list),
                        None => d.pep.push(PepNode {
                            name: node.to_string(),
                            record: NodeRecord::default(),
                            items: list,
                        }),
                    }
                }
            }
            (name, ns) => self.warnings.push(format!(
                "{}: <{name} xmlns='{ns}'/> not understood, skipped",
                self.jid
            )),
        }
        Ok(())
    }

    fn finish(mut self, iterations: u32, report: &mut Report) -> Result<UserData, MigrateError> {
        report.warnings.append(&mut self.warnings);
        let jid = self.jid.to_string();
        let creds = match (self.sha1.take(), self.sha256.take(), self.password.take()) {
            (Some(sha1), Some(sha256), _) => StoredCredentials { sha1, sha256 },
            // A password in clear is better than one hash: both sets from it.
            (_, _, Some(pw)) => {
                StoredCredentials::from_password(&pw, iterations).map_err(|_| {
                    MigrateError::invalid(jid.clone(), "the password is empty or fails SASLprep")
                })?
            }
            (Some(sha1), None, None) => StoredCredentials::sha1_only(sha1),
            (None, Some(sha256), None) => {
                report.warnings.push(format!(
                    "{jid}: SCRAM-SHA-256 verifiers only; imported, but SCRAM-SHA-1 fails \
                     for it until a password is set"
                ));
                StoredCredentials {
                    sha1: empty_creds(),
                    sha256,
                }
            }
            (None, None, None) => StoredCredentials::sha1_only(empty_creds()),
        };
        let mut data = self
            .data
            .take()
            .unwrap_or_else(|| UserData::new(self.jid.clone(), creds.clone()));
        data.creds = creds;
        Ok(data)
    }
}

/// Removes the old server's offline-storage `<delay/>` (from the host, or without `from`)
/// and returns its time: the message is stored as of then, and the offline module stamps it
/// again at delivery. Without one: now.
fn take_offline_delay(msg: &mut Element, host: &str) -> u64 {
    let pos = msg.children.iter().position(|c| match c {
        Node::Element(d) => d.is("delay", ns::DELAY) && d.attr("from").is_none_or(|f| f == host),
        _ => false,
    });
    let Some(pos) = pos else {
        return super::now_secs();
    };
    let stamp = match &msg.children[pos] {
        Node::Element(d) => d.attr("stamp").and_then(crate::modules::mam::parse_stamp),
        _ => None,
    };
    match stamp {
        Some(micros) => {
            msg.children.remove(pos);
            micros / 1_000_000
        }
        None => super::now_secs(),
    }
}

fn empty_creds() -> ScramCredentials {
    ScramCredentials {
        salt: Vec::new(),
        iterations: 0,
        stored_key: Vec::new(),
        server_key: Vec::new(),
    }
}

fn node_record(configure: &Element) -> NodeRecord {
    let mut record = NodeRecord::default();
    if let Some(x) = configure.child("x", NS_DATA) {
        for f in x.elements().filter(|f| f.name == "field") {
            let Some(var) = f.attr("var").filter(|v| *v != "FORM_TYPE") else {
                continue;
            };
            let values: Vec<String> = f
                .elements()
                .filter(|v| v.name == "value")
                .map(|v| v.text())
                .collect();
            record.config.push((var.to_string(), values.join("\n")));
        }
    }
    record
}

/// `<result xmlns='urn:xmpp:mam:2'><forwarded><delay stamp/><message/></forwarded></result>`.
fn archive_entry(result: &Element, user: &BareJid) -> Result<ArchiveEntry, String> {
    let fwd = result
        .child("forwarded", NS_FORWARD)
        .ok_or("archive <result/> without <forwarded/>")?;
    let micros = fwd
        .child("delay", ns::DELAY)
        .and_then(|d| d.attr("stamp"))
        .and_then(crate::modules::mam::parse_stamp)
        .ok_or("archived message without a valid delay stamp")?;
    let msg = fwd
        .elements()
        .find(|m| m.name == "message" && (m.ns == ns::CLIENT || m.ns == "jabber:server"))
        .ok_or("archive <result/> without a message")?;
    let mut msg = msg.clone();
    msg.ns = ns::CLIENT.into();
    let from = msg.attr("from").and_then(addr::parse);
    let outgoing = from.as_ref().is_some_and(|f| f.to_bare() == *user);
    let with = if outgoing {
        msg.attr("to")
    } else {
        msg.attr("from")
    }
    .and_then(addr::parse)
    .ok_or("archived message without a valid from/to")?
    .to_string();
    Ok(ArchiveEntry {
        micros,
        with,
        stanza: msg.to_stanza_string(),
    })
}

/// Imports a XEP-0227 file: checks all of it, then stores it.
pub async fn import(
    path: &Path,
    storage: &Storage,
    limits: &Limits,
    iterations: u32,
    domain_ok: &dyn Fn(&str) -> bool,
) -> Result<Report, MigrateError> {
    let mut check = Report::default();
    let mut hosts_unknown = Vec::new();
    read_file(
        path,
        limits,
        iterations,
        async |u: UserData, _r: &mut Report| {
            let d = u.jid.domain().to_string();
            if !domain_ok(&d) && !hosts_unknown.contains(&d) {
                hosts_unknown.push(d);
            }
            Ok(())
        },
        &mut check,
    )
    .await?;
    if !hosts_unknown.is_empty() {
        return Err(MigrateError::invalid(
            path.display().to_string(),
            format!(
                "host(s) not configured as vhosts: {} (add them to the config first)",
                hosts_unknown.join(", ")
            ),
        ));
    }
    let mut report = Report::default();
    read_file(
        path,
        limits,
        iterations,
        async |u: UserData, r: &mut Report| {
            if super::usable(&u.creds) {
                super::write_user(storage, &u, r).await
            } else {
                r.warnings.push(format!(
                    "{}: no password or SCRAM verifiers, skipped",
                    u.jid
                ));
                Ok(())
            }
        },
        &mut report,
    )
    .await?;
    storage.flush().await?;
    Ok(report)
}

/// Exports every account (of `domain` only, if given) to `out`.
pub async fn export(
    storage: &Storage,
    domain: Option<&str>,
    out: &mut dyn Write,
) -> Result<usize, MigrateError> {
    let io = |e| MigrateError::io(Path::new("<export>"), e);
    out.write_all(
        b"<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n",
    )
    .map_err(io)?;
    let accounts = storage.accounts.list().await?;
    let mut count = 0;
    let mut current_host: Option<String> = None;
    for jid in &accounts {
        let host = jid.domain().to_string();
        if domain.is_some_and(|d| d != host) {
            continue;
        }
        let Some(node) = jid.node().map(|n| n.to_string()) else {
            continue;
        };
        if current_host.as_deref() != Some(&host) {
            if current_host.is_some() {
                out.write_all(b"  </host>\n").map_err(io)?;
            }
            let mut h = Vec::new();
            Element::new("host", NS)
                .with_attr("jid", host.clone())
                .write_to(&mut h, NS);
            // An empty element was written; keep it open.
            let open = String::from_utf8_lossy(&h).replace("/>", ">");
            writeln!(out, "  {open}").map_err(io)?;
            current_host = Some(host);
        }
        let Some(creds) = storage.accounts.get(jid).await? else {
            continue;
        };
        let user = user_element(storage, jid, &node, &creds).await?;
        let mut bytes = Vec::new();
        user.write_to(&mut bytes, NS);
        out.write_all(b"    ").map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
        count += 1;
    }
    if current_host.is_some() {
        out.write_all(b"  </host>\n").map_err(io)?;
    }
    out.write_all(b"</server-data>\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(count)
}

fn scram_element(mechanism: &str, c: &ScramCredentials) -> Element {
    let child = |n: &str, t: String| Element::new(n, NS_SCRAM).with_text(t);
    Element::new("scram-credentials", NS_SCRAM)
        .with_attr("mechanism", mechanism)
        .with_child(child("iter-count", c.iterations.to_string()))
        .with_child(child("salt", B64.encode(&c.salt)))
        .with_child(child("server-key", B64.encode(&c.server_key)))
        .with_child(child("stored-key", B64.encode(&c.stored_key)))
}

fn parsed(xml: &str) -> Result<Element, MigrateError> {
    crate::xml::parse_stanza(xml)
        .map_err(|e| MigrateError::Storage(crate::storage::StorageError::Corrupt(e.to_string())))
}

async fn user_element(
    storage: &Storage,
    jid: &BareJid,
    node: &str,
    creds: &StoredCredentials,
) -> Result<Element, MigrateError> {
    let mut user = Element::new("user", NS).with_attr("name", node);
    if creds.sha1.iterations > 0 && !creds.sha1.salt.is_empty() {
        user.push_child(scram_element("SCRAM-SHA-1", &creds.sha1));
    }
    if creds.has_sha256() {
        user.push_child(scram_element("SCRAM-SHA-256", &creds.sha256));
    }
    let roster = storage.roster.roster(jid).await?;
    let mut q = Element::new("query", NS_ROSTER);
    for it in &roster.items {
        let mut item = Element::new("item", NS_ROSTER)
            .with_attr("jid", it.jid.to_string())
            .with_attr("subscription", it.subscription.as_str());
        if let Some(n) = &it.name {
            item.set_attr("name", n.clone());
        }
        if it.ask {
            item.set_attr("ask", "subscribe");
        }
        if it.approved {
            item.set_attr("approved", "true");
        }
        for g in &it.groups {
            item.push_child(Element::new("group", NS_ROSTER).with_text(g.clone()));
        }
        q.push_child(item);
    }
    user.push_child(q);
    let offline = storage.offline.list(jid).await?;
    if !offline.is_empty() {
        let mut o = Element::new("offline-messages", NS);
        for m in &offline {
            let mut msg = parsed(&m.stanza)?;
            // When this server stored it, as XEP-0227 shows it (and as the offline module
            // stamps it at delivery).
            msg.push_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", jid.domain().to_string())
                    .with_attr("stamp", crate::modules::time::stamp_from_unix(m.stored_at)),
            );
            o.push_child(msg);
        }
        user.push_child(o);
    }
    if let Some(v) = storage.profiles.vcard(jid.as_str()).await? {
        user.push_child(parsed(&v)?);
    }
    let private = storage.profiles.private_all(jid.as_str()).await?;
    if !private.is_empty() {
        let mut q = Element::new("query", NS_PRIVATE);
        for (_, xml) in &private {
            q.push_child(parsed(xml)?);
        }
        user.push_child(q);
    }
    let nodes = storage.pubsub.nodes(jid.as_str()).await?;
    if !nodes.is_empty() {
        let mut owner = Element::new("pubsub", NS_PUBSUB_OWNER);
        let mut items_el = Element::new("pubsub", NS_PUBSUB);
        for (name, record) in &nodes {
            let mut x = Element::new("x", NS_DATA)
                .with_attr("type", "submit")
                .with_child(
                    Element::new("field", NS_DATA)
                        .with_attr("var", "FORM_TYPE")
                        .with_attr("type", "hidden")
                        .with_child(
                            Element::new("value", NS_DATA)
                                .with_text("http://jabber.org/protocol/pubsub#node_config"),
                        ),
                );
            for (var, value) in &record.config {
                let mut f = Element::new("field", NS_DATA).with_attr("var", var.clone());
                for v in value.split('\n') {
                    f.push_child(Element::new("value", NS_DATA).with_text(v));
                }
                x.push_child(f);
            }
            owner.push_child(
                Element::new("configure", NS_PUBSUB_OWNER)
                    .with_attr("node", name.clone())
                    .with_child(x),
            );
            let mut items = Element::new("items", NS_PUBSUB).with_attr("node", name.clone());
            // Stored newest first; written oldest first so an import keeps the order.
            let mut stored = storage.pubsub.items(jid.as_str(), name, usize::MAX).await?;
            stored.reverse();
            for it in &stored {
                items.push_child(
                    Element::new("item", NS_PUBSUB)
                        .with_attr("id", it.id.clone())
                        .with_attr("publisher", it.publisher.clone())
                        .with_child(parsed(&it.payload)?),
                );
            }
            items_el.push_child(items);
        }
        user.push_child(owner);
        user.push_child(items_el);
    }
    let mut archive = Element::new("archive", NS_MAM_ARCHIVE);
    let mut q = ArchiveQuery {
        max: 500,
        ..ArchiveQuery::default()
    };
    loop {
        let page = storage.archive.query(jid, &q).await?;
        for m in &page.messages {
            archive.push_child(
                Element::new("result", NS_MAM)
                    .with_attr("id", m.id.clone())
                    .with_child(
                        Element::new("forwarded", NS_FORWARD)
                            .with_child(
                                Element::new("delay", ns::DELAY)
                                    .with_attr("stamp", crate::modules::mam::stamp(m.pos.micros)),
                            )
                            .with_child(parsed(&m.stanza)?),
                    ),
            );
        }
        match page.messages.last() {
            Some(last) if page.more => q.from = last.pos.next(),
            _ => break,
        }
    }
    if archive.elements().next().is_some() {
        user.push_child(archive);
    }
    Ok(user)
}
