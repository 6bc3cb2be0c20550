//! The bodies of xmppd's fuzz targets, one `pub fn(&[u8])` each.
//!
//! `src/bin/*.rs` hand them to AFL++ (`cargo afl build --features afl`); the main crate's
//! `tests/fuzz_corpus.rs` includes this file as a module and replays every saved input
//! through them with plain `cargo test`. So this file may only use crates that the main
//! crate has too (as dependencies or dev-dependencies).
//!
//! A target panics when it finds a bug; every other outcome, errors included, is fine.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use xmppd::xml::fuzzing::{FrameKind, Framer};
use xmppd::xml::{ParserLimits, StreamEvent, StreamParser, XmlError};

/// A fuzz target: panics on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` are named.
pub const TARGETS: [(&str, Target); 9] = [
    ("framer", framer),
    ("stanza", stanza),
    ("c2s", c2s),
    ("sasl", sasl),
    ("jid", jid),
    ("bosh", bosh),
    ("config", config),
    ("negotiate_c2s", negotiate_c2s),
    ("negotiate_s2s", negotiate_s2s),
];

/// The sans-I/O stream negotiator as a client's server sees it: bytes → parser →
/// negotiator, with TLS and SASL outcomes simulated so restarts are reached. No sockets,
/// so it runs far faster than `c2s`.
pub fn negotiate_c2s(data: &[u8]) {
    xmppd::stream::negotiate::fuzz_c2s(data);
}

/// The same for a peer server's inbound stream.
pub fn negotiate_s2s(data: &[u8]) {
    xmppd::stream::negotiate::fuzz_s2s(data);
}

/// Small limits, so that inputs of a few hundred bytes reach the limit checks too.
const LIMITS: ParserLimits = ParserLimits {
    max_stanza_bytes: 2048,
    max_depth: 8,
    max_attributes: 8,
};

/// Feeding sizes: the first input byte picks how the rest is cut into chunks, since
/// the framer resumes scanning across `feed` calls and that resumption is the risky part.
fn chunk_size(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        None => (1, data),
        Some((&b, rest)) => (usize::from(b % 32) + 1, rest),
    }
}

#[derive(Debug, PartialEq)]
enum Outcome<T> {
    /// Ran out of input while waiting for more.
    NeedMore(Vec<T>),
    Failed(Vec<T>, XmlError),
}

/// What the framer frames from `input` fed in `chunk`-byte pieces, draining after each.
fn frames(input: &[u8], chunk: usize) -> Outcome<(FrameKind, Vec<u8>)> {
    let mut framer = Framer::new(LIMITS.max_stanza_bytes, LIMITS.max_depth);
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        if let Err(e) = framer.feed(piece) {
            return Outcome::Failed(out, e);
        }
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.start <= frame.end, "inverted frame {frame:?}");
                    out.push((frame.kind, framer.bytes(&frame).to_vec()));
                }
                Ok(None) => break,
                Err(e) => return Outcome::Failed(out, e),
            }
        }
    }
    Outcome::NeedMore(out)
}

/// The parser's events for the same input and chunking.
fn events(input: &[u8], chunk: usize) -> Outcome<StreamEvent> {
    let mut parser = StreamParser::new(LIMITS);
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        if let Err(e) = parser.feed(piece) {
            return Outcome::Failed(out, e);
        }
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => out.push(ev),
                Ok(None) => break,
                Err(e) => return Outcome::Failed(out, e),
            }
        }
    }
    Outcome::NeedMore(out)
}

fn same_kind(frame: FrameKind, event: &StreamEvent) -> bool {
    matches!(
        (frame, event),
        (FrameKind::Header, StreamEvent::Open(_))
            | (FrameKind::Stanza, StreamEvent::Stanza(_))
            | (FrameKind::Close, StreamEvent::Close)
    )
}

