//! Peers that stop reading or stall mid-handshake lose their connection after the
//! configured deadlines instead of holding a task, buffers and a connection slot forever.

mod support;

use std::time::{Duration, Instant};

use support::TestServer;
use xmppd::config::ArchivePolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let server = TestServer::start_with(|c| {
        c.limits.write_timeout_secs = 1;
        c.limits.session_queue_len = 16;
        c.archive.default_policy = ArchivePolicy::Never;
    })
    .await;
    server.add_user("stuck", "password").await;
    // Logged in, then never reads again (the socket stays open).
    let _stuck = server.login("stuck", "r").await;
    let ctx = server.ctx().clone();
    let body = "x".repeat(100_000);
    let message = xmppd::xml::parse_stanza(&format!(
        "<message xmlns='jabber:client' from='someone@localhost/x' to='stuck@localhost/r' \
         type='chat'><body>{body}</body></message>"
    ))
    .unwrap();
    // Stanzas keep coming until the socket buffers are full and a write stalls; the
    // session must end about write_timeout_secs later.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctx
        .sessions
        .resources(&xmppd::addr::parse_bare("stuck@localhost").unwrap())
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the session of a client that stopped reading was never closed"
        );
        for _ in 0..8 {
            xmppd::router::route(&ctx, message.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
