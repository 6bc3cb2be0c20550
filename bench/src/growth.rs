//! Growth scenarios (issue 16): what one user costs the server as what the user owns
//! grows.
//!
//! - `setup-star`: account `--first` (the hub) gets mutual subscriptions with the next N
//!   accounts, over XMPP, a window of contacts at a time.
//! - `roster-login`: with M of those contacts online, the hub logs in (roster get, initial
//!   presence) again and again: wall time and server CPU per login, until the hub has the
//!   roster and every online contact's presence, and every online contact has the hub's.
//! - `offline-queue`: one account sends N messages to another that is offline; that one
//!   then logs in: time and server CPU until all N arrived, each once and in order.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::conn::{self, Account, Res, auto_reply};
use crate::scenarios::{Counters, Report, Run, join_all, merge, wait_for};
use crate::stats;
use crate::xml::{self, Frame};

#[derive(Args)]
pub struct SetupStarArgs {
    /// Contacts of the hub: the N accounts after it.
    #[arg(long, default_value_t = 1000)]
    pub contacts: usize,
    /// Contacts whose subscriptions are in progress at once. The server keeps every
    /// request the hub has not answered yet and refuses more than
    /// `max_pending_subscriptions` (xmppd: 500), so all at once would not work.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Seconds allowed for all subscriptions.
    #[arg(long, default_value_t = 900)]
    pub wait: u64,
}

#[derive(Args)]
pub struct RosterLoginArgs {
    /// Contacts in the hub's roster (set up by `setup-star --contacts N`).
    #[arg(long, default_value_t = 1000)]
    pub contacts: usize,
    /// Contacts online (the first M) while the hub logs in.
    #[arg(long, default_value_t = 500)]
    pub online: usize,
    /// Measured logins of the hub, one at a time.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Seconds allowed for one login to complete.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Server process: CPU time per login.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Args)]
pub struct OfflineQueueArgs {
    /// Messages queued for the offline account (the server's offline quota must hold
    /// them: xmppd's `limits.offline_quota`, 1000 by default).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Body size in bytes (at least the `SEQ RUN ` header).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Queue-and-deliver rounds.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// While queueing, a ping round trip every K messages, so the sender keeps reading
    /// (a bounce must not fill the socket while the sender only writes).
    #[arg(long, default_value_t = 500)]
    pub sync_every: usize,
    /// Seconds allowed for queueing, and again for the delivery.
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
    /// Server process: CPU time for the delivery, RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

impl SetupStarArgs {
    pub fn connections(&self) -> usize {
        self.contacts + 1
    }
}

impl RosterLoginArgs {
    pub fn connections(&self) -> usize {
        self.online + 1
    }
}

impl OfflineQueueArgs {
    pub fn connections(&self) -> usize {
        2
    }
}

// ------------------------------------------------------------------ measurements

/// Server CPU at one moment, read two ways: utime + stime from /proc/PID/stat (what the
/// other scenarios use; in 10 ms ticks, too coarse for one login) and each thread's run
/// time from /proc/PID/task/TID/schedstat (nanoseconds).
#[derive(Default)]
struct CpuSample {
    stat_ns: Option<u64>,
    threads: HashMap<u32, u64>,
}

fn cpu_sample(pid: Option<u32>) -> CpuSample {
    let Some(pid) = pid else {
        return CpuSample::default();
    };
    let stat_ns = stats::proc_cpu(pid).map(|d| d.as_nanos() as u64);
    let mut threads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(entry.path().join("schedstat"))
                && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok())
            {
                threads.insert(tid, ns);
            }
        }
    }
    CpuSample { stat_ns, threads }
}

impl CpuSample {
    /// Milliseconds of server CPU since `before`, from the threads' run times (a thread
    /// that exited in between is missed); from the stat ticks when those are unreadable.
    fn ms_since(&self, before: &CpuSample) -> Option<f64> {
        if !self.threads.is_empty() && !before.threads.is_empty() {
            let ns: u64 = self
                .threads
                .iter()
                .map(|(tid, &ns)| ns.saturating_sub(before.threads.get(tid).copied().unwrap_or(0)))
                .sum();
            return Some(ns as f64 / 1e6);
        }
        self.stat_ms_since(before)
    }

    fn stat_ms_since(&self, before: &CpuSample) -> Option<f64> {
        Some(self.stat_ns?.saturating_sub(before.stat_ns?) as f64 / 1e6)
    }
}

/// Nearest-rank quantile of a few samples (0 when there are none).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// p50 / p99 / max / mean of one figure, as JSON and as a summary line.
fn spread(name: &str, unit: &str, v: &[f64]) -> (Value, String) {
    let (p50, p99, max, avg) = (
        quantile(v, 0.5),
        quantile(v, 0.99),
        quantile(v, 1.0),
        mean(v),
    );
    let j = json!({
        format!("{name}_p50_{unit}"): p50,
        format!("{name}_p99_{unit}"): p99,
        format!("{name}_max_{unit}"): max,
        format!("{name}_mean_{unit}"): avg,
    });
    let line =
        format!("  {name:<15} p50 {p50:.2}  p99 {p99:.2}  max {max:.2}  mean {avg:.2} {unit}");
    (j, line)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------- held connections

/// What a held connection does with what it receives, and when the controller tells it
/// to act on contact `i` (through the channel given to [`spawn_peer`]).
trait Peer: Send + 'static {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>);
    fn on_roster(&mut self, _result: &[u8]) {}
    fn on_go(&mut self, _i: usize, _out: &mut Vec<u8>) {}
}

