//! The load scenarios. Each runs one task per connection; the controller only polls
//! shared counters, so the hot paths are the connection tasks themselves.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::conn::{self, Conn, Ctx, FastDevice, Names, OnElement, Res, auto_reply, ignore_other};
use crate::stats::{self, Histogram, ms, now_ns};
use crate::xml::{self, Frame};

/// Phases broadcast to connection tasks.
const LOGIN: u8 = 0;
const RUN: u8 = 1;
const DRAIN: u8 = 2;
const QUIT: u8 = 3;

/// Everything a scenario needs from the command line.
pub struct Run {
    pub ctx: Arc<Ctx>,
    pub names: Names,
    pub concurrency: usize,
    /// Upper bound for any single wait inside a scenario.
    pub limit: Duration,
}

/// Human-readable lines plus the JSON object printed as the `JSON ` line.
pub struct Report {
    pub lines: Vec<String>,
    pub json: Value,
}

/// Login/failure bookkeeping shared by a scenario's tasks.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) ready: AtomicUsize,
    failed: AtomicUsize,
    done: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// XEP-0198: sessions the server answered `<enable/>` with `<enabled/>`, and of
    /// those, resumable ones (an id and `resume='true'`).
    sm_enabled: AtomicUsize,
    sm_resumable: AtomicUsize,
    /// XEP-0198, summed over sessions at their end: `<a/>` sent, stanzas counted.
    sm_answered: AtomicU64,
    sm_handled: AtomicU64,
}

impl Counters {
    pub(crate) fn fail(&self, what: &str, e: &conn::Error) {
        let n = self.failed.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
            eprintln!("{what}: {e}");
        }
        if let Ok(mut g) = self.first_error.lock()
            && g.is_none()
        {
            *g = Some(format!("{what}: {e}"));
        }
    }

    pub(crate) fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|g| g.clone())
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes, printing `status` to
/// stderr once a second. Returns whether `done` held.
pub(crate) async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    status: impl Fn() -> String,
) -> bool {
    let start = Instant::now();
    let mut last = start;
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            eprintln!(
                "{what}: gave up after {:.1} s ({})",
                limit.as_secs_f64(),
                status()
            );
            return false;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "[{:6.1}s] {what}: {}",
                start.elapsed().as_secs_f64(),
                status()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for the tasks to finish after QUIT; stragglers are aborted.
pub(crate) async fn join_all(handles: Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            abort.abort();
        }
    }
}

/// Handles buffered and newly read elements until the phase reaches `until`. Frames
/// already in the buffer are handled before reading again: a read can carry more than
/// the element its caller was waiting for.
async fn hold(
    conn: &mut Conn,
    phase: &mut watch::Receiver<u8>,
    until: u8,
    on: &mut OnElement<'_>,
) -> Res<()> {
    loop {
        while let Some(f) = conn.rd.next_frame()? {
            match f {
                Frame::Element(r) => {
                    let el = conn.rd.bytes(r);
                    // Stream management counts stanzas and answers `<r/>` first.
                    if let Some(sm) = conn.sm.as_mut()
                        && sm.observe(el, &mut conn.wbuf)
                    {
                        continue;
                    }
                    on(el, &mut conn.wbuf)
                }
                Frame::Close => return Err("server closed the stream".into()),
                Frame::Header(_) => {}
            }
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        if *phase.borrow_and_update() >= until {
            return Ok(());
        }
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            r = conn.read_more() => {
                if r? == 0 {
                    return Err("connection closed by the server".into());
                }
            }
        }
    }
}

fn gen_cpu_json(cpu: Duration, wall: Duration) -> Value {
    json!({
        "gen_cpu_s": cpu.as_secs_f64(),
        "gen_cpu_pct": 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    })
}

/// Server CPU over a phase, per unit of work: JSON fields plus a summary line.
fn server_cpu(
    pid: Option<u32>,
    before: Option<Duration>,
    wall: Duration,
    units: u64,
    unit: &str,
) -> Option<(Value, String)> {
    let (pid, before) = (pid?, before?);
    let cpu = stats::proc_cpu(pid)?.saturating_sub(before);
    let per_unit_us = cpu.as_secs_f64() * 1e6 / units.max(1) as f64;
    let pct = 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    let j = json!({
        "server_pid": pid,
        "server_cpu_s": cpu.as_secs_f64(),
        "server_cpu_pct": pct,
        format!("server_cpu_us_per_{unit}"): per_unit_us,
        "server_rss_kib": stats::rss_kib(pid),
    });
    let line = format!(
        "  server CPU      {:.2} s ({pct:.0}% of one core), {per_unit_us:.1} µs per {unit}",
        cpu.as_secs_f64()
    );
    Some((j, line))
}

pub(crate) fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

// ---------------------------------------------------------------------------- login

/// How the login scenario authenticates.
#[derive(Clone)]
pub enum LoginMode {
    /// SASL, stream restart, bind IQ.
    Legacy,
    /// SASL2 + SCRAM + Bind2, asking for a FAST token, kept in the account's device.
    FastEnroll(Arc<Vec<FastDevice>>),
    /// SASL2 with the device's FAST token + Bind2 (a rotated token is kept).
    Fast(Arc<Vec<FastDevice>>),
}

impl LoginMode {
    fn name(&self) -> &'static str {
        match self {
            LoginMode::Legacy => "legacy",
            LoginMode::FastEnroll(_) => "sasl2-password",
            LoginMode::Fast(_) => "sasl2-fast",
        }
    }
}

/// One login as `mode` says; returns the connection and whether FAST was used.
async fn login_as(
    ctx: &Ctx,
    i: usize,
    acct: &conn::Account,
    tls: &TlsConnector,
    mode: &LoginMode,
    rotated: &AtomicUsize,
) -> Res<(Conn, bool)> {
    let (devices, fast) = match mode {
        LoginMode::Legacy => {
            return conn::login_with(ctx, i, acct, tls)
                .await
                .map(|c| (c, false));
        }
        LoginMode::FastEnroll(d) => (d, false),
        LoginMode::Fast(d) => (d, true),
    };
    let dev = devices.get(i).ok_or("no FAST device for this account")?;
    let token = if fast {
        Some(
            dev.token()
                .ok_or("no FAST token (the warm-up login did not get one)")?,
        )
    } else {
        None
    };
    let auth = match &token {
        Some(token) => conn::Auth::Fast {
            user_agent: &dev.user_agent,
            token,
        },
        None => conn::Auth::Sasl2Password {
            user_agent: &dev.user_agent,
        },
    };
    let (conn, issued) = conn::login_auth(ctx, i, acct, tls, &auth).await?;
    if let Some(new) = issued {
        if token.as_ref().is_some_and(|t| *t != new) {
            rotated.fetch_add(1, Ordering::Relaxed);
        }
        dev.set_token(new);
    }
    Ok((conn, fast))
}

