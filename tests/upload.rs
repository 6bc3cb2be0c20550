//! XEP-0363 HTTP file upload over real sockets: slots over XMPP, PUT and GET over the
//! embedded HTTP(S) server.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{TIMEOUT, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use xmppd::config::{Config, ListenerConfig, ListenerKind, TlsMode};
use xmppd::modules::upload::UploadService;
use xmppd::xml::Element;

const UPLOAD: &str = "urn:xmpp:http:upload:0";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const SECRET: &str = "a test secret of enough length";

fn with_http(c: &mut Config) {
    for tls in [TlsMode::None, TlsMode::DirectTls] {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls,
        });
    }
    c.upload.secret = Some(SECRET.into());
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let server = TestServer::start_with(|c| {
        with_http(c);
        tweak(c);
    })
    .await;
    server.add_user("alice", "password").await;
    server
}

fn condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "not an error: {e:?}");
    e.child("error", "jabber:client")
        .and_then(|err| err.elements().find(|c| c.ns == STANZAS))
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

struct Slot {
    put: String,
    get: String,
}

fn slot_of(r: &Element) -> Slot {
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let slot = r.child("slot", UPLOAD).expect("slot");
    let url = |name| {
        slot.child(name, UPLOAD)
            .and_then(|e| e.attr("url"))
            .expect("url")
            .to_string()
    };
    Slot {
        put: url("put"),
        get: url("get"),
    }
}

