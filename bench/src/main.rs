//! xmppd-bench: a lean c2s load generator for XMPP servers on loopback.
//!
//! Speaks the client protocol itself (STARTTLS or direct TLS, SASL SCRAM/PLAIN, bind),
//! one tokio task per connection. Prints a human-readable summary and one `JSON ` line.

mod accounts;
mod conn;
mod growth;
mod relay;
mod scenarios;
mod scram;
mod stats;
mod upload;
mod xml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use conn::{Ctx, Mech, Names, Res};
use scenarios::{ChatParams, LoginMode, Report, Run};
use scram::{HashKind, SaltCache};

/// Each source address has ~28k ephemeral ports; stay well below.
const CONNS_PER_SOURCE: usize = 25_000;

#[derive(Parser)]
#[command(
    name = "xmppd-bench",
    version,
    about = "Load generator for XMPP servers (c2s, loopback only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Common {
    /// Server address (must resolve to 127.0.0.0/8 or ::1 only).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// c2s port.
    #[arg(long, global = true, default_value_t = 5222)]
    port: u16,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    #[arg(long, global = true)]
    direct_tls: bool,
    /// SASL mechanism.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    mech: Mech,
    /// Account JID pattern; `{i}` is the account number.
    #[arg(long, global = true, default_value = "user{i}@localhost")]
    user: String,
    /// Password pattern; `{i}` is the account number.
    #[arg(long, global = true, default_value = "password")]
    password: String,
    /// Number of the first account.
    #[arg(long, global = true, default_value_t = 1)]
    first: usize,
    /// Resource to bind.
    #[arg(long, global = true, default_value = "bench")]
    resource: String,
    /// Logins in progress at once.
    #[arg(long, global = true, default_value_t = 100)]
    concurrency: usize,
    /// Hard limit for the whole run, in seconds.
    #[arg(long, global = true, default_value_t = 900)]
    timeout: u64,
    /// Limit for one login (connect through bind), in seconds.
    #[arg(long, global = true, default_value_t = 60)]
    handshake_timeout: u64,
    /// Runtime threads (1 = single-threaded runtime, the leanest).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Spread connections over 127.0.0.1..=127.0.0.N source addresses (0 = one per
    /// 25,000 connections).
    #[arg(long, global = true, default_value_t = 0)]
    source_addrs: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// N accounts log in (through bind) and disconnect: logins/s and latency.
    Login {
        #[arg(long)]
        users: usize,
        /// Also send initial presence (and wait until the server has handled it).
        #[arg(long)]
        presence: bool,
        /// Server process: CPU time per login.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Log every account in once, unmeasured, first: the client-side SCRAM key
        /// derivation (PBKDF2) is then cached, as real clients cache it, so the measured
        /// pass costs what a returning client costs and the generator is not the limit.
        #[arg(long)]
        warmup: bool,
        /// Returning devices: each account gets a TLS session store of its own and logs
        /// in once, unmeasured (as --warmup), keeping the server's TLS 1.3 session
        /// tickets; the measured pass then resumes those sessions.
        #[arg(long)]
        resume: bool,
        /// Returning devices with FAST (XEP-0484): the unmeasured pass logs every account
        /// in with SASL2 (XEP-0388) + SCRAM + Bind2 (XEP-0386) and asks for a FAST token;
        /// the measured pass logs in with that token (HT-SHA-256-NONE) and Bind2: one round
        /// trip after TLS, no stream restart. With --resume, TLS sessions resume as well.
        #[arg(long)]
        fast: bool,
        /// With --fast: log in with the token once more, unmeasured, before the measured
        /// pass, so that it measures a device's later logins rather than the first use of
        /// its token (which a server may have to record: XEP-0484's "new" and "current"
        /// tokens).
        #[arg(long, requires = "fast")]
        fast_again: bool,
    },
    /// Hold N authenticated TLS sessions (with presence) for T seconds: server RSS.
    Idle {
        #[arg(long)]
        users: usize,
        #[arg(long)]
        seconds: u64,
        /// Server process to measure.
        #[arg(long)]
        server_pid: u32,
        /// Seconds to wait after the last login before reading RSS.
        #[arg(long, default_value_t = 2)]
        settle: u64,
        /// XEP-0198 stream management, as mobile clients use it: `<enable
        /// resume='true'/>` right after binding (before presence), then every `<r/>` of
        /// the server answered with `<a h='…'/>` (stanzas received since `<enabled/>`).
        #[arg(long)]
        sm: bool,
        /// With --sm: enable it after initial presence instead, so that the server has
        /// sent nothing since `<enabled/>` (no stanza waits for an ack, no `<r/>`).
        #[arg(long, requires = "sm")]
        sm_after_presence: bool,
    },
    /// P sender/receiver pairs, W messages in flight per pair: msgs/s, latency, loss.
    Chat {
        #[arg(long)]
        pairs: usize,
        #[arg(long, default_value_t = 10)]
        window: u64,
        /// Body size in bytes (at least the `SEQ TIMESTAMP ` header).
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Write a sender's whole window at once (one TLS record) instead of one stanza
        /// per write as real clients do; understates the server's per-stanza cost.
        #[arg(long)]
        batched: bool,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of traffic before measuring.
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        /// Seconds allowed for in-flight messages to arrive after sending stops.
        #[arg(long, default_value_t = 5)]
        drain: u64,
        /// Server process: CPU time per delivered message and RSS.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// N occupants in one chat room (XEP-0045), S of them sending with W messages in
    /// flight each: fan-out deliveries/s, latency, server CPU per delivered copy.
    Muc {
        #[arg(long, default_value_t = 100)]
        occupants: usize,
        #[arg(long, default_value_t = 10)]
        senders: usize,
        #[arg(long, default_value_t = 5)]
        window: u64,
        /// Body size in bytes (at least the `SEQ TIMESTAMP SENDER ` header).
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        warmup: u64,
        #[arg(long, default_value_t = 5)]
        drain: u64,
        /// The room's bare JID (created by the first occupant if it does not exist).
        #[arg(long, default_value = "bench@conference.localhost")]
        room: String,
        /// Server process: CPU time per delivered copy and RSS.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// One account uploads a file through a XEP-0363 slot and downloads it: MB/s each
    /// way and server RSS while it passes (needs the server's `http` listener).
    Upload {
        /// File size in bytes.
        #[arg(long, default_value_t = 10_000_000)]
        bytes: usize,
        /// Server process: RSS and CPU during the transfers.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Populate rosters over XMPP: mutual subscriptions with R neighbours each side.
    SetupRoster {
        #[arg(long)]
        users: usize,
        #[arg(long)]
        contacts: usize,
        /// Seconds allowed for all subscriptions to complete.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// All N users log in with roster get + initial presence: presence stanzas/s.
    Roster {
        #[arg(long)]
        users: usize,
        #[arg(long)]
        contacts: usize,
        /// Seconds allowed after the last login for all presences to arrive.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Server process: CPU time per login (roster get + presence included).
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Mutual subscriptions between one hub account and the N accounts after it.
    SetupStar(growth::SetupStarArgs),
    /// The hub logs in with a large roster, M contacts online: CPU and time per login.
    RosterLogin(growth::RosterLoginArgs),
    /// N messages queued for an offline account, delivered at its login.
    OfflineQueue(growth::OfflineQueueArgs),
    /// Run the minimal TLS relay (the floor to compare servers with; a benchmark tool,
    /// not a server) on --host/--port until killed.
    Relay(relay::RelayArgs),
    /// Write Prosody internal_hashed account files (no server contact).
    ProsodyAccounts {
        /// Prosody's data_path.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        users: usize,
        /// Prosody's `password_hash`.
        #[arg(long, value_enum, default_value = "SHA-256")]
        hash: HashArg,
        #[arg(long, default_value_t = 10_000)]
        iterations: u32,
        /// Salt shared by all accounts (default: random per run).
        #[arg(long)]
        salt: Option<String>,
        /// A random salt per account (the generator then runs PBKDF2 per login).
        #[arg(long)]
        salt_per_user: bool,
    },
    /// One row per output (its file name is the label, `server-round.txt`), then each
    /// server's range and mean and the ratio of its mean to the first server's.
    Summary { files: Vec<PathBuf> },
    /// Ratio table from two outputs containing `JSON ` lines (B relative to A).
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, default_value = "prosody")]
        label_a: String,
        #[arg(long, default_value = "xmppd")]
        label_b: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum HashArg {
    #[value(name = "SHA-1")]
    Sha1,
    #[value(name = "SHA-256")]
    Sha256,
}

fn names(c: &Common) -> Names {
    Names {
        user_pattern: c.user.clone(),
        password_pattern: c.password.clone(),
        first: c.first,
    }
}

/// Resolves the target, refusing anything that is not loopback.
async fn resolve(host: &str, port: u16) -> Res<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to nothing").into());
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "refusing target {host} ({}): only 127.0.0.0/8 and ::1 are allowed",
            bad.ip()
        )
        .into());
    }
    Ok(addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]))
}

