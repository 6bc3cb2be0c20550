//! Prometheus metrics at `GET /metrics`: scraped over a real socket and parsed after real
//! traffic; refused to addresses not allowed; absent unless enabled.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::{Client, LoginOptions, TIMEOUT, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use xmppd::config::{Config, ListenerConfig, ListenerKind, TlsMode};

fn with_metrics(c: &mut Config) {
    c.listeners.push(ListenerConfig {
        kind: ListenerKind::Http,
        address: "127.0.0.1:0".parse().unwrap(),
        tls: TlsMode::None,
    });
    c.metrics.enabled = true;
    // Every scrape reads the stored totals afresh.
    c.metrics.storage_sample_secs = 0;
}

fn http_addr(server: &TestServer) -> SocketAddr {
    server
        .handle()
        .addr(ListenerKind::Http, TlsMode::None)
        .unwrap()
}

struct Response {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET /metrics` on a new connection from `from` (an address to bind the client socket
/// to, e.g. 127.0.0.2), with extra header lines.
async fn get(addr: SocketAddr, from: Option<&str>, extra: &str) -> Response {
    let tcp = match from {
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(ip.parse().unwrap(), 0))
                .unwrap();
            socket.connect(addr).await.unwrap()
        }
        None => TcpStream::connect(addr).await.unwrap(),
    };
    let mut tcp = tcp;
    let req =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .expect("no complete response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    // Connection: close, so the body is what follows, possibly chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        content_type,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

/// One sample of the exposition: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format: `# ...` lines are metadata, every other line is
/// `name{label="value",...} number`. Panics on anything else, so a malformed output
/// fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                // Our label values never contain commas or quotes.
                for pair in inner.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted label value");
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the one sample `name` with (at least) these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {} samples", found.len());
    found[0].value
}

