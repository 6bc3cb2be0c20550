//! How long a XEP-0313 query for the newest 50 messages takes on a large archive (the
//! question is whether it is a range read or a scan), and whether appending stays as fast
//! as the store grows.
//!
//! Run: `cargo run --release --example mam_bench [-- MESSAGES [USERS]]`
//! (defaults: 100,000 messages, 2 users; `-- 10000000 1000` is the 10-million-message
//! store). MESSAGES counts archived rows: one per archive a message is stored in.
//!
//! `MAM_BENCH_MODE` chooses how the store is filled:
//!
//! - `shared` (the default, what the server does): the first half of the USERS send
//!   messages to the second half, each sender to 10 recipients taking turns. Each message
//!   is appended twice with `append_deferred`, as the MAM hooks do: to the sender's
//!   archive (with = the recipient's full JID) and then to the recipient's (with = the
//!   sender's full JID, the same stanza), so the recipient's copy becomes a reference to
//!   the sender's record (half the rows). A round is one message from every sender,
//!   followed by `appended_durable` (an SM ack: one flush per round). `MAM_BENCH_ROUND=N`
//!   waits only after every N rounds, so that the writer's batches carry several
//!   messages per archive, stored as chunks (src/storage/sled/chunk.rs), as under load.
//! - `single`: every archive on its own (contacts outside the server), filled in rounds of
//!   1,000 messages per user with `append_many` (one flush each); the fill of the figures
//!   measured before messages were shared.
//!
//! It prints the append rate of every tenth of the fill, then times over many runs, on a
//! sender's archive (records) and, when shared, on a recipient's (references): the last
//! page (RSM `<before/>`), the last page with one contact (`with`), a page after a known id
//! (RSM `<after/>`), decoding a page into stanzas; then one durable append, closing, the
//! size on disk, reopening and the first query after it (cold), and finally counts the
//! references actually stored (by reading the archive's fjall keyspaces, one per
//! partition).
//!
//! The store is in a temporary directory (`TMPDIR`), removed at the end;
//! `MAM_BENCH_DIR` keeps it instead (it must be empty or absent). `MAM_BENCH_REUSE=1` with
//! the `MAM_BENCH_DIR` of an earlier run (same arguments and mode) skips the fill and times
//! that store again (for profiling the queries).

use std::path::Path;
use std::time::{Duration, Instant};

use xmppd::addr::BareJid;
use xmppd::storage::{ArchivePos, ArchiveQuery, ArchiveStore, NewArchived, SharedStanza, Storage};

const USER: &str = "alice@example.org";
const PAGE: usize = 50;
const RUNS: usize = 200;
/// Contacts per archive (each message goes to the next one: the `with` index's worst case).
const CONTACTS: usize = 10;
const START_MICROS: u64 = 1_700_000_000_000_000;

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<52} median {:>9.3} ms   p99 {:>9.3} ms   min {:>9.3} ms",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
    );
}

async fn time_runs<F, Fut>(name: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let n = f().await;
        samples.push(t.elapsed());
        assert_eq!(n, PAGE, "{name}: wrong page size");
    }
    stats(name, samples);
}

/// Prints the append rate once every tenth of the fill.
struct Progress {
    total: usize,
    written: usize,
    tenth_started: Instant,
    tenth_written: usize,
}

impl Progress {
    fn add(&mut self, rows: usize) {
        self.written += rows;
        if self.written - self.tenth_written >= (self.total / 10).max(1) {
            println!(
                "  {:>10} stored: {:.0} rows/s over the last {}",
                self.written,
                (self.written - self.tenth_written) as f64
                    / self.tenth_started.elapsed().as_secs_f64(),
                self.written - self.tenth_written
            );
            (self.tenth_started, self.tenth_written) = (Instant::now(), self.written);
        }
    }
}

fn stanza(from: &str, to: &str, i: usize) -> String {
    format!(
        "<message from='{from}' to='{to}' type='chat' id='msg-{i}'>\
         <body>message number {i}, about as long as a typical chat line</body>\
         <origin-id xmlns='urn:xmpp:sid:0' id='origin-{i}'/></message>"
    )
}