fn request_xml(filename: &str, size: usize, ct: &str) -> String {
    format!(
        "<iq type='get' to='upload.localhost'><request xmlns='{UPLOAD}' \
         filename='{filename}' size='{size}' content-type='{ct}'/></iq>"
    )
}

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One HTTP/1.1 request on a new connection to the listener the URL's scheme names;
/// `extra` are more header lines.
async fn http(
    server: &TestServer,
    method: &str,
    url: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (TlsMode::DirectTls, r)
    } else {
        (
            TlsMode::None,
            url.strip_prefix("http://").expect("http URL"),
        )
    };
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let host = host.split(':').next().unwrap().to_string();
    let addr = server.handle().addr(ListenerKind::Http, tls).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let raw = if tls == TlsMode::DirectTls {
        let name = rustls::pki_types::ServerName::try_from(host).unwrap();
        let stream = support::tls_connector(Some(b"http/1.1"))
            .connect(name, tcp)
            .await
            .unwrap();
        exchange(stream, req.as_bytes(), body).await
    } else {
        exchange(tcp, req.as_bytes(), body).await
    };
    parse_response(&raw)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: &[u8],
    body: &[u8],
) -> Vec<u8> {
    s.write_all(head).await.unwrap();
    // The server may answer (and close) before taking a refused body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no complete response in time");
    out
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
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
    HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn service(server: &TestServer) -> Arc<UploadService> {
    server.ctx().registry.state::<UploadService>().unwrap()
}

/// Files (not directories) under the upload directory.
fn stored_files(server: &TestServer) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![service(server).root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_shows_the_service_and_its_max_size() {
    let server = server_with(|c| c.upload.max_file_size = 12_345).await;
    let mut alice = server.login("alice", "a").await;
    let items = alice
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    let listed = items
        .child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .elements()
        .any(|i| i.attr("jid") == Some("upload.localhost"));
    assert!(listed, "{items:?}");
    let info = alice
        .iq("<iq type='get' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let q = info
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(q.elements().any(|e| e.name == "identity"
        && e.attr("category") == Some("store")
        && e.attr("type") == Some("file")));
    assert!(
        q.elements()
            .any(|e| e.name == "feature" && e.attr("var") == Some(UPLOAD))
    );
    let form = q.child("x", "jabber:x:data").expect("form");
    let value = |var: &str| {
        form.elements()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.child_text("value", "jabber:x:data"))
    };
    assert_eq!(value("FORM_TYPE").as_deref(), Some(UPLOAD));
    assert_eq!(value("max-file-size").as_deref(), Some("12345"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_put_then_get_over_http_and_https() {
    let server = server_with(|_| {}).await;
    let mut alice = server.login("alice", "a").await;
    let data = b"hello, upload";
    let r = alice
        .iq(&request_xml("très cool.txt", data.len(), "text/plain"))
        .await;
    let slot = slot_of(&r);
    // The https listener comes first; URLs name the vhost.
    assert!(slot.put.starts_with("https://localhost:"), "{}", slot.put);
    assert!(slot.get.contains("/tr%C3%A8s%20cool.txt?"), "{}", slot.get);

    // Not there before the PUT.
    assert_eq!(http(&server, "GET", &slot.get, &[], b"").await.status, 404);

    let len = data.len().to_string();
    let headers = [
        ("Content-Length", len.as_str()),
        ("Content-Type", "text/plain"),
    ];
    let put = http(&server, "PUT", &slot.put, &headers, data).await;
    assert_eq!(put.status, 201, "{:?}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.header("access-control-allow-origin"), Some("*"));

    // A slot is filled once.
    let again = http(&server, "PUT", &slot.put, &headers, data).await;
    assert_eq!(again.status, 409);

    let get = http(&server, "GET", &slot.get, &[], b"").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body, data);
    assert_eq!(get.header("content-type"), Some("text/plain"));
    assert_eq!(get.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(get.header("access-control-allow-origin"), Some("*"));
    let disposition = get.header("content-disposition").unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''tr%C3%A8s%20cool.txt"),
        "{disposition}"
    );

    // The same file over plain HTTP.
    let plain = slot.get.replacen("https://", "http://", 1);
    let plain = format!(
        "http://localhost:{}{}",
        server
            .handle()
            .addr(ListenerKind::Http, TlsMode::None)
            .unwrap()
            .port(),
        &plain[plain.find("/upload/").unwrap()..]
    );
    let head = http(&server, "HEAD", &plain, &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(len.as_str()));

    // A browser's CORS preflight.
    let pre = http(
        &server,
        "OPTIONS",
        &slot.put,
        &[
            ("Origin", "https://web.example"),
            ("Access-Control-Request-Method", "PUT"),
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_and_over_quota_requests_are_refused() {
    let server = server_with(|c| {
        c.upload.max_file_size = 1000;
        c.upload.quota_bytes = 1500;
    })
    .await;
    let mut alice = server.login("alice", "a").await;
    let r = alice
        .iq(&request_xml("big.bin", 1001, "application/octet-stream"))
        .await;
    assert_eq!(condition(&r), "not-acceptable");
    let max = r
        .child("error", "jabber:client")
        .and_then(|e| e.child("file-too-large", UPLOAD))
        .and_then(|e| e.child_text("max-file-size", UPLOAD));
    assert_eq!(max.as_deref(), Some("1000"), "{r:?}");

    slot_of(
        &alice
            .iq(&request_xml("a.bin", 1000, "application/octet-stream"))
            .await,
    );
    // A slot given out counts against the quota before it is used.
    let r = alice
        .iq(&request_xml("b.bin", 600, "application/octet-stream"))
        .await;
    assert_eq!(condition(&r), "resource-constraint");
    slot_of(
        &alice
            .iq(&request_xml("c.bin", 500, "application/octet-stream"))
            .await,
    );
    server.stop().await;
}

fn sign(method: &str, path: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{method}\n{path}\n{expires}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_puts_are_refused_and_nothing_is_stored() {
    let server = server_with(|_| {}).await;
    let mut alice = server.login("alice", "a").await;
    let r = alice.iq(&request_xml("photo.jpg", 10, "image/jpeg")).await;
    let slot = slot_of(&r);
    let body = b"0123456789";
    let ok_headers = [("Content-Length", "10"), ("Content-Type", "image/jpeg")];

    // Wrong length, either way.
    let short = http(
        &server,
        "PUT",
        &slot.put,
        &[("Content-Length", "9"), ("Content-Type", "image/jpeg")],
        &body[..9],
    )
    .await;
    assert_eq!(short.status, 400);
    let long = http(
        &server,
        "PUT",
        &slot.put,
        &[("Content-Length", "11"), ("Content-Type", "image/jpeg")],
        b"01234567890",
    )
    .await;
    assert_eq!(long.status, 413);
    // Wrong type.
    let wrong_type = http(
        &server,
        "PUT",
        &slot.put,
        &[("Content-Length", "10"), ("Content-Type", "text/html")],
        body,
    )
    .await;
    assert_eq!(wrong_type.status, 400);
    // Tampered signature and tampered path.
    let (base, query) = slot.put.split_once('?').unwrap();
    let last = query.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    let tampered = format!("{base}?{}{flipped}", &query[..query.len() - 1]);
    assert_eq!(
        http(&server, "PUT", &tampered, &ok_headers, body)
            .await
            .status,
        403
    );
    let renamed = slot.put.replacen("photo.jpg", "photo.html", 1);
    assert_ne!(renamed, slot.put);
    assert_eq!(
        http(&server, "PUT", &renamed, &ok_headers, body)
            .await
            .status,
        403
    );
    // Unsigned.
    assert_eq!(
        http(&server, "PUT", base, &ok_headers, body).await.status,
        403
    );
    // Correctly signed, but expired.
    let path_start = base.find("/upload/").unwrap() + "/upload/".len();
    let path = base[path_start..].to_string();
    let past = 1_000_000;
    let expired = format!("{base}?e={past}&s={}", sign("PUT", &path, past));
    assert_eq!(
        http(&server, "PUT", &expired, &ok_headers, body)
            .await
            .status,
        403
    );
    // The same signing with a valid expiry works: the refusal above was the expiry.
    let future = 4_000_000_000;
    let fresh = format!("{base}?e={future}&s={}", sign("PUT", &path, future));
    // Nothing was stored by any of the refused requests.
    assert_eq!(http(&server, "GET", &slot.get, &[], b"").await.status, 404);
    assert_eq!(stored_files(&server), vec!["meta.json".to_string()]);
    assert_eq!(
        http(&server, "PUT", &fresh, &ok_headers, body).await.status,
        201
    );
    assert_eq!(http(&server, "GET", &slot.get, &[], b"").await.body, body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_other_servers_are_refused() {
    let server = server_with(|_| {}).await;
    let svc = service(&server);
    let remote = Element::new("iq", "jabber:client")
        .with_attr("type", "get")
        .with_attr("id", "r1")
        .with_attr("from", "mallory@elsewhere.example/x")
        .with_attr("to", "upload.localhost")
        .with_child(
            Element::new("request", UPLOAD)
                .with_attr("filename", "a.txt")
                .with_attr("size", "10"),
        );
    xmppd::registry::Service::handle(svc.as_ref(), server.ctx(), remote).await;
    assert!(stored_files(&server).is_empty(), "a remote user got a slot");

    // The same request from a local account does get one (so the check above could fail).
    let mut alice = server.login("alice", "a").await;
    slot_of(&alice.iq(&request_xml("a.txt", 10, "text/plain")).await);
    assert_eq!(stored_files(&server), vec!["meta.json".to_string()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_account_loses_its_files() {
    let server = server_with(|_| {}).await;
    server.add_user("bob", "password").await;
    let mut alice = server.login("alice", "a").await;
    let mut bob = server.login("bob", "b").await;
    let mut slots = Vec::new();
    for c in [&mut alice, &mut bob] {
        let slot = slot_of(&c.iq(&request_xml("f.txt", 3, "text/plain")).await);
        let put = http(
            &server,
            "PUT",
            &slot.put,
            &[("Content-Length", "3"), ("Content-Type", "text/plain")],
            b"abc",
        )
        .await;
        assert_eq!(put.status, 201);
        slots.push(slot);
    }
    let jid = xmppd::addr::parse_bare("alice@localhost").unwrap();
    assert!(server.ctx().storage.remove_account(&jid).await.unwrap());
    let removed = xmppd::modules::upload::sweep(server.ctx(), &service(&server))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        http(&server, "GET", &slots[0].get, &[], b"").await.status,
        404
    );
    assert_eq!(
        http(&server, "GET", &slots[1].get, &[], b"").await.status,
        200
    );
    server.stop().await;
}

/// `xmppd user remove` on the running server deletes the account's files at once, not at
/// the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_on_the_running_server_deletes_their_files_at_once() {
    let server = server_with(|_| {}).await;
    let mut alice = server.login("alice", "a").await;
    let slot = slot_of(&alice.iq(&request_xml("f.txt", 3, "text/plain")).await);
    let put = http(
        &server,
        "PUT",
        &slot.put,
        &[("Content-Length", "3"), ("Content-Type", "text/plain")],
        b"abc",
    )
    .await;
    assert_eq!(put.status, 201);
    let jid = xmppd::addr::parse_bare("alice@localhost").unwrap();
    let dir = service(&server).root().join(UploadService::owner_dir(&jid));
    assert!(dir.exists());
    let socket = xmppd::admin::control_socket_path(&server.config);
    let removed = xmppd::admin::control::request(
        &socket,
        &xmppd::admin::control::Request::Remove {
            jid: "alice@localhost".into(),
        },
    )
    .await;
    assert!(removed.is_ok(), "{removed:?}");
    support::wait_until("the removed account's files are gone", || !dir.exists()).await;
    assert_eq!(http(&server, "GET", &slot.get, &[], b"").await.status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_meta_lists_the_bosh_and_websocket_urls() {
    let server = server_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::DirectTls,
        });
    })
    .await;
    let ws = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::DirectTls)
        .unwrap();
    let expected = format!("wss://localhost:{}/xmpp-websocket", ws.port());
    let port = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap()
        .port();

    let xrd = http(
        &server,
        "GET",
        &format!("http://localhost:{port}/.well-known/host-meta"),
        &[],
        b"",
    )
    .await;
    assert_eq!(xrd.status, 200);
    assert_eq!(xrd.header("content-type"), Some("application/xrd+xml"));
    assert_eq!(xrd.header("access-control-allow-origin"), Some("*"));
    let text = String::from_utf8(xrd.body).unwrap();
    let doc_start = text.find("<XRD").expect("XRD");
    let doc = &text[doc_start..];
    assert!(
        doc.contains("xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'"),
        "{text}"
    );
    assert!(
        doc.contains("rel='urn:xmpp:alt-connections:websocket'"),
        "{text}"
    );
    assert!(doc.contains(&format!("href='{expected}'")), "{text}");

    let json = http(
        &server,
        "GET",
        &format!(
            "https://localhost:{}/.well-known/host-meta.json",
            server
                .handle()
                .addr(ListenerKind::Http, TlsMode::DirectTls)
                .unwrap()
                .port()
        ),
        &[],
        b"",
    )
    .await;
    assert_eq!(json.status, 200);
    assert_eq!(json.header("access-control-allow-origin"), Some("*"));
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let links: Vec<(String, String)> = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["rel"].as_str().unwrap().to_string(),
                l["href"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // BOSH and WebSocket on every HTTP listener, TLS first.
    let bosh = format!("https://localhost:{}/http-bind", ws.port());
    let plain_ws = format!("ws://localhost:{port}/xmpp-websocket");
    let plain_bosh = format!("http://localhost:{port}/http-bind");
    let rel = |r: &str| format!("urn:xmpp:alt-connections:{r}");
    for link in [
        (rel("xbosh"), bosh),
        (rel("xbosh"), plain_bosh.clone()),
        (rel("websocket"), expected.clone()),
        (rel("websocket"), plain_ws.clone()),
    ] {
        assert!(links.contains(&link), "{link:?} missing: {v}");
    }
    assert_eq!(links.len(), 6, "{v}");
    let at = |l: &(String, String)| links.iter().position(|x| x == l).unwrap();
    assert!(at(&(rel("xbosh"), plain_bosh)) == 2, "TLS first: {v}");
    assert!(at(&(rel("websocket"), plain_ws)) == 5, "TLS first: {v}");

    let missing = http(
        &server,
        "GET",
        &format!("http://localhost:{port}/nothing"),
        &[],
        b"",
    )
    .await;
    assert_eq!(missing.status, 404);
    server.stop().await;
}

/// A kept-alive HTTP/1.1 connection: one request, its response read by its length.
async fn keep_alive_request(tcp: &mut TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse_response(&buf);
            let len: usize = r.header("content-length").unwrap_or("0").parse().unwrap();
            if buf.len() >= end + 4 + len {
                return r.status;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_count_against_the_per_ip_limit_and_close_at_shutdown() {
    let server = server_with(|c| c.limits.connections_per_ip = 1).await;
    let addr = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    // Answered, so the server holds this connection's slot.
    assert_eq!(
        keep_alive_request(&mut first, "/.well-known/host-meta").await,
        200
    );

    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, second.read_to_end(&mut out))
        .await
        .expect("refusal in time")
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // The idle kept-alive connection ends with the server, and the server does not wait
    // for it longer than its grace period.
    let stopped = tokio::time::timeout(TIMEOUT, server.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown waited for an idle HTTP connection"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, first.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_files_and_unused_slots_are_swept() {
    let server = server_with(|c| c.upload.expiry_days = 1).await;
    let mut alice = server.login("alice", "a").await;
    let used = slot_of(&alice.iq(&request_xml("old.txt", 3, "text/plain")).await);
    let put = http(
        &server,
        "PUT",
        &used.put,
        &[("Content-Length", "3"), ("Content-Type", "text/plain")],
        b"abc",
    )
    .await;
    assert_eq!(put.status, 201);
    let unused = slot_of(&alice.iq(&request_xml("never.txt", 3, "text/plain")).await);
    let fresh = slot_of(&alice.iq(&request_xml("new.txt", 3, "text/plain")).await);
    let svc = service(&server);
    // Nothing is old yet.
    assert_eq!(
        xmppd::modules::upload::sweep(server.ctx(), &svc)
            .await
            .unwrap(),
        0
    );

    // Age two slots on disk: one uploaded two days ago, one handed out and never used.
    let dir_of = |url: &str| {
        let p = &url[url.find("/upload/").unwrap() + "/upload/".len()..];
        let mut parts = p.split('/');
        svc.root()
            .join(parts.next().unwrap())
            .join(parts.next().unwrap())
    };
    for (url, age) in [(&used.get, 2 * 86_400), (&unused.get, 3600)] {
        let meta_path = dir_of(url).join("meta.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        let created = meta["created"].as_u64().unwrap();
        meta["created"] = (created - age).into();
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    }
    assert_eq!(
        xmppd::modules::upload::sweep(server.ctx(), &svc)
            .await
            .unwrap(),
        2
    );
    assert!(!dir_of(&used.get).exists());
    assert!(!dir_of(&unused.get).exists());
    assert!(dir_of(&fresh.get).exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_slow_headers_time_out() {
    let server = server_with(|c| {
        c.http.body_timeout_secs = 1;
        c.http.header_timeout_secs = 1;
    })
    .await;
    let mut alice = server.login("alice", "a").await;
    let slot = slot_of(&alice.iq(&request_xml("slow.txt", 10, "text/plain")).await);
    let addr = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap();
    let path = &slot.put[slot.put.find("/upload/").unwrap()..];
    let https_path = path.to_string();
    // Half a body, then nothing.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {https_path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\
         Content-Type: text/plain\r\nConnection: close\r\n\r\n01234"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(parse_response(&out).status, 408);
    assert_eq!(stored_files(&server), vec!["meta.json".to_string()]);

    // Half a request head, then nothing: the connection is closed.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "a slow request head kept its connection");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_offers_http2() {
    let server = server_with(|_| {}).await;
    let addr = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::DirectTls)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = support::tls_connector(Some(b"h2"))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The HTTP/2 preface and an empty SETTINGS frame; the server's first frame is its
    // SETTINGS (type 4).
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(TIMEOUT, tls.read_exact(&mut frame))
        .await
        .expect("a frame in time")
        .unwrap();
    assert_eq!(frame[3], 4, "not a SETTINGS frame: {frame:?}");
    drop(tls);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_are_closed() {
    let server = server_with(|c| c.http.header_timeout_secs = 1).await;
    let addr = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        keep_alive_request(&mut tcp, "/.well-known/host-meta").await,
        200
    );
    // No next request: the server closes the connection (and frees its slot).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle connection was kept");
    server.stop().await;
}

/// slixmpp's own XEP-0363 support (disco, slot, PUT with aiohttp) against the service, on
/// a server whose only HTTP listener is plain http:// (aiohttp would refuse the
/// development certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_uploads_and_downloads_a_file() {
    let server = TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::None,
        });
        c.upload.secret = Some(SECRET.into());
    })
    .await;
    server.add_user("alice", "password").await;
    let out = support::run_slixmpp(&server, "slixmpp_upload.py").await;
    let url = out.trim();
    assert!(url.starts_with("http://localhost:"), "{out}");
    assert!(url.contains("/photo.jpg?"), "{out}");
    // What slixmpp uploaded is on disk whole, once.
    let files = stored_files(&server);
    assert_eq!(
        files.iter().filter(|f| *f == "data").count(),
        1,
        "{files:?}"
    );
    server.stop().await;
}

/// curl (nobody here wrote it) as the HTTP client: PUT to the slot, GET it back; a URL
/// with a tampered signature is refused and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_puts_and_gets_through_a_slot() {
    let server = server_with(|_| {}).await;
    let mut alice = server.login("alice", "a").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let r = alice
        .iq(&request_xml(
            "clip.bin",
            data.len(),
            "application/octet-stream",
        ))
        .await;
    let slot = slot_of(&r);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file_arg = file.to_str().unwrap();
    let ct = "Content-Type: application/octet-stream";

    // A tampered signature first: refused, nothing stored. Over HTTP/1.1: the refusal
    // comes before the body is read, and curl 7.88 takes the HTTP/2 stream reset that
    // must then follow the answer (RFC 9113 §8.1) for a failure of its own.
    let tampered = slot.put.replacen("&s=", "&s=0", 1);
    assert_ne!(tampered, slot.put);
    assert_eq!(
        curl(&["--http1.1", "-T", file_arg, "-H", ct, &tampered]),
        "403"
    );
    assert!(stored_files(&server).iter().all(|f| f != "data"));

    assert_eq!(curl(&["-T", file_arg, "-H", ct, &slot.put]), "201");
    let fetched = dir.path().join("fetched.bin");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-f",
            "-o",
            fetched.to_str().unwrap(),
            &slot.get,
        ])
        .status()
        .unwrap();
    assert!(out.success());
    assert_eq!(std::fs::read(&fetched).unwrap(), data);
    server.stop().await;
}
