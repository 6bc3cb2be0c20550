//! Stream negotiation and authentication over real sockets.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use support::{CbType, Client, LoginOptions, Mech, TestServer};

async fn login_with(server: &TestServer, opts: LoginOptions) -> Result<Client, String> {
    let addr = if opts.direct_tls {
        server.direct_addr()
    } else {
        server.starttls_addr()
    };
    Client::login_opts(addr, "alice", opts).await
}

#[tokio::test]
async fn every_mechanism_logs_in_over_starttls_and_direct_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mechs = [
        Mech::ScramSha256,
        Mech::ScramSha1,
        Mech::Plain,
        Mech::ScramSha256Plus(CbType::TlsExporter),
        Mech::ScramSha256Plus(CbType::TlsServerEndPoint),
        Mech::ScramSha1Plus(CbType::TlsExporter),
        Mech::ScramSha1Plus(CbType::TlsServerEndPoint),
    ];
    for direct_tls in [false, true] {
        for mech in mechs {
            let client = login_with(
                &server,
                LoginOptions {
                    mech,
                    direct_tls,
                    ..LoginOptions::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{mech:?} direct={direct_tls}: {e}"));
            assert!(client.jid.starts_with("alice@localhost/"), "{}", client.jid);
            client.close().await;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn features_offer_starttls_first_then_mechanisms_with_channel_binding() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    let features = c.open_stream().await;
    let starttls = features
        .child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .expect("starttls offered");
    assert!(
        starttls
            .child("required", "urn:ietf:params:xml:ns:xmpp-tls")
            .is_some()
    );
    assert!(
        features
            .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .is_none(),
        "no SASL before TLS"
    );
    c.starttls().await;
    let features = c.open_stream().await;
    let mechs: Vec<String> = features
        .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .unwrap()
        .elements()
        .map(|m| m.text())
        .collect();
    for m in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(mechs.iter().any(|x| x == m), "{m} missing from {mechs:?}");
    }
    let cb: Vec<&str> = features
        .child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .expect("XEP-0440 advertised")
        .elements()
        .filter_map(|e| e.attr("type"))
        .collect();
    assert!(cb.contains(&"tls-exporter"), "{cb:?}");
    assert!(!cb.contains(&"tls-unique"));
    server.stop().await;
}

#[tokio::test]
async fn plain_and_auth_are_refused_before_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHBhc3N3b3Jk</auth>")
        .await;
    let reply = c.recv().await;
    assert_eq!(reply.name, "failure");
    assert_eq!(reply.first_element().unwrap().name, "encryption-required");
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_is_not_authorized_and_attempts_are_limited() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    for mech in [Mech::ScramSha256, Mech::ScramSha1, Mech::Plain] {
        let err = login_with(
            &server,
            LoginOptions {
                mech,
                password: "wrong".into(),
                ..LoginOptions::default()
            },
        )
        .await
        .err()
        .expect("login must fail");
        assert_eq!(err, "not-authorized", "{mech:?}");
    }
    // Unknown users fail the same way.
    let err = Client::login_opts(server.starttls_addr(), "nobody", LoginOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err, "not-authorized");

    // Three failures on one stream close it with a stream error.
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    let opts = LoginOptions {
        mech: Mech::Plain,
        password: "bad".into(),
        ..LoginOptions::default()
    };
    for _ in 0..3 {
        assert_eq!(
            c.authenticate("alice", &opts).await.unwrap_err(),
            "not-authorized"
        );
    }
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    server.stop().await;
}

#[tokio::test]
async fn channel_binding_downgrade_and_mismatch_fail() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    // 'y' says "client supports binding but thinks the server does not": a downgrade, since
    // the server offered -PLUS.
    let err = login_with(
        &server,
        LoginOptions {
            mech: Mech::ScramSha256,
            gs2_override: Some("y,,".into()),
            ..LoginOptions::default()
        },
    )
    .await
    .err()
    .expect("downgrade must fail");
    assert_eq!(err, "not-authorized");
    // An unknown binding type fails.
    let err = login_with(
        &server,
        LoginOptions {
            mech: Mech::ScramSha256Plus(CbType::TlsExporter),
            gs2_override: Some("p=tls-unique,,".into()),
            ..LoginOptions::default()
        },
    )
    .await
    .err()
    .expect("tls-unique must fail");
    assert_eq!(err, "not-authorized");
    server.stop().await;
}