/// Logs account `idx` in (roster get if asked, initial presence, a ping round trip) and
/// serves it with `h` until `quit` turns true.
#[allow(clippy::too_many_arguments)]
fn spawn_peer<H: Peer>(
    run: &Run,
    idx: usize,
    sem: &Arc<Semaphore>,
    tally: &Arc<Counters>,
    mut quit: watch::Receiver<bool>,
    roster: bool,
    mut go: mpsc::UnboundedReceiver<usize>,
    mut h: H,
) -> JoinHandle<()> {
    let (sem, tally, ctx) = (sem.clone(), tally.clone(), run.ctx.clone());
    let acct = run.names.account(idx);
    tokio::spawn(async move {
        let Ok(permit) = sem.acquire_owned().await else {
            return;
        };
        let res = async {
            let mut conn = conn::login(&ctx, idx, &acct).await?;
            if roster {
                let r = conn
                    .roster_get(&mut |el, out| h.on_element(el, out))
                    .await?;
                h.on_roster(&r);
            }
            conn.presence_sync(&mut |el, out| h.on_element(el, out))
                .await?;
            drop(permit);
            tally.ready.fetch_add(1, Ordering::Relaxed);
            let mut go_open = true;
            loop {
                while let Some(f) = conn.rd.next_frame()? {
                    match f {
                        Frame::Element(r) => h.on_element(conn.rd.bytes(r), &mut conn.wbuf),
                        Frame::Close => return Err("server closed the stream".into()),
                        Frame::Header(_) => {}
                    }
                }
                if !conn.wbuf.is_empty() {
                    conn.flush().await?;
                }
                if *quit.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    biased;
                    r = quit.changed() => {
                        if r.is_err() {
                            break;
                        }
                    }
                    i = go.recv(), if go_open => match i {
                        Some(i) => h.on_go(i, &mut conn.wbuf),
                        None => go_open = false,
                    },
                    r = conn.read_more() => {
                        if r? == 0 {
                            return Err("connection closed by the server".into());
                        }
                    }
                }
            }
            conn.close().await;
            Res::Ok(())
        }
        .await;
        if let Err(e) = res {
            tally.fail(&acct.bare(), &e);
        }
    })
}