/// The single-sided fill: every user's archive gets the same `per_user` messages from 10
/// contacts on another server, 1,000 at a time with one flush.
async fn fill_single(
    a: &dyn ArchiveStore,
    accounts: &[BareJid],
    per_user: usize,
    progress: &mut Progress,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let contacts: Vec<String> = (0..CONTACTS)
        .map(|i| format!("contact{i}@example.net/phone"))
        .collect();
    let stanzas: Vec<String> = (0..per_user)
        .map(|i| stanza(&contacts[i % CONTACTS], &format!("{USER}/laptop"), i))
        .collect();
    const ROUND: usize = 1_000;
    for (c, chunk) in stanzas.chunks(ROUND).enumerate() {
        let msgs: Vec<NewArchived> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| NewArchived {
                with: &contacts[(c * ROUND + i) % CONTACTS],
                stanza: s.as_str().into(),
                micros: START_MICROS + ((c * ROUND + i) as u64) * 1_000_000,
            })
            .collect();
        for account in accounts {
            a.append_many(account, &msgs).await?;
            progress.add(msgs.len());
        }
    }
    Ok(contacts)
}

/// Who sends to whom in the shared fill: sender `i` of `senders` writes its `j`-th message
/// to recipient `(i + (j % fan) * step) % recipients`. For each `j` that is a bijection,
/// so with as many recipients as senders every recipient gets one message per round,
/// from `fan` senders in turn.
struct Pairs {
    recipients: usize,
    fan: usize,
    step: usize,
}

impl Pairs {
    fn new(recipients: usize) -> Pairs {
        let fan = CONTACTS.min(recipients);
        Pairs {
            recipients,
            fan,
            step: (recipients / fan).max(1),
        }
    }

    fn recipient(&self, sender: usize, j: usize) -> usize {
        (sender + (j % self.fan) * self.step) % self.recipients
    }

    /// The sender of recipient `r`'s messages at rounds `j` with `j % fan == k`.
    fn sender_of(&self, r: usize, k: usize) -> usize {
        (r + self.recipients - (k * self.step) % self.recipients) % self.recipients
    }
}

/// The shared fill: both local parties' copies of each message, appended the way the MAM
/// hooks append them (sender first, then recipient, deferred), one round per message of
/// every sender, then an SM-ack-like wait for durability.
async fn fill_shared(
    a: &dyn ArchiveStore,
    senders: &[BareJid],
    recipients: &[BareJid],
    per_user: usize,
    progress: &mut Progress,
) -> Result<(), Box<dyn std::error::Error>> {
    let per_round: usize = match std::env::var("MAM_BENCH_ROUND") {
        Ok(n) => n
            .parse()
            .map_err(|_| format!("MAM_BENCH_ROUND={n}: a number"))?,
        Err(_) => 1,
    };
    let per_round = per_round.max(1);
    let pairs = Pairs::new(recipients.len());
    let sender_full: Vec<String> = senders
        .iter()
        .map(|s| format!("{}/laptop", s.as_str()))
        .collect();
    let recipient_full: Vec<String> = recipients
        .iter()
        .map(|r| format!("{}/phone", r.as_str()))
        .collect();
    for j in 0..per_user {
        let micros = START_MICROS + (j as u64) * 1_000_000;
        for (i, sender) in senders.iter().enumerate() {
            let r = pairs.recipient(i, j);
            // One buffer for both copies, as the MAM hooks share it: stored once.
            let s = SharedStanza::from(stanza(&sender_full[i], &recipient_full[r], j));
            let out = NewArchived {
                with: &recipient_full[r],
                stanza: s.clone(),
                micros,
            };
            a.append_deferred(sender, out).await?;
            let inbound = NewArchived {
                with: &sender_full[i],
                stanza: s,
                micros,
            };
            a.append_deferred(&recipients[r], inbound).await?;
        }
        if (j + 1) % per_round == 0 || j + 1 == per_user {
            a.appended_durable().await?;
        }
        progress.add(2 * senders.len());
    }
    Ok(())
}