#[tokio::test]
async fn authzid_of_another_user_is_refused() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    for mech in [Mech::Plain, Mech::ScramSha256] {
        let err = login_with(
            &server,
            LoginOptions {
                mech,
                authzid: Some("bob@localhost".into()),
                ..LoginOptions::default()
            },
        )
        .await
        .err()
        .expect("foreign authzid must fail");
        assert_eq!(err, "invalid-authzid", "{mech:?}");
    }
    // Its own JID as authzid is fine.
    let c = login_with(
        &server,
        LoginOptions {
            mech: Mech::Plain,
            authzid: Some("alice@localhost".into()),
            ..LoginOptions::default()
        },
    )
    .await
    .unwrap();
    c.close().await;
    server.stop().await;
}

#[tokio::test]
async fn bind_generates_resources_and_newest_session_wins_a_conflict() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let generated = login_with(&server, LoginOptions::default()).await.unwrap();
    let resource = generated.jid.split_once('/').unwrap().1;
    assert!(resource.len() >= 8, "generated resource {resource}");

    let mut first = server.login("alice", "phone").await;
    let second = server.login("alice", "phone").await;
    assert_eq!(second.jid, "alice@localhost/phone");
    assert_eq!(first.expect_stream_error().await, "conflict");
    second.close().await;
    generated.close().await;
    server.stop().await;
}

#[tokio::test]
async fn stanza_before_authentication_is_not_authorized() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    c.send("<message to='bob@localhost'><body>hi</body></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    server.stop().await;
}

#[tokio::test]
async fn unknown_host_and_bad_namespace_are_stream_errors() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.send(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='elsewhere.example' version='1.0'>",
    )
    .await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");

    let mut c = Client::connect(server.starttls_addr()).await;
    c.send(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         to='localhost' version='1.0'>",
    )
    .await;
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
    server.stop().await;
}

#[tokio::test]
async fn client_close_is_answered_with_close() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let c = server.login("alice", "a").await;
    // close() waits for the server's </stream:stream> or the socket closing.
    tokio::time::timeout(std::time::Duration::from_secs(5), c.close())
        .await
        .expect("server answers the close");
    server.stop().await;
}

/// On a STARTTLS stream that offers -PLUS: a -PLUS attempt naming `tls-unique` (which
/// the server lacks), then plain SCRAM-SHA-256 with the gs2 flag 'y'; returns the outcome
/// of the second attempt with the stream, still open.
async fn y_after_failed_tls_unique(strict: bool) -> (TestServer, Client, Result<(), String>) {
    let server = TestServer::start_with(|c| c.c2s.strict_channel_binding = strict).await;
    server.add_user("alice", "password").await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    let tls_unique = LoginOptions {
        mech: Mech::ScramSha256Plus(CbType::TlsExporter),
        gs2_override: Some("p=tls-unique,,".into()),
        ..LoginOptions::default()
    };
    assert_eq!(
        c.authenticate("alice", &tls_unique).await.unwrap_err(),
        "not-authorized"
    );
    let y_flag = LoginOptions {
        mech: Mech::ScramSha256,
        gs2_override: Some("y,,".into()),
        ..LoginOptions::default()
    };
    let outcome = c.authenticate("alice", &y_flag).await;
    (server, c, outcome)
}