fn connections_needed(cmd: &Cmd, concurrency: usize) -> usize {
    match cmd {
        Cmd::Login { users, .. } => (*users).min(concurrency),
        Cmd::Idle { users, .. } | Cmd::SetupRoster { users, .. } | Cmd::Roster { users, .. } => {
            *users
        }
        Cmd::Chat { pairs, .. } => pairs * 2,
        Cmd::Muc { occupants, .. } => *occupants,
        Cmd::Upload { .. } => 1,
        Cmd::SetupStar(a) => a.connections(),
        Cmd::RosterLogin(a) => a.connections(),
        Cmd::OfflineQueue(a) => a.connections(),
        Cmd::ProsodyAccounts { .. } | Cmd::Compare { .. } | Cmd::Summary { .. } | Cmd::Relay(_) => {
            0
        }
    }
}

async fn run(cli: Cli, nofile: u64) -> Res<Report> {
    let c = &cli.common;
    let names = names(c);
    names.check()?;
    let addr = resolve(&c.host, c.port).await?;
    let conns = connections_needed(&cli.cmd, c.concurrency);
    if conns as u64 + 32 > nofile {
        return Err(format!(
            "{conns} connections need more than the open-files limit {nofile} allows"
        )
        .into());
    }
    let mut source_addrs = c.source_addrs;
    if source_addrs == 0 && addr.is_ipv4() && conns > CONNS_PER_SOURCE {
        source_addrs = conns.div_ceil(CONNS_PER_SOURCE) as u32;
    }
    if source_addrs > 254 {
        return Err("at most 254 source addresses".into());
    }
    if source_addrs > 1 && !addr.is_ipv4() {
        return Err("source address spreading needs an IPv4 target".into());
    }
    let ctx = Arc::new(Ctx {
        addr,
        source_addrs,
        direct_tls: c.direct_tls,
        mech: c.mech,
        tls: conn::tls_connector(c.direct_tls)?,
        handshake_timeout: Duration::from_secs(c.handshake_timeout),
        resource: c.resource.clone(),
        salt_cache: SaltCache::default(),
    });
    let run = Run {
        ctx,
        names,
        concurrency: c.concurrency.max(1),
        limit: Duration::from_secs(c.timeout),
    };
    eprintln!(
        "target {addr} ({}), mech {:?}, concurrency {}{}",
        if c.direct_tls {
            "direct TLS"
        } else {
            "STARTTLS"
        },
        c.mech,
        run.concurrency,
        if source_addrs > 1 {
            format!(", {source_addrs} source addresses")
        } else {
            String::new()
        }
    );
    let mut report = match cli.cmd {
        Cmd::Login {
            users,
            presence,
            server_pid,
            warmup,
            resume,
            fast,
            fast_again,
        } => {
            let devices = resume.then(|| {
                Arc::new(
                    (0..users)
                        .map(|_| conn::device_connector(&run.ctx.tls))
                        .collect::<Vec<_>>(),
                )
            });
            let fast_devices = fast.then(|| {
                Arc::new(
                    (0..users)
                        .map(|i| conn::FastDevice::new(&run.names.account(i)))
                        .collect::<Vec<_>>(),
                )
            });
            if warmup || resume || fast {
                let mode = match &fast_devices {
                    Some(d) => LoginMode::FastEnroll(d.clone()),
                    None => LoginMode::Legacy,
                };
                eprintln!(
                    "login: warm-up pass (not measured){}",
                    if fast {
                        ", SASL2 + SCRAM + Bind2, asking for FAST tokens"
                    } else {
                        ""
                    }
                );
                let w = scenarios::login(&run, users, false, None, devices.clone(), mode).await?;
                eprintln!(
                    "login: warm-up pass: {} ok, {} failed",
                    w.json["ok"], w.json["failed"]
                );
                // Without a single token there is nothing to measure: say why.
                if fast && w.json["ok"].as_u64() == Some(0) {
                    let why = w.json["first_error"]
                        .as_str()
                        .unwrap_or("no login succeeded");
                    return Err(format!("login --fast: {why}").into());
                }
            }
            let mode = match fast_devices {
                Some(d) => LoginMode::Fast(d),
                None => LoginMode::Legacy,
            };
            if fast_again {
                eprintln!("login: FAST pass (not measured), first use of the tokens");
                let w = scenarios::login(&run, users, false, None, devices.clone(), mode.clone())
                    .await?;
                eprintln!(
                    "login: FAST pass: {} ok, {} failed, {} tokens rotated",
                    w.json["ok"], w.json["failed"], w.json["fast_tokens_rotated"]
                );
            }
            let mut r = scenarios::login(&run, users, presence, server_pid, devices, mode).await?;
            if let Some(o) = r.json.as_object_mut() {
                o.insert("fast".into(), fast.into());
                o.insert("fast_again".into(), fast_again.into());
            }
            r
        }
        Cmd::Idle {
            users,
            seconds,
            server_pid,
            settle,
            sm,
            sm_after_presence,
        } => {
            let sm = (sm, sm_after_presence);
            scenarios::idle(&run, users, seconds, server_pid, settle, sm).await?
        }
        Cmd::Chat {
            pairs,
            window,
            body_bytes,
            batched,
            seconds,
            warmup,
            drain,
            server_pid,
        } => {
            if pairs == 0 || window == 0 {
                return Err("--pairs and --window must be at least 1".into());
            }
            let p = ChatParams {
                pairs,
                window,
                body_bytes,
                batched,
                seconds,
                warmup,
                drain,
                pid: server_pid,
            };
            scenarios::chat(&run, &p).await?
        }
        Cmd::Upload { bytes, server_pid } => upload::upload(&run, bytes, server_pid).await?,
        Cmd::Muc {
            occupants,
            senders,
            window,
            body_bytes,
            seconds,
            warmup,
            drain,
            room,
            server_pid,
        } => {
            if occupants == 0 || senders == 0 || senders > occupants || window == 0 {
                return Err(
                    "--occupants, --senders (at most --occupants) and --window must be at least 1"
                        .into(),
                );
            }
            let p = scenarios::MucParams {
                occupants,
                senders,
                window,
                body_bytes,
                seconds,
                warmup,
                drain,
                room,
                pid: server_pid,
            };
            scenarios::muc(&run, &p).await?
        }
        Cmd::SetupRoster {
            users,
            contacts,
            wait,
        } => scenarios::setup_roster(&run, users, contacts, wait).await?,
        Cmd::Roster {
            users,
            contacts,
            wait,
            server_pid,
        } => scenarios::roster(&run, users, contacts, wait, server_pid).await?,
        Cmd::SetupStar(a) => growth::setup_star(&run, &a).await?,
        Cmd::RosterLogin(a) => growth::roster_login(&run, &a).await?,
        Cmd::OfflineQueue(a) => growth::offline_queue(&run, &a).await?,
        Cmd::ProsodyAccounts { .. } | Cmd::Compare { .. } | Cmd::Summary { .. } | Cmd::Relay(_) => {
            return Err("not a network scenario".into());
        }
    };
    if let Some(o) = report.json.as_object_mut() {
        o.insert("mech".into(), format!("{:?}", c.mech).into());
        o.insert("direct_tls".into(), c.direct_tls.into());
        o.insert("target".into(), addr.to_string().into());
    }
    Ok(report)
}

