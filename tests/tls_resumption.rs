//! TLS 1.3 session resumption over the wire: a returning client (one rustls session store
//! across its connections) resumes its TLS session and logs in, channel binding included.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::HandshakeKind;
use support::*;
use tokio_rustls::TlsConnector;

/// One device: connectors for STARTTLS and Direct TLS sharing one session store.
struct Device {
    starttls: TlsConnector,
    direct: TlsConnector,
}

impl Device {
    fn new() -> Device {
        let config = tls_client_config();
        let mut direct = config.clone();
        direct.alpn_protocols = vec![b"xmpp-client".to_vec()];
        Device {
            starttls: TlsConnector::from(Arc::new(config)),
            direct: TlsConnector::from(Arc::new(direct)),
        }
    }
}

/// Logs in through resource binding; returns the client and how its TLS handshake went.
async fn login(
    addr: SocketAddr,
    device: &Device,
    direct_tls: bool,
    mech: Mech,
) -> (Client, HandshakeKind) {
    let mut c = if direct_tls {
        Client::connect_direct_tls_with(addr, &device.direct).await
    } else {
        let mut c = Client::connect(addr).await;
        c.open_stream().await;
        c.starttls_with(&device.starttls).await;
        c
    };
    let kind = c.tls_handshake_kind().expect("TLS is up");
    // Reading the features also takes in the tickets the server sent after its handshake.
    c.open_stream().await;
    let opts = LoginOptions {
        mech,
        ..LoginOptions::default()
    };
    c.authenticate("alice", &opts)
        .await
        .unwrap_or_else(|e| panic!("{mech:?} login ({kind:?} handshake) failed: {e}"));
    c.open_stream().await;
    c.bind(None).await.expect("bind");
    (c, kind)
}

/// A client that is not the device: its own session store, TLS up and the stream opened
/// on it (so the server has finished that handshake and sent its tickets).
async fn stranger(addr: SocketAddr) {
    let mut c = Client::connect(addr).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    c.close().await;
}

#[tokio::test]
async fn returning_client_resumes_tls_and_logs_in() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let (starttls, direct) = (server.starttls_addr(), server.direct_addr());
    let device = Device::new();

    let (c, kind) = login(starttls, &device, false, Mech::ScramSha256).await;
    assert_eq!(kind, HandshakeKind::Full, "first connection");
    c.close().await;

    // Channel binding on a resumed session: the exporter is derived from the resumed
    // session's own secrets, the end-point hash from the certificate of the first
    // handshake (the client has it from its stored session, the server from its config).
    for cb in [CbType::TlsExporter, CbType::TlsServerEndPoint] {
        let (c, kind) = login(starttls, &device, false, Mech::ScramSha256Plus(cb)).await;
        assert_eq!(kind, HandshakeKind::Resumed, "STARTTLS, {cb:?}");
        c.close().await;
    }

    // Still resumed after many other clients: the server keeps no per-client session
    // cache to forget the device in (rustls's default cache holds 256 sessions, two per
    // connection).
    for _ in 0..6 {
        join_all((0..25).map(|_| stranger(starttls))).await;
    }
    let (c, kind) = login(
        starttls,
        &device,
        false,
        Mech::ScramSha256Plus(CbType::TlsExporter),
    )
    .await;
    assert_eq!(kind, HandshakeKind::Resumed, "after 150 other clients");
    c.close().await;

    // A ticket from the STARTTLS port is good on the Direct TLS port (same clients, same
    // certificates).
    let (c, kind) = login(
        direct,
        &device,
        true,
        Mech::ScramSha256Plus(CbType::TlsExporter),
    )
    .await;
    assert_eq!(kind, HandshakeKind::Resumed, "Direct TLS");
    c.close().await;
    server.stop().await;
}

#[tokio::test]
async fn without_session_tickets_every_handshake_is_full() {
    let server = TestServer::start_with(|c| c.tls.session_tickets = false).await;
    server.add_user("alice", "password").await;
    let device = Device::new();
    for _ in 0..2 {
        let (c, kind) = login(server.starttls_addr(), &device, false, Mech::ScramSha256).await;
        assert_eq!(kind, HandshakeKind::Full);
        c.close().await;
    }
    server.stop().await;
}

/// Runs the futures concurrently and waits for all (no extra dependency for it).
async fn join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}
