//! slixmpp's own carbons, MAM (with RSM paging) and blocking plugins against the server.

mod support;

use support::TestServer;

/// Debian's python3-slixmpp belongs to /usr/bin/python3 (see tests/interop_slixmpp.rs).
const PYTHON: &str = "/usr/bin/python3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_carbons_mam_and_blocking() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_carbons_mam.py"
    );
    let port = server.starttls_addr().port().to_string();
    let output = tokio::process::Command::new(PYTHON)
        .args([script, "127.0.0.1", &port, "localhost", "password"])
        .output()
        .await
        .expect("run /usr/bin/python3 (install python3-slixmpp: see README)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "slixmpp scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in [
        "received carbon ok",
        "sent carbon ok",
        "mam paged 27 messages both ways",
        "blocking ok",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in\n{stdout}");
    }
    server.stop().await;
}