/// Waits until `n` peers are online; an error when any failed.
async fn all_online(run: &Run, what: &str, tally: &Counters, n: usize) -> Res<()> {
    let ok = wait_for(
        what,
        run.limit,
        || tally.ready() + tally.failed() >= n,
        || format!("{} online, {} failed", tally.ready(), tally.failed()),
    )
    .await;
    if !ok || tally.failed() > 0 {
        return Err(format!(
            "{what}: {} of {n} sessions failed to log in (first: {})",
            tally.failed(),
            tally.first_error().unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

/// The bare JID in a `from`/`jid` attribute value.
fn bare_of(v: &[u8]) -> &[u8] {
    match v.iter().position(|&c| c == b'/') {
        Some(p) => &v[..p],
        None => v,
    }
}

/// An account's bare JID as it appears in attributes (escaped).
fn escaped_bare(a: &Account) -> Vec<u8> {
    let mut v = Vec::new();
    xml::escape_into(&mut v, &a.bare());
    v
}

/// Roster items (`jid`, `subscription`) of a roster result or push; `remove` included.
fn roster_items(el: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    xml::each_tag(el, b"item").filter_map(|item| {
        Some((
            xml::attr(item, b"jid")?,
            xml::attr(item, b"subscription").unwrap_or(b"none"),
        ))
    })
}

fn is_roster_push(el: &[u8]) -> bool {
    xml::name(el) == b"iq" && xml::attr(el, b"type") == Some(b"set") && xml::has_child(el, b"query")
}

// -------------------------------------------------------------------- setup-star

/// Set in [`StarShared::state`] per contact when its side shows `both`.
const HUB_BOTH: u8 = 1;
const CONTACT_BOTH: u8 = 2;

struct StarShared {
    /// Per contact: which sides already show a mutual subscription.
    state: Vec<AtomicU8>,
    approvals: AtomicU64,
}

/// The hub: adds contacts when told to, approves their requests, and records which of
/// its roster items show `both`.
struct StarHub {
    /// Escaped bare JIDs of the contacts, and the reverse map.
    jids: Vec<Vec<u8>>,
    index: HashMap<Vec<u8>, usize>,
    /// Subscription of each contact in the hub's roster (`None`: no item).
    subs: Vec<Option<Vec<u8>>>,
    sh: Arc<StarShared>,
}

impl StarHub {
    fn absorb(&mut self, el: &[u8]) {
        for (jid, sub) in roster_items(el) {
            let Some(&i) = self.index.get(jid) else {
                continue;
            };
            if sub == b"remove" {
                self.subs[i] = None;
                continue;
            }
            if sub == b"both" {
                self.sh.state[i].fetch_or(HUB_BOTH, Ordering::Relaxed);
            }
            self.subs[i] = Some(sub.to_vec());
        }
    }
}

/// Approves a subscription request whose sender `accept` knows; whether `el` was a
/// subscription request at all.
fn approve_subscribe(
    el: &[u8],
    out: &mut Vec<u8>,
    sh: &StarShared,
    accept: impl Fn(&[u8]) -> bool,
) -> bool {
    if xml::name(el) != b"presence" || xml::attr(el, b"type") != Some(b"subscribe") {
        return false;
    }
    if let Some(from) = xml::attr(el, b"from").map(bare_of)
        && accept(from)
    {
        out.extend_from_slice(b"<presence type='subscribed' to='");
        out.extend_from_slice(from);
        out.extend_from_slice(b"'/>");
        sh.approvals.fetch_add(1, Ordering::Relaxed);
    }
    true
}

impl Peer for StarHub {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        if approve_subscribe(el, out, &self.sh, |from| self.index.contains_key(from)) {
            return;
        }
        if is_roster_push(el) {
            self.absorb(el);
        }
        auto_reply(el, out);
    }

    fn on_roster(&mut self, result: &[u8]) {
        self.absorb(result);
    }

    /// Adds contact `i` as a client would: a roster set with a name and a group, then a
    /// subscription request. Skips what is there already, so setup can be rerun.
    fn on_go(&mut self, i: usize, out: &mut Vec<u8>) {
        let (Some(jid), Some(sub)) = (self.jids.get(i), self.subs.get(i)) else {
            return;
        };
        let jid = String::from_utf8_lossy(jid);
        if sub.is_none() {
            let name = jid.split('@').next().unwrap_or(&jid);
            let _ = write!(
                out,
                "<iq type='set' id='rs{i}'><query xmlns='jabber:iq:roster'><item jid='{jid}' name='{name}'><group>bench</group></item></query></iq>"
            );
        }
        if !matches!(sub.as_deref(), Some(b"to") | Some(b"both")) {
            let _ = write!(out, "<presence type='subscribe' to='{jid}'/>");
        }
    }
}

/// A contact: approves the hub's request and asks for the hub's presence in return.
struct StarContact {
    idx: usize,
    hub: Vec<u8>,
    /// Subscription to the hub in this contact's roster.
    sub: Vec<u8>,
    asked: bool,
    sh: Arc<StarShared>,
}

impl StarContact {
    fn absorb(&mut self, el: &[u8]) {
        for (jid, sub) in roster_items(el) {
            if jid == self.hub.as_slice() {
                self.sub = if sub == b"remove" {
                    b"none".to_vec()
                } else {
                    sub.to_vec()
                };
            }
        }
        if self.sub == b"both" {
            self.sh.state[self.idx].fetch_or(CONTACT_BOTH, Ordering::Relaxed);
        }
    }
}

impl Peer for StarContact {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        if approve_subscribe(el, out, &self.sh, |from| from == self.hub.as_slice()) {
            return;
        }
        if is_roster_push(el) {
            self.absorb(el);
        }
        auto_reply(el, out);
    }

    fn on_roster(&mut self, result: &[u8]) {
        self.absorb(result);
    }

    fn on_go(&mut self, _i: usize, out: &mut Vec<u8>) {
        if !self.asked && !matches!(self.sub.as_slice(), b"to" | b"both") {
            self.asked = true;
            out.extend_from_slice(b"<presence type='subscribe' to='");
            out.extend_from_slice(&self.hub);
            out.extend_from_slice(b"'/>");
        }
    }
}

/// Mutual subscriptions between the hub (offset 0) and offsets 1..=N, `window` contacts
/// in progress at a time: the hub and the contact both ask, both approve.
pub async fn setup_star(run: &Run, a: &SetupStarArgs) -> Res<Report> {
    let n = a.contacts;
    if n == 0 || a.window == 0 {
        return Err("--contacts and --window must be at least 1".into());
    }
    let sh = Arc::new(StarShared {
        state: (0..n).map(|_| AtomicU8::new(0)).collect(),
        approvals: AtomicU64::new(0),
    });
    let hub_acct = run.names.account(0);
    let hub_jid = escaped_bare(&hub_acct);
    let jids: Vec<Vec<u8>> = (1..=n)
        .map(|i| escaped_bare(&run.names.account(i)))
        .collect();
    let index = jids.iter().cloned().zip(0..).collect();
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let tally = Arc::new(Counters::default());
    let (quit_tx, quit) = watch::channel(false);
    let t0 = Instant::now();
    let (hub_tx, hub_rx) = mpsc::unbounded_channel();
    let mut handles = vec![spawn_peer(
        run,
        0,
        &sem,
        &tally,
        quit.clone(),
        true,
        hub_rx,
        StarHub {
            jids,
            index,
            subs: vec![None; n],
            sh: sh.clone(),
        },
    )];
    let mut go = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        go.push(tx);
        let peer = StarContact {
            idx: i,
            hub: hub_jid.clone(),
            sub: b"none".to_vec(),
            asked: false,
            sh: sh.clone(),
        };
        handles.push(spawn_peer(
            run,
            i + 1,
            &sem,
            &tally,
            quit.clone(),
            true,
            rx,
            peer,
        ));
    }
    if let Err(e) = all_online(run, "setup-star login", &tally, n + 1).await {
        let _ = quit_tx.send(true);
        join_all(handles).await;
        return Err(e);
    }
    let login_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let both = HUB_BOTH | CONTACT_BOTH;
    let mut next = 0usize;
    let mut last_log = Instant::now();
    let complete = loop {
        let done = sh.state[..next]
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == both)
            .count();
        if done == n {
            break true;
        }
        if tally.failed() > 0 || t1.elapsed() >= Duration::from_secs(a.wait) {
            eprintln!("setup-star: gave up with {done}/{n} contacts mutual");
            break false;
        }
        while next < n && next - done < a.window {
            // Both sides start together: the hub asks the contact, the contact the hub.
            let _ = hub_tx.send(next);
            let _ = go[next].send(next);
            next += 1;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            eprintln!(
                "[{:6.1}s] setup-star: {done}/{n} contacts mutual, {} approvals",
                t1.elapsed().as_secs_f64(),
                sh.approvals.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let sub_s = t1.elapsed().as_secs_f64();
    let approvals = sh.approvals.load(Ordering::Relaxed);
    let _ = quit_tx.send(true);
    join_all(handles).await;
    if !complete {
        return Err(format!(
            "setup-star: not every contact reached a mutual subscription (failed sessions: {}, first: {})",
            tally.failed(),
            tally.first_error().unwrap_or_default()
        )
        .into());
    }
    let j = json!({
        "scenario": "setup-star",
        "contacts": n,
        "window": a.window,
        "approvals": approvals,
        "login_s": login_s,
        "subscribe_phase_s": sub_s,
        "total_s": t0.elapsed().as_secs_f64(),
    });
    let lines = vec![
        format!(
            "setup-star: hub {} has mutual subscriptions with {n} contacts",
            hub_acct.bare()
        ),
        format!("  login phase     {login_s:.2} s"),
        format!(
            "  subscriptions   {approvals} approvals in {sub_s:.2} s (window {})",
            a.window
        ),
    ];
    Ok(Report { lines, json: j })
}

// ------------------------------------------------------------------ roster-login

/// Hub presences seen by the online contacts.
#[derive(Default)]
struct Seen {
    available: AtomicU64,
    unavailable: AtomicU64,
}

/// An online contact: counts the hub's presence broadcasts.
struct Watcher {
    hub: Vec<u8>,
    seen: Arc<Seen>,
}

impl Peer for Watcher {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        if xml::name(el) != b"presence" {
            auto_reply(el, out);
            return;
        }
        if xml::attr(el, b"from").map(bare_of) != Some(self.hub.as_slice()) {
            return;
        }
        match xml::attr(el, b"type") {
            None => self.seen.available.fetch_add(1, Ordering::Relaxed),
            Some(b"unavailable") => self.seen.unavailable.fetch_add(1, Ordering::Relaxed),
            Some(_) => 0,
        };
    }
}

/// One measured login of the hub.
struct LoginSample {
    /// Connect through bind.
    login_ms: f64,
    /// Roster get round trip.
    roster_ms: f64,
    /// Initial presence sent until the hub had every online contact's presence and every
    /// online contact had the hub's.
    presence_ms: f64,
    total_ms: f64,
    /// Server CPU (thread run times) in the same phases.
    cpu_login_ms: Option<f64>,
    cpu_roster_ms: Option<f64>,
    cpu_presence_ms: Option<f64>,
    cpu_total_ms: Option<f64>,
    /// The same total from /proc/PID/stat (10 ms ticks).
    stat_total_ms: Option<f64>,
    items: usize,
    presences: usize,
}

/// Polls (every millisecond) until `cond` holds or `deadline` passes.
async fn until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn hub_login(
    run: &Run,
    acct: &Account,
    online: usize,
    seen: &Seen,
    pid: Option<u32>,
    wait: Duration,
) -> Res<LoginSample> {
    let me = escaped_bare(acct);
    let (avail0, unavail0) = (
        seen.available.load(Ordering::Relaxed),
        seen.unavailable.load(Ordering::Relaxed),
    );
    let deadline = Instant::now() + wait;
    let c0 = cpu_sample(pid);
    let t0 = Instant::now();
    let mut conn = conn::login(&run.ctx, 0, acct).await?;
    let (t_login, c_login) = (t0.elapsed(), cpu_sample(pid));
    let mut other = |el: &[u8], out: &mut Vec<u8>| {
        auto_reply(el, out);
    };
    let result = conn.roster_get(&mut other).await?;
    let items = xml::each_tag(&result, b"item").count();
    let (t_roster, c_roster) = (t0.elapsed(), cpu_sample(pid));
    conn.wbuf.extend_from_slice(b"<presence/>");
    conn.flush().await?;
    let mut from: HashSet<Vec<u8>> = HashSet::with_capacity(online);
    while from.len() < online {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(left, conn.next_element()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!(
                    "hub saw {} of {online} contacts' presence in time",
                    from.len()
                )
                .into());
            }
        };
        let el = conn.rd.bytes(r);
        if xml::name(el) == b"presence" {
            if xml::attr(el, b"type").is_none()
                && let Some(f) = xml::attr(el, b"from").map(bare_of)
                && f != me.as_slice()
            {
                from.insert(f.to_vec());
            }
        } else if auto_reply(el, &mut conn.wbuf) {
            conn.flush().await?;
        }
    }
    let fanned_out = until(deadline, || {
        seen.available.load(Ordering::Relaxed) >= avail0 + online as u64
    })
    .await;
    let (t_done, c_done) = (t0.elapsed(), cpu_sample(pid));
    if !fanned_out {
        return Err(format!(
            "only {} of {online} online contacts got the hub's presence in time",
            seen.available.load(Ordering::Relaxed) - avail0
        )
        .into());
    }
    conn.close().await;
    // The hub's unavailable broadcast is not measured, but must be over before the next
    // login starts.
    if !until(deadline, || {
        seen.unavailable.load(Ordering::Relaxed) >= unavail0 + online as u64
    })
    .await
    {
        return Err("the hub's unavailable presence did not reach every online contact".into());
    }
    Ok(LoginSample {
        login_ms: ms(t_login),
        roster_ms: ms(t_roster - t_login),
        presence_ms: ms(t_done - t_roster),
        total_ms: ms(t_done),
        cpu_login_ms: c_login.ms_since(&c0),
        cpu_roster_ms: c_roster.ms_since(&c_login),
        cpu_presence_ms: c_done.ms_since(&c_roster),
        cpu_total_ms: c_done.ms_since(&c0),
        stat_total_ms: c_done.stat_ms_since(&c0),
        items,
        presences: from.len(),
    })
}