/// The queries timed on one archive; `contact` is one of its 10 (bare JID).
async fn time_queries(
    a: &dyn ArchiveStore,
    label: &str,
    user: &BareJid,
    contact: &str,
    per_user: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{label} ({}, {} messages):",
        user.as_str(),
        a.count(user).await?
    );
    let last_page = ArchiveQuery {
        max: PAGE,
        from_end: true,
        ..ArchiveQuery::default()
    };
    time_runs("  last 50 (RSM <before/>)", || async {
        a.query(user, &last_page)
            .await
            .map_or(0, |p| p.messages.len())
    })
    .await;

    let with_one = ArchiveQuery {
        with: Some(contact.into()),
        ..last_page.clone()
    };
    time_runs("  last 50 with one of 10 contacts (with)", || async {
        a.query(user, &with_one)
            .await
            .map_or(0, |p| p.messages.len())
    })
    .await;

    let middle = a
        .query(
            user,
            &ArchiveQuery {
                from: ArchivePos {
                    micros: START_MICROS + (per_user as u64 / 2) * 1_000_000,
                    seq: 0,
                },
                max: 1,
                ..ArchiveQuery::default()
            },
        )
        .await?;
    let mid_id = middle.messages[0].id.clone();
    time_runs("  50 after an id in the middle (RSM <after/>)", || async {
        let Ok(Some(pos)) = a.position(user, &mid_id).await else {
            return 0;
        };
        let q = ArchiveQuery {
            from: pos.next(),
            max: PAGE,
            ..ArchiveQuery::default()
        };
        a.query(user, &q).await.map_or(0, |p| p.messages.len())
    })
    .await;

    time_runs("  last 50 + parse each stanza (results)", || async {
        let Ok(page) = a.query(user, &last_page).await else {
            return 0;
        };
        page.messages
            .iter()
            .filter(|m| xmppd::xml::parse_stanza(&m.stanza).is_ok())
            .count()
    })
    .await;
    Ok(())
}

fn disk_size(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += match meta.is_dir() {
            true => disk_size(&entry.path())?,
            false => meta.len(),
        };
    }
    Ok(total)
}

/// Counts the records and references in the archive's fjall keyspaces (`archive` and its
/// partitions `archive.<n>`; the store must be closed): the check that the fill produced
/// what it meant to. Value format 3 is a reference (src/storage/sled/record.rs); format 4
/// a chunk of several messages (src/storage/sled/chunk.rs), counted here by their own
/// formats.
fn count_references(path: &Path, users: &[&BareJid]) -> Result<(), Box<dyn std::error::Error>> {
    let db = fjall::Database::builder(path.join("archive")).open()?;
    let mut partitions = Vec::new();
    for name in db.list_keyspace_names() {
        let name: &str = name.as_ref();
        if name == "archive" || name.starts_with("archive.") {
            partitions.push(db.keyspace(name, fjall::KeyspaceCreateOptions::default)?);
        }
    }
    let count = |prefix: &[u8]| -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let (mut rows, mut references) = (0u64, 0u64);
        for archive in &partitions {
            for entry in archive.prefix(prefix) {
                let (_, v) = entry.into_inner()?;
                let (n, r) = formats(&v)?;
                rows += n;
                references += r;
            }
        }
        Ok((rows, references))
    };
    let (rows, references) = count(b"")?;
    println!(
        "archive rows: {rows}, references: {references} ({:.1} %) in {} partitions",
        100.0 * references as f64 / rows.max(1) as f64,
        partitions.len()
    );
    for user in users {
        let mut prefix = user.as_str().as_bytes().to_vec();
        prefix.push(0);
        let (rows, references) = count(&prefix)?;
        println!("  {}: {rows} rows, {references} references", user.as_str());
    }
    Ok(())
}