/// `devices`: one TLS connector per account, kept across passes (returning devices that
/// resume their TLS sessions); `None`: every connection is a new client. `mode`: legacy
/// SASL + bind, or SASL2 with a password (asking for a FAST token) or a FAST token.
pub async fn login(
    run: &Run,
    users: usize,
    presence: bool,
    pid: Option<u32>,
    devices: Option<Arc<Vec<TlsConnector>>>,
    mode: LoginMode,
) -> Res<Report> {
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let hist = Arc::new(Histogram::new());
    let c = Arc::new(Counters::default());
    let resumed = Arc::new(AtomicUsize::new(0));
    let fast_used = Arc::new(AtomicUsize::new(0));
    let rotated = Arc::new(AtomicUsize::new(0));
    let cpu0 = stats::self_cpu();
    let srv0 = pid.and_then(stats::proc_cpu);
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(users);
    for i in 0..users {
        let (sem, hist, c, ctx) = (sem.clone(), hist.clone(), c.clone(), run.ctx.clone());
        let (resumed, devices) = (resumed.clone(), devices.clone());
        let (fast_used, rotated, mode) = (fast_used.clone(), rotated.clone(), mode.clone());
        let acct = run.names.account(i);
        handles.push(tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let tls = devices.as_ref().and_then(|d| d.get(i)).unwrap_or(&ctx.tls);
            let start = now_ns();
            let (mut conn, fast) = match login_as(&ctx, i, &acct, tls, &mode, &rotated).await {
                Ok(r) => r,
                Err(e) => return c.fail(&acct.bare(), &e),
            };
            if conn.tls_resumed() {
                resumed.fetch_add(1, Ordering::Relaxed);
            }
            if presence && let Err(e) = conn.presence_sync(&mut ignore_other).await {
                return c.fail(&acct.bare(), &e);
            }
            hist.record(now_ns() - start);
            if fast {
                fast_used.fetch_add(1, Ordering::Relaxed);
            }
            c.ready.fetch_add(1, Ordering::Relaxed);
            conn.close().await;
            c.done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let finished = || c.done.load(Ordering::Relaxed) + c.failed() >= users;
    wait_for("login", run.limit, finished, || {
        format!(
            "{} logged in, {} failed, {:.0}/s",
            c.ready(),
            c.failed(),
            c.ready() as f64 / t0.elapsed().as_secs_f64()
        )
    })
    .await;
    let wall = t0.elapsed();
    let cpu = stats::self_cpu() - cpu0;
    let srv = server_cpu(pid, srv0, wall, users as u64, "login");
    join_all(handles).await;
    let ok = c.ready();
    let rate = ok as f64 / wall.as_secs_f64();
    let resumed = resumed.load(Ordering::Relaxed);
    let (fast_used, rotated) = (
        fast_used.load(Ordering::Relaxed),
        rotated.load(Ordering::Relaxed),
    );
    let mut j = json!({
        "scenario": "login",
        "users": users,
        "concurrency": run.concurrency,
        "presence": presence,
        "returning_devices": devices.is_some(),
        "auth": mode.name(),
        "ok": ok,
        "failed": c.failed(),
        "tls_resumed": resumed,
        "fast_logins": fast_used,
        "fast_tokens_rotated": rotated,
        "elapsed_s": wall.as_secs_f64(),
        "logins_per_s": rate,
        "latency_p50_ms": ms(hist.quantile(0.5)),
        "latency_p99_ms": ms(hist.quantile(0.99)),
        "latency_max_ms": ms(hist.max()),
        "first_error": c.first_error(),
    });
    merge(&mut j, gen_cpu_json(cpu, wall));
    let mut lines = vec![
        format!(
            "login: {ok}/{users} ok ({} failed) in {:.2} s, concurrency {}",
            c.failed(),
            wall.as_secs_f64(),
            run.concurrency
        ),
        format!("  logins/s        {rate:.1}"),
        format!(
            "  latency ms      p50 {:.2}  p99 {:.2}  max {:.2}",
            ms(hist.quantile(0.5)),
            ms(hist.quantile(0.99)),
            ms(hist.max())
        ),
        format!(
            "  TLS resumed     {resumed} of {ok} logins{}",
            if devices.is_some() {
                " (returning devices)"
            } else {
                " (new clients)"
            }
        ),
        format!(
            "  generator CPU   {:.2} s ({:.0}% of one core)",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        ),
    ];
    match mode {
        LoginMode::Legacy => {}
        LoginMode::FastEnroll(_) => lines.insert(
            4,
            format!("  SASL2           {ok} password logins (SCRAM, Bind2), FAST token each"),
        ),
        LoginMode::Fast(_) => lines.insert(
            4,
            format!(
                "  FAST            {fast_used} of {ok} logins (SASL2 {}, Bind2), {rotated} tokens rotated",
                crate::scram::HT_SHA256_NONE
            ),
        ),
    }
    if let Some((sj, line)) = srv {
        merge(&mut j, sj);
        lines.push(line);
    }
    Ok(Report { lines, json: j })
}

// --------------------------------------------------------------- sessions held open

/// What a held session does after binding, before it is counted as ready.
#[derive(Clone, Copy, Default)]
struct Setup {
    /// XEP-0198 (`<enable resume='true'/>`, waiting for `<enabled/>`) right after
    /// binding, before anything else, as mobile clients do.
    sm: bool,
    /// With `sm`: enable it after initial presence instead (nothing the server sent
    /// before is then counted or kept for an ack).
    sm_after_presence: bool,
    /// Fetch the roster (before initial presence).
    roster_get: bool,
}

/// Logs `users` accounts in (initial presence + sync) and keeps them open until QUIT.
/// `on_el` makes the per-connection element handler from the account index.
fn spawn_sessions<F, H>(
    run: &Run,
    users: usize,
    c: &Arc<Counters>,
    phase: &watch::Receiver<u8>,
    setup: Setup,
    mut make_handler: F,
) -> Vec<JoinHandle<()>>
where
    F: FnMut(usize) -> H,
    H: SessionHandler,
{
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let mut handles = Vec::with_capacity(users);
    for i in 0..users {
        let (sem, c, ctx) = (sem.clone(), c.clone(), run.ctx.clone());
        let mut phase = phase.clone();
        let acct = run.names.account(i);
        let mut h = make_handler(i);
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            if permit.is_err() {
                return;
            }
            let mut conn = match conn::login(&ctx, i, &acct).await {
                Ok(conn) => conn,
                Err(e) => return c.fail(&acct.bare(), &e),
            };
            if setup.sm
                && !setup.sm_after_presence
                && let Err(e) = enable_sm(&mut conn, &ctx, &c).await
            {
                return c.fail(&acct.bare(), &e);
            }
            if setup.roster_get {
                match conn.roster_get(&mut |el, out| h.on_element(el, out)).await {
                    Ok(r) => h.on_roster(&r),
                    Err(e) => return c.fail(&acct.bare(), &e),
                }
            }
            if let Err(e) = conn
                .presence_sync(&mut |el, out| h.on_element(el, out))
                .await
            {
                return c.fail(&acct.bare(), &e);
            }
            if setup.sm
                && setup.sm_after_presence
                && let Err(e) = enable_sm(&mut conn, &ctx, &c).await
            {
                return c.fail(&acct.bare(), &e);
            }
            drop(permit);
            c.ready.fetch_add(1, Ordering::Relaxed);
            // Wait for everyone, then let the handler act (setup-roster subscribes).
            if let Err(e) = hold(&mut conn, &mut phase, RUN, &mut |el, out| {
                h.on_element(el, out)
            })
            .await
            {
                return c.fail(&acct.bare(), &e);
            }
            h.on_run(&mut conn.wbuf);
            if let Err(e) = conn.flush().await {
                return c.fail(&acct.bare(), &e.into());
            }
            if let Err(e) = hold(&mut conn, &mut phase, QUIT, &mut |el, out| {
                h.on_element(el, out)
            })
            .await
            {
                return c.fail(&acct.bare(), &e);
            }
            h.on_quit();
            if let Some(sm) = &conn.sm {
                c.sm_answered.fetch_add(sm.answered, Ordering::Relaxed);
                c.sm_handled
                    .fetch_add(u64::from(sm.handled), Ordering::Relaxed);
            }
            conn.close().await;
        }));
    }
    handles
}

