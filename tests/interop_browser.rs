//! A web client in a real browser: headless Chromium (Debian's `chromium`) runs Strophe.js
//! (npm `strophe.js`, installed by scripts/test.sh) against xmppd's HTTP listener, over
//! WebSocket and over BOSH, and chats with a TCP client. Neither the browser nor the
//! client library is ours.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::TestServer;
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};

/// Where scripts/test.sh puts Strophe.js; `XMPPD_STROPHE_JS` overrides.
fn strophe_js() -> PathBuf {
    std::env::var_os("XMPPD_STROPHE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/interop/node_modules/strophe.js/dist/strophe.umd.min.js")
        })
}

fn chromium() -> PathBuf {
    std::env::var_os("XMPPD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strophe_in_chromium_logs_in_and_chats_over_websocket() {
    strophe_chat(|http| format!("ws://{http}/xmpp-websocket")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strophe_in_chromium_logs_in_and_chats_over_bosh() {
    strophe_chat(|http| format!("http://{http}/http-bind")).await;
}

/// Strophe.js logs in at the URL `service` names for the HTTP listener's address (its
/// transport picked by the scheme), says hello to bob, and answers what bob sends.
async fn strophe_chat(service: impl Fn(std::net::SocketAddr) -> String) {
    let strophe = strophe_js();
    assert!(
        strophe.exists(),
        "{} missing: run scripts/test.sh (it installs strophe.js with npm)",
        strophe.display()
    );
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
        // The page is a file:// page; browsers send `Origin: null` for those (older
        // Chromium sent "file://"), which only an explicit allow-list admits.
        c.websocket.allowed_origins = vec!["null".into(), "file://".into()];
    })
    .await;
    server.add_user("web", "password").await;
    server.add_user("bob", "password").await;
    let mut bob = server.login("bob", "desk").await;
    bob.available().await;

    let page_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/browser/strophe_chat.html"
        ),
        page_dir.path().join("strophe_chat.html"),
    )
    .unwrap();
    std::fs::copy(&strophe, page_dir.path().join("strophe.umd.min.js")).unwrap();
    let http = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap();
    let url = format!(
        "file://{}/strophe_chat.html?service={}&jid=web@localhost\
         &password=password&peer=bob@localhost",
        page_dir.path().display(),
        service(http)
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
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium did not start: run scripts/test.sh (it installs Debian's chromium)");

    // The browser logged in (SASL, bind) and sent a message.
    let hello = tokio::time::timeout(
        Duration::from_secs(60),
        bob.recv_until(|e| e.name == "message"),
    )
    .await
    .expect("no message from the browser");
    let from = hello.attr("from").unwrap_or_default().to_string();
    assert!(from.starts_with("web@localhost/"), "{hello:?}");
    assert_eq!(
        hello.child("body", "jabber:client").map(|b| b.text()),
        Some(format!("hello from {from}"))
    );

    // And receives: it answers what bob sends.
    bob.send(&format!(
        "<message to='{from}' type='chat' id='q1'><body>ping 1</body></message>"
    ))
    .await;
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        bob.recv_until(|e| e.name == "message"),
    )
    .await
    .expect("no answer from the browser");
    assert_eq!(
        answer.child("body", "jabber:client").map(|b| b.text()),
        Some("got: ping 1".to_string())
    );

    let _ = browser.kill().await;
    let mut log = String::new();
    if let Some(mut stderr) = browser.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = stderr.read_to_string(&mut log).await;
    }
    assert!(
        log.contains("XMPPTEST connected web@localhost/"),
        "the page did not report its login"
    );
    server.stop().await;
}
