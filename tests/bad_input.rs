//! Hostile and broken input: every case ends in the right stream error and a closed
//! connection, never a hang or a crash; the server keeps serving others.

mod support;

use support::{Client, TestServer};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// A tiny deterministic PRNG so failures are reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

async fn send_in_random_chunks(c: &mut Client, bytes: &[u8], rng: &mut Lcg) {
    let mut pos = 0;
    while pos < bytes.len() {
        let n = (1 + rng.next() as usize % 7).min(bytes.len() - pos);
        c.send_raw(&bytes[pos..pos + n]).await;
        pos += n;
        if rng.next().is_multiple_of(4) {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn stanzas_split_at_random_byte_boundaries_still_parse() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    // The pre-TLS header and STARTTLS command, split up.
    let mut raw = Client::connect(server.starttls_addr()).await;
    let mut rng = Lcg(7);
    send_in_random_chunks(&mut raw, HEADER.as_bytes(), &mut rng).await;
    match raw.next_event().await {
        Some(xmppd::xml::StreamEvent::Open(_)) => {}
        other => panic!("{other:?}"),
    }
    let features = raw.recv().await;
    assert_eq!(features.name, "features");

    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    bob.available().await;
    for seed in 1..20u64 {
        let body = format!("split {seed} — ünïcödé &amp; <![CDATA[<raw>]]>");
        let xml =
            format!("<message to='bob@localhost/b' id='s{seed}'><body>{body}</body></message>");
        send_in_random_chunks(&mut alice, xml.as_bytes(), &mut Lcg(seed)).await;
        let m = bob.recv_until(|e| e.name == "message").await;
        assert_eq!(m.attr("id"), Some(format!("s{seed}").as_str()));
        assert_eq!(
            m.child_text("body", "jabber:client"),
            Some(format!("split {seed} — ünïcödé & <raw>"))
        );
    }
    server.stop().await;
}

async fn stream_error_for(server: &TestServer, payload: &[u8]) -> String {
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send(HEADER).await;
    c.send_raw(payload).await;
    c.expect_stream_error().await
}

#[tokio::test]
async fn malformed_and_restricted_xml_get_their_stream_errors() {
    let server = TestServer::start().await;
    assert_eq!(
        stream_error_for(&server, b"<a><b></a></b>").await,
        "not-well-formed"
    );
    assert_eq!(
        stream_error_for(&server, b"<a x='1' x='2'/>").await,
        "not-well-formed"
    );
    assert_eq!(
        stream_error_for(&server, b"<a>\xff\xfe</a>").await,
        "not-well-formed"
    );
    assert_eq!(
        stream_error_for(&server, b"<!-- hi -->").await,
        "restricted-xml"
    );
    assert_eq!(
        stream_error_for(&server, b"<?evil?>").await,
        "restricted-xml"
    );
    assert_eq!(
        stream_error_for(&server, b"<a>&custom;</a>").await,
        "restricted-xml"
    );

    // Billion laughs in the prologue: rejected before any expansion.
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send(
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>\
         <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>",
    )
    .await;
    assert_eq!(c.expect_stream_error().await, "restricted-xml");
    server.stop().await;
}

#[tokio::test]
async fn oversized_stanza_is_a_policy_violation() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send(HEADER).await;
    let mut reader = c;
    // 10 MB of body, written while the server is expected to give up early.
    let chunk = vec![b'a'; 64 * 1024];
    reader.send("<message><body>").await;
    let mut sent = 0usize;
    let mut closed_early = false;
    while sent < 10 * 1024 * 1024 {
        if reader.try_send_raw(&chunk).await.is_err() {
            closed_early = true;
            break;
        }
        sent += chunk.len();
    }
    assert_eq!(reader.expect_stream_error().await, "policy-violation");
    // The kernel buffers some of what we wrote, but the server must not have waited for
    // all 10 MB (it reads at most the limit before failing).
    assert!(closed_early || sent <= 10 * 1024 * 1024);
    server.stop().await;
}

#[tokio::test]
async fn deep_nesting_is_a_policy_violation() {
    let server = TestServer::start().await;
    let mut payload = Vec::new();
    for _ in 0..10_000 {
        payload.extend_from_slice(b"<a>");
    }
    assert_eq!(
        stream_error_for(&server, &payload).await,
        "policy-violation"
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_before_the_header_and_wrong_root_are_rejected() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send("hello world\r\n").await;
    let cond = c.expect_stream_error().await;
    assert!(cond == "not-well-formed" || cond == "bad-format", "{cond}");

    let mut c = Client::connect(server.starttls_addr()).await;
    c.send("<html xmlns='http://www.w3.org/1999/xhtml'>").await;
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
    server.stop().await;
}

#[tokio::test]
async fn a_stuck_handshake_times_out() {
    let server = TestServer::start_with(|c| c.limits.handshake_timeout_secs = 1).await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send("<?xml version='1.0'?>").await;
    assert_eq!(c.expect_stream_error().await, "connection-timeout");
    server.stop().await;
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let server = TestServer::start_with(|c| c.limits.connections_per_ip = 2).await;
    let mut a = Client::connect(server.starttls_addr()).await;
    let mut b = Client::connect(server.starttls_addr()).await;
    // Answered streams hold their slots.
    a.open_stream().await;
    b.open_stream().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    server.stop().await;
}