/// True when a report shows failed logins, dropped sessions, lost messages or an
/// incomplete presence exchange: the figures are printed, but the exit status says so.
fn run_failed(j: &Value) -> bool {
    let positive = |k: &str| j.get(k).and_then(Value::as_u64).is_some_and(|v| v > 0);
    ["failed", "dropped", "lost", "session_failures"]
        .iter()
        .any(|k| positive(k))
        || j.get("complete") == Some(&Value::Bool(false))
}

/// The last `JSON ` line of a file.
fn json_line(path: &PathBuf) -> Res<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("JSON "))
        .ok_or_else(|| format!("no JSON line in {}", path.display()))?;
    serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn compare(a: &PathBuf, b: &PathBuf, la: &str, lb: &str) -> Res<Vec<String>> {
    let (ja, jb) = (json_line(a)?, json_line(b)?);
    let (Some(oa), Some(ob)) = (ja.as_object(), jb.as_object()) else {
        return Err("JSON lines are not objects".into());
    };
    let mut lines = vec![format!(
        "{:<26} {:>14} {:>14} {:>9}",
        "figure",
        la,
        lb,
        format!("{lb}/{la}")
    )];
    for (k, va) in oa {
        let (Some(x), Some(y)) = (va.as_f64(), ob.get(k).and_then(Value::as_f64)) else {
            continue;
        };
        // Process ids and flags are not figures.
        if va.is_boolean() || k.ends_with("pid") {
            continue;
        }
        let ratio = if x != 0.0 {
            format!("{:.2}", y / x)
        } else {
            "-".into()
        };
        lines.push(format!("{k:<26} {x:>14.3} {y:>14.3} {ratio:>9}"));
    }
    Ok(lines)
}

