//! XMPP over WebSocket (RFC 7395): a WebSocket client (tokio-tungstenite, not ours) logs in
//! over ws:// on loopback and over wss://, and chats with a classic TCP client.

mod support;

use std::net::SocketAddr;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use support::TestServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};
use xmppd::xml::{Element, parse_stanza};

const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

async fn start() -> TestServer {
    let server = TestServer::start_with(|c| {
        for tls in [TlsMode::None, TlsMode::DirectTls] {
            c.listeners.push(ListenerConfig {
                kind: ListenerKind::Http,
                address: "127.0.0.1:0".parse().unwrap(),
                tls,
            });
        }
    })
    .await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    server
}

fn ws_addr(server: &TestServer, tls: TlsMode) -> SocketAddr {
    server.handle().addr(ListenerKind::Http, tls).unwrap()
}

trait WsIo:
    futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
    + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + Unpin
{
}
impl<T> WsIo for T where
    T: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin
{
}

fn request(
    url: &str,
    protocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

async fn connect_ws(addr: SocketAddr) -> impl WsIo {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/xmpp-websocket");
    let (ws, response) = tokio_tungstenite::client_async(request(&url, Some("xmpp")), tcp)
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "xmpp"
    );
    ws
}

/// The next text message, parsed (every RFC 7395 message is one complete element).
async fn recv(ws: &mut impl WsIo) -> Element {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("timed out waiting for a WebSocket message")
            .expect("WebSocket closed")
            .unwrap();
        match msg {
            Message::Text(text) => return parse_stanza(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn send(ws: &mut impl WsIo, xml: &str) {
    ws.send(Message::text(xml)).await.unwrap();
}

async fn open(ws: &mut impl WsIo) -> Element {
    send(
        ws,
        &format!("<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"),
    )
    .await;
    let opened = recv(ws).await;
    assert!(opened.is("open", FRAMING), "{opened:?}");
    assert_eq!(opened.attr("from"), Some("localhost"));
    assert_eq!(opened.attr("version"), Some("1.0"));
    let features = recv(ws).await;
    assert!(
        features.is("features", "http://etherx.jabber.org/streams"),
        "{features:?}"
    );
    features
}

/// Logs in with PLAIN (the transport is private: loopback or TLS) and binds `resource`.
async fn login(ws: &mut impl WsIo, user: &str, password: &str, resource: &str) -> String {
    let features = open(ws).await;
    // No STARTTLS over WebSocket (RFC 7395 §3.8).
    assert!(!features.has_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls"));
    login_after_open(ws, user, password, resource).await
}

/// `login` for a stream whose first `<open/>` was already exchanged.
async fn login_after_open(
    ws: &mut impl WsIo,
    user: &str,
    password: &str,
    resource: &str,
) -> String {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    send(
        ws,
        &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"),
    )
    .await;
    let success = recv(ws).await;
    assert!(
        success.is("success", "urn:ietf:params:xml:ns:xmpp-sasl"),
        "{success:?}"
    );
    let features = open(ws).await;
    assert!(features.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
    send(
        ws,
        &format!(
            "<iq xmlns='jabber:client' type='set' id='b1'>\
             <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ),
    )
    .await;
    let bound = recv(ws).await;
    assert_eq!(bound.attr("type"), Some("result"), "{bound:?}");
    assert_eq!(bound.ns, "jabber:client");
    bound
        .first_element()
        .and_then(|b| b.first_element())
        .map(|j| j.text())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_chats_with_a_tcp_client() {
    let server = start().await;
    let mut ws = connect_ws(ws_addr(&server, TlsMode::None)).await;
    let jid = login(&mut ws, "alice", "password", "web").await;
    assert_eq!(jid, "alice@localhost/web");
    send(&mut ws, "<presence xmlns='jabber:client'/>").await;

    let mut bob = server.login("bob", "phone").await;
    bob.available().await;
    send(
        &mut ws,
        "<message xmlns='jabber:client' to='bob@localhost/phone' type='chat' id='m1'>\
         <body>from the browser</body></message>",
    )
    .await;
    let got = bob.recv_until(|e| e.attr("id") == Some("m1")).await;
    assert_eq!(got.attr("from"), Some("alice@localhost/web"));
    assert_eq!(
        got.child("body", "jabber:client").unwrap().text(),
        "from the browser"
    );

    bob.send(
        "<message to='alice@localhost/web' type='chat' id='m2'><body>to the browser</body></message>",
    )
    .await;
    let got = loop {
        let el = recv(&mut ws).await;
        if el.attr("id") == Some("m2") {
            break el;
        }
    };
    // Each message declares its namespace: the browser parses it as a document.
    assert_eq!(got.ns, "jabber:client");
    assert_eq!(got.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(
        got.child("body", "jabber:client").unwrap().text(),
        "to the browser"
    );

    // An iq round trip through the server's own modules.
    send(
        &mut ws,
        "<iq xmlns='jabber:client' type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    let pong = loop {
        let el = recv(&mut ws).await;
        if el.attr("id") == Some("p1") {
            break el;
        }
    };
    assert_eq!(pong.attr("type"), Some("result"));

    // Closing: <close/> is answered with <close/>, then the WebSocket close handshake.
    send(&mut ws, &format!("<close xmlns='{FRAMING}'/>")).await;
    let mut closed_by_server = false;
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await
    {
        match msg {
            Ok(Message::Text(t)) => {
                let el = parse_stanza(t.as_str()).unwrap();
                if el.is("close", FRAMING) {
                    closed_by_server = true;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(closed_by_server);
    // The session is gone for the router.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server
        .ctx()
        .sessions
        .resources(&xmppd::addr::parse_bare("alice@localhost").unwrap())
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "session not ended");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_websocket_offers_channel_binding() {
    let server = start().await;
    let addr = ws_addr(&server, TlsMode::DirectTls);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // As browsers do: ALPN http/1.1 (a server insisting on xmpp-client would fail it).
    let tls = support::tls_connector(Some(b"http/1.1"))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let url = "wss://localhost/xmpp-websocket";
    let (mut ws, _) = tokio_tungstenite::client_async(request(url, Some("xmpp")), tls)
        .await
        .unwrap();
    let features = open(&mut ws).await;
    let mechanisms: Vec<String> = features
        .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .unwrap()
        .elements()
        .map(|m| m.text())
        .collect();
    assert!(
        mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS"),
        "{mechanisms:?}"
    );
    let jid = login_after_open(&mut ws, "bob", "password", "tab").await;
    assert_eq!(jid, "bob@localhost/tab");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_upgrades_without_the_xmpp_subprotocol_and_bad_frames() {
    let server = start().await;
    let addr = ws_addr(&server, TlsMode::None);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/xmpp-websocket");
    let refused = tokio_tungstenite::client_async(request(&url, None), tcp).await;
    assert!(
        refused.is_err(),
        "upgrade without Sec-WebSocket-Protocol: xmpp accepted"
    );

    // A binary message is not XMPP: the stream ends with an error, then <close/>.
    let mut ws = connect_ws(addr).await;
    open(&mut ws).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let error = recv(&mut ws).await;
    assert!(
        error.is("error", "http://etherx.jabber.org/streams"),
        "{error:?}"
    );
    assert!(recv(&mut ws).await.is("close", FRAMING));

    // A message over the stanza size limit is a policy violation, not unbounded memory.
    let mut ws = connect_ws(addr).await;
    open(&mut ws).await;
    let huge = format!(
        "<message xmlns='jabber:client'><body>{}</body></message>",
        "x".repeat(server.config.limits.max_stanza_bytes + 1)
    );
    let _ = ws.send(Message::text(huge)).await;
    let error = recv(&mut ws).await;
    assert!(
        error.has_child("policy-violation", "urn:ietf:params:xml:ns:xmpp-streams"),
        "{error:?}"
    );
    server.stop().await;
}

/// Upgrades `addr` as a browser page at `origin` would (to `url`), returning the HTTP
/// status the server answered with.
async fn upgrade_status(addr: SocketAddr, url: &str, origin: Option<&str>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = request(url, Some("xmpp"));
    if let Some(origin) = origin {
        req.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_pages_are_refused_with_403() {
    let server = start().await;
    let addr = ws_addr(&server, TlsMode::None);
    let port = addr.port();
    let by_ip = format!("ws://{addr}/xmpp-websocket");
    let by_name = format!("ws://localhost:{port}/xmpp-websocket");
    // Not a browser: no Origin at all.
    assert_eq!(upgrade_status(addr, &by_ip, None).await, 101);
    // A page served by this host, on another port (a local web client).
    assert_eq!(
        upgrade_status(addr, &by_ip, Some("http://127.0.0.1:8000")).await,
        101
    );
    assert_eq!(
        upgrade_status(addr, &by_name, Some("http://localhost:8000")).await,
        101
    );
    // Any other site's page in the user's browser.
    assert_eq!(
        upgrade_status(addr, &by_ip, Some("https://evil.example")).await,
        403
    );
    assert_eq!(upgrade_status(addr, &by_name, Some("null")).await, 403);
    // DNS rebinding: evil.example resolved to this address, so the page and the upgrade
    // request name the same host, which is not ours.
    assert_eq!(
        upgrade_status(
            addr,
            &format!("ws://evil.example:{port}/xmpp-websocket"),
            Some(&format!("http://evil.example:{port}"))
        )
        .await,
        403
    );
    // After a refusal the listener still serves good clients.
    let mut ws = connect_ws(addr).await;
    login(&mut ws, "alice", "password", "after").await;
    server.stop().await;

    // A web client hosted elsewhere, allowed by configuration (exactly that origin).
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
        c.websocket.allowed_origins = vec!["https://chat.example.net".into()];
    })
    .await;
    let addr = ws_addr(&server, TlsMode::None);
    let url = format!("ws://{addr}/xmpp-websocket");
    let cases = [
        ("https://chat.example.net", 101),
        ("http://chat.example.net", 403),
        ("https://evil.example", 403),
        ("http://127.0.0.1:8000", 101),
    ];
    for (origin, status) in cases {
        assert_eq!(
            upgrade_status(addr, &url, Some(origin)).await,
            status,
            "{origin}"
        );
    }
    server.stop().await;
}