/// The hub (offset 0) logs in `repeat` times while contacts 1..=M are online.
pub async fn roster_login(run: &Run, a: &RosterLoginArgs) -> Res<Report> {
    if a.online > a.contacts || a.repeat == 0 {
        return Err("--online must be at most --contacts, --repeat at least 1".into());
    }
    let hub = run.names.account(0);
    let seen = Arc::new(Seen::default());
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let tally = Arc::new(Counters::default());
    let (quit_tx, quit) = watch::channel(false);
    let mut handles = Vec::with_capacity(a.online);
    for i in 1..=a.online {
        // No controller: the channel is closed at once.
        let (_, rx) = mpsc::unbounded_channel();
        let w = Watcher {
            hub: escaped_bare(&hub),
            seen: seen.clone(),
        };
        handles.push(spawn_peer(run, i, &sem, &tally, quit.clone(), false, rx, w));
    }
    let rss0 = a.server_pid.and_then(stats::rss_kib);
    if let Err(e) = all_online(run, "roster-login contacts", &tally, a.online).await {
        let _ = quit_tx.send(true);
        join_all(handles).await;
        return Err(e);
    }
    eprintln!("roster-login: {} contacts online", a.online);
    // Let the contacts' own login work (probes, broadcasts) settle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = a.server_pid.and_then(stats::rss_kib);
    let mut samples = Vec::with_capacity(a.repeat);
    let mut error = None;
    for k in 0..a.repeat {
        match hub_login(
            run,
            &hub,
            a.online,
            &seen,
            a.server_pid,
            Duration::from_secs(a.wait),
        )
        .await
        {
            Ok(s) => {
                eprintln!(
                    "roster-login {}/{}: {:.1} ms, server CPU {:.1} ms, {} items, {} presences",
                    k + 1,
                    a.repeat,
                    s.total_ms,
                    s.cpu_total_ms.unwrap_or(0.0),
                    s.items,
                    s.presences
                );
                samples.push(s);
            }
            Err(e) => {
                eprintln!("roster-login {}/{}: {e}", k + 1, a.repeat);
                error = Some(e.to_string());
                break;
            }
        }
        // Anything the server still does for the last login stays out of the next one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss2 = a.server_pid.and_then(stats::rss_kib);
    let _ = quit_tx.send(true);
    join_all(handles).await;
    let short_items = samples.iter().filter(|s| s.items < a.contacts).count();
    let col =
        |f: fn(&LoginSample) -> Option<f64>| -> Vec<f64> { samples.iter().filter_map(f).collect() };
    let mut j = json!({
        "scenario": "roster-login",
        "contacts": a.contacts,
        "online": a.online,
        "repeat": a.repeat,
        "ok": samples.len(),
        "failed": a.repeat - samples.len(),
        "roster_items": samples.first().map(|s| s.items),
        "short_rosters": short_items,
        "complete": error.is_none() && short_items == 0,
        "first_error": error,
        "server_rss_before_kib": rss0,
        "server_rss_contacts_online_kib": rss1,
        "server_rss_end_kib": rss2,
    });
    let mut lines = vec![format!(
        "roster-login: {}/{} logins of {} ({} contacts, {} online), roster items {}",
        samples.len(),
        a.repeat,
        hub.bare(),
        a.contacts,
        a.online,
        samples.first().map_or(0, |s| s.items)
    )];
    let figures: [(&str, &str, Vec<f64>); 9] = [
        ("wall_total", "ms", col(|s| Some(s.total_ms))),
        ("wall_login", "ms", col(|s| Some(s.login_ms))),
        ("wall_roster", "ms", col(|s| Some(s.roster_ms))),
        ("wall_presence", "ms", col(|s| Some(s.presence_ms))),
        ("cpu_total", "ms", col(|s| s.cpu_total_ms)),
        ("cpu_login", "ms", col(|s| s.cpu_login_ms)),
        ("cpu_roster", "ms", col(|s| s.cpu_roster_ms)),
        ("cpu_presence", "ms", col(|s| s.cpu_presence_ms)),
        ("stat_cpu_total", "ms", col(|s| s.stat_total_ms)),
    ];
    for (name, unit, v) in &figures {
        if v.is_empty() {
            continue;
        }
        let (sj, line) = spread(name, unit, v);
        merge(&mut j, sj);
        lines.push(line);
    }
    if let Some(first) = samples.first() {
        merge(
            &mut j,
            json!({"first_wall_total_ms": first.total_ms, "first_cpu_total_ms": first.cpu_total_ms}),
        );
        lines.push(format!(
            "  first login     {:.2} ms wall, {:.2} ms server CPU",
            first.total_ms,
            first.cpu_total_ms.unwrap_or(0.0)
        ));
    }
    if let (Some(a0), Some(a1)) = (rss0, rss1) {
        lines.push(format!(
            "  server RSS KiB  before {a0}  contacts online {a1}  end {}",
            rss2.unwrap_or(0)
        ));
    }
    Ok(Report { lines, json: j })
}

// ----------------------------------------------------------------- offline-queue

/// `SEQ RUN` at the start of a body.
fn parse_queued(el: &[u8]) -> Option<(u64, &[u8])> {
    let body = xml::child_text(el, b"body")?;
    let mut it = body.split(|&c| c == b' ');
    let seq = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    Some((seq, it.next()?))
}

/// Logs `acct` in with presence and collects what arrives until the stream has been
/// quiet for `quiet`: the messages of run `run_id`, and of any other run.
async fn collect_queue(
    run: &Run,
    idx: usize,
    acct: &Account,
    run_id: &[u8],
    quiet: Duration,
) -> Res<(u64, u64)> {
    let (mut ours, mut others) = (0u64, 0u64);
    let mut count = |el: &[u8]| {
        if xml::name(el) == b"message" {
            match parse_queued(el) {
                Some((_, r)) if r == run_id => ours += 1,
                _ => others += 1,
            }
        }
    };
    let mut conn = conn::login(&run.ctx, idx, acct).await?;
    conn.presence_sync(&mut |el, out| {
        count(el);
        auto_reply(el, out);
    })
    .await?;
    loop {
        match tokio::time::timeout(quiet, conn.next_element()).await {
            Err(_) => break,
            Ok(r) => {
                let el = conn.rd.bytes(r?);
                count(el);
                if auto_reply(el, &mut conn.wbuf) {
                    conn.flush().await?;
                }
            }
        }
    }
    conn.close().await;
    Ok((ours, others))
}

struct QueueRound {
    store_s: f64,
    store_cpu_ms: Option<f64>,
    bounced: u64,
    login_ms: f64,
    first_ms: f64,
    last_ms: f64,
    cpu_ms: Option<f64>,
    cpu_settled_ms: Option<f64>,
    stat_cpu_ms: Option<f64>,
    received: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    others: u64,
    rss_before_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    redelivered: u64,
}

/// The sender (offset 0) queues `messages` for the offline receiver (offset 1), one
/// stanza per write; returns (seconds, server CPU, bounces).
async fn queue_messages(
    run: &Run,
    a: &OfflineQueueArgs,
    run_id: &str,
) -> Res<(f64, Option<f64>, u64)> {
    let to = run.names.account(1).bare();
    let mut bounced = 0u64;
    let mut count = |el: &[u8], out: &mut Vec<u8>| {
        if xml::name(el) == b"message" && xml::attr(el, b"type") == Some(b"error") {
            bounced += 1;
        }
        auto_reply(el, out);
    };
    let mut conn = conn::login(&run.ctx, 0, &run.names.account(0)).await?;
    conn.presence_sync(&mut count).await?;
    let mut prefix = b"<message type='chat' to='".to_vec();
    xml::escape_into(&mut prefix, &to);
    prefix.extend_from_slice(b"'><body>");
    let pad = vec![b'x'; a.body_bytes];
    let c0 = cpu_sample(a.server_pid);
    let t0 = Instant::now();
    for seq in 0..a.messages {
        conn.wbuf.extend_from_slice(&prefix);
        let before = conn.wbuf.len();
        let _ = write!(conn.wbuf, "{seq} {run_id} ");
        let used = conn.wbuf.len() - before;
        if used < a.body_bytes {
            conn.wbuf.extend_from_slice(&pad[..a.body_bytes - used]);
        }
        conn.wbuf.extend_from_slice(b"</body></message>");
        conn.flush().await?;
        // The server handles a session's stanzas in order: the answer to this ping means
        // every message before it is stored.
        if (seq + 1) % a.sync_every.max(1) == 0 || seq + 1 == a.messages {
            let id = format!("q{seq}");
            let _ = write!(
                conn.wbuf,
                "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
            );
            conn.flush().await?;
            conn.await_iq(id.as_bytes(), &mut count).await?;
        }
    }
    let store_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_sample(a.server_pid).ms_since(&c0);
    conn.close().await;
    Ok((store_s, cpu, bounced))
}

async fn queue_round(run: &Run, a: &OfflineQueueArgs, round: usize) -> Res<QueueRound> {
    let receiver = run.names.account(1);
    let run_id = format!("r{:08x}{round}", rand::random::<u32>());
    let quiet = Duration::from_millis(500);
    let wait = Duration::from_secs(a.wait);
    // Whatever an earlier run left queued is delivered now, not in the measured login.
    let (_, left) = collect_queue(run, 1, &receiver, run_id.as_bytes(), quiet).await?;
    if left > 0 {
        eprintln!("offline-queue: {left} messages left by an earlier run delivered first");
    }
    // The server ends the receiver's session after its stream: give it a moment, so no
    // message can reach the closing session instead of the queue.
    tokio::time::sleep(quiet).await;
    eprintln!("offline-queue: queueing {} messages", a.messages);
    let (store_s, store_cpu_ms, bounced) =
        tokio::time::timeout(wait, queue_messages(run, a, &run_id))
            .await
            .map_err(|_| "queueing the messages timed out")??;
    eprintln!(
        "offline-queue: queued in {store_s:.2} s ({:.0} msgs/s), {bounced} bounced; receiver logs in",
        a.messages as f64 / store_s.max(1e-9)
    );
    tokio::time::sleep(quiet).await;
    let n = a.messages;
    let mut got = vec![false; n];
    let (mut received, mut distinct, mut duplicates, mut out_of_order, mut others) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut next = 0u64;
    let rss_before = a.server_pid.and_then(stats::rss_kib);
    let mut rss_peak = rss_before;
    let deadline = Instant::now() + wait;
    let c0 = cpu_sample(a.server_pid);
    let t0 = Instant::now();
    let mut conn = conn::login(&run.ctx, 1, &receiver).await?;
    let login_ms = ms(t0.elapsed());
    conn.wbuf.extend_from_slice(b"<presence/>");
    conn.flush().await?;
    let (mut first_ms, mut last_ms) = (0.0, 0.0);
    while (distinct as usize) < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(left, conn.next_element()).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        let el = conn.rd.bytes(r);
        if xml::name(el) != b"message" {
            if auto_reply(el, &mut conn.wbuf) {
                conn.flush().await?;
            }
            continue;
        }
        let Some((seq, _)) = parse_queued(el).filter(|(_, id)| *id == run_id.as_bytes()) else {
            others += 1;
            continue;
        };
        let now = ms(t0.elapsed());
        if received == 0 {
            first_ms = now;
        }
        last_ms = now;
        received += 1;
        match got.get_mut(seq as usize) {
            Some(g) if *g => duplicates += 1,
            Some(g) => {
                *g = true;
                distinct += 1;
            }
            None => others += 1,
        }
        if seq != next {
            out_of_order += 1;
        }
        next = seq + 1;
        if received % 1000 == 0 {
            let rss = a.server_pid.and_then(stats::rss_kib);
            rss_peak = rss_peak.max(rss);
        }
    }
    let c1 = cpu_sample(a.server_pid);
    // Deleting the delivered messages follows the last write: let it finish.
    tokio::time::sleep(quiet).await;
    let c2 = cpu_sample(a.server_pid);
    conn.close().await;
    tokio::time::sleep(quiet).await;
    // Everything delivered must be gone from the queue now.
    let (redelivered, _) = collect_queue(run, 1, &receiver, run_id.as_bytes(), quiet).await?;
    Ok(QueueRound {
        store_s,
        store_cpu_ms,
        bounced,
        login_ms,
        first_ms,
        last_ms,
        cpu_ms: c1.ms_since(&c0),
        cpu_settled_ms: c2.ms_since(&c0),
        stat_cpu_ms: c1.stat_ms_since(&c0),
        received,
        distinct,
        duplicates,
        out_of_order,
        others,
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        redelivered,
    })
}

