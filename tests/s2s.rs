//! Federation between two in-process servers on different loopback addresses, found
//! through SRV records served by a test DNS server, with certificates from a test CA.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::ca::TestCa;
use support::dns::TestDns;
use support::{Client, TestServer, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd::config::{Config, ListenerConfig, ListenerKind, TlsMode, VhostConfig};
use xmppd::net::io::MaybeTls;
use xmppd::s2s::AuthMethod;
use xmppd::xml::{Element, ParserLimits, StreamEvent, StreamParser};

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const A: &str = "a.example";
const B: &str = "b.example";
const A_IP: &str = "127.0.0.2";
const B_IP: &str = "127.0.0.3";

struct World {
    dns: TestDns,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        World {
            dns: TestDns::start("127.0.0.1").await,
            ca: TestCa::new("xmppd test CA"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A server for `domain` with s2s listeners on `ip`, published in DNS with SRV records
    /// (STARTTLS and Direct TLS) on the ephemeral ports. `ca_cert`: use a certificate
    /// from the test CA and trust it; otherwise a self-signed development certificate.
    async fn server(
        &self,
        domain: &str,
        ip: &str,
        ca_cert: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let (cert, key) = if ca_cert {
            let (c, k) = self.ca.issue(domain, self.dir.path());
            (Some(c), Some(k))
        } else {
            (None, None)
        };
        let ca_file = self.ca.write_ca(self.dir.path());
        let dns = self.dns.addr;
        let server = TestServer::start_with(|c| {
            c.vhosts = vec![VhostConfig {
                domain: domain.into(),
                certificate: cert,
                key,
            }];
            for tls in [TlsMode::Starttls, TlsMode::DirectTls] {
                c.listeners.push(ListenerConfig {
                    kind: ListenerKind::S2s,
                    address: format!("{ip}:0").parse().unwrap(),
                    tls,
                });
            }
            c.s2s.dns_servers = vec![dns];
            c.s2s.ca_file = Some(ca_file);
            tweak(c);
        })
        .await;
        let host = format!("xmpp.{domain}");
        self.dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            10,
            0,
            server.s2s_addr(TlsMode::Starttls).port(),
            &host,
        );
        self.dns.add_addr(&host, ip);
        server
    }
}

async fn online(server: &TestServer, node: &str) -> Client {
    server.add_user(node, "password").await;
    let mut c = server.login(node, "r").await;
    c.available().await;
    c
}

async fn chat(from: &mut Client, to: &str, body: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

async fn expect_body(c: &mut Client, body: &str) -> Element {
    let m = c
        .recv_until(|e| {
            e.name == "message" && e.child_text("body", "jabber:client").as_deref() == Some(body)
        })
        .await;
    assert_eq!(m.attr("type"), Some("chat"));
    m
}

fn methods(server: &TestServer) -> Vec<AuthMethod> {
    server
        .ctx()
        .s2s
        .get()
        .unwrap()
        .established()
        .iter()
        .map(|e| e.method)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_both_ways_with_srv() {
    let w = World::new().await;
    let a = w.server(A, A_IP, true, |_| {}).await;
    let b = w.server(B, B_IP, true, |_| {}).await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;

    let t = Instant::now();
    chat(&mut alice, "bob@b.example", "first").await;
    let m = expect_body(&mut bob, "first").await;
    let first = t.elapsed();
    assert_eq!(m.attr("from"), Some("alice@a.example/r"));
    chat(&mut bob, "alice@a.example/r", "back").await;
    let m = expect_body(&mut alice, "back").await;
    assert_eq!(m.attr("from"), Some("bob@b.example/r"));
    assert_eq!(methods(&a), vec![AuthMethod::SaslExternal]);
    assert_eq!(methods(&b), vec![AuthMethod::SaslExternal]);
    let setup = a.ctx().s2s.get().unwrap().established()[0].setup;

    // Latency over the established stream: one message at a time, end to end.
    let mut samples = Vec::new();
    for i in 0..50 {
        let body = format!("m{i}");
        let t = Instant::now();
        chat(&mut alice, "bob@b.example", &body).await;
        expect_body(&mut bob, &body).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    eprintln!(
        "s2s SASL EXTERNAL: setup (SRV+TCP+TLS+auth) {:?}; first message end to end {:?}; \
         message latency median {:?}, p90 {:?}",
        setup,
        first,
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10]
    );

    // A message to a user who does not exist comes back as service-unavailable.
    alice
        .send("<message to='nobody@b.example' type='chat' id='x1'><body>?</body></message>")
        .await;
    let err = alice
        .recv_until(|e| e.name == "message" && e.attr("id") == Some("x1"))
        .await;
    assert_eq!(err.attr("type"), Some("error"));
    assert!(
        err.child("error", "jabber:client")
            .unwrap()
            .has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas")
    );

    // disco#info of the remote server.
    let info = alice
        .iq("<iq type='get' to='b.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_when_certificates_are_not_trusted_and_subscriptions() {
    let w = World::new().await;
    // Self-signed development certificates: nothing to verify, so dialback.
    let a = w.server(A, A_IP, false, |_| {}).await;
    let b = w.server(B, B_IP, false, |_| {}).await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;

    alice
        .send("<presence to='bob@b.example' type='subscribe'/>")
        .await;
    let sub = bob
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(sub.attr("from"), Some("alice@a.example"));
    bob.send("<presence to='alice@a.example' type='subscribed'/>")
        .await;
    bob.send("<presence to='alice@a.example' type='subscribe'/>")
        .await;
    alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribed"))
        .await;
    alice
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    alice
        .send("<presence to='bob@b.example' type='subscribed'/>")
        .await;
    // Each side sees the other's presence once subscribed.
    bob.recv_until(|e| {
        e.name == "presence"
            && e.attr("type").is_none()
            && e.attr("from") == Some("alice@a.example/r")
    })
    .await;
    let roster = alice
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let item = roster
        .child("query", "jabber:iq:roster")
        .and_then(|q| {
            q.elements()
                .find(|i| i.attr("jid") == Some("bob@b.example"))
        })
        .cloned()
        .unwrap();
    // Wait for the last subscribed to have arrived on b's side too.
    wait_for_row("bob's subscription to alice", || async {
        b.ctx()
            .storage
            .roster
            .item(&j("bob@b.example"), &j("alice@a.example"))
            .await
            .unwrap()
            .is_some_and(|i| i.subscription.as_str() == "both")
    })
    .await;
    let roster_b = bob
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let item_b = roster_b
        .child("query", "jabber:iq:roster")
        .and_then(|q| {
            q.elements()
                .find(|i| i.attr("jid") == Some("alice@a.example"))
        })
        .cloned()
        .unwrap();
    assert_eq!(item.attr("subscription"), Some("both"), "{item:?}");
    assert_eq!(item_b.attr("subscription"), Some("both"), "{item_b:?}");

    // Offline storage for a remote sender: carol logs in later and gets it.
    b.add_user("carol", "password").await;
    chat(&mut alice, "carol@b.example", "stored").await;
    wait_for_row("the offline message", || async {
        b.ctx()
            .storage
            .offline
            .count(&j("carol@b.example"))
            .await
            .unwrap()
            == 1
    })
    .await;
    let mut carol = b.login("carol", "r").await;
    carol.send("<presence/>").await;
    let m = expect_body(&mut carol, "stored").await;
    assert!(m.has_child("delay", "urn:xmpp:delay"));

    assert_eq!(methods(&a), vec![AuthMethod::Dialback]);
    assert_eq!(methods(&b), vec![AuthMethod::Dialback]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_first_target_down_then_direct_tls() {
    let w = World::new().await;
    let a = w.server(A, A_IP, true, |_| {}).await;
    let b = w.server(B, B_IP, true, |_| {}).await;
    // A closed port with better priority than the real STARTTLS target, and a Direct
    // TLS target of equal priority in the xmpps-server service.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
        l.local_addr().unwrap().port()
    };
    w.dns.add_srv(
        "_xmpp-server._tcp.b.example",
        0,
        0,
        closed,
        "down.b.example",
    );
    w.dns.add_addr("down.b.example", "127.0.0.4");
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;
    chat(&mut alice, "bob@b.example", "via-second").await;
    expect_body(&mut bob, "via-second").await;

    // Direct TLS (XEP-0368) only.
    let c = w.server("c.example", "127.0.0.5", true, |_| {}).await;
    w.dns.clear("_xmpp-server._tcp.c.example");
    w.dns.add_srv(
        "_xmpps-server._tcp.c.example",
        0,
        0,
        c.s2s_addr(TlsMode::DirectTls).port(),
        "xmpp.c.example",
    );
    let mut carl = online(&c, "carl").await;
    chat(&mut alice, "carl@c.example", "direct").await;
    expect_body(&mut carl, "direct").await;
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

fn error_condition(e: &Element) -> (String, String) {
    let err = e.child("error", "jabber:client").unwrap();
    (
        err.attr("type").unwrap_or_default().to_string(),
        err.first_element().unwrap().name.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_domains_bounce_and_queue_is_bounded() {
    let w = World::new().await;
    let a = w
        .server(A, A_IP, true, |c| {
            c.s2s.queue_len = 5;
            c.limits.handshake_timeout_secs = 2;
            c.s2s.connect_timeout_secs = 1;
        })
        .await;
    let mut alice = online(&a, "alice").await;

    alice
        .send("<message to='x@nowhere.example' id='n1'><body>1</body></message>")
        .await;
    let e = alice.recv_until(|e| e.attr("id") == Some("n1")).await;
    assert_eq!(
        error_condition(&e),
        ("cancel".into(), "remote-server-not-found".into())
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.6:0").unwrap();
        l.local_addr().unwrap().port()
    };
    w.dns.add_srv(
        "_xmpp-server._tcp.down.example",
        0,
        0,
        closed,
        "h.down.example",
    );
    w.dns.add_addr("h.down.example", "127.0.0.6");
    alice
        .send("<message to='x@down.example' id='d1'><body>1</body></message>")
        .await;
    let e = alice.recv_until(|e| e.attr("id") == Some("d1")).await;
    assert_eq!(
        error_condition(&e),
        ("wait".into(), "remote-server-timeout".into())
    );
    // While backing off, new stanzas bounce at once.
    alice
        .send("<message to='x@down.example' id='d2'><body>1</body></message>")
        .await;
    let e = alice.recv_until(|e| e.attr("id") == Some("d2")).await;
    assert_eq!(error_condition(&e).1, "remote-server-timeout");

    // A server that accepts TCP and then says nothing: stanzas queue (bounded), the
    // excess bounces at once, the rest when the handshake times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.7:0").await.unwrap();
    w.dns.add_srv(
        "_xmpp-server._tcp.stall.example",
        0,
        0,
        silent.local_addr().unwrap().port(),
        "h.stall.example",
    );
    w.dns.add_addr("h.stall.example", "127.0.0.7");
    let held = tokio::spawn(async move {
        let (s, _) = silent.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(s);
    });
    for i in 0..8 {
        alice
            .send(&format!(
                "<message to='x@stall.example' id='s{i}'><body>1</body></message>"
            ))
            .await;
    }
    let mut conditions = Vec::new();
    for _ in 0..8 {
        let e = alice
            .recv_until(|e| e.attr("id").is_some_and(|i| i.starts_with('s')))
            .await;
        conditions.push(error_condition(&e).1);
    }
    let constrained = conditions
        .iter()
        .filter(|c| *c == "resource-constraint")
        .count();
    let timeouts = conditions
        .iter()
        .filter(|c| *c == "remote-server-timeout")
        .count();
    assert_eq!((constrained, timeouts), (3, 5), "{conditions:?}");
    held.abort();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_closes_and_reconnects() {
    let w = World::new().await;
    let a = w
        .server(A, A_IP, true, |c| c.s2s.idle_timeout_secs = 1)
        .await;
    let b = w.server(B, B_IP, true, |_| {}).await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;
    chat(&mut alice, "bob@b.example", "one").await;
    expect_body(&mut bob, "one").await;
    let s2s = a.ctx().s2s.get().unwrap().clone();
    assert!(s2s.has_route(A, B));
    support::wait_until("the idle stream to close", || !s2s.has_route(A, B)).await;
    chat(&mut alice, "bob@b.example", "two").await;
    expect_body(&mut bob, "two").await;
    assert_eq!(s2s.established().len(), 2);
    a.stop().await;
    b.stop().await;
}

/// A raw server-to-server peer for the bad-input tests.
struct RawPeer {
    io: MaybeTls,
    parser: StreamParser,
    buf: Vec<u8>,
}

impl RawPeer {
    async fn connect(addr: SocketAddr) -> RawPeer {
        let tcp = TcpStream::connect(addr).await.unwrap();
        RawPeer {
            io: MaybeTls::Plain(tcp),
            parser: StreamParser::new(ParserLimits {
                max_stanza_bytes: 1 << 20,
                max_depth: 32,
                max_attributes: 64,
            }),
            buf: vec![0; 8192],
        }
    }

    async fn send(&mut self, s: &str) -> std::io::Result<()> {
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await
    }

    async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(ev) = self.parser.next_event().unwrap() {
                return Some(ev);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut self.buf))
                .await
                .expect("peer timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.parser.feed(&self.buf[..n]).unwrap();
        }
    }

    async fn element(&mut self) -> Element {
        match self.next().await {
            Some(StreamEvent::Stanza(e)) => e,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    async fn open(&mut self, from: &str, to: &str) -> Element {
        self.parser.reset();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{from}' to='{to}' version='1.0'>"
        ))
        .await
        .unwrap();
        assert!(matches!(self.next().await, Some(StreamEvent::Open(_))));
        self.element().await
    }

    /// STARTTLS presenting `cert`/`key` as client certificate, then SASL EXTERNAL.
    async fn authenticate(&mut self, from: &str, to: &str, cert: &PathBuf, key: &PathBuf) {
        let features = self.starttls(from, to, cert, key).await;
        assert!(
            features
                .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
                .is_some(),
            "EXTERNAL not offered: {features:?}"
        );
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
            .await
            .unwrap();
        assert_eq!(self.element().await.name, "success");
        self.open(from, to).await;
    }

    /// Opens a stream, STARTTLS presenting `cert`/`key` as client certificate; returns the
    /// features of the stream opened over TLS.
    async fn starttls(&mut self, from: &str, to: &str, cert: &PathBuf, key: &PathBuf) -> Element {
        self.open(from, to).await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        assert_eq!(self.element().await.name, "proceed");
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let ck = rustls::sign::CertifiedKey::from_der(
            chain,
            key,
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .unwrap();
        let config = xmppd::net::verify::s2s_client_config(Some(Arc::new(ck)), false).unwrap();
        let MaybeTls::Plain(tcp) = std::mem::replace(&mut self.io, MaybeTls::Upgrading) else {
            panic!()
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(to.to_string().try_into().unwrap(), tcp)
            .await
            .unwrap();
        self.io = MaybeTls::ClientTls(Box::new(tls));
        self.open(from, to).await
    }

    async fn stream_error(&mut self) -> String {
        loop {
            match self.next().await {
                Some(StreamEvent::Stanza(e)) if e.name == "error" => {
                    return e.first_element().unwrap().name.clone();
                }
                Some(_) => {}
                None => panic!("closed without a stream error"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_from_and_unknown_host_are_stream_errors() {
    let w = World::new().await;
    let b = w.server(B, B_IP, true, |_| {}).await;
    let mut bob = online(&b, "bob").await;
    let (cert, key) = w.ca.issue("evil.example", w.dir.path());
    let addr = b.s2s_addr(TlsMode::Starttls);

    // Authenticated as evil.example, legitimate traffic is routed...
    let mut peer = RawPeer::connect(addr).await;
    peer.authenticate("evil.example", B, &cert, &key).await;
    peer.send("<message from='eve@evil.example/x' to='bob@b.example' type='chat'><body>ok</body></message>")
        .await
        .unwrap();
    expect_body(&mut bob, "ok").await;
    // ... but a stanza claiming another domain ends the stream.
    peer.send("<message from='alice@a.example/x' to='bob@b.example' type='chat'><body>spoof</body></message>")
        .await
        .unwrap();
    assert_eq!(peer.stream_error().await, "invalid-from");
    bob.expect_silence_except_presence(Duration::from_millis(300))
        .await;

    // Stanzas before any authentication.
    let mut peer = RawPeer::connect(addr).await;
    peer.open("a.example", B).await;
    peer.send("<message from='alice@a.example/x' to='bob@b.example'><body>x</body></message>")
        .await
        .unwrap();
    assert_eq!(peer.stream_error().await, "not-authorized");

    // Garbage after the stream header.
    let mut peer = RawPeer::connect(addr).await;
    peer.open("evil.example", B).await;
    peer.send("<message><<<&&&").await.unwrap();
    assert_eq!(peer.stream_error().await, "not-well-formed");

    // A stream to a domain we do not host.
    let mut peer = RawPeer::connect(addr).await;
    peer.send(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' from='evil.example' to='other.example' version='1.0'>",
    )
    .await
    .unwrap();
    assert_eq!(peer.stream_error().await, "host-unknown");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_and_flood_leave_other_domains_working() {
    let w = World::new().await;
    let a = w.server(A, A_IP, true, |_| {}).await;
    let b = w
        .server(B, B_IP, true, |c| c.limits.handshake_timeout_secs = 2)
        .await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;
    let addr = b.s2s_addr(TlsMode::Starttls);

    // Stall: half a stream header, then nothing.
    let mut staller = TcpStream::connect(addr).await.unwrap();
    staller
        .write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' to='b.exa")
        .await
        .unwrap();

    // Flood: an authenticated peer sends many stanzas quickly, then an oversized one.
    let (cert, key) = w.ca.issue("flood.example", w.dir.path());
    let mut flooder = RawPeer::connect(addr).await;
    flooder.authenticate("flood.example", B, &cert, &key).await;
    let mut batch = String::new();
    for i in 0..1500 {
        batch.push_str(&format!(
            "<message from='f@flood.example/x' to='bob@b.example' type='chat'><body>f{i}</body></message>"
        ));
    }
    flooder.send(&batch).await.unwrap();

    // Meanwhile federation between a and b works.
    chat(&mut alice, "bob@b.example", "unaffected").await;
    expect_body(&mut bob, "unaffected").await;
    expect_body(&mut bob, "f1499").await;

    let big = "x".repeat(300_000);
    let _ = flooder
        .send(&format!(
            "<message from='f@flood.example/x' to='bob@b.example'><body>{big}</body></message>"
        ))
        .await;
    assert_eq!(flooder.stream_error().await, "policy-violation");

    // The staller is dropped after the handshake timeout with connection-timeout.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), staller.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "stalled connection was not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("connection-timeout"), "{text}");

    chat(&mut alice, "bob@b.example", "still").await;
    expect_body(&mut bob, "still").await;
    a.stop().await;
    b.stop().await;
}

/// A receiving server that offers SASL EXTERNAL and then rejects it (as a peer that cannot
/// verify our certificate might): xmppd falls back to dialback on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_rejected_falls_back_to_dialback_on_the_same_stream() {
    let w = World::new().await;
    let a = w.server(A, A_IP, true, |_| {}).await;
    let mut alice = online(&a, "alice").await;

    let fake_dir = tempfile::tempdir().unwrap();
    let fake_cfg = Config {
        data_dir: fake_dir.path().to_path_buf(),
        vhosts: vec![VhostConfig {
            domain: "fake.example".into(),
            certificate: None,
            key: None,
        }],
        ..Config::default()
    };
    let tls = xmppd::net::tls::TlsContext::load(&fake_cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.10:0").await.unwrap();
    w.dns.add_srv(
        "_xmpp-server._tcp.fake.example",
        0,
        0,
        listener.local_addr().unwrap().port(),
        "h.fake.example",
    );
    w.dns.add_addr("h.fake.example", "127.0.0.10");
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut p = RawPeer {
            io: MaybeTls::Plain(tcp),
            parser: StreamParser::new(ParserLimits {
                max_stanza_bytes: 1 << 20,
                max_depth: 32,
                max_attributes: 64,
            }),
            buf: vec![0; 8192],
        };
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
            xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
            from='fake.example' to='a.example' id='ID1' version='1.0'>";
        assert!(matches!(p.next().await, Some(StreamEvent::Open(_))));
        p.send(&format!(
            "{header}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        ))
        .await
        .unwrap();
        assert_eq!(p.element().await.name, "starttls");
        p.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        p.io.accept_tls(tls.s2s_starttls_config()).await.unwrap();
        p.parser.reset();
        assert!(matches!(p.next().await, Some(StreamEvent::Open(_))));
        p.send(&format!(
            "{}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
             <mechanism>EXTERNAL</mechanism></mechanisms>\
             <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
            header.replace("ID1", "ID2")
        ))
        .await
        .unwrap();
        let auth = p.element().await;
        assert_eq!(auth.name, "auth");
        p.send("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>")
            .await
            .unwrap();
        let result = p.element().await;
        assert_eq!(
            (result.name.as_str(), result.attr("from")),
            ("result", Some(A))
        );
        assert!(!result.text().trim().is_empty());
        p.send("<db:result from='fake.example' to='a.example' type='valid'/>")
            .await
            .unwrap();
        let m = p.element().await;
        assert_eq!(m.name, "message");
        m.child_text("body", "jabber:client").unwrap()
    });
    chat(&mut alice, "x@fake.example", "after-fallback").await;
    let body = tokio::time::timeout(Duration::from_secs(10), fake)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "after-fallback");
    assert_eq!(methods(&a), vec![AuthMethod::Dialback]);
    a.stop().await;
}

async fn next_body(c: &mut Client) -> Option<String> {
    c.recv_until(|e| e.name == "message")
        .await
        .child_text("body", "jabber:client")
}

/// A peer holding a certificate that is also valid for one of our domains (a shared
/// wildcard certificate, say) must not become that domain: no SASL EXTERNAL, no dialback,
/// and stanzas "from" our own users arriving over s2s are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_domain_is_never_authenticated_inbound() {
    let w = World::new().await;
    let b = w.server(B, B_IP, true, |_| {}).await;
    let mut bob = online(&b, "bob").await;
    b.add_user("carol", "password").await;
    let mut carol = b.login("carol", "r").await;
    let addr = b.s2s_addr(TlsMode::Starttls);
    let elsewhere = tempfile::tempdir().unwrap();
    let (b_cert, b_key) = w.ca.issue(B, elsewhere.path());

    let mut peer = RawPeer::connect(addr).await;
    let features = peer.starttls(B, B, &b_cert, &b_key).await;
    assert!(
        features
            .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .is_none(),
        "EXTERNAL offered for our own domain: {features:?}"
    );
    peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await
        .unwrap();
    let failure = peer.element().await;
    assert_eq!(failure.name, "failure", "{failure:?}");
    assert!(
        failure.has_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl"),
        "{failure:?}"
    );
    peer.send("<db:result from='b.example' to='b.example'>0123456789abcdef</db:result>")
        .await
        .unwrap();
    let result = peer.element().await;
    assert_eq!(result.name, "result", "{result:?}");
    assert_eq!(result.attr("type"), Some("error"), "{result:?}");
    let error = result.child("error", "jabber:client").unwrap();
    assert_eq!(error.attr("type"), Some("cancel"));
    assert!(error.has_child("forbidden", "urn:ietf:params:xml:ns:xmpp-stanzas"));
    peer.send("<message from='carol@b.example/r' to='bob@b.example' type='chat'><body>forged</body></message>")
        .await
        .unwrap();
    assert_eq!(peer.stream_error().await, "not-authorized");
    // Nothing reached bob before this real message from carol.
    chat(&mut carol, "bob@b.example/r", "real").await;
    assert_eq!(next_body(&mut bob).await.as_deref(), Some("real"));

    // A peer authenticated for its own domain: a stanza from one of ours is dropped, the
    // stream goes on.
    let (cert, key) = w.ca.issue("evil.example", w.dir.path());
    let mut peer = RawPeer::connect(addr).await;
    peer.authenticate("evil.example", B, &cert, &key).await;
    peer.send("<message from='carol@b.example/r' to='bob@b.example' type='chat'><body>forged</body></message>")
        .await
        .unwrap();
    peer.send("<message from='eve@evil.example/x' to='bob@b.example' type='chat'><body>ok</body></message>")
        .await
        .unwrap();
    assert_eq!(next_body(&mut bob).await.as_deref(), Some("ok"));
    b.stop().await;
}

/// Unauthenticated connections that stall inside the TLS handshake (Direct TLS, or after
/// `<proceed/>`) are closed after the handshake timeout like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_handshakes_are_bounded_by_the_handshake_timeout() {
    let w = World::new().await;
    let b = w
        .server(B, B_IP, true, |c| c.limits.handshake_timeout_secs = 1)
        .await;
    let closed_within = |mut tcp: TcpStream| async move {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink));
        read.await.is_ok()
    };

    // Direct TLS: connects and never sends a ClientHello.
    let silent = TcpStream::connect(b.s2s_addr(TlsMode::DirectTls))
        .await
        .unwrap();
    // STARTTLS: asks for TLS, then never starts it.
    let mut peer = RawPeer::connect(b.s2s_addr(TlsMode::Starttls)).await;
    peer.open("evil.example", B).await;
    peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    assert_eq!(peer.element().await.name, "proceed");
    let MaybeTls::Plain(after_proceed) = peer.io else {
        panic!("not plain TCP")
    };
    assert!(
        closed_within(silent).await,
        "silent Direct TLS connection was not closed"
    );
    assert!(
        closed_within(after_proceed).await,
        "connection silent after <proceed/> was not closed"
    );
    b.stop().await;
}

/// Polls a stored row until `cond` holds (5 s at most).
async fn wait_for_row<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One inbound stream carries a whole remote domain: over its stanza rate it is read more
/// slowly (the sending server's TCP is pushed back), nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_domain_over_its_rate_is_slowed_not_dropped() {
    let w = World::new().await;
    let a = w.server(A, A_IP, true, |_| {}).await;
    let b = w
        .server(B, B_IP, true, |c| {
            c.limits.s2s_stanzas_per_sec = 20;
            c.limits.s2s_burst_stanzas = 5;
        })
        .await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;
    chat(&mut alice, "bob@b.example", "hello").await;
    expect_body(&mut bob, "hello").await;
    let flood: String = (0..25)
        .map(|i| format!("<message to='bob@b.example' type='chat'><body>f{i}</body></message>"))
        .collect();
    let started = Instant::now();
    alice.send(&flood).await;
    for i in 0..25 {
        expect_body(&mut bob, &format!("f{i}")).await;
    }
    // 20 stanzas over the burst at 20 per second: about a second.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "all 25 arrived in {took:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A remote domain may hold a bounded number of inbound streams: one more authentication
/// is refused with `policy-violation`, and a closed stream frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_streams_per_remote_domain_are_bounded() {
    let w = World::new().await;
    let b = w
        .server(B, B_IP, true, |c| c.s2s.max_inbound_streams_per_domain = 2)
        .await;
    let (cert, key) = w.ca.issue("evil.example", w.dir.path());
    let addr = b.s2s_addr(TlsMode::Starttls);
    let mut first = RawPeer::connect(addr).await;
    first.authenticate("evil.example", B, &cert, &key).await;
    let mut second = RawPeer::connect(addr).await;
    second.authenticate("evil.example", B, &cert, &key).await;
    let mut third = RawPeer::connect(addr).await;
    third.starttls("evil.example", B, &cert, &key).await;
    third
        .send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await
        .unwrap();
    assert_eq!(third.stream_error().await, "policy-violation");
    drop(first);
    let ctx = b.ctx().clone();
    wait_until("the closed stream's slot is free", || {
        ctx.s2s
            .get()
            .is_some_and(|s| s.inbound_streams("evil.example") == 1)
    })
    .await;
    let mut fourth = RawPeer::connect(addr).await;
    fourth.authenticate("evil.example", B, &cert, &key).await;
    drop(second);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_stanzas_and_streams_are_counted() {
    use xmppd::metrics::{Direction, Stream};
    let w = World::new().await;
    let a = w.server(A, A_IP, false, |_| {}).await;
    let b = w.server(B, B_IP, false, |_| {}).await;
    let mut alice = online(&a, "alice").await;
    let mut bob = online(&b, "bob").await;
    for i in 0..3 {
        chat(&mut alice, "bob@b.example/r", &format!("m{i}")).await;
        expect_body(&mut bob, &format!("m{i}")).await;
    }
    let (am, bm) = (&a.ctx().metrics, &b.ctx().metrics);
    // Counted as read before routing: bob has them, so b counted them.
    assert_eq!(bm.stanzas(Stream::S2s, Direction::In, "message"), 3);
    // Counted once the write is flushed, which may finish after bob reads.
    wait_until("a's outbound messages counted", || {
        am.stanzas(Stream::S2s, Direction::Out, "message") == 3
    })
    .await;
    assert_eq!(am.stanzas(Stream::C2s, Direction::In, "message"), 3);
    assert_eq!(bm.stanzas(Stream::C2s, Direction::Out, "message"), 3);
    let text = am.render(a.ctx()).await;
    assert!(
        text.contains("xmppd_s2s_connections{direction=\"outbound\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("xmppd_s2s_queues 1\n"), "{text}");
    let text = bm.render(b.ctx()).await;
    assert!(
        !text.contains("xmppd_s2s_connections{direction=\"inbound\"} 0\n"),
        "{text}"
    );
}