/// Messages in one archive value, and how many of them are references.
fn formats(value: &[u8]) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    fn varint(value: &[u8], at: &mut usize) -> Result<usize, Box<dyn std::error::Error>> {
        let mut n = 0usize;
        for shift in (0..35).step_by(7) {
            let b = *value.get(*at).ok_or("truncated chunk")?;
            *at += 1;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("bad varint".into())
    }
    if value.first() != Some(&4) {
        return Ok((1, u64::from(value.first() == Some(&3))));
    }
    let mut at = 1;
    let n = varint(value, &mut at)?;
    let mut references = 0;
    for _ in 0..n {
        at += 16;
        let len = varint(value, &mut at)?;
        references += u64::from(value.get(at) == Some(&3));
        at += len;
    }
    Ok((n as u64, references))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = match std::env::var("MAM_BENCH_MODE").as_deref() {
        Err(_) | Ok("shared") => true,
        Ok("single") => false,
        Ok(other) => return Err(format!("MAM_BENCH_MODE={other}: shared or single").into()),
    };
    let total: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let users: usize = match std::env::args().nth(2) {
        Some(n) => n.parse::<usize>()?.max(1),
        None => 2,
    };
    if shared && users < 2 {
        return Err("the shared fill needs at least 2 users".into());
    }
    let dir = tempfile::tempdir()?;
    let kept = std::env::var_os("MAM_BENCH_DIR").map(std::path::PathBuf::from);
    let path = kept.as_deref().unwrap_or(dir.path());
    let storage = Storage::open_sled(path)?;
    let user = xmppd::addr::parse_bare(USER).ok_or("USER is not a JID")?;
    let mut accounts = vec![user.clone()];
    for i in 1..users {
        let other = format!("user{i}@example.org");
        accounts.push(xmppd::addr::parse_bare(&other).ok_or("not a JID")?);
    }
    let per_user = total / users;
    let a = &*storage.archive;

    let mut progress = Progress {
        total,
        written: 0,
        tenth_started: Instant::now(),
        tenth_written: 0,
    };
    let reuse = kept.is_some() && std::env::var_os("MAM_BENCH_REUSE").is_some();
    let t = Instant::now();
    // The archives timed, with one of their contacts each.
    let mut timed = Vec::new();
    if shared {
        let (senders, recipients) = accounts.split_at(users / 2);
        if !reuse {
            fill_shared(a, senders, recipients, per_user, &mut progress).await?;
        }
        let pairs = Pairs::new(recipients.len());
        let alice_contact = &recipients[pairs.recipient(0, 3)];
        let recipient_contact = &senders[pairs.sender_of(0, 3) % senders.len()];
        timed.push(("sender (records)", user.clone(), alice_contact.to_string()));
        timed.push((
            "recipient (references)",
            recipients[0].clone(),
            recipient_contact.to_string(),
        ));
    } else {
        let contacts = match reuse {
            true => (0..CONTACTS)
                .map(|i| format!("contact{i}@example.net/phone"))
                .collect(),
            false => fill_single(a, &accounts, per_user, &mut progress).await?,
        };
        timed.push(("single-sided (records)", user.clone(), contacts[3].clone()));
    }
    let fill = t.elapsed();
    println!(
        "filled {} rows in {users} archives in {:.2} s ({:.0} rows/s, {})",
        progress.written,
        fill.as_secs_f64(),
        progress.written as f64 / fill.as_secs_f64(),
        match shared {
            true => "shared: two appends per message, one flush per round",
            false => "single-sided: batched, one flush per 1,000",
        }
    );
    // A reused store has the live appends of earlier runs on top.
    assert!(a.count(&user).await? >= per_user as u64);

    for (label, u, contact) in &timed {
        let contact = contact.split('/').next().unwrap_or(contact);
        time_queries(a, label, u, contact, per_user).await?;
    }

    // A live message: one append, durable (flushed) before it returns.
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let stanza = format!("<message type='chat' id='live-{i}'><body>live</body></message>");
        let msg = NewArchived {
            with: &timed[0].2,
            stanza: stanza.into(),
            micros: START_MICROS + (per_user as u64 + i as u64) * 1_000_000,
        };
        let t = Instant::now();
        a.append(&user, msg).await?;
        samples.push(t.elapsed());
    }
    stats("append one message, flushed", samples);

    let t = Instant::now();
    drop(storage);
    let close = t.elapsed();
    println!(
        "close {:.1} ms; {:.2} GB on disk",
        close.as_secs_f64() * 1e3,
        disk_size(path)? as f64 / 1e9
    );
    let t = Instant::now();
    let storage = Storage::open_sled(path)?;
    let open = t.elapsed();
    let last_page = ArchiveQuery {
        max: PAGE,
        from_end: true,
        ..ArchiveQuery::default()
    };
    let t = Instant::now();
    let page = storage.archive.query(&user, &last_page).await?;
    let cold = t.elapsed();
    assert_eq!(page.messages.len(), PAGE);
    println!(
        "reopen {:.1} ms; first last-50 query after reopen (cold) {:.3} ms",
        open.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3
    );
    drop(storage);
    let timed_users: Vec<&BareJid> = timed.iter().map(|(_, u, _)| u).collect();
    count_references(path, &timed_users)?;
    Ok(())
}
