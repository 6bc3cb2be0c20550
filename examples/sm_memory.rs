//! One-off measurement: heap memory held per hibernated XEP-0198 session.
//!
//! Starts a server in-process (memory storage), logs in N users (default 1000) that enable
//! stream management with resumption and send initial presence, then cuts every
//! connection abruptly so all N sessions hibernate. Heap bytes are counted by a wrapping
//! global allocator (exact, unlike RSS, which keeps freed pages); VmRSS from
//! /proc/self/status is shown too. The clients live in this process as well, so the
//! figure is taken after they are gone.
//!
//!     cargo run --example sm_memory [N]

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use support::{Client, TestServer};
use xmppd::config::StorageBackend;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let server = TestServer::start_with(|c| {
        c.storage.backend = StorageBackend::Memory;
        c.limits.connections_per_ip = n + 100;
    })
    .await;
    let ctx = server.handle.as_ref().unwrap().ctx.clone();
    let started = Instant::now();
    for i in 0..n {
        server.add_user(&format!("u{i}"), "password").await;
    }
    settle().await;
    let (base_heap, base_rss) = (live(), rss_kib());
    println!(
        "{n} accounts created in {:.1} s; heap {} KiB, RSS {base_rss} KiB",
        started.elapsed().as_secs_f64(),
        base_heap / 1024
    );

    let addr = server.starttls_addr();
    let mut clients = Vec::with_capacity(n);
    let started = Instant::now();
    // Two at a time: the client side of SCRAM is the slow part.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(async move {
            let mut c = Client::login(addr, &format!("u{i}"), "password", "phone").await;
            c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
                .await;
            c.recv_until(|e| e.name == "enabled").await;
            c.available().await;
            c
        });
        if tasks.len() >= 8
            && let Some(c) = tasks.join_next().await
        {
            clients.push(c.unwrap());
        }
    }
    while let Some(c) = tasks.join_next().await {
        clients.push(c.unwrap());
    }
    settle().await;
    println!(
        "{n} sessions live (SM enabled, available) in {:.1} s; heap {} KiB, RSS {} KiB \
         (includes the clients)",
        started.elapsed().as_secs_f64(),
        live() / 1024,
        rss_kib()
    );

    for c in clients {
        c.drop_connection();
    }
    for _ in 0..400 {
        if ctx.sm.hibernated_count() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    settle().await;
    let hibernated = ctx.sm.hibernated_count();
    let (heap, rss) = (live(), rss_kib());
    println!(
        "{hibernated} sessions hibernated; heap {} KiB, RSS {rss} KiB",
        heap / 1024
    );
    // End them all (as a conflict would): what is freed is what they held. Allocations
    // that stay (tokio's I/O slab pages, grown by the connections) are not counted.
    for control in ctx.sessions.all_controls() {
        control.kick(xmppd::stream::StreamError::new(
            xmppd::stream::StreamErrorCondition::Conflict,
        ));
    }
    for _ in 0..400 {
        if ctx.sm.hibernated_count() == 0 && ctx.sessions.count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    settle().await;
    let ended = live();
    println!(
        "all ended; heap {} KiB ({} KiB more than before the logins)",
        ended / 1024,
        (ended - base_heap) / 1024
    );
    println!(
        "per hibernated session: {} bytes of heap (RSS grew {} bytes per session, \
         including allocator and runtime slack)",
        (heap - ended) / hibernated.max(1) as isize,
        (rss.saturating_sub(base_rss) * 1024) / hibernated.max(1) as u64
    );
    server.stop().await;
}