/// Framer against itself (chunked vs whole) and against the parser built on it.
pub fn framer(data: &[u8]) {
    let (chunk, input) = chunk_size(data);
    let whole = frames(input, input.len().max(1));
    let chunked = frames(input, chunk);

    // Frames must not depend on how the bytes arrived. Limits may trip at a different
    // point (an unfinished unit is measured as it grows), so one side may stop earlier,
    // with an error, but never with different frames.
    let (wf, cf) = match (&whole, &chunked) {
        (Outcome::NeedMore(w), Outcome::NeedMore(c)) => {
            assert_eq!(w, c, "frames depend on chunking");
            (w, c)
        }
        (Outcome::NeedMore(w) | Outcome::Failed(w, _), Outcome::Failed(c, _))
        | (Outcome::Failed(w, _), Outcome::NeedMore(c)) => (w, c),
    };
    let n = wf.len().min(cf.len());
    assert_eq!(wf[..n], cf[..n], "frames depend on chunking");
    if let (Outcome::Failed(_, we), Outcome::Failed(_, ce)) = (&whole, &chunked)
        && wf.len() == cf.len()
        && !matches!(we, XmlError::PolicyViolation(_))
        && !matches!(ce, XmlError::PolicyViolation(_))
    {
        assert_eq!(we, ce, "errors depend on chunking");
    }

    for (kind, bytes) in cf {
        let text = bytes.trim_ascii_start();
        match kind {
            FrameKind::Header => assert!(bytes.ends_with(b">"), "header frame {bytes:?}"),
            FrameKind::Stanza => {
                assert!(
                    text.starts_with(b"<") && text.ends_with(b">"),
                    "stanza frame {bytes:?}"
                );
                // A complete stanza on its own: parses or fails cleanly.
                if let Ok(s) = std::str::from_utf8(bytes) {
                    let _ = xmppd::xml::parse_stanza(s);
                }
            }
            FrameKind::Close => assert!(
                text.starts_with(b"</") && text.ends_with(b">"),
                "close frame {bytes:?}"
            ),
        }
    }

    // The parser sees exactly the framer's units: one event per frame, until it refuses
    // one (then it is dead), and the framer's own error when it got that far.
    let parsed = events(input, chunk);
    let (evs, parse_err) = match &parsed {
        Outcome::NeedMore(e) => (e, None),
        Outcome::Failed(e, err) => (e, Some(err)),
    };
    assert!(evs.len() <= cf.len(), "more events than frames");
    for (ev, (kind, _)) in evs.iter().zip(cf) {
        assert!(same_kind(*kind, ev), "event {ev:?} for a {kind:?} frame");
    }
    match (&chunked, parse_err) {
        (Outcome::NeedMore(_), None) => assert_eq!(evs.len(), cf.len(), "frames not parsed"),
        (Outcome::NeedMore(_), Some(_)) => {}
        (Outcome::Failed(..), None) => panic!("framer failed, parser did not"),
        (Outcome::Failed(_, fe), Some(pe)) => {
            if evs.len() == cf.len() {
                assert_eq!(fe, pe, "parser reports another error than its framer");
            }
        }
    }
}

/// `parse_stanza`, then serialize, parse again: the same element and the same text.
pub fn stanza(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(element) = xmppd::xml::parse_stanza(&text) else {
        return;
    };
    let written = element.to_stanza_string();
    let again = match xmppd::xml::parse_stanza(&written) {
        Ok(e) => e,
        Err(e) => {
            panic!("serialized stanza does not parse: {e}\ninput: {text:?}\nwritten: {written:?}")
        }
    };
    assert_eq!(
        element, again,
        "round trip changed the stanza\nwritten: {written:?}"
    );
    assert_eq!(
        written,
        again.to_stanza_string(),
        "serialization is not stable"
    );
}

/// JID parsing: normalization is idempotent and the typed views agree with it.
pub fn jid(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = xmppd::config::check_domain(text);
    let Some(jid) = xmppd::addr::parse(text) else {
        assert_eq!(xmppd::addr::parse_bare(text), None);
        assert_eq!(xmppd::addr::parse_full(text), None);
        return;
    };
    assert_eq!(
        xmppd::addr::parse(jid.as_str()).as_ref(),
        Some(&jid),
        "normalized JID {jid:?} does not parse to itself"
    );
    let bare = jid.to_bare();
    assert_eq!(xmppd::addr::parse_bare(bare.as_str()).as_ref(), Some(&bare));
    assert_eq!(bare.domain(), jid.domain());
    match jid.resource() {
        None => assert_eq!(xmppd::addr::parse_bare(text).as_ref(), Some(&bare)),
        Some(r) => {
            assert_eq!(xmppd::addr::parse_bare(text), None);
            assert_eq!(
                xmppd::addr::parse_full(text).map(|f| f.resource().as_str().to_string()),
                Some(r.as_str().to_string())
            );
        }
    }
}