/// XEP-0198 on a held session, counted in `c`.
async fn enable_sm(conn: &mut Conn, ctx: &Ctx, c: &Counters) -> Res<()> {
    conn.enable_sm(ctx.handshake_timeout).await?;
    c.sm_enabled.fetch_add(1, Ordering::Relaxed);
    if conn.sm.as_ref().is_some_and(|s| s.resumable) {
        c.sm_resumable.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Per-connection behaviour of a held session.
trait SessionHandler: Send + 'static {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>);
    fn on_roster(&mut self, _result: &[u8]) {}
    fn on_run(&mut self, _out: &mut Vec<u8>) {}
    /// Called once the session has been told to quit (before closing).
    fn on_quit(&mut self) {}
}

struct Quiet;

impl SessionHandler for Quiet {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        auto_reply(el, out);
    }
}

// ----------------------------------------------------------------------------- idle

/// Idle sessions: `sm` enables XEP-0198 on each (after binding, before presence, or
/// after presence with `sm_after_presence`).
pub async fn idle(
    run: &Run,
    users: usize,
    seconds: u64,
    pid: u32,
    settle: u64,
    (sm, sm_after_presence): (bool, bool),
) -> Res<Report> {
    let rss0 = stats::rss_kib(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))?;
    let c = Arc::new(Counters::default());
    let (tx, rx) = watch::channel(LOGIN);
    let t0 = Instant::now();
    let setup = Setup {
        sm,
        sm_after_presence,
        roster_get: false,
    };
    let handles = spawn_sessions(run, users, &c, &rx, setup, |_| Quiet);
    let ok = wait_for(
        "idle login",
        run.limit,
        || c.ready() + c.failed() >= users,
        || format!("{} online, {} failed", c.ready(), c.failed()),
    )
    .await;
    let login_s = t0.elapsed().as_secs_f64();
    let _ = tx.send(RUN);
    if !ok || c.failed() > 0 {
        let _ = tx.send(QUIT);
        join_all(handles).await;
        return Err(format!(
            "{} of {users} sessions failed to log in (first: {})",
            c.failed(),
            c.first_error().unwrap_or_default()
        )
        .into());
    }
    eprintln!("idle: {users} sessions online after {login_s:.1} s; settling {settle} s");
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss1 = stats::rss_kib(pid).unwrap_or(0);
    eprintln!("idle: holding for {seconds} s (server RSS {rss1} KiB)");
    let hold_until = Instant::now() + Duration::from_secs(seconds);
    wait_for(
        "idle hold",
        Duration::from_secs(seconds + 1),
        || Instant::now() >= hold_until || c.failed() > 0,
        || {
            format!(
                "RSS {} KiB, {} dropped",
                stats::rss_kib(pid).unwrap_or(0),
                c.failed()
            )
        },
    )
    .await;
    let rss2 = stats::rss_kib(pid).unwrap_or(0);
    let dropped = c.failed();
    let _ = tx.send(QUIT);
    join_all(handles).await;
    let per_session = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / users.max(1) as f64;
    let sm_enabled = c.sm_enabled.load(Ordering::Relaxed);
    let sm_resumable = c.sm_resumable.load(Ordering::Relaxed);
    let sm_answered = c.sm_answered.load(Ordering::Relaxed);
    let sm_handled = c.sm_handled.load(Ordering::Relaxed);
    let j = json!({
        "scenario": "idle",
        "users": users,
        "seconds": seconds,
        "login_s": login_s,
        "sm": sm,
        "sm_after_presence": sm && sm_after_presence,
        "sm_enabled": sm_enabled,
        "sm_resumable": sm_resumable,
        "sm_acks_sent": sm_answered,
        "sm_stanzas_received": sm_handled,
        "rss_before_kib": rss0,
        "rss_after_login_kib": rss1,
        "rss_end_kib": rss2,
        "rss_per_session_bytes": per_session,
        "dropped": dropped,
        "first_error": c.first_error(),
    });
    let mut lines = vec![
        format!(
            "idle: {users} TLS sessions with presence{} held {seconds} s ({dropped} dropped)",
            if sm { " and XEP-0198" } else { "" }
        ),
        format!("  server RSS KiB  before {rss0}  after login {rss1}  end {rss2}"),
        format!(
            "  per session     {:.1} KiB ({per_session:.0} bytes)",
            per_session / 1024.0
        ),
        format!("  login phase     {login_s:.2} s"),
    ];
    lines.insert(
        1,
        if sm {
            format!(
                "  XEP-0198        on ({}): {sm_enabled} of {users} enabled ({sm_resumable} resumable), \
                 {sm_answered} <a/> sent for the server's <r/>, {sm_handled} stanzas counted",
                if sm_after_presence {
                    "enabled after presence"
                } else {
                    "enabled before presence"
                }
            )
        } else {
            "  XEP-0198        off".to_string()
        },
    );
    Ok(Report { lines, json: j })
}

// ----------------------------------------------------------------------------- chat

struct Pair {
    sent: AtomicU64,
    received: AtomicU64,
    reordered: AtomicU64,
    notify: Notify,
}

struct ChatShared {
    pairs: Vec<Pair>,
    hist: Histogram,
    measuring: AtomicBool,
    errors: AtomicU64,
}

impl ChatShared {
    fn totals(&self) -> (u64, u64) {
        self.pairs.iter().fold((0, 0), |(s, r), p| {
            (
                s + p.sent.load(Ordering::Acquire),
                r + p.received.load(Ordering::Acquire),
            )
        })
    }
}

pub struct ChatParams {
    pub pairs: usize,
    pub window: u64,
    pub body_bytes: usize,
    /// All of a window in one write (one TLS record, one syscall); by default each
    /// stanza is its own write, as real clients send them.
    pub batched: bool,
    pub seconds: u64,
    pub warmup: u64,
    pub drain: u64,
    pub pid: Option<u32>,
}