/// N messages queued for an offline account, then delivered at its login.
pub async fn offline_queue(run: &Run, a: &OfflineQueueArgs) -> Res<Report> {
    if a.messages == 0 || a.repeat == 0 {
        return Err("--messages and --repeat must be at least 1".into());
    }
    let n = a.messages as u64;
    let mut rounds = Vec::with_capacity(a.repeat);
    let mut lines = vec![format!(
        "offline-queue: {} messages of {} bytes from {} to offline {}, {} round(s)",
        a.messages,
        a.body_bytes,
        run.names.account(0).bare(),
        run.names.account(1).bare(),
        a.repeat
    )];
    for k in 0..a.repeat {
        let r = queue_round(run, a, k).await?;
        let per_msg = |c: Option<f64>| c.map_or(0.0, |c| c * 1e3 / n as f64);
        lines.push(format!(
            "  round {}: queued in {:.2} s ({:.1} µs server CPU/msg, {} bounced); delivered {}/{n} ({} duplicates, {} out of order) in {:.0} ms from connect (login {:.1}, first {:.1}), server CPU {:.0} ms ({:.1} µs/msg; {:.0} ms with the deletions), left queued {}, server RSS {} -> peak {} KiB",
            k + 1,
            r.store_s,
            per_msg(r.store_cpu_ms),
            r.bounced,
            r.distinct,
            r.duplicates,
            r.out_of_order,
            r.last_ms,
            r.login_ms,
            r.first_ms,
            r.cpu_ms.unwrap_or(0.0),
            per_msg(r.cpu_ms),
            r.cpu_settled_ms.unwrap_or(0.0),
            r.redelivered,
            r.rss_before_kib.unwrap_or(0),
            r.rss_peak_kib.unwrap_or(0),
        ));
        rounds.push(r);
    }
    let col =
        |f: fn(&QueueRound) -> Option<f64>| -> Vec<f64> { rounds.iter().filter_map(f).collect() };
    let lost: u64 = rounds.iter().map(|r| n - r.distinct).sum();
    let duplicates: u64 = rounds.iter().map(|r| r.duplicates + r.redelivered).sum();
    let out_of_order: u64 = rounds.iter().map(|r| r.out_of_order).sum();
    let bounced: u64 = rounds.iter().map(|r| r.bounced).sum();
    let mut j = json!({
        "scenario": "offline-queue",
        "messages": a.messages,
        "body_bytes": a.body_bytes,
        "repeat": a.repeat,
        "lost": lost,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "bounced": bounced,
        "foreign_messages": rounds.iter().map(|r| r.others).sum::<u64>(),
        "received": rounds.iter().map(|r| r.received).sum::<u64>(),
        "complete": lost == 0 && duplicates == 0 && out_of_order == 0 && bounced == 0,
        "server_rss_before_deliver_kib": rounds.first().and_then(|r| r.rss_before_kib),
        "server_rss_peak_kib": rounds.iter().filter_map(|r| r.rss_peak_kib).max(),
    });
    let figures: [(&str, &str, Vec<f64>); 7] = [
        ("deliver_wall", "ms", col(|r| Some(r.last_ms))),
        ("deliver_login", "ms", col(|r| Some(r.login_ms))),
        ("deliver_first", "ms", col(|r| Some(r.first_ms))),
        ("deliver_cpu", "ms", col(|r| r.cpu_ms)),
        ("deliver_cpu_settled", "ms", col(|r| r.cpu_settled_ms)),
        ("deliver_stat_cpu", "ms", col(|r| r.stat_cpu_ms)),
        ("store_wall", "s", col(|r| Some(r.store_s))),
    ];
    for (name, unit, v) in &figures {
        let (sj, line) = spread(name, unit, v);
        merge(&mut j, sj);
        lines.push(line);
    }
    let store_cpu = col(|r| r.store_cpu_ms);
    if !store_cpu.is_empty() {
        let us = mean(&store_cpu) * 1e3 / n as f64;
        merge(&mut j, json!({"store_cpu_us_per_msg": us}));
    }
    let deliver_cpu = col(|r| r.cpu_ms);
    if !deliver_cpu.is_empty() {
        let us = quantile(&deliver_cpu, 0.5) * 1e3 / n as f64;
        merge(&mut j, json!({"deliver_cpu_us_per_msg_p50": us}));
    }
    Ok(Report { lines, json: j })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.99), 5.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(mean(&v), 3.0);
    }

    #[test]
    fn queued_body() {
        let el = b"<message from='a@b/c'><body>42 r00ff x</body><delay/></message>";
        assert_eq!(parse_queued(el), Some((42, &b"r00ff"[..])));
        assert_eq!(parse_queued(b"<message><body>x</body></message>"), None);
    }

    #[test]
    fn roster_item_attrs() {
        let el = b"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='u2@x' subscription='both'/><item jid='u3@x'/></query></iq>";
        let v: Vec<_> = roster_items(el).collect();
        assert_eq!(
            v,
            vec![(&b"u2@x"[..], &b"both"[..]), (&b"u3@x"[..], &b"none"[..])]
        );
        assert!(is_roster_push(el));
    }

    #[test]
    fn cpu_delta_counts_new_threads() {
        let before = CpuSample {
            stat_ns: Some(10_000_000),
            threads: HashMap::from([(1, 100), (2, 200)]),
        };
        let after = CpuSample {
            stat_ns: Some(30_000_000),
            threads: HashMap::from([(1, 1_000_100), (3, 500_000)]),
        };
        assert_eq!(after.ms_since(&before), Some(1.5));
        assert_eq!(after.stat_ms_since(&before), Some(20.0));
    }
}