/// The web transports' own parsing: a BOSH request `<body/>` (its children then go to a
/// stream parser, as in a session), and the same bytes as a WebSocket text message through
/// RFC 7395's `<open/>`/`<close/>` translation.
pub fn bosh(data: &[u8]) {
    const HEADER: &[u8] =
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let drain = |bytes: &[u8]| {
        let mut parser = StreamParser::new(LIMITS);
        if parser.feed(HEADER).is_ok() && parser.feed(bytes).is_ok() {
            while let Ok(Some(_)) = parser.next_event() {}
        }
    };
    if let Ok(body) = xmppd::web::bosh::parse_body(data) {
        // The payload is a slice of the request, never more.
        assert!(
            body.payload.len() <= data.len(),
            "payload larger than the body"
        );
        drain(&body.payload);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let translated = xmppd::web::websocket::translate(text);
        // Only <open/> grows (into a stream header with its attributes copied).
        assert!(
            translated.len() <= data.len() * 6 + 128,
            "translated {} of {}",
            translated.len(),
            data.len()
        );
        drain(&translated);
    }
}

/// TOML text to `Config`, then `validate`; what parses serializes and parses back equal.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = xmppd::config::parse_str(text, None) else {
        return;
    };
    let _ = xmppd::config::validate(&cfg);
    let Ok(written) = toml::to_string(&cfg) else {
        return;
    };
    match xmppd::config::parse_str(&written, None) {
        Ok(again) => assert_eq!(cfg, again, "config round trip\n{written}"),
        Err(e) => panic!("serialized config does not parse: {e}\n{written}"),
    }
}

/// SASL message parsing: PLAIN, and one SCRAM exchange driven by the input.
///
/// First byte: bit 0 SHA-256 (else SHA-1), bit 1 a -PLUS mechanism, bit 2 -PLUS offered,
/// bits 3/4 tls-exporter / tls-server-end-point data available, bit 5 a known user.
/// The rest is client-first NUL client-final. In client-final, `%N` stands for the whole
/// nonce, `%C` for the right channel-binding attribute value and `%P` for the right proof
/// (for password "pencil"), so the fuzzer can get past checks it could never guess.
pub fn sasl(data: &[u8]) {
    use xmppd::sasl::{ChannelBindings, ScramCredentials, ScramHash, ScramServer};

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if let Ok(plain) = xmppd::sasl::parse_plain(rest) {
        assert!(!plain.authcid.is_empty() && !plain.password.is_empty());
    }

    let hash = if flags & 1 != 0 {
        ScramHash::Sha256
    } else {
        ScramHash::Sha1
    };
    let bindings = ChannelBindings {
        tls_exporter: (flags & 8 != 0).then(|| vec![0xE1; 32]),
        tls_server_end_point: (flags & 16 != 0).then(|| vec![0x5E; 32]),
    };
    let known = flags & 32 != 0;
    let mut server = ScramServer::new(hash, flags & 2 != 0, flags & 4 != 0, bindings.clone());
    server.set_unknown_user_iterations(1);

    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let Ok(client_first) = server.client_first(first) else {
        return;
    };
    assert!(!client_first.username.is_empty());
    // Parsed: so it is UTF-8 with a gs2 header of two commas.
    let first = std::str::from_utf8(first).expect("accepted client-first is UTF-8");
    let gs2_len = first
        .match_indices(',')
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("gs2 header");
    let (gs2_header, first_bare) = first.split_at(gs2_len);

    const PASSWORD: &[u8] = b"pencil";
    const SALT: &[u8] = b"fuzzing salt";
    let creds = ScramCredentials::derive(hash, "pencil", SALT, 1).expect("credentials");
    let server_first = server.server_first(known.then_some(&creds));
    let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|r| r.split(',').next())
        .expect("server-first starts with the nonce");
    let client_nonce = first_bare
        .split(',')
        .nth(1)
        .and_then(|a| a.strip_prefix("r="));
    assert!(
        client_nonce.is_some_and(|c| nonce.starts_with(c) && nonce.len() > c.len()),
        "nonce {nonce:?} does not extend the client's in {first_bare:?}"
    );
    let Some(last) = last else {
        return;
    };

    let cb_data = server
        .channel_binding()
        .map(|ty| match ty.name() {
            "tls-exporter" => bindings.tls_exporter.clone().unwrap_or_default(),
            _ => bindings.tls_server_end_point.clone().unwrap_or_default(),
        })
        .unwrap_or_default();
    let cb = B64.encode([gs2_header.as_bytes(), &cb_data].concat());
    let last = String::from_utf8_lossy(last)
        .replace("%N", nonce)
        .replace("%C", &cb);
    let without_proof = last.rsplit_once(',').map_or("", |(w, _)| w);
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    // RFC 5802 §3 with one iteration: SaltedPassword = HMAC(password, salt ‖ INT(1)).
    let salted = hmac(hash, PASSWORD, &[SALT, &[0, 0, 0, 1]].concat());
    let client_key = hmac(hash, &salted, b"Client Key");
    let stored_key = digest(hash, &client_key);
    let signature = hmac(hash, &stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let last = last.replace("%P", &B64.encode(&proof));

    if let Ok(server_final) = server.client_final(last.as_bytes()) {
        assert!(known, "an unknown user was authenticated");
        let server_key = hmac(hash, &salted, b"Server Key");
        let expected = format!(
            "v={}",
            B64.encode(hmac(hash, &server_key, auth_message.as_bytes()))
        );
        assert_eq!(String::from_utf8_lossy(&server_final), expected);
    }
}

