//! xmpp.js (npm `@xmpp/client`, installed by scripts/test.sh), a client library nobody
//! here wrote, logs in over SASL2 with Bind 2, gets a FAST token (XEP-0484), and logs in
//! again with the token alone, in Node.js.

mod support;

use std::path::PathBuf;

use support::TestServer;
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_logs_in_with_sasl2_and_comes_back_with_a_fast_token() {
    let server = TestServer::start().await;
    let service = format!("xmpp://127.0.0.1:{}", server.starttls_addr().port());
    sasl2_then_fast(&server, &service).await;
}

/// The same over WebSocket (RFC 7395), where no STARTTLS exists: a loopback listener
/// counts as private, so FAST is offered there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmppjs_does_the_same_over_websocket() {
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
    })
    .await;
    let http = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap();
    sasl2_then_fast(&server, &format!("ws://{http}/xmpp-websocket")).await;
}

/// Runs tests/interop/xmppjs_fast.mjs against `service` and checks both logins.
async fn sasl2_then_fast(server: &TestServer, service: &str) {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/@xmpp/client").exists(),
        "{} missing: run scripts/test.sh (it installs @xmpp/client with npm)",
        dir.display()
    );
    // ES modules resolve packages from the script's own directory.
    let script = dir.join("xmppjs_fast.mjs");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/xmppjs_fast.mjs"),
        &script,
    )
    .unwrap();
    server.add_user("juliet", "secret").await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new("node")
            // Node 20 has WebSocket (xmpp.js's web transport) behind this flag; later
            // releases have it on and still accept the flag.
            .arg("--experimental-websocket")
            .arg(&script)
            .arg(service)
            .arg("juliet")
            .arg("secret")
            // The test server's certificate is self-signed.
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
            .env("NODE_NO_WARNINGS", "1")
            .output(),
    )
    .await
    .expect("node timed out")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xmpp.js failed:\n{stdout}\n{stderr}");
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    let (password, fast) = (&steps[0], &steps[1]);
    assert_eq!(password["step"], "password");
    assert_eq!(password["mechanisms"][0], "SCRAM-SHA-1");
    assert_eq!(password["pong"], "result");
    assert!(
        password["jid"]
            .as_str()
            .is_some_and(|j| j.starts_with("juliet@localhost/")),
        "bound through Bind 2: {password}"
    );
    assert_eq!(password["token"]["mechanism"], "HT-SHA-256-NONE");
    // Stream management was enabled inside the bind request and stayed on.
    assert_eq!(password["sm"], true, "{password}");
    assert_eq!(fast["step"], "fast");
    assert_eq!(fast["mechanisms"][0], "HT-SHA-256-NONE", "{fast}");
    assert_eq!(
        fast["mechanisms"].as_array().map(Vec::len),
        Some(1),
        "{fast}"
    );
    assert_eq!(fast["pong"], "result");
    assert_eq!(fast["sm"], true, "{fast}");
    // The same client (user agent) gets the same resource back.
    assert_eq!(fast["jid"], password["jid"]);
}
