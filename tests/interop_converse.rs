//! Converse.js (npm `converse.js`, installed by scripts/test.sh), a complete web client,
//! in Debian's headless Chromium: it logs in over BOSH, over WebSocket, and with only the
//! JID typed in (finding the endpoint through XEP-0156 host-meta at https://localhost/),
//! adds a TCP user as a contact (both become subscribed: Converse accepts the request back
//! by itself) and chats with them. Nothing on the client side is ours but a ten-line
//! Converse plugin that adds the contact and answers messages.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Client, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Where scripts/test.sh installs Converse.js; `XMPPD_CONVERSE_DIST` overrides.
fn converse_dist() -> PathBuf {
    std::env::var_os("XMPPD_CONVERSE_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/interop/node_modules/converse.js/dist")
        })
}

fn chromium() -> PathBuf {
    std::env::var_os("XMPPD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A static web server for the page and Converse's files (a web client is a web page
/// served from somewhere; here, another origin than xmppd's).
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/browser/converse_chat.html"
    ));
    let dist = converse_dist();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (page, dist) = (page.clone(), dist.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/");
                let file = if path == "/converse_chat.html" {
                    Some(page)
                } else if path.contains("..") {
                    None
                } else {
                    Some(dist.join(path.trim_start_matches('/')))
                };
                let response = match file.and_then(|f| std::fs::read(&f).ok().map(|b| (f, b))) {
                    Some((f, body)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n",
                            content_type(&f),
                            body.len()
                        );
                        [head.into_bytes(), body].concat()
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = tcp.write_all(&response).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// Runs Converse at `query` (the page's parameters besides the account) until the TCP
/// user `bob` and it are mutual contacts and have chatted.
async fn converse_chats_with_bob(server: &TestServer, page: SocketAddr, query: &str) {
    let dist = converse_dist();
    assert!(
        dist.join("converse.min.js").exists(),
        "{} missing: run scripts/test.sh (it installs converse.js with npm)",
        dist.display()
    );
    let mut bob = server.login("bob", "desk").await;
    bob.available().await;

    let url = format!(
        "http://{page}/converse_chat.html?jid=web@localhost&password=password\
         &peer=bob@localhost&{query}"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The development certificate of https://localhost (the discovery run).
            "--ignore-certificate-errors",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium did not start: run scripts/test.sh (it installs Debian's chromium)");

    // While the browser runs: the chat, then both subscribed to each other (Converse
    // accepts bob's request by itself).
    let outcome = tokio::time::timeout(TIMEOUT, async {
        bob_side(&mut bob).await;
        mutual_contacts(&mut bob).await;
    })
    .await;
    let _ = browser.kill().await;
    let mut log = String::new();
    if let Some(mut stderr) = browser.stderr.take() {
        let _ = stderr.read_to_string(&mut log).await;
    }
    let page_lines: Vec<&str> = log.lines().filter(|l| l.contains("XMPPTEST")).collect();
    assert!(
        outcome.is_ok(),
        "no chat and mutual subscription with Converse: {page_lines:#?}"
    );
    bob.close().await;
}

/// Waits until bob's roster has web with subscription `both`.
async fn mutual_contacts(bob: &mut Client) {
    loop {
        let roster = bob
            .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        let web = roster
            .child("query", "jabber:iq:roster")
            .and_then(|q| {
                q.elements()
                    .find(|i| i.attr("jid") == Some("web@localhost"))
            })
            .and_then(|i| i.attr("subscription"))
            .map(str::to_string);
        if web.as_deref() == Some("both") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Bob accepts Converse's contact request (and asks back), waits for its greeting, and
/// checks that it answers.
async fn bob_side(bob: &mut Client) {
    let mut asked = false;
    let mut pinged = false;
    let mut answered = false;
    while !(asked && answered) {
        // The browser takes a while to start; silence is not an error here (the caller's
        // timeout is), and a cancelled receive loses nothing.
        let Ok(el) = tokio::time::timeout(Duration::from_secs(2), bob.recv()).await else {
            continue;
        };
        let from_web = el
            .attr("from")
            .is_some_and(|f| f.starts_with("web@localhost"));
        if !from_web {
            continue;
        }
        if el.name == "presence" && el.attr("type") == Some("subscribe") && !asked {
            asked = true;
            bob.send("<presence to='web@localhost' type='subscribed'/>")
                .await;
            bob.send("<presence to='web@localhost' type='subscribe'/>")
                .await;
            continue;
        }
        if el.name != "message" {
            continue;
        }
        let Some(body) = el.child_text("body", "jabber:client") else {
            continue;
        };
        let from = el.attr("from").unwrap_or_default().to_string();
        if body.starts_with("hello from web@localhost/") && !pinged {
            pinged = true;
            bob.send(&format!(
                "<message to='{from}' type='chat' id='p1'><body>ping 1</body></message>"
            ))
            .await;
        } else if body == "got: ping 1" {
            answered = true;
        }
    }
}

async fn start(tweak: impl FnOnce(&mut xmppd::config::Config)) -> TestServer {
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
        tweak(c);
    })
    .await;
    server.add_user("web", "password").await;
    server.add_user("bob", "password").await;
    server
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_bosh() {
    let page = serve_page().await;
    let server = start(|_| {}).await;
    let bosh = format!("http://{}/http-bind", http_addr(&server));
    converse_chats_with_bob(&server, page, &format!("bosh={bosh}")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_over_websocket() {
    let page = serve_page().await;
    let server = start(|_| {}).await;
    let ws = format!("ws://{}/xmpp-websocket", http_addr(&server));
    converse_chats_with_bob(&server, page, &format!("ws={ws}")).await;
    server.stop().await;
}

/// Only the JID: Converse asks https://localhost/.well-known/host-meta (port 443, so this
/// test needs that port on loopback) and connects where it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_finds_the_endpoint_by_host_meta() {
    let page = serve_page().await;
    let server = start(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:443".parse().unwrap(),
            tls: TlsMode::DirectTls,
        });
        // The page comes from another origin than https://localhost.
        c.websocket.allowed_origins = vec![format!("http://{page}")];
    })
    .await;
    converse_chats_with_bob(&server, page, "discover=1").await;
    server.stop().await;
}
