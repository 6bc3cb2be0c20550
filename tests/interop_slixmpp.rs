//! A real client library nobody here wrote (Debian's python3-slixmpp) against the server.

mod support;

use support::TestServer;

/// Debian's python3-slixmpp belongs to /usr/bin/python3; the python3 first on PATH may be
/// another interpreter.
const PYTHON: &str = "/usr/bin/python3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_logs_in_subscribes_and_chats() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/slixmpp_chat.py");
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
    assert!(stdout.contains("subscription: both"), "{stdout}");
    assert!(stdout.contains("messages exchanged"), "{stdout}");
    server.stop().await;
}

/// slixmpp's XEP-0045 plugin creates and configures a room, two users chat in it and a
/// third joins with a history request (tests/interop/slixmpp_muc.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_muc_joins_chats_and_reads_history() {
    let server = TestServer::start().await;
    for user in ["alice", "bob", "carol"] {
        server.add_user(user, "password").await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/slixmpp_muc.py");
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
        "slixmpp MUC scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("messages exchanged"), "{stdout}");
    assert!(stdout.contains("history ['line 1', 'line 2']"), "{stdout}");
    server.stop().await;
}

/// PEP (XEP-0163 nickname notifications through XEP-0115 caps, items, publish-options)
/// and vCards, as slixmpp's own plugins do them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_publishes_and_reads_pep_items_and_vcards() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/slixmpp_pep.py");
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
        "slixmpp PEP scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "pep advertised",
        "nick notified",
        "nick read",
        "publish-options node read",
        "vcard read",
    ] {
        assert!(stdout.contains(step), "{step} missing:\n{stdout}");
    }
    server.stop().await;
}