/// `SEQ TS` at the start of the body.
fn parse_body(el: &[u8]) -> Option<(u64, u64)> {
    let body = xml::child_text(el, b"body")?;
    let mut it = body.split(|&c| c == b' ');
    let num = |b: &[u8]| -> Option<u64> {
        if b.is_empty() || b.len() > 19 {
            return None;
        }
        b.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    Some((num(it.next()?)?, num(it.next()?)?))
}

async fn sender_loop(
    conn: &mut Conn,
    pair: &Pair,
    to: &str,
    p: (u64, usize, bool),
    phase: &mut watch::Receiver<u8>,
    sh: &ChatShared,
) -> Res<()> {
    let (window, body_bytes, batched) = p;
    let mut prefix = b"<message to='".to_vec();
    xml::escape_into(&mut prefix, to);
    prefix.extend_from_slice(b"' type='chat'><body>");
    let pad = vec![b'x'; body_bytes];
    let mut sent = 0u64;
    loop {
        // Senders receive nothing in normal operation: a message here is a bounce.
        while let Some(f) = conn.rd.next_frame()? {
            match f {
                Frame::Element(r) => {
                    let el = conn.rd.bytes(r);
                    if xml::name(el) == b"message" {
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        auto_reply(el, &mut conn.wbuf);
                    }
                }
                Frame::Close => return Err("server closed the stream".into()),
                Frame::Header(_) => {}
            }
        }
        let ph = *phase.borrow_and_update();
        if ph >= QUIT {
            return Ok(());
        }
        if ph == RUN {
            let recv = pair.received.load(Ordering::Acquire);
            if sent.saturating_sub(recv) < window {
                // Batched: one timestamp and one write per window, all of it leaves
                // together. Otherwise one write (one TLS record) per stanza.
                let mut ts = now_ns();
                while sent.saturating_sub(recv) < window {
                    sent += 1;
                    conn.wbuf.extend_from_slice(&prefix);
                    let before = conn.wbuf.len();
                    let _ = write!(conn.wbuf, "{sent} {ts} ");
                    let used = conn.wbuf.len() - before;
                    if used < body_bytes {
                        conn.wbuf.extend_from_slice(&pad[..body_bytes - used]);
                    }
                    conn.wbuf.extend_from_slice(b"</body></message>");
                    if !batched {
                        // Published before the write so `received` can never overtake it.
                        pair.sent.store(sent, Ordering::Release);
                        conn.flush().await?;
                        ts = now_ns();
                    }
                }
                pair.sent.store(sent, Ordering::Release);
            }
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            _ = pair.notify.notified() => {}
            r = conn.read_more() => {
                if r? == 0 {
                    return Err("connection closed by the server".into());
                }
            }
        }
    }
}

async fn receiver_loop(
    conn: &mut Conn,
    pair: &Pair,
    phase: &mut watch::Receiver<u8>,
    sh: &ChatShared,
) -> Res<()> {
    let mut next_seq = 1u64;
    loop {
        // One clock read per batch of elements: they all arrived in the same read.
        let now = now_ns();
        let measuring = sh.measuring.load(Ordering::Relaxed);
        let mut got = 0u64;
        while let Some(f) = conn.rd.next_frame()? {
            match f {
                Frame::Element(r) => {
                    let el = conn.rd.bytes(r);
                    if xml::name(el) != b"message" {
                        auto_reply(el, &mut conn.wbuf);
                    } else if xml::attr(el, b"type") == Some(b"error") {
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                    } else if let Some((seq, ts)) = parse_body(el) {
                        got += 1;
                        if seq != next_seq {
                            pair.reordered.fetch_add(1, Ordering::Relaxed);
                        }
                        next_seq = seq + 1;
                        if measuring {
                            sh.hist.record(now.saturating_sub(ts));
                        }
                    }
                }
                Frame::Close => return Err("server closed the stream".into()),
                Frame::Header(_) => {}
            }
        }
        if got > 0 {
            pair.received.fetch_add(got, Ordering::Release);
            pair.notify.notify_one();
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        if *phase.borrow_and_update() >= QUIT {
            return Ok(());
        }
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            r = conn.read_more() => {
                if r? == 0 {
                    return Err("connection closed by the server".into());
                }
            }
        }
    }
}

pub async fn chat(run: &Run, p: &ChatParams) -> Res<Report> {
    let users = p.pairs * 2;
    let sh = Arc::new(ChatShared {
        pairs: (0..p.pairs)
            .map(|_| Pair {
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                reordered: AtomicU64::new(0),
                notify: Notify::new(),
            })
            .collect(),
        hist: Histogram::new(),
        measuring: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    let c = Arc::new(Counters::default());
    let (tx, rx) = watch::channel(LOGIN);
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let mut handles = Vec::with_capacity(users);
    let t_login = Instant::now();
    for i in 0..users {
        let (sem, c, ctx, sh) = (sem.clone(), c.clone(), run.ctx.clone(), sh.clone());
        let mut phase = rx.clone();
        let acct = run.names.account(i);
        // Pair k: sender 2k, receiver 2k+1.
        let k = i / 2;
        let is_sender = i % 2 == 0;
        let to = run.names.account(i + 1).bare();
        let params = (p.window, p.body_bytes, p.batched);
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            if permit.is_err() {
                return;
            }
            let mut conn = match conn::login(&ctx, i, &acct).await {
                Ok(conn) => conn,
                Err(e) => return c.fail(&acct.bare(), &e),
            };
            if let Err(e) = conn.presence_sync(&mut ignore_other).await {
                return c.fail(&acct.bare(), &e);
            }
            drop(permit);
            c.ready.fetch_add(1, Ordering::Relaxed);
            let pair = &sh.pairs[k];
            let r = if is_sender {
                sender_loop(&mut conn, pair, &to, params, &mut phase, &sh).await
            } else {
                receiver_loop(&mut conn, pair, &mut phase, &sh).await
            };
            match r {
                Ok(()) => conn.close().await,
                Err(e) => c.fail(&acct.bare(), &e),
            }
        }));
    }
    let ok = wait_for(
        "chat login",
        run.limit,
        || c.ready() + c.failed() >= users,
        || format!("{} online, {} failed", c.ready(), c.failed()),
    )
    .await;
    let login_s = t_login.elapsed().as_secs_f64();
    if !ok || c.failed() > 0 {
        let _ = tx.send(QUIT);
        join_all(handles).await;
        return Err(format!(
            "{} of {users} sessions failed to log in (first: {})",
            c.failed(),
            c.first_error().unwrap_or_default()
        )
        .into());
    }
    let rss_login = p.pid.and_then(stats::rss_kib);
    eprintln!(
        "chat: {users} sessions online after {login_s:.1} s; warm-up {} s, measuring {} s",
        p.warmup, p.seconds
    );
    let _ = tx.send(RUN);
    tokio::time::sleep(Duration::from_secs(p.warmup)).await;

    let (_, d0) = sh.totals();
    let srv0 = p.pid.and_then(stats::proc_cpu);
    let gen0 = stats::self_cpu();
    let t0 = Instant::now();
    sh.measuring.store(true, Ordering::Relaxed);
    let end = t0 + Duration::from_secs(p.seconds);
    wait_for(
        "chat",
        Duration::from_secs(p.seconds + 1),
        || Instant::now() >= end || c.failed() > 0,
        || {
            let (_, d) = sh.totals();
            let rate = (d - d0) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            format!("{rate:.0} msgs/s so far")
        },
    )
    .await;
    sh.measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed();
    let (_, d1) = sh.totals();
    let srv1 = p.pid.and_then(stats::proc_cpu);
    let gen_cpu = stats::self_cpu() - gen0;

    let _ = tx.send(DRAIN);
    let drained = wait_for(
        "chat drain",
        Duration::from_secs(p.drain),
        || {
            let (s, r) = sh.totals();
            s == r
        },
        || {
            let (s, r) = sh.totals();
            format!("{} in flight", s - r)
        },
    )
    .await;
    let (sent, received) = sh.totals();
    let rss_end = p.pid.and_then(stats::rss_kib);
    let _ = tx.send(QUIT);
    join_all(handles).await;

    let delivered = d1 - d0;
    let rate = delivered as f64 / wall.as_secs_f64();
    let lost = sent.saturating_sub(received);
    let reordered: u64 = sh
        .pairs
        .iter()
        .map(|p| p.reordered.load(Ordering::Relaxed))
        .sum();
    let errors = sh.errors.load(Ordering::Relaxed);
    let h = &sh.hist;
    let mut j = json!({
        "scenario": "chat",
        "pairs": p.pairs,
        "window": p.window,
        "batched": p.batched,
        "body_bytes": p.body_bytes,
        "seconds": wall.as_secs_f64(),
        "login_s": login_s,
        "delivered": delivered,
        "msgs_per_s": rate,
        "latency_p50_ms": ms(h.quantile(0.5)),
        "latency_p99_ms": ms(h.quantile(0.99)),
        "latency_p999_ms": ms(h.quantile(0.999)),
        "latency_max_ms": ms(h.max()),
        "latency_mean_ms": h.mean() / 1e6,
        "sent_total": sent,
        "received_total": received,
        "lost": lost,
        "drained": drained,
        "reordered": reordered,
        "errors": errors,
        "session_failures": c.failed(),
        "first_error": c.first_error(),
    });
    merge(&mut j, gen_cpu_json(gen_cpu, wall));
    let mut lines = vec![
        format!(
            "chat: {} pairs, window {}{}, body {} B, {:.1} s measured (after {} s warm-up)",
            p.pairs,
            p.window,
            if p.batched {
                " (batched writes)"
            } else {
                " (one stanza per write)"
            },
            p.body_bytes,
            wall.as_secs_f64(),
            p.warmup
        ),
        format!("  delivered       {delivered} ({rate:.0} msgs/s)"),
        format!(
            "  latency ms      p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.quantile(0.999)),
            ms(h.max())
        ),
        format!(
            "  lost            {lost} (sent {sent}, received {received}{}); reordered {reordered}; errors {errors}",
            if drained { "" } else { ", drain timed out" }
        ),
        format!(
            "  generator CPU   {:.0}% of one core",
            100.0 * gen_cpu.as_secs_f64() / wall.as_secs_f64()
        ),
    ];
    if let (Some(pid), Some(a), Some(b)) = (p.pid, srv0, srv1) {
        let cpu = b.saturating_sub(a);
        let per_msg_us = cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
        merge(
            &mut j,
            json!({
                "server_pid": pid,
                "server_cpu_s": cpu.as_secs_f64(),
                "server_cpu_pct": 100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
                "server_cpu_us_per_msg": per_msg_us,
                "rss_after_login_kib": rss_login,
                "rss_end_kib": rss_end,
            }),
        );
        lines.push(format!(
            "  server CPU      {:.2} s ({:.0}% of one core), {per_msg_us:.2} µs per delivered message",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        ));
        lines.push(format!(
            "  server RSS KiB  after login {}  end {}",
            rss_login.unwrap_or(0),
            rss_end.unwrap_or(0)
        ));
    }
    Ok(Report { lines, json: j })
}