#[tokio::test]
async fn strict_channel_binding_refuses_y_even_after_a_failed_plus_attempt() {
    // A man in the middle can send a -PLUS attempt with a binding type the server lacks
    // (tls-unique) itself, then strip the client's -PLUS choice so that it sends 'y'. The
    // server advertised -PLUS on this stream, so 'y' is a downgrade whatever came before
    // (RFC 5802 §6), and the stream must stay usable for a proper attempt. Strict mode
    // closes this; the default tolerates it for slixmpp 1.8 (see the next test).
    let (server, mut c, outcome) = y_after_failed_tls_unique(true).await;
    assert_eq!(
        outcome.unwrap_err(),
        "not-authorized",
        "'y' after a failed -PLUS attempt is a downgrade"
    );
    let bound = LoginOptions {
        mech: Mech::ScramSha256Plus(CbType::TlsExporter),
        ..LoginOptions::default()
    };
    c.authenticate("alice", &bound).await.unwrap();
    c.open_stream().await;
    c.bind(None).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn y_flag_is_accepted_after_the_clients_own_failed_plus_attempt_by_default() {
    // What slixmpp 1.8 does on TLS 1.3: SCRAM-SHA-256-PLUS with tls-unique (refused),
    // then plain SCRAM-SHA-256 with 'y'. Without strict_channel_binding that 'y' is
    // accepted, or such clients could not log in at all.
    let (server, mut c, outcome) = y_after_failed_tls_unique(false).await;
    outcome.expect("y accepted after the failed tls-unique attempt");
    c.open_stream().await;
    c.bind(None).await.unwrap();
    server.stop().await;
}

/// Starts SCRAM-SHA-256 for `user` on a secured stream and aborts after the challenge;
/// returns the salt the server showed.
async fn scram_salt(c: &mut Client, user: &str) -> String {
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode(format!("n,,n={user},r=0123456789abcdef"))
    ))
    .await;
    let challenge = c.recv().await;
    assert_eq!(challenge.name, "challenge", "{challenge:?}");
    let server_first = String::from_utf8(B64.decode(challenge.text()).unwrap()).unwrap();
    c.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await;
    let aborted = c.recv().await;
    assert_eq!(aborted.first_element().unwrap().name, "aborted");
    server_first
        .split(',')
        .find_map(|a| a.strip_prefix("s="))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn unknown_user_salt_is_the_same_for_every_spelling_like_a_real_one() {
    // Spellings that name one account (nodeprep folds case) see one salt for a real
    // account; if an unknown name's fake salt varied with the spelling, comparing two
    // spellings would tell which names exist.
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    let real = scram_salt(&mut c, "alice").await;
    assert_eq!(scram_salt(&mut c, "ALICE").await, real);
    let fake = scram_salt(&mut c, "nobody").await;
    assert_ne!(fake, real);
    for spelling in ["NoBody", "NOBODY"] {
        assert_eq!(scram_salt(&mut c, spelling).await, fake, "{spelling}");
    }
    server.stop().await;
}

/// A fresh secured stream, ready for SASL.
async fn secured_stream(server: &TestServer) -> Client {
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    c
}

#[tokio::test]
async fn failures_from_one_address_are_delayed_then_closed_across_connections() {
    // Small numbers so the test is quick: 2 failures free, then 100 ms, 200 ms (the cap),
    // and from the 5th failure on the stream is closed. Per stream 3 failures are allowed.
    let server = TestServer::start_with(|c| {
        c.limits.ip_auth_failures_before_delay = 2;
        c.limits.ip_auth_failure_delay_ms = 100;
        c.limits.ip_auth_failure_max_delay_ms = 200;
        c.limits.ip_auth_failures_max = 4;
    })
    .await;
    server.add_user("alice", "password").await;
    let bad = LoginOptions {
        mech: Mech::Plain,
        password: "bad".into(),
        ..LoginOptions::default()
    };
    // Times one failed attempt: from sending <auth/> to the <failure/>.
    async fn fail(c: &mut Client, opts: &LoginOptions) -> std::time::Duration {
        let start = std::time::Instant::now();
        assert_eq!(
            c.authenticate("alice", opts).await.unwrap_err(),
            "not-authorized"
        );
        start.elapsed()
    }

    let mut first = secured_stream(&server).await;
    fail(&mut first, &bad).await;
    fail(&mut first, &bad).await;
    first.close().await;

    // A new connection does not start from zero: its failures are delayed.
    let mut second = secured_stream(&server).await;
    let d3 = fail(&mut second, &bad).await;
    assert!(d3 >= std::time::Duration::from_millis(100), "{d3:?}");
    let d4 = fail(&mut second, &bad).await;
    assert!(d4 >= std::time::Duration::from_millis(200), "{d4:?}");
    second.close().await;

    // Beyond the hard cap even a connection's first failure closes it.
    let mut third = secured_stream(&server).await;
    let d5 = fail(&mut third, &bad).await;
    assert!(d5 >= std::time::Duration::from_millis(200), "{d5:?}");
    assert_eq!(third.expect_stream_error().await, "policy-violation");

    // Only failures are throttled: the right password still gets in.
    let c = Client::login_opts(
        server.starttls_addr(),
        "alice",
        LoginOptions {
            mech: Mech::Plain,
            ..LoginOptions::default()
        },
    )
    .await
    .unwrap();
    c.close().await;
    server.stop().await;
}