/// Figures the summary shows, where a run has them: (JSON key, column title).
const SUMMARY_KEYS: &[(&str, &str)] = &[
    ("msgs_per_s", "msgs/s"),
    ("logins_per_s", "logins/s"),
    ("server_cpu_us_per_msg", "srv µs/msg"),
    ("server_cpu_us_per_login", "srv µs/login"),
    ("rss_per_session_bytes", "B/session"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("lost", "lost"),
    ("failed", "failed"),
    ("dropped", "dropped"),
];

/// The server a result file is for: its name without `.txt` and a `-<round>` suffix.
fn server_label(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((server, round)) if round.bytes().all(|b| b.is_ascii_digit()) => server.to_owned(),
        _ => stem,
    }
}

fn summary(files: &[PathBuf]) -> Res<Vec<String>> {
    let mut runs = Vec::new();
    for f in files {
        match json_line(f) {
            Ok(j) => runs.push((f, j)),
            // A run that printed nothing (it failed) is skipped, not fatal.
            Err(e) => eprintln!("xmppd-bench summary: skipping {}: {e}", f.display()),
        }
    }
    let keys: Vec<(&str, &str)> = SUMMARY_KEYS
        .iter()
        .copied()
        .filter(|(k, _)| {
            runs.iter()
                .any(|(_, j)| j.get(*k).is_some_and(Value::is_number))
        })
        .collect();
    let row = |label: &str, cells: Vec<String>| {
        let mut line = format!("{label:<14}");
        for c in cells {
            line.push_str(&format!(" {c:>13}"));
        }
        line
    };
    let mut lines = vec![row(
        "run",
        keys.iter().map(|(_, t)| (*t).to_owned()).collect(),
    )];
    let fig = |j: &Value, k: &str| j.get(k).and_then(Value::as_f64);
    let fmt = |v: f64| {
        if v.abs() >= 100.0 || v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    for (f, j) in &runs {
        let label = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cells = keys
            .iter()
            .map(|(k, _)| fig(j, k).map(fmt).unwrap_or_else(|| "-".into()))
            .collect();
        lines.push(row(&label, cells));
    }
    // Per server, in order of first appearance.
    let mut servers: Vec<String> = Vec::new();
    for (f, _) in &runs {
        let s = server_label(f);
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    let mut means: Vec<Vec<Option<f64>>> = Vec::new();
    lines.push(String::new());
    for s in &servers {
        let mine: Vec<&Value> = runs
            .iter()
            .filter(|(f, _)| server_label(f) == *s)
            .map(|(_, j)| j)
            .collect();
        let mut range = Vec::new();
        let mut mean = Vec::new();
        for (k, _) in &keys {
            let vals: Vec<f64> = mine.iter().filter_map(|j| fig(j, k)).collect();
            if vals.is_empty() {
                range.push("-".into());
                mean.push(None);
                continue;
            }
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            range.push(if lo == hi {
                fmt(lo)
            } else {
                format!("{}–{}", fmt(lo), fmt(hi))
            });
            mean.push(Some(m));
        }
        lines.push(row(&format!("{s} ({})", mine.len()), range));
        lines.push(row(
            &format!("{s} mean"),
            mean.iter()
                .map(|m| m.map(fmt).unwrap_or_else(|| "-".into()))
                .collect(),
        ));
        means.push(mean);
    }
    if let Some(base) = means.first() {
        for (s, mean) in servers.iter().zip(&means).skip(1) {
            let cells = mean
                .iter()
                .zip(base)
                .map(|(m, b)| match (m, b) {
                    (Some(m), Some(b)) if *b != 0.0 => format!("{:.2}", m / b),
                    _ => "-".into(),
                })
                .collect();
            lines.push(row(&format!("{s}/{}", servers[0]), cells));
        }
    }
    Ok(lines)
}

/// Prints a table-making command's lines, or its error.
fn print_lines<E: std::fmt::Display>(lines: Result<Vec<String>, E>) -> ExitCode {
    match lines {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xmppd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::ProsodyAccounts {
            data_dir,
            users,
            hash,
            iterations,
            salt,
            salt_per_user,
        } => {
            let names = names(&cli.common);
            let spec = accounts::AccountSpec {
                data_dir,
                names: &names,
                users: *users,
                kind: match hash {
                    HashArg::Sha1 => HashKind::Sha1,
                    HashArg::Sha256 => HashKind::Sha256,
                },
                iterations: *iterations,
                salt: salt.clone(),
                salt_per_user: *salt_per_user,
            };
            return match names.check().and_then(|_| accounts::write_prosody(&spec)) {
                Ok(n) => {
                    eprintln!("wrote {n} account files under {}", data_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xmppd-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Compare {
            a,
            b,
            label_a,
            label_b,
        } => {
            return print_lines(compare(a, b, label_a, label_b));
        }
        Cmd::Summary { files } => return print_lines(summary(files)),
        Cmd::Relay(args) => {
            let c = &cli.common;
            let common = relay::RelayCommon {
                host: &c.host,
                port: c.port,
                direct_tls: c.direct_tls,
                password: &c.password,
                handshake_timeout: Duration::from_secs(c.handshake_timeout),
            };
            return relay::main(&common, args);
        }
        _ => {}
    }
    let nofile = stats::raise_nofile();
    let threads = cli.common.threads.max(1);
    let global = Duration::from_secs(cli.common.timeout);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xmppd-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The global timeout covers everything, including waits the scenarios bound
    // themselves, so a wedged server can never keep the generator running.
    let res = rt.block_on(async { tokio::time::timeout(global, run(cli, nofile)).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(Ok(report)) => {
            for l in &report.lines {
                println!("{l}");
            }
            println!("JSON {}", report.json);
            if run_failed(&report.json) {
                eprintln!("xmppd-bench: the run had failures (see above)");
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(Err(e)) => {
            eprintln!("xmppd-bench: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "xmppd-bench: global timeout of {} s reached",
                global.as_secs()
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_detection() {
        assert!(!run_failed(
            &serde_json::json!({"failed": 0, "lost": 0, "complete": true})
        ));
        assert!(run_failed(&serde_json::json!({"failed": 2})));
        assert!(run_failed(&serde_json::json!({"lost": 1})));
        assert!(run_failed(&serde_json::json!({"complete": false})));
    }

    #[test]
    fn compare_table() {
        let dir = std::env::temp_dir().join(format!("xmppd-bench-cmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.txt");
        let b = dir.join("b.txt");
        std::fs::write(
            &a,
            "x\nJSON {\"msgs_per_s\": 100.0, \"server_pid\": 5, \"drained\": true}\n",
        )
        .unwrap();
        std::fs::write(&b, "JSON {\"msgs_per_s\": 250.0, \"server_pid\": 9}\n").unwrap();
        let lines = compare(&a, &b, "p", "x").unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("msgs_per_s"));
        assert!(lines[1].ends_with("2.50"));
        let lines = summary(&[a.clone(), b.clone(), dir.join("missing")]).unwrap();
        assert!(lines[0].contains("msgs/s"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("b/a") && l.contains("2.50"))
        );
        assert_eq!(server_label(&PathBuf::from("/x/relay-12.txt")), "relay");
        assert_eq!(server_label(&PathBuf::from("/x/xmppd.txt")), "xmppd");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(compare(&a, &dir.join("missing"), "p", "x").is_err());
    }
}