// --------------------------------------------------------------------------- roster

/// Indices of user `i`'s contacts: `R` neighbours on each side, mod `n`.
pub fn contacts(i: usize, n: usize, r: usize) -> Vec<usize> {
    let mut v = BTreeSet::new();
    if n > 1 {
        for j in 1..=r.min(n) {
            v.insert((i + j) % n);
            v.insert((i + n - j % n) % n);
        }
    }
    v.remove(&i);
    v.into_iter().collect()
}

/// The bare JID in a `from`/`jid` attribute value.
fn bare_of(v: &[u8]) -> &[u8] {
    match v.iter().position(|&c| c == b'/') {
        Some(p) => &v[..p],
        None => v,
    }
}

struct RosterShared {
    presences: AtomicU64,
    last_ns: AtomicU64,
    roster_items: AtomicU64,
    complete: AtomicUsize,
    /// Incomplete users reported so far (to bound the output).
    reported: AtomicUsize,
}

struct PresenceCounter {
    me: Vec<u8>,
    expected: usize,
    seen: HashSet<Vec<u8>>,
    complete: bool,
    sh: Arc<RosterShared>,
}

impl SessionHandler for PresenceCounter {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        if xml::name(el) != b"presence" {
            auto_reply(el, out);
            return;
        }
        if xml::attr(el, b"type").is_some() {
            return;
        }
        let Some(from) = xml::attr(el, b"from").map(bare_of) else {
            return;
        };
        if from == self.me.as_slice() {
            return;
        }
        self.sh.presences.fetch_add(1, Ordering::Relaxed);
        self.sh.last_ns.fetch_max(now_ns(), Ordering::Relaxed);
        if !self.complete {
            self.seen.insert(from.to_vec());
            if self.seen.len() >= self.expected {
                self.complete = true;
                self.sh.complete.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_roster(&mut self, result: &[u8]) {
        let n = xml::each_tag(result, b"item").count() as u64;
        self.sh.roster_items.fetch_add(n, Ordering::Relaxed);
    }

    fn on_quit(&mut self) {
        if !self.complete && self.sh.reported.fetch_add(1, Ordering::Relaxed) < 5 {
            let mut seen: Vec<_> = self
                .seen
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect();
            seen.sort();
            eprintln!(
                "roster: {} saw presence from {} of {} contacts: {seen:?}",
                String::from_utf8_lossy(&self.me),
                self.seen.len(),
                self.expected
            );
        }
    }
}

pub async fn roster(
    run: &Run,
    users: usize,
    contacts_r: usize,
    wait: u64,
    pid: Option<u32>,
) -> Res<Report> {
    let sh = Arc::new(RosterShared {
        presences: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        roster_items: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
        reported: AtomicUsize::new(0),
    });
    let c = Arc::new(Counters::default());
    let (tx, rx) = watch::channel(LOGIN);
    let expected_total: usize = (0..users)
        .map(|i| contacts(i, users, contacts_r).len())
        .sum();
    let srv0 = pid.and_then(stats::proc_cpu);
    let gen0 = stats::self_cpu();
    let start_ns = now_ns();
    let t0 = Instant::now();
    let handles = spawn_sessions(
        run,
        users,
        &c,
        &rx,
        Setup {
            roster_get: true,
            ..Setup::default()
        },
        |i| PresenceCounter {
            me: run.names.account(i).bare().into_bytes(),
            expected: contacts(i, users, contacts_r).len(),
            seen: HashSet::new(),
            complete: contacts(i, users, contacts_r).is_empty(),
            sh: sh.clone(),
        },
    );
    // Users without contacts count as complete from the start.
    let trivially = (0..users)
        .filter(|&i| contacts(i, users, contacts_r).is_empty())
        .count();
    sh.complete.fetch_add(trivially, Ordering::Relaxed);
    let logged_in = wait_for(
        "roster login",
        run.limit,
        || c.ready() + c.failed() >= users,
        || {
            format!(
                "{} online, {} presences",
                c.ready(),
                sh.presences.load(Ordering::Relaxed)
            )
        },
    )
    .await;
    let login_s = t0.elapsed().as_secs_f64();
    let _ = tx.send(RUN);
    let complete = logged_in
        && c.failed() == 0
        && wait_for(
            "roster presences",
            Duration::from_secs(wait),
            || sh.complete.load(Ordering::Relaxed) >= users,
            || {
                format!(
                    "{} users complete, {} presences",
                    sh.complete.load(Ordering::Relaxed),
                    sh.presences.load(Ordering::Relaxed)
                )
            },
        )
        .await;
    let presences = sh.presences.load(Ordering::Relaxed);
    let span_ns = sh.last_ns.load(Ordering::Relaxed).saturating_sub(start_ns);
    let rate = presences as f64 / (span_ns as f64 / 1e9).max(1e-9);
    let items = sh.roster_items.load(Ordering::Relaxed);
    let complete_users = sh.complete.load(Ordering::Relaxed);
    // Server CPU for the whole login + presence phase, per login.
    let srv = server_cpu(pid, srv0, t0.elapsed(), users as u64, "login");
    let gen_cpu = stats::self_cpu() - gen0;
    let gen_wall = t0.elapsed();
    let _ = tx.send(QUIT);
    join_all(handles).await;
    let mut j = json!({
        "scenario": "roster",
        "users": users,
        "contacts": contacts_r,
        "ok": c.ready(),
        "failed": c.failed(),
        "roster_items": items,
        "expected_roster_items": expected_total,
        "login_s": login_s,
        "logins_per_s": c.ready() as f64 / login_s.max(1e-9),
        "presences": presences,
        "expected_presences": expected_total,
        "presence_span_s": span_ns as f64 / 1e9,
        "presences_per_s": rate,
        "complete_users": complete_users,
        "complete": complete,
        "first_error": c.first_error(),
    });
    let mut lines = vec![
        format!(
            "roster: {users} users x {} contacts; {} online ({} failed), roster items {items}/{expected_total}",
            2 * contacts_r,
            c.ready(),
            c.failed()
        ),
        format!(
            "  login phase     {login_s:.2} s ({:.0} logins/s incl. roster get + presence)",
            c.ready() as f64 / login_s.max(1e-9)
        ),
        format!(
            "  presences       {presences} delivered (expected {expected_total}) in {:.2} s: {rate:.0}/s",
            span_ns as f64 / 1e9
        ),
        format!("  complete users  {complete_users}/{users}"),
    ];
    merge(&mut j, gen_cpu_json(gen_cpu, gen_wall));
    lines.push(format!(
        "  generator CPU   {:.2} s ({:.0}% of one core)",
        gen_cpu.as_secs_f64(),
        100.0 * gen_cpu.as_secs_f64() / gen_wall.as_secs_f64().max(1e-9)
    ));
    if let Some((sj, line)) = srv {
        merge(&mut j, sj);
        lines.push(line);
    }
    if items < expected_total as u64 {
        eprintln!(
            "roster: only {items} of {expected_total} roster items present: run setup-roster first"
        );
    }
    Ok(Report { lines, json: j })
}

// --------------------------------------------------------------------- setup-roster

struct Subscriber {
    /// Contact bare JIDs (escaped form as sent).
    contacts: Vec<String>,
    /// Subscription state per bare JID, from the roster and its pushes.
    subs: HashMap<Vec<u8>, Vec<u8>>,
    complete: bool,
    approved: u64,
    sh: Arc<SetupShared>,
}

struct SetupShared {
    complete: AtomicUsize,
    approved: AtomicU64,
}

impl Subscriber {
    fn absorb_items(&mut self, el: &[u8]) {
        for item in xml::each_tag(el, b"item") {
            let (Some(jid), Some(sub)) =
                (xml::attr(item, b"jid"), xml::attr(item, b"subscription"))
            else {
                continue;
            };
            if sub == b"remove" {
                self.subs.remove(jid);
            } else {
                self.subs.insert(jid.to_vec(), sub.to_vec());
            }
        }
    }

    fn check(&mut self) {
        if !self.complete
            && self
                .contacts
                .iter()
                .all(|c| self.subs.get(c.as_bytes()).is_some_and(|s| s == b"both"))
        {
            self.complete = true;
            self.sh.complete.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SessionHandler for Subscriber {
    fn on_element(&mut self, el: &[u8], out: &mut Vec<u8>) {
        match xml::name(el) {
            b"presence" if xml::attr(el, b"type") == Some(b"subscribe") => {
                if let Some(from) = xml::attr(el, b"from") {
                    out.extend_from_slice(b"<presence type='subscribed' to='");
                    out.extend_from_slice(bare_of(from));
                    out.extend_from_slice(b"'/>");
                    self.approved += 1;
                    self.sh.approved.fetch_add(1, Ordering::Relaxed);
                }
            }
            b"iq" => {
                if xml::attr(el, b"type") == Some(b"set") && xml::has_child(el, b"query") {
                    self.absorb_items(el);
                }
                auto_reply(el, out);
            }
            _ => {}
        }
        self.check();
    }

    fn on_roster(&mut self, result: &[u8]) {
        self.absorb_items(result);
    }

    fn on_run(&mut self, out: &mut Vec<u8>) {
        for (n, c) in self.contacts.iter().enumerate() {
            let sub = self.subs.get(c.as_bytes()).map(Vec::as_slice);
            if sub.is_none() {
                let _ = write!(
                    out,
                    "<iq type='set' id='rs{n}'><query xmlns='jabber:iq:roster'><item jid='{c}' name='{}'><group>bench</group></item></query></iq>",
                    c.split('@').next().unwrap_or(c)
                );
            }
            if !matches!(sub, Some(b"to") | Some(b"both")) {
                let _ = write!(out, "<presence type='subscribe' to='{c}'/>");
            }
        }
        self.check();
    }
}

pub async fn setup_roster(run: &Run, users: usize, contacts_r: usize, wait: u64) -> Res<Report> {
    let sh = Arc::new(SetupShared {
        complete: AtomicUsize::new(0),
        approved: AtomicU64::new(0),
    });
    let c = Arc::new(Counters::default());
    let (tx, rx) = watch::channel(LOGIN);
    let t0 = Instant::now();
    let roster = Setup {
        roster_get: true,
        ..Setup::default()
    };
    let handles = spawn_sessions(run, users, &c, &rx, roster, |i| {
        let mut contacts: Vec<String> = contacts(i, users, contacts_r)
            .into_iter()
            .map(|j| {
                let mut v = Vec::new();
                xml::escape_into(&mut v, &run.names.account(j).bare());
                String::from_utf8_lossy(&v).into_owned()
            })
            .collect();
        contacts.sort();
        Subscriber {
            contacts,
            subs: HashMap::new(),
            complete: false,
            approved: 0,
            sh: sh.clone(),
        }
    });
    let logged_in = wait_for(
        "setup-roster login",
        run.limit,
        || c.ready() + c.failed() >= users,
        || format!("{} online, {} failed", c.ready(), c.failed()),
    )
    .await;
    if !logged_in || c.failed() > 0 {
        let _ = tx.send(QUIT);
        join_all(handles).await;
        return Err(format!(
            "{} of {users} sessions failed to log in (first: {})",
            c.failed(),
            c.first_error().unwrap_or_default()
        )
        .into());
    }
    let t1 = Instant::now();
    let _ = tx.send(RUN);
    let complete = wait_for(
        "setup-roster subscriptions",
        Duration::from_secs(wait),
        || sh.complete.load(Ordering::Relaxed) >= users,
        || {
            format!(
                "{}/{users} users complete, {} approvals",
                sh.complete.load(Ordering::Relaxed),
                sh.approved.load(Ordering::Relaxed)
            )
        },
    )
    .await;
    let sub_s = t1.elapsed().as_secs_f64();
    let done = sh.complete.load(Ordering::Relaxed);
    let approved = sh.approved.load(Ordering::Relaxed);
    let _ = tx.send(QUIT);
    join_all(handles).await;
    if !complete {
        return Err(format!("only {done} of {users} users reached mutual subscriptions").into());
    }
    let j = json!({
        "scenario": "setup-roster",
        "users": users,
        "contacts": contacts_r,
        "complete_users": done,
        "approvals": approved,
        "subscribe_phase_s": sub_s,
        "total_s": t0.elapsed().as_secs_f64(),
    });
    let lines = vec![
        format!(
            "setup-roster: {done}/{users} users have mutual subscriptions with their {} neighbours",
            2 * contacts_r
        ),
        format!("  approvals sent  {approved} in {sub_s:.2} s"),
    ];
    Ok(Report { lines, json: j })
}

// ------------------------------------------------------------------------------ muc

pub struct MucParams {
    pub occupants: usize,
    pub senders: usize,
    pub window: u64,
    pub body_bytes: usize,
    pub seconds: u64,
    pub warmup: u64,
    pub drain: u64,
    /// The room's bare JID.
    pub room: String,
    pub pid: Option<u32>,
}

struct MucShared {
    /// Per sender: messages sent, and its own copies back from the room (flow control).
    sent: Vec<AtomicU64>,
    echoed: Vec<AtomicU64>,
    /// Copies received by all occupants together.
    delivered: AtomicU64,
    hist: Histogram,
    measuring: AtomicBool,
    errors: AtomicU64,
}

impl MucShared {
    fn sent_total(&self) -> u64 {
        self.sent.iter().map(|s| s.load(Ordering::Acquire)).sum()
    }
}

/// `SEQ TS SENDER` at the start of a groupchat body.
fn parse_muc_body(el: &[u8]) -> Option<(u64, u64, usize)> {
    let body = xml::child_text(el, b"body")?;
    let mut it = body.split(|&c| c == b' ');
    let num = |b: &[u8]| -> Option<u64> {
        if b.is_empty() || b.len() > 19 {
            return None;
        }
        b.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let seq = num(it.next()?)?;
    let ts = num(it.next()?)?;
    let sender = usize::try_from(num(it.next()?)?).ok()?;
    Some((seq, ts, sender))
}

/// Joins `room` as `nick` without history and waits for the subject that ends the join.
/// Returns whether the room was created by this join (status 201).
async fn muc_join(conn: &mut Conn, room: &str, nick: &str) -> Res<bool> {
    conn.wbuf.extend_from_slice(b"<presence to='");
    xml::escape_into(&mut conn.wbuf, &format!("{room}/{nick}"));
    conn.wbuf.extend_from_slice(
        b"'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
    );
    conn.flush().await?;
    let mut created = false;
    loop {
        let r = conn.next_element().await?;
        let el = conn.rd.bytes(r);
        match xml::name(el) {
            b"presence" if xml::attr(el, b"type") == Some(b"error") => {
                return Err(format!("join refused: {}", String::from_utf8_lossy(el)).into());
            }
            b"presence" => {
                if xml::each_tag(el, b"status").any(|s| xml::attr(s, b"code") == Some(b"201")) {
                    created = true;
                }
            }
            b"message" if xml::has_child(el, b"subject") => return Ok(created),
            _ => {
                auto_reply(el, &mut conn.wbuf);
                if !conn.wbuf.is_empty() {
                    conn.flush().await?;
                }
            }
        }
    }
}

/// Accepts the default configuration of a room just created (an instant room).
async fn muc_configure(conn: &mut Conn, room: &str) -> Res<()> {
    conn.wbuf
        .extend_from_slice(b"<iq type='set' id='muccfg' to='");
    xml::escape_into(&mut conn.wbuf, room);
    conn.wbuf.extend_from_slice(
        b"'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
    );
    conn.flush().await?;
    conn.await_iq(b"muccfg", &mut ignore_other)
        .await
        .map(|_| ())
}

/// Every occupant counts the copies it receives; occupant `i < senders` also sends,
/// keeping `window` of its own messages unechoed by the room.
async fn muc_loop(
    conn: &mut Conn,
    i: usize,
    p: (usize, u64, usize),
    room: &str,
    phase: &mut watch::Receiver<u8>,
    sh: &MucShared,
) -> Res<()> {
    let (senders, window, body_bytes) = p;
    let is_sender = i < senders;
    let mut prefix = b"<message to='".to_vec();
    xml::escape_into(&mut prefix, room);
    prefix.extend_from_slice(b"' type='groupchat'><body>");
    let pad = vec![b'x'; body_bytes];
    let mut sent = 0u64;
    loop {
        let now = now_ns();
        let measuring = sh.measuring.load(Ordering::Relaxed);
        let mut got = 0u64;
        while let Some(f) = conn.rd.next_frame()? {
            match f {
                Frame::Element(r) => {
                    let el = conn.rd.bytes(r);
                    if xml::name(el) != b"message" {
                        auto_reply(el, &mut conn.wbuf);
                    } else if xml::attr(el, b"type") == Some(b"error") {
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                    } else if let Some((_, ts, sender)) = parse_muc_body(el) {
                        got += 1;
                        if measuring {
                            sh.hist.record(now.saturating_sub(ts));
                        }
                        if sender == i
                            && let Some(e) = sh.echoed.get(i)
                        {
                            e.fetch_add(1, Ordering::Release);
                        }
                    }
                }
                Frame::Close => return Err("server closed the stream".into()),
                Frame::Header(_) => {}
            }
        }
        if got > 0 {
            sh.delivered.fetch_add(got, Ordering::Release);
        }
        let ph = *phase.borrow_and_update();
        if ph >= QUIT {
            return Ok(());
        }
        if is_sender && ph == RUN {
            let echoed = sh.echoed[i].load(Ordering::Acquire);
            if sent.saturating_sub(echoed) < window {
                let ts = now_ns();
                while sent.saturating_sub(echoed) < window {
                    sent += 1;
                    conn.wbuf.extend_from_slice(&prefix);
                    let before = conn.wbuf.len();
                    let _ = write!(conn.wbuf, "{sent} {ts} {i} ");
                    let used = conn.wbuf.len() - before;
                    if used < body_bytes {
                        conn.wbuf.extend_from_slice(&pad[..body_bytes - used]);
                    }
                    conn.wbuf.extend_from_slice(b"</body></message>");
                }
                sh.sent[i].store(sent, Ordering::Release);
            }
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            r = conn.read_more() => {
                if r? == 0 {
                    return Err("connection closed by the server".into());
                }
            }
        }
    }
}

pub async fn muc(run: &Run, p: &MucParams) -> Res<Report> {
    let n = p.occupants;
    let sh = Arc::new(MucShared {
        sent: (0..p.senders).map(|_| AtomicU64::new(0)).collect(),
        echoed: (0..p.senders).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        hist: Histogram::new(),
        measuring: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    let c = Arc::new(Counters::default());
    let (tx, rx) = watch::channel(LOGIN);
    let t_login = Instant::now();
    // The first occupant creates and configures the room before anyone else joins.
    let first = run.names.account(0);
    let mut owner = conn::login(&run.ctx, 0, &first).await?;
    owner.presence_sync(&mut ignore_other).await?;
    if muc_join(&mut owner, &p.room, "u0").await? {
        muc_configure(&mut owner, &p.room).await?;
    }
    c.ready.fetch_add(1, Ordering::Relaxed);
    let sem = Arc::new(Semaphore::new(run.concurrency.max(1)));
    let mut handles = Vec::with_capacity(n);
    let mut owner = Some(owner);
    for i in 0..n {
        let (sem, c, ctx, sh) = (sem.clone(), c.clone(), run.ctx.clone(), sh.clone());
        let mut phase = rx.clone();
        let acct = run.names.account(i);
        let room = p.room.clone();
        let params = (p.senders, p.window, p.body_bytes);
        let ready = owner.take();
        handles.push(tokio::spawn(async move {
            let mut conn = match ready {
                Some(conn) => conn,
                None => {
                    let permit = sem.acquire_owned().await;
                    if permit.is_err() {
                        return;
                    }
                    let mut conn = match conn::login(&ctx, i, &acct).await {
                        Ok(conn) => conn,
                        Err(e) => return c.fail(&acct.bare(), &e),
                    };
                    if let Err(e) = conn.presence_sync(&mut ignore_other).await {
                        return c.fail(&acct.bare(), &e);
                    }
                    if let Err(e) = muc_join(&mut conn, &room, &format!("u{i}")).await {
                        return c.fail(&acct.bare(), &e);
                    }
                    c.ready.fetch_add(1, Ordering::Relaxed);
                    conn
                }
            };
            match muc_loop(&mut conn, i, params, &room, &mut phase, &sh).await {
                Ok(()) => conn.close().await,
                Err(e) => c.fail(&acct.bare(), &e),
            }
        }));
    }
    let ok = wait_for(
        "muc join",
        run.limit,
        || c.ready() + c.failed() >= n,
        || format!("{} joined, {} failed", c.ready(), c.failed()),
    )
    .await;
    let login_s = t_login.elapsed().as_secs_f64();
    if !ok || c.failed() > 0 {
        let _ = tx.send(QUIT);
        join_all(handles).await;
        return Err(format!(
            "{} of {n} occupants failed to join (first: {})",
            c.failed(),
            c.first_error().unwrap_or_default()
        )
        .into());
    }
    eprintln!(
        "muc: {n} occupants in {} after {login_s:.1} s; {} senders; warm-up {} s, measuring {} s",
        p.room, p.senders, p.warmup, p.seconds
    );
    let _ = tx.send(RUN);
    tokio::time::sleep(Duration::from_secs(p.warmup)).await;

    let d0 = sh.delivered.load(Ordering::Acquire);
    let srv0 = p.pid.and_then(stats::proc_cpu);
    let gen0 = stats::self_cpu();
    let t0 = Instant::now();
    sh.measuring.store(true, Ordering::Relaxed);
    let end = t0 + Duration::from_secs(p.seconds);
    wait_for(
        "muc",
        Duration::from_secs(p.seconds + 1),
        || Instant::now() >= end || c.failed() > 0,
        || {
            let d = sh.delivered.load(Ordering::Acquire);
            let rate = (d - d0) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            format!("{rate:.0} deliveries/s so far")
        },
    )
    .await;
    sh.measuring.store(false, Ordering::Relaxed);
    let wall = t0.elapsed();
    let d1 = sh.delivered.load(Ordering::Acquire);
    let server = server_cpu(p.pid, srv0, wall, d1 - d0, "delivery");
    let gen_cpu = stats::self_cpu() - gen0;

    let _ = tx.send(DRAIN);
    let expected = || sh.sent_total() * n as u64;
    let drained = wait_for(
        "muc drain",
        Duration::from_secs(p.drain),
        || sh.delivered.load(Ordering::Acquire) >= expected(),
        || {
            format!(
                "{} copies in flight",
                expected().saturating_sub(sh.delivered.load(Ordering::Acquire))
            )
        },
    )
    .await;
    let sent = sh.sent_total();
    let received = sh.delivered.load(Ordering::Acquire);
    let _ = tx.send(QUIT);
    join_all(handles).await;

    let delivered = d1 - d0;
    let rate = delivered as f64 / wall.as_secs_f64();
    let lost = (sent * n as u64).saturating_sub(received);
    let errors = sh.errors.load(Ordering::Relaxed);
    let h = &sh.hist;
    let mut j = json!({
        "scenario": "muc",
        "occupants": n,
        "senders": p.senders,
        "window": p.window,
        "body_bytes": p.body_bytes,
        "seconds": wall.as_secs_f64(),
        "login_s": login_s,
        "delivered": delivered,
        "deliveries_per_s": rate,
        "msgs_per_s": rate / n as f64,
        "latency_p50_ms": ms(h.quantile(0.5)),
        "latency_p99_ms": ms(h.quantile(0.99)),
        "latency_max_ms": ms(h.max()),
        "sent_total": sent,
        "received_total": received,
        "lost": lost,
        "drained": drained,
        "errors": errors,
        "session_failures": c.failed(),
        "first_error": c.first_error(),
    });
    merge(&mut j, gen_cpu_json(gen_cpu, wall));
    let mut lines = vec![
        format!(
            "muc: {n} occupants, {} senders, window {}, body {} B, {:.1} s measured (after {} s warm-up)",
            p.senders,
            p.window,
            p.body_bytes,
            wall.as_secs_f64(),
            p.warmup
        ),
        format!(
            "  delivered       {delivered} copies ({rate:.0} deliveries/s, {:.0} messages/s)",
            rate / n as f64
        ),
        format!(
            "  latency ms      p50 {:.3}  p99 {:.3}  max {:.3}",
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.max())
        ),
        format!(
            "  lost            {lost} (sent {sent} x {n}, received {received}{}); errors {errors}",
            if drained { "" } else { ", drain timed out" }
        ),
        format!(
            "  generator CPU   {:.0}% of one core",
            100.0 * gen_cpu.as_secs_f64() / wall.as_secs_f64()
        ),
    ];
    if let Some((sj, line)) = server {
        merge(&mut j, sj);
        lines.push(line);
    }
    Ok(Report { lines, json: j })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_contacts() {
        assert_eq!(contacts(0, 10, 2), vec![1, 2, 8, 9]);
        assert_eq!(contacts(9, 10, 1), vec![0, 8]);
        // Overlapping neighbourhoods on a tiny ring: everyone else, never self.
        assert_eq!(contacts(1, 4, 3), vec![0, 2, 3]);
        assert!(contacts(0, 1, 3).is_empty());
        // Symmetric: j is i's contact iff i is j's.
        for i in 0..15 {
            for j in contacts(i, 15, 3) {
                assert!(contacts(j, 15, 3).contains(&i));
            }
        }
    }

    #[test]
    fn body_parsing() {
        let el = b"<message from='a@b/c' type='chat'><body>42 123456789 xxxx</body></message>";
        assert_eq!(parse_body(el), Some((42, 123456789)));
        assert_eq!(parse_body(b"<message><body>x 1</body></message>"), None);
        assert_eq!(
            parse_body(b"<message><subject>1 2</subject></message>"),
            None
        );
    }

    #[test]
    fn subscriber_tracks_roster_and_approves() {
        let sh = Arc::new(SetupShared {
            complete: AtomicUsize::new(0),
            approved: AtomicU64::new(0),
        });
        let mut s = Subscriber {
            contacts: vec!["a@h".into(), "b@h".into()],
            subs: HashMap::new(),
            complete: false,
            approved: 0,
            sh: sh.clone(),
        };
        s.on_roster(b"<iq type='result'><query><item jid='a@h' subscription='both'/></query></iq>");
        let mut out = Vec::new();
        s.on_run(&mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("to='a@h'"));
        assert!(text.contains("<presence type='subscribe' to='b@h'/>"));
        assert!(text.contains("<item jid='b@h' name='b'>"));
        out.clear();
        s.on_element(b"<presence from='b@h/x' type='subscribe'/>", &mut out);
        assert_eq!(out, b"<presence type='subscribed' to='b@h'/>");
        assert_eq!(sh.complete.load(Ordering::Relaxed), 0);
        out.clear();
        s.on_element(
            b"<iq type='set' id='p'><query xmlns='jabber:iq:roster'><item jid='b@h' subscription='both'/></query></iq>",
            &mut out,
        );
        assert_eq!(out, b"<iq type='result' id='p'/>");
        assert_eq!(sh.complete.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn presence_counter_counts_contacts_once_each() {
        let sh = Arc::new(RosterShared {
            presences: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            roster_items: AtomicU64::new(0),
            complete: AtomicUsize::new(0),
            reported: AtomicUsize::new(0),
        });
        let mut p = PresenceCounter {
            me: b"me@h".to_vec(),
            expected: 2,
            seen: HashSet::new(),
            complete: false,
            sh: sh.clone(),
        };
        let mut out = Vec::new();
        p.on_element(b"<presence from='me@h/bench'/>", &mut out);
        p.on_element(b"<presence from='a@h/bench'/>", &mut out);
        p.on_element(b"<presence from='a@h/bench'/>", &mut out);
        p.on_element(b"<presence from='b@h/bench' type='unavailable'/>", &mut out);
        assert_eq!(sh.complete.load(Ordering::Relaxed), 0);
        p.on_element(
            b"<presence from='b@h/bench'><priority>1</priority></presence>",
            &mut out,
        );
        assert_eq!(sh.presences.load(Ordering::Relaxed), 3);
        assert_eq!(sh.complete.load(Ordering::Relaxed), 1);
        assert!(out.is_empty());
    }
}
