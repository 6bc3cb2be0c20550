//! XEP-0198 with a real client library: slixmpp's stream management plugin enables
//! resumption, exchanges acked messages, loses its connection and resumes.

mod support;

use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_resumes_a_stream_management_session() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let stdout = support::run_slixmpp(&server, "slixmpp_sm.py").await;
    println!("{stdout}");
    assert!(stdout.contains("stream resumed"), "{stdout}");
    assert!(
        stdout.contains("delivered exactly once after resumption"),
        "{stdout}"
    );
    server.stop().await;
}
