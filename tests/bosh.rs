//! BOSH (XEP-0124, XEP-0206) at /http-bind over real HTTP connections: a web client's
//! session from creation through SASL and binding to chatting with a TCP client, and the
//! XEP-0124 conditions for what a client may get wrong.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};
use xmppd::xml::{Element, parse_stanza};

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const TIMEOUT: Duration = Duration::from_secs(20);

async fn start_with(tweak: impl FnOnce(&mut xmppd::config::Config)) -> TestServer {
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
        tweak(c);
    })
    .await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    server
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn element(&self) -> Element {
        parse_stanza(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a connection of its own.
async fn request(addr: SocketAddr, method: &str, extra: &str, body: &[u8]) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} /http-bind HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .expect("no response in time")
        .unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    }
}

async fn post(addr: SocketAddr, body: &str) -> Reply {
    request(addr, "POST", "", body.as_bytes()).await
}

/// A BOSH client session, one request at a time unless a test says otherwise.
struct Bosh {
    addr: SocketAddr,
    sid: String,
    rid: u64,
}

impl Bosh {
    /// Creates a session; returns it with the creation response.
    async fn create(addr: SocketAddr, hold: u32, wait: u32) -> (Bosh, Element) {
        let rid = 1_000_000;
        let reply = post(
            addr,
            &format!(
                "<body rid='{rid}' to='localhost' xml:lang='en' wait='{wait}' hold='{hold}' \
                 ack='1' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' \
                 xmlns='{HTTPBIND}'/>"
            ),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.element();
        assert_eq!(body.ns, HTTPBIND, "{}", reply.body);
        let sid = body.attr("sid").expect("sid").to_string();
        (
            Bosh {
                addr,
                sid,
                rid: rid + 1,
            },
            body,
        )
    }

    fn wrap(&mut self, attrs: &str, payload: &str) -> (u64, String) {
        let rid = self.rid;
        self.rid += 1;
        let xml = format!(
            "<body rid='{rid}' sid='{}' {attrs} xmlns='{HTTPBIND}' \
             xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>",
            self.sid
        );
        (rid, xml)
    }

    async fn send(&mut self, payload: &str) -> Element {
        let (_, xml) = self.wrap("", payload);
        let reply = post(self.addr, &xml).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.element()
    }

    async fn restart(&mut self) -> Element {
        let (_, xml) = self.wrap("to='localhost' xml:lang='en' xmpp:restart='true'", "");
        post(self.addr, &xml).await.element()
    }

    /// Sends empty requests until one answer has children matching `pred`.
    async fn poll_until(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "nothing matched");
            let body = self.send("").await;
            assert_ne!(body.attr("type"), Some("terminate"), "{body:?}");
            if let Some(found) = body.elements().find(|c| pred(c)) {
                return found.clone();
            }
        }
    }

    /// Authenticates with PLAIN, restarts and binds `resource`; returns the full JID.
    async fn login(&mut self, node: &str, resource: &str) -> String {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{node}\0password"));
        let body = self
            .send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
            ))
            .await;
        let success = match body.elements().next() {
            Some(el) => el.clone(),
            None => {
                self.poll_until(|c| c.name == "success" || c.name == "failure")
                    .await
            }
        };
        assert_eq!(success.name, "success", "{success:?}");
        let restarted = self.restart().await;
        let features = match restarted.elements().find(|c| c.name == "features") {
            Some(f) => f.clone(),
            None => self.poll_until(|c| c.name == "features").await,
        };
        assert!(
            features
                .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
                .is_some(),
            "{features:?}"
        );
        let body = self
            .send(&format!(
                "<iq type='set' id='b1' xmlns='jabber:client'>\
                 <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
            ))
            .await;
        let result = match body.elements().find(|c| c.name == "iq") {
            Some(iq) => iq.clone(),
            None => self.poll_until(|c| c.name == "iq").await,
        };
        assert_eq!(result.attr("type"), Some("result"), "{result:?}");
        result
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .expect("bound JID")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_logs_in_over_bosh_and_chats_with_a_tcp_client() {
    let server = start_with(|_| {}).await;
    let addr = http_addr(&server);
    let (mut bosh, created) = Bosh::create(addr, 1, 10).await;
    // XEP-0124 §7 and XEP-0206 §4: the session's parameters and the stream's features.
    assert_eq!(created.attr("wait"), Some("10"));
    assert_eq!(created.attr("hold"), Some("1"));
    assert_eq!(created.attr("requests"), Some("2"));
    assert_eq!(created.attr("ack"), Some("1000000"));
    assert_eq!(created.attr("from"), Some("localhost"));
    assert!(created.attr("authid").is_some_and(|a| !a.is_empty()));
    let features = created
        .elements()
        .find(|c| c.name == "features")
        .expect("features in the creation response");
    let mechanisms: Vec<String> = features
        .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .expect("mechanisms")
        .elements()
        .map(|m| m.text())
        .collect();
    assert!(mechanisms.contains(&"PLAIN".to_string()), "{mechanisms:?}");
    // No channel binding: the session's requests may come on any connection.
    assert!(
        !mechanisms.iter().any(|m| m.ends_with("-PLUS")),
        "{mechanisms:?}"
    );

    let jid = bosh.login("alice", "web").await;
    assert_eq!(jid, "alice@localhost/web");
    bosh.send("<presence xmlns='jabber:client'/>").await;

    let mut bob = server.login("bob", "phone").await;
    bob.send("<message to='alice@localhost/web' type='chat' id='m1'><body>hi web</body></message>")
        .await;
    let msg = bosh.poll_until(|c| c.name == "message").await;
    assert_eq!(msg.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(
        msg.child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hi web")
    );

    // A held request is answered as soon as something arrives, not at `wait`.
    let (_, held) = bosh.wrap("", "");
    let pending = tokio::spawn(async move { post(addr, &held).await });
    let started = tokio::time::Instant::now();
    bob.send("<message to='alice@localhost' type='chat' id='m2'><body>second</body></message>")
        .await;
    let mut got = pending.await.unwrap().element();
    if got.elements().next().is_none() {
        got = bosh.send("").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited for `wait`"
    );
    let second = got
        .elements()
        .find(|c| c.name == "message")
        .expect("the message");
    assert_eq!(
        second
            .child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("second")
    );

    // Alice answers; bob gets it over TCP.
    bosh.send(
        "<message xmlns='jabber:client' to='bob@localhost/phone' type='chat' id='r1'>\
         <body>hello tcp</body></message>",
    )
    .await;
    let reply = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(reply.attr("from"), Some("alice@localhost/web"));

    // Terminate: answered with type='terminate', the session is gone afterwards.
    let (_, bye) = bosh.wrap(
        "type='terminate'",
        "<presence type='unavailable' xmlns='jabber:client'/>",
    );
    let ended = post(addr, &bye).await.element();
    assert_eq!(ended.attr("type"), Some("terminate"));
    support::wait_until("alice's session ends", || {
        server
            .ctx()
            .sessions
            .resources(&xmppd::addr::parse_bare("alice@localhost").unwrap())
            .is_empty()
    })
    .await;
    let after = bosh.send("").await;
    assert_eq!(after.attr("condition"), Some("item-not-found"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rids_are_answered_again_and_bad_ones_end_the_session() {
    let server = start_with(|_| {}).await;
    let addr = http_addr(&server);

    // Unknown sid.
    let reply = post(
        addr,
        &format!("<body rid='5' sid='nonesuch' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let el = reply.element();
    assert_eq!(el.attr("type"), Some("terminate"));
    assert_eq!(el.attr("condition"), Some("item-not-found"));

    // A repeated rid gets the same answer (a client that lost a response asks again).
    let (mut bosh, _) = Bosh::create(addr, 1, 5).await;
    let (_, auth) = bosh.wrap(
        "",
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>",
    );
    let first = post(addr, &auth).await;
    let again = post(addr, &auth).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the same answer again");
    assert_ne!(
        again.element().attr("type"),
        Some("terminate"),
        "{}",
        again.body
    );

    // A rid far beyond the window ends the session.
    let far = format!(
        "<body rid='{}' sid='{}' xmlns='{HTTPBIND}'/>",
        bosh.rid + 100,
        bosh.sid
    );
    let el = post(addr, &far).await.element();
    assert_eq!(el.attr("condition"), Some("item-not-found"));
    let el = bosh.send("").await;
    assert_eq!(
        el.attr("condition"),
        Some("item-not-found"),
        "session ended"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_too_many_requests_get_their_conditions() {
    let server = start_with(|c| c.bosh.max_body_bytes = 4096).await;
    let addr = http_addr(&server);

    // Not a BOSH body at all: HTTP 400 with bad-request.
    for bad in [
        "<message xmlns='jabber:client'/>",
        "<body rid='1' xmlns='jabber:client'/>",
        "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'><unclosed>",
        "garbage",
    ] {
        let reply = post(addr, bad).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.element().attr("condition"), Some("bad-request"));
    }
    // A host we do not serve.
    let reply = post(
        addr,
        &format!("<body rid='1' to='elsewhere.example' wait='5' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(reply.element().attr("condition"), Some("host-unknown"));

    // Over the body size limit: policy-violation, nothing read further.
    let (mut bosh, _) = Bosh::create(addr, 1, 5).await;
    let (_, huge) = bosh.wrap("", &format!("<!-- {} -->", "x".repeat(5000)));
    let el = post(addr, &huge).await.element();
    assert_eq!(el.attr("condition"), Some("policy-violation"));

    // More requests at once than the window (`requests` = 2) allows: the ones beyond it
    // end the session with item-not-found (XEP-0124 §14.2); the one waiting for its
    // missing predecessor is answered with the end too.
    let (mut bosh, _) = Bosh::create(addr, 1, 5).await;
    bosh.rid += 1; // rid r is never sent
    let (_, ahead) = bosh.wrap("", "");
    let (_, beyond) = bosh.wrap("", "");
    let waiting = tokio::spawn(async move { post(addr, &ahead).await });
    support::wait_until("the early request waits", || !waiting.is_finished()).await;
    let refused = post(addr, &beyond).await.element();
    assert_eq!(refused.attr("condition"), Some("item-not-found"));
    let waiting = waiting.await.unwrap().element();
    assert_eq!(waiting.attr("type"), Some("terminate"), "{waiting:?}");
    let el = bosh.send("").await;
    assert_eq!(
        el.attr("condition"),
        Some("item-not-found"),
        "session ended"
    );

    // The server is fine afterwards.
    let (mut fine, _) = Bosh::create(addr, 1, 5).await;
    assert_eq!(fine.login("bob", "web").await, "bob@localhost/web");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_sessions_end_and_sessions_per_ip_are_limited() {
    let server = start_with(|c| {
        c.bosh.inactivity_secs = 1;
        c.bosh.max_sessions_per_ip = 2;
    })
    .await;
    let addr = http_addr(&server);
    let (mut first, _) = Bosh::create(addr, 0, 1).await;
    let (_, _second) = Bosh::create(addr, 0, 1).await;
    let reply = post(
        addr,
        &format!("<body rid='9' to='localhost' wait='5' hold='1' xmlns='{HTTPBIND}'/>"),
    )
    .await;
    assert_eq!(reply.element().attr("condition"), Some("policy-violation"));

    // No requests for `inactivity` (1 s): the sessions end and free their slots, so a
    // new session can be made again (each refused attempt touches no other session).
    let create = format!("<body rid='9' to='localhost' wait='5' hold='1' xmlns='{HTTPBIND}'/>");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let again = loop {
        let el = post(addr, &create).await.element();
        if el.attr("sid").is_some() {
            break el;
        }
        assert_eq!(el.attr("condition"), Some("policy-violation"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(again.attr("sid").is_some());
    let el = first.send("").await;
    assert_eq!(
        el.attr("condition"),
        Some("item-not-found"),
        "the old session ended"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_of_other_sites_get_no_cors_permission() {
    let server = start_with(|c| {
        c.websocket.allowed_origins = vec!["https://chat.example.net".into()];
    })
    .await;
    let addr = http_addr(&server);
    let preflight = request(
        addr,
        "OPTIONS",
        "Origin: https://chat.example.net\r\nAccess-Control-Request-Method: POST\r\n",
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://chat.example.net")
    );
    let create = format!("<body rid='1' to='localhost' wait='5' hold='1' xmlns='{HTTPBIND}'/>");
    let refused = request(
        addr,
        "POST",
        "Origin: https://evil.example\r\n",
        create.as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 403);
    let allowed = request(
        addr,
        "POST",
        "Origin: https://chat.example.net\r\n",
        create.as_bytes(),
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.element().attr("sid").is_some());
    server.stop().await;
}

/// Plain http:// on a listener that is not loopback-only is not private, and no STARTTLS
/// exists over BOSH: with `c2s.require_tls` the stream ends at once with a stream error
/// that says why, instead of offering a STARTTLS that cannot happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_bosh_off_loopback_is_refused_clearly() {
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "0.0.0.0:0".parse().unwrap(),
            tls: TlsMode::None,
        });
    })
    .await;
    let port = http_addr(&server).port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = post(
        addr,
        &format!(
            "<body rid='1' to='localhost' wait='5' hold='1' ver='1.6' xmpp:version='1.0' \
             xmlns:xmpp='urn:xmpp:xbosh' xmlns='{HTTPBIND}'/>"
        ),
    )
    .await;
    let body = reply.element();
    assert_eq!(body.attr("type"), Some("terminate"), "{}", reply.body);
    assert_eq!(body.attr("condition"), Some("remote-stream-error"));
    let error = body
        .elements()
        .find(|e| e.name == "error")
        .expect("stream error");
    assert!(
        error.has_child("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("starttls"), "{}", reply.body);
    server.stop().await;
}