/// Scrapes until `ok` holds for the parsed samples (the server counts a closed
/// connection a moment after the client sees it close).
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = get(addr, None, "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let samples = parse(&r.body);
        if ok(&samples) {
            return samples;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}:\n{}", r.body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const MESSAGES: usize = 5;

#[tokio::test]
async fn scraped_metrics_follow_the_traffic() {
    let server = TestServer::start_with(with_metrics).await;
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, "password").await;
    }
    let addr = http_addr(&server);

    // Before any traffic: parsed, and the counters start at zero.
    let r = get(addr, None, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    let before = parse(&r.body);
    assert_eq!(value(&before, "xmppd_sessions", &[]), 0.0);
    assert_eq!(
        value(
            &before,
            "xmppd_auth_failures_total",
            &[("mechanism", "SCRAM-SHA-256")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &before,
            "xmppd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // One failed login.
    let wrong = LoginOptions {
        password: "wrong".into(),
        ..LoginOptions::default()
    };
    let failed = Client::login_opts(server.starttls_addr(), "alice", wrong).await;
    assert!(failed.is_err());

    // Two sessions; alice sends bob messages, and one to carol, who is offline.
    let mut alice = Client::login(server.starttls_addr(), "alice", "password", "a").await;
    let mut bob = Client::login(server.starttls_addr(), "bob", "password", "b").await;
    alice.available().await;
    bob.available().await;
    for i in 0..MESSAGES {
        alice
            .send(&format!(
                "<message to='bob@localhost/b' type='chat' id='m{i}'><body>hi {i}</body></message>"
            ))
            .await;
        let m = bob.recv_until(|e| e.name == "message").await;
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()));
    }
    alice
        .send("<message to='carol@localhost' type='chat' id='off'><body>later</body></message>")
        .await;
    // An iq round trip: when its answer is back, the message before it was handled.
    let pong = alice
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    drop(failed);

    let s = scrape_until(addr, "two client connections", |s| {
        value(s, "xmppd_c2s_connections", &[("transport", "tcp")]) == 2.0
    })
    .await;
    let stanzas = |stream, direction, kind| {
        value(
            &s,
            "xmppd_stanzas_total",
            &[("stream", stream), ("direction", direction), ("kind", kind)],
        )
    };
    assert_eq!(value(&s, "xmppd_sessions", &[]), 2.0);
    assert_eq!(
        value(
            &s,
            "xmppd_auth_failures_total",
            &[("mechanism", "SCRAM-SHA-256")]
        ),
        1.0
    );
    assert_eq!(stanzas("c2s", "in", "message"), (MESSAGES + 1) as f64);
    assert!(stanzas("c2s", "out", "message") >= MESSAGES as f64);
    assert!(stanzas("c2s", "in", "presence") >= 2.0);
    assert!(stanzas("c2s", "in", "iq") >= 1.0);
    assert!(stanzas("c2s", "out", "iq") >= 1.0);
    assert_eq!(stanzas("s2s", "in", "message"), 0.0);
    assert_eq!(
        value(&s, "xmppd_s2s_connections", &[("direction", "inbound")]),
        0.0
    );
    // Stored totals, sampled from storage.
    assert_eq!(value(&s, "xmppd_offline_messages", &[]), 1.0);
    // Each message to bob is archived for both; the offline one for alice (and carol).
    assert!(value(&s, "xmppd_archived_messages", &[]) >= (2 * MESSAGES + 1) as f64);
    // Storage latencies: one observation per timed call.
    let count = |op| value(&s, "xmppd_storage_latency_seconds_count", &[("op", op)]);
    assert!(count("archive_append") >= (2 * MESSAGES) as f64);
    assert_eq!(count("offline_store"), 1.0);
    assert!(
        count("offline_fetch") >= 2.0,
        "fetched at each initial presence"
    );
    let inf = value(
        &s,
        "xmppd_storage_latency_seconds_bucket",
        &[("op", "archive_append"), ("le", "+Inf")],
    );
    assert_eq!(inf, count("archive_append"));
    assert!(value(&s, "xmppd_uptime_seconds", &[]) > 0.0);
    assert_eq!(value(&s, "xmppd_session_queue_stanzas", &[]), 0.0);

    // Sessions leave the gauges when they end.
    alice.close().await;
    bob.close().await;
    scrape_until(addr, "no sessions", |s| {
        value(s, "xmppd_sessions", &[]) == 0.0
            && value(s, "xmppd_c2s_connections", &[("transport", "tcp")]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn only_allowed_addresses_may_scrape() {
    let server = TestServer::start_with(|c| {
        with_metrics(c);
        c.metrics.allow = vec!["127.0.0.2".into()];
    })
    .await;
    let addr = http_addr(&server);

    let refused = get(addr, None, "").await;
    assert_eq!(refused.status, 403);
    assert!(!refused.body.contains("xmppd_"), "{}", refused.body);
    // A header naming an allowed address changes nothing: only the TCP peer counts.
    let forged = get(addr, None, "X-Forwarded-For: 127.0.0.2\r\n").await;
    assert_eq!(forged.status, 403);

    let allowed = get(addr, Some("127.0.0.2"), "").await;
    assert_eq!(allowed.status, 200);
    assert!(!parse(&allowed.body).is_empty());

    // Networks work too.
    let server = TestServer::start_with(|c| {
        with_metrics(c);
        c.metrics.allow = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(get(http_addr(&server), None, "").await.status, 200);
}

#[tokio::test]
async fn disabled_metrics_are_not_found() {
    let server = TestServer::start_with(|c| {
        with_metrics(c);
        c.metrics.enabled = false;
    })
    .await;
    let r = get(http_addr(&server), None, "").await;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("xmppd_"));
}

#[tokio::test]
async fn bad_allow_entries_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::test_config(dir.path());
    with_metrics(&mut config);
    config.metrics.allow = vec!["127.0.0.1".into(), "localhost".into()];
    let errors = xmppd::config::validate(&config).unwrap_err();
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    assert!(text.contains("metrics.allow[1]"), "{text}");
    assert!(!text.contains("metrics.allow[0]"), "{text}");
}

const CONTACTS: usize = 40;

/// Adding a contact must not read the whole roster back: the limit check and the push
/// after a roster set each did, so building a roster of N contacts read O(N²) items
/// (issue 16, found with the bench's `setup-star`). `roster_get` counts whole-roster reads.
#[tokio::test]
async fn adding_contacts_does_not_reread_the_roster() {
    let server = TestServer::start_with(with_metrics).await;
    server.add_user("hub", "password").await;
    let addr = http_addr(&server);
    let mut hub = Client::login(server.starttls_addr(), "hub", "password", "h").await;
    let get_roster = "<iq type='get'><query xmlns='jabber:iq:roster'/></iq>";
    assert_eq!(hub.iq(get_roster).await.attr("type"), Some("result"));
    let reads = |s: &[Sample]| {
        value(
            s,
            "xmppd_storage_latency_seconds_count",
            &[("op", "roster_get")],
        )
    };
    let before = reads(&parse(&get(addr, None, "").await.body));
    for i in 0..CONTACTS {
        let set = hub
            .iq(&format!(
                "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='c{i}@localhost' name='c{i}'/></query></iq>"
            ))
            .await;
        assert_eq!(set.attr("type"), Some("result"));
        hub.send(&format!("<presence type='subscribe' to='c{i}@localhost'/>"))
            .await;
    }
    // Stanzas are handled in order: the last subscription request is handled too.
    let pong = hub
        .iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let added = reads(&parse(&get(addr, None, "").await.body)) - before;
    assert!(
        added <= 2.0,
        "{added} whole-roster reads for {CONTACTS} new contacts"
    );
    let roster = hub.iq(get_roster).await;
    let query = roster.first_element().expect("a roster query");
    assert_eq!(query.elements().count(), CONTACTS);
    assert!(query.elements().all(|i| i.attr("ask") == Some("subscribe")));
}
