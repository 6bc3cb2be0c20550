//! How long a XEP-0313 query for the newest 50 messages takes on a large archive (the
//! question is whether it is a range read or a scan), and whether appending stays as fast
//! as the store grows.
//!
//! Run: `cargo run --release --example mam_bench [-- MESSAGES [USERS]]`
//! (defaults: 100,000 messages, 1 user; `-- 10000000 1000` is the 10-million-message store)
//!
//! It fills USERS archives in a temporary directory, MESSAGES in all, in rounds of 1,000
//! messages per user (10 contacts taking turns), printing the append rate of every tenth of
//! the fill, then times on the first user's archive, over many runs: the last page (RSM
//! `<before/>`), the last page with one contact (`with`), a page after a known id (RSM
//! `<after/>`), decoding a page into stanzas, one durable append, and the first query
//! after reopening the database (cold).

use std::time::{Duration, Instant};

use xmppd::storage::{ArchivePos, ArchiveQuery, NewArchived, Storage};

const USER: &str = "alice@example.org";
const PAGE: usize = 50;
const RUNS: usize = 200;

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<42} median {:>9.3} ms   p99 {:>9.3} ms   min {:>9.3} ms",
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100_000,
    };
    let users: usize = match std::env::args().nth(2) {
        Some(n) => n.parse::<usize>()?.max(1),
        None => 1,
    };
    let dir = tempfile::tempdir()?;
    // MAM_BENCH_DIR keeps the store for a look afterwards (it must be empty or absent).
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

    let contacts: Vec<String> = (0..10)
        .map(|i| format!("contact{i}@example.net/phone"))
        .collect();
    let stanzas: Vec<String> = (0..per_user)
        .map(|i| {
            format!(
                "<message from='{}' to='{USER}/laptop' type='chat' id='msg-{i}'>\
                 <body>message number {i}, about as long as a typical chat line</body>\
                 <origin-id xmlns='urn:xmpp:sid:0' id='origin-{i}'/></message>",
                contacts[i % contacts.len()]
            )
        })
        .collect();
    let start_micros = 1_700_000_000_000_000u64;
    let t = Instant::now();
    let (mut written, mut tenth_started, mut tenth_written) = (0usize, Instant::now(), 0usize);
    const ROUND: usize = 1_000;
    for (c, chunk) in stanzas.chunks(ROUND).enumerate() {
        let msgs: Vec<NewArchived> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| NewArchived {
                with: &contacts[(c * ROUND + i) % contacts.len()],
                stanza: s,
                micros: start_micros + ((c * ROUND + i) as u64) * 1_000_000,
            })
            .collect();
        for account in &accounts {
            storage.archive.append_many(account, &msgs).await?;
            written += msgs.len();
            if written - tenth_written >= (total / 10).max(1) {
                println!(
                    "  {written:>10} stored: {:.0} msg/s over the last {}",
                    (written - tenth_written) as f64 / tenth_started.elapsed().as_secs_f64(),
                    written - tenth_written
                );
                (tenth_started, tenth_written) = (Instant::now(), written);
            }
        }
    }
    let fill = t.elapsed();
    println!(
        "filled {written} messages in {users} archives in {:.2} s ({:.0} msg/s, batched, one \
         flush per {ROUND})",
        fill.as_secs_f64(),
        written as f64 / fill.as_secs_f64()
    );
    assert_eq!(storage.archive.count(&user).await?, per_user as u64);

    let last_page = ArchiveQuery {
        max: PAGE,
        from_end: true,
        ..ArchiveQuery::default()
    };
    let a = &storage.archive;
    time_runs("last 50 (RSM <before/>)", || async {
        a.query(&user, &last_page)
            .await
            .map_or(0, |p| p.messages.len())
    })
    .await;

    let with_one = ArchiveQuery {
        with: Some("contact3@example.net".into()),
        ..last_page.clone()
    };
    time_runs("last 50 with one of 10 contacts (with)", || async {
        a.query(&user, &with_one)
            .await
            .map_or(0, |p| p.messages.len())
    })
    .await;

    let middle = a
        .query(
            &user,
            &ArchiveQuery {
                from: ArchivePos {
                    micros: start_micros + (per_user as u64 / 2) * 1_000_000,
                    seq: 0,
                },
                max: 1,
                ..ArchiveQuery::default()
            },
        )
        .await?;
    let mid_id = middle.messages[0].id.clone();
    time_runs("50 after an id in the middle (RSM <after/>)", || async {
        let Ok(Some(pos)) = a.position(&user, &mid_id).await else {
            return 0;
        };
        let q = ArchiveQuery {
            from: pos.next(),
            max: PAGE,
            ..ArchiveQuery::default()
        };
        a.query(&user, &q).await.map_or(0, |p| p.messages.len())
    })
    .await;

    time_runs("last 50 + parse each stanza (results)", || async {
        let Ok(page) = a.query(&user, &last_page).await else {
            return 0;
        };
        page.messages
            .iter()
            .filter(|m| xmppd::xml::parse_stanza(&m.stanza).is_ok())
            .count()
    })
    .await;

    // A live message: one append, durable (flushed) before it returns.
    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let stanza = format!("<message type='chat' id='live-{i}'><body>live</body></message>");
        let msg = NewArchived {
            with: &contacts[i % contacts.len()],
            stanza: &stanza,
            micros: start_micros + (per_user as u64 + i as u64) * 1_000_000,
        };
        let t = Instant::now();
        a.append(&user, msg).await?;
        samples.push(t.elapsed());
    }
    stats("append one message, flushed", samples);

    let t = Instant::now();
    drop(storage);
    let close = t.elapsed();
    let t = Instant::now();
    let storage = Storage::open_sled(path)?;
    let open = t.elapsed();
    println!("close {:.1} ms", close.as_secs_f64() * 1e3);
    let t = Instant::now();
    let page = storage.archive.query(&user, &last_page).await?;
    let cold = t.elapsed();
    assert_eq!(page.messages.len(), PAGE);
    println!(
        "reopen {:.1} ms; first last-50 query after reopen (cold) {:.3} ms",
        open.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3
    );
    Ok(())
}
