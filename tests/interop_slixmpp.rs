//! A real client library nobody here wrote (Debian's python3-slixmpp) against the server.

mod support;

use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_logs_in_subscribes_and_chats() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let stdout = support::run_slixmpp(&server, "slixmpp_chat.py").await;
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
    let stdout = support::run_slixmpp(&server, "slixmpp_muc.py").await;
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
    let stdout = support::run_slixmpp(&server, "slixmpp_pep.py").await;
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