fn hmac(hash: xmppd::sasl::ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    match hash {
        xmppd::sasl::ScramHash::Sha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        xmppd::sasl::ScramHash::Sha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: xmppd::sasl::ScramHash, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match hash {
        xmppd::sasl::ScramHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        xmppd::sasl::ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
    }
}

/// One c2s connection to an in-process server: the input is written to a plain socket
/// on a STARTTLS listener, then the write side is closed, and everything the server
/// sends is read until it closes. The server must close (not hang) and not panic.
///
/// No input can authenticate: without TLS only SCRAM is offered, and its proof depends
/// on a random server nonce. So no session is ever bound and nothing is routed, let
/// alone sent to another server. (`fuzz/run.sh` runs the fuzzer without a network all
/// the same.)
pub fn c2s(data: &[u8]) {
    C2S.with(|harness| {
        let harness = harness.get_or_init(C2sHarness::start);
        let panics = PANICS.get();
        harness.rt.block_on(harness.connection(data));
        // tokio catches a panicking task; the hook saw it all the same.
        assert_eq!(PANICS.get(), panics, "a server task panicked");
    });
}

thread_local! {
    // Per thread: the runtime is single-threaded, and its server's tasks run only
    // while that thread drives it.
    static C2S: std::cell::OnceCell<C2sHarness> = const { std::cell::OnceCell::new() };
    /// Panics on this thread so far, counted by the hook `C2sHarness::start` installs.
    static PANICS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct C2sHarness {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    _server: xmppd::server::ServerHandle,
    _dir: tempfile::TempDir,
}

impl C2sHarness {
    fn start() -> C2sHarness {
        use xmppd::config::{Config, ListenerConfig, ListenerKind, StorageBackend, TlsMode};
        // Counts, then does what was done before (AFL's hook aborts, libtest's prints).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.set(PANICS.get() + 1);
            previous(info);
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temporary data dir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.listeners = vec![ListenerConfig {
            kind: ListenerKind::C2s,
            address: "127.0.0.1:0".parse().expect("address"),
            tls: TlsMode::Starttls,
        }];
        config.storage.backend = StorageBackend::Memory;
        config.s2s.dns_servers = vec!["127.0.0.1:9".parse().expect("address")];
        config.c2s.scram_iterations = xmppd::config::MIN_SCRAM_ITERATIONS;
        config.limits.max_stanza_bytes = xmppd::config::MIN_STANZA_BYTES;
        // Every input comes from 127.0.0.1: no throttling across them.
        config.limits.ip_auth_failure_delay_ms = 0;
        config.limits.ip_auth_failures_max = u32::MAX;
        config.limits.connections_per_ip = 10_000;
        config.limits.max_connections = 10_000;
        config.limits.max_auth_attempts = 1000;
        let server = rt
            .block_on(xmppd::server::start(config))
            .expect("server starts");
        // A real account, so known-user SCRAM paths run too.
        let creds = xmppd::sasl::StoredCredentials::from_password(
            "pencil",
            xmppd::config::MIN_SCRAM_ITERATIONS,
        )
        .expect("credentials");
        let created = rt
            .block_on(server.ctx.storage.accounts.create(
                &xmppd::addr::parse_bare("juliet@localhost").expect("jid"),
                &creds,
            ))
            .expect("account");
        assert!(created);
        let addr = server
            .addr(ListenerKind::C2s, TlsMode::Starttls)
            .expect("listener");
        C2sHarness {
            rt,
            addr,
            _server: server,
            _dir: dir,
        }
    }

    async fn connection(&self, data: &[u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the in-process server");
        let (mut rd, mut wr) = socket.split();
        // Written while reading: the server may answer more than a socket buffer holds.
        let write = async {
            // The server may close first (stream error), so write errors are normal.
            if wr.write_all(data).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        };
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let both = async { tokio::join!(write, read) };
        if tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .is_err()
        {
            panic!("server neither closed nor failed within 5 s after the input ended");
        }
    }
}
