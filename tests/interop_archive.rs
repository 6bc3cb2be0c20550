//! slixmpp's own carbons, MAM (with RSM paging) and blocking plugins against the server.

mod support;

use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_carbons_mam_and_blocking() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let stdout = support::run_slixmpp(&server, "slixmpp_carbons_mam.py").await;
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
