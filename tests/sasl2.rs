//! SASL2 (XEP-0388), Bind 2 (XEP-0386) and FAST (XEP-0484) over real sockets: a client
//! logs in, binds and enables session features in one exchange, gets a token, and comes
//! back with the token alone.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::scram::{Hash, ScramClient};
use support::{CbType, Client, DOMAIN, TestServer};
use xmppd::xml::Element;

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const SM: &str = "urn:xmpp:sm:3";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const AGENT: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

fn hmac(token: &str, label: &[u8], cb: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(label);
    mac.update(cb);
    mac.finalize().into_bytes().to_vec()
}

/// A TLS stream with the features read, ready for `<authenticate/>`.
async fn secure_stream(server: &TestServer) -> Client {
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    c.open_stream().await;
    c
}

fn user_agent(id: &str) -> String {
    format!(
        "<user-agent id='{id}'><software>sasl2-test</software><device>laptop</device></user-agent>"
    )
}

/// SCRAM-SHA-256 through SASL2 with `extra` children in `<authenticate/>`; the outcome
/// element (`<success/>` with its server signature checked, or `<failure/>`).
async fn scram_login(c: &mut Client, node: &str, password: &str, extra: &str) -> Element {
    let mut scram = ScramClient::new(Hash::Sha256, node, password, "n,,", Vec::new());
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'>\
         <initial-response>{}</initial-response>{extra}</authenticate>",
        B64.encode(scram.client_first())
    ))
    .await;
    let challenge = c.recv().await;
    if challenge.name == "failure" {
        return challenge;
    }
    assert!(challenge.is("challenge", SASL2), "{challenge:?}");
    let server_first = B64.decode(challenge.text()).unwrap();
    c.send(&format!(
        "<response xmlns='{SASL2}'>{}</response>",
        B64.encode(scram.client_final(&server_first))
    ))
    .await;
    let outcome = c.recv().await;
    if outcome.is("success", SASL2) {
        let data = outcome.child_text("additional-data", SASL2).unwrap();
        assert!(
            scram.verify_server_final(&B64.decode(data).unwrap()),
            "server signature"
        );
    }
    outcome
}

/// A FAST login with `token`; the outcome element (the server's proof checked).
async fn fast_login(
    c: &mut Client,
    node: &str,
    mechanism: &str,
    token: &str,
    cb: &[u8],
    extra: &str,
) -> Element {
    let mut response = format!("{node}\0").into_bytes();
    response.extend(hmac(token, b"Initiator", cb));
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>\
         <initial-response>{}</initial-response>{extra}</authenticate>",
        B64.encode(response)
    ))
    .await;
    let outcome = c.recv().await;
    if outcome.is("success", SASL2) {
        let data = B64
            .decode(outcome.child_text("additional-data", SASL2).unwrap())
            .unwrap();
        assert_eq!(data, hmac(token, b"Responder", cb), "server proof");
    }
    outcome
}

fn token_of(success: &Element) -> Option<String> {
    success
        .child("token", FAST)
        .and_then(|t| t.attr("token"))
        .map(str::to_string)
}

fn failure_condition(el: &Element) -> String {
    assert!(el.is("failure", SASL2), "{el:?}");
    el.elements()
        .find(|e| e.ns == SASL)
        .map(|e| e.name.clone())
        .unwrap_or_default()
}

/// The failure condition of a FAST login as alice with `token` (HT-SHA-256-NONE) on a
/// new stream.
async fn refused(server: &TestServer, token: &str, extra: &str) -> String {
    let mut c = secure_stream(server).await;
    let f = fast_login(&mut c, "alice", "HT-SHA-256-NONE", token, &[], extra).await;
    failure_condition(&f)
}

/// Password login with Bind 2 and a token request; returns the client and the token.
async fn login_for_token(server: &TestServer, node: &str, agent: &str) -> (Client, String) {
    let mut c = secure_stream(server).await;
    let success = scram_login(
        &mut c,
        node,
        "password",
        &format!(
            "{}<bind xmlns='{BIND2}'><tag>Test</tag></bind>\
             <request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
            user_agent(agent)
        ),
    )
    .await;
    assert!(success.is("success", SASL2), "{success:?}");
    let features = c.recv().await;
    assert_eq!(features.name, "features");
    let token = token_of(&success).expect("a token");
    (c, token)
}

#[tokio::test]
async fn sasl2_is_offered_with_bind2_inline_features_and_fast() {
    let server = TestServer::start().await;
    let c = secure_stream(&server).await;
    let features = c.features.clone().unwrap();
    let auth = features
        .child("authentication", SASL2)
        .expect("SASL2 offered");
    let mechs: Vec<String> = auth
        .elements()
        .filter(|e| e.name == "mechanism")
        .map(|e| e.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()), "{mechs:?}");
    assert!(
        mechs.contains(&"SCRAM-SHA-256-PLUS".to_string()),
        "{mechs:?}"
    );
    let inline = auth.child("inline", SASL2).unwrap();
    let vars: Vec<&str> = inline
        .child("bind", BIND2)
        .and_then(|b| b.child("inline", BIND2))
        .unwrap()
        .elements()
        .filter_map(|f| f.attr("var"))
        .collect();
    for v in [SM, "urn:xmpp:carbons:2", "urn:xmpp:csi:0"] {
        assert!(vars.contains(&v), "{v} in {vars:?}");
    }
    let fast: Vec<String> = inline
        .child("fast", FAST)
        .unwrap()
        .elements()
        .map(|e| e.text())
        .collect();
    assert!(fast.contains(&"HT-SHA-256-NONE".to_string()), "{fast:?}");
    assert!(fast.contains(&"HT-SHA-256-EXPR".to_string()), "{fast:?}");
    // Classic SASL is still there for clients without SASL2.
    assert!(features.child("mechanisms", SASL).is_some());

    // Off in the configuration: not offered, and not taken either.
    let off = TestServer::start_with(|c| c.c2s.sasl2 = false).await;
    let mut c = secure_stream(&off).await;
    assert!(
        c.features
            .clone()
            .unwrap()
            .child("authentication", SASL2)
            .is_none()
    );
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{}</initial-response></authenticate>",
        B64.encode("\0alice\0password")
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn one_exchange_authenticates_binds_and_enables_sm_and_carbons() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut alice = secure_stream(&server).await;
    let success = scram_login(
        &mut alice,
        "alice",
        "password",
        &format!(
            "{}<bind xmlns='{BIND2}'><tag>Phone</tag>\
             <enable xmlns='{SM}' resume='true'/><enable xmlns='{SM}' resume='true'/>\
             <enable xmlns='urn:xmpp:carbons:2'/></bind>",
            user_agent(AGENT)
        ),
    )
    .await;
    assert!(success.is("success", SASL2), "{success:?}");
    let full = success
        .child_text("authorization-identifier", SASL2)
        .unwrap();
    assert!(
        full.starts_with(&format!("alice@{DOMAIN}/Phone/")),
        "{full}"
    );
    let bound = success.child("bound", BIND2).expect("bound");
    let enabled = bound.child("enabled", SM).expect("SM enabled inline");
    // Enabled once, however often the request asks.
    assert_eq!(
        bound.elements().filter(|e| e.ns == SM).count(),
        1,
        "{bound:?}"
    );
    assert_eq!(server.ctx().sm.resumable_count(), 1);
    assert_eq!(enabled.attr("resume"), Some("true"));
    assert!(enabled.attr("id").is_some());
    // The archive's state at binding (empty here: no start or end).
    let metadata = bound
        .child("metadata", "urn:xmpp:mam:2")
        .expect("archive metadata");
    assert!(metadata.first_element().is_none(), "{metadata:?}");
    // No token unless asked for.
    assert!(token_of(&success).is_none());
    // The features of the bound stream follow; no resource binding is offered again.
    let features = alice.recv().await;
    assert_eq!(features.name, "features");
    assert!(
        features
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_none()
    );
    alice.jid = full.clone();

    // Stream management runs: nothing handled yet.
    alice.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = alice.recv().await;
    assert!(a.is("a", SM) && a.attr("h") == Some("0"), "{a:?}");

    // Carbons are on: a message alice sends from another device is copied here.
    let mut bob = server.login("bob", "pc").await;
    let mut laptop = server.login("alice", "laptop").await;
    laptop
        .send(&format!(
            "<message to='bob@{DOMAIN}/pc' type='chat'><body>hi</body></message>"
        ))
        .await;
    bob.recv_until(|e| e.name == "message").await;
    let copy = alice.recv_until(|e| e.name == "message").await;
    assert!(
        copy.child("sent", "urn:xmpp:carbons:2").is_some(),
        "{copy:?}"
    );
    // Counted by stream management: one stanza handled is acknowledged.
    alice.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = alice.recv_until(|e| e.is("a", SM)).await;
    assert_eq!(a.attr("h"), Some("0"), "the client sent nothing yet: {a:?}");
}

#[tokio::test]
async fn a_fast_token_logs_a_returning_client_in_and_replaces_its_old_session() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let (mut first, token) = login_for_token(&server, "alice", AGENT).await;

    let mut again = secure_stream(&server).await;
    let success = fast_login(
        &mut again,
        "alice",
        "HT-SHA-256-NONE",
        &token,
        &[],
        &format!(
            "{}<bind xmlns='{BIND2}'><tag>Test</tag></bind><fast xmlns='{FAST}'/>",
            user_agent(AGENT)
        ),
    )
    .await;
    assert!(success.is("success", SASL2), "{success:?}");
    // A fresh token is not due yet.
    assert!(token_of(&success).is_none());
    let resource = success
        .child_text("authorization-identifier", SASL2)
        .unwrap();
    // The same client gets the same resource, and its earlier session is replaced.
    assert_eq!(first.expect_stream_error().await, "conflict");
    assert!(resource.starts_with(&format!("alice@{DOMAIN}/Test/")));
    again.recv().await; // features
    again.jid = resource;
    again
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = again.recv_until(|e| e.attr("id") == Some("p1")).await;
    assert_eq!(pong.attr("type"), Some("result"));

    // Another client of the same account gets another resource.
    let (other, _) = login_for_token(&server, "alice", "another-agent").await;
    drop(other);
}

#[tokio::test]
async fn wrong_tokens_mechanisms_and_clients_are_refused() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let (_c, token) = login_for_token(&server, "alice", AGENT).await;
    let fast = format!("{}<fast xmlns='{FAST}'/>", user_agent(AGENT));

    let mut c = secure_stream(&server).await;
    let f = fast_login(
        &mut c,
        "alice",
        "HT-SHA-256-NONE",
        "not-the-token",
        &[],
        &fast,
    )
    .await;
    assert_eq!(failure_condition(&f), "not-authorized");
    // The stream goes on: the right token works on it.
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-NONE", &token, &[], &fast).await;
    assert!(ok.is("success", SASL2), "{ok:?}");

    // A token works only with the mechanism it was issued for, only for the client it
    // was issued to, not without naming a client, and not for another account. (A new
    // stream each: three failures end a stream.)
    server.add_user("bob", "password").await;
    let other = format!("{}<fast xmlns='{FAST}'/>", user_agent("someone-else"));
    for (node, mechanism, client) in [
        ("alice", "HT-SHA-256-EXPR", fast.as_str()),
        ("alice", "HT-SHA-256-NONE", other.as_str()),
        ("alice", "HT-SHA-256-NONE", ""),
        ("bob", "HT-SHA-256-NONE", fast.as_str()),
    ] {
        let mut c = secure_stream(&server).await;
        let cb = match mechanism {
            "HT-SHA-256-EXPR" => c.cb(CbType::TlsExporter).1,
            _ => Vec::new(),
        };
        let f = fast_login(&mut c, node, mechanism, &token, &cb, client).await;
        assert_eq!(
            failure_condition(&f),
            "not-authorized",
            "{node} {mechanism} {client}"
        );
    }
}

#[tokio::test]
async fn channel_bound_tokens_need_this_connections_binding() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut c = secure_stream(&server).await;
    let success = scram_login(
        &mut c,
        "alice",
        "password",
        &format!(
            "{}<request-token xmlns='{FAST}' mechanism='HT-SHA-256-EXPR'/>",
            user_agent(AGENT)
        ),
    )
    .await;
    let token = token_of(&success).unwrap();
    let fast = format!("{}<fast xmlns='{FAST}'/>", user_agent(AGENT));

    let mut c = secure_stream(&server).await;
    let exporter = c.cb(CbType::TlsExporter).1;
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-EXPR", &token, &exporter, &fast).await;
    assert!(ok.is("success", SASL2), "{ok:?}");

    // A proof made with another connection's binding (a replayed login) fails.
    let mut c = secure_stream(&server).await;
    let f = fast_login(&mut c, "alice", "HT-SHA-256-EXPR", &token, &exporter, &fast).await;
    assert_eq!(failure_condition(&f), "not-authorized");
}

#[tokio::test]
async fn invalidated_tokens_and_tokens_from_before_a_password_change_stop_working() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let fast = format!("{}<fast xmlns='{FAST}'/>", user_agent(AGENT));

    let (_c, token) = login_for_token(&server, "alice", AGENT).await;
    let mut c = secure_stream(&server).await;
    let invalidate = format!(
        "{}<fast xmlns='{FAST}' invalidate='true'/>",
        user_agent(AGENT)
    );
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-NONE", &token, &[], &invalidate).await;
    assert!(ok.is("success", SASL2), "{ok:?}");
    assert!(token_of(&ok).is_none(), "no new token after invalidation");
    assert_eq!(refused(&server, &token, &fast).await, "not-authorized");

    let (_c, token) = login_for_token(&server, "alice", AGENT).await;
    let ctx = server.ctx();
    xmppd::admin::set_password(&ctx.storage, &ctx.config, &format!("alice@{DOMAIN}"), "new")
        .await
        .unwrap();
    assert_eq!(refused(&server, &token, &fast).await, "not-authorized");
}

#[tokio::test]
async fn an_ageing_token_is_rotated_and_the_old_one_works_until_the_new_one_is_used() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let (_c, old) = login_for_token(&server, "alice", AGENT).await;
    let fast = format!("{}<fast xmlns='{FAST}'/>", user_agent(AGENT));
    // The token was issued long ago (past half its life).
    let jid = xmppd::addr::parse_bare(&format!("alice@{DOMAIN}")).unwrap();
    let store = &server.ctx().storage.fast;
    let mut tokens = store.fast_tokens(&jid, AGENT).await.unwrap().unwrap();
    let t = tokens.new.as_mut().unwrap();
    t.issued -= 20 * 86_400;
    store
        .set_fast_tokens(&jid, AGENT, Some(&tokens), true)
        .await
        .unwrap();

    let mut c = secure_stream(&server).await;
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-NONE", &old, &[], &fast).await;
    let new = token_of(&ok).expect("a rotated token");
    assert_ne!(new, old);
    // The client may never have received the new token: the old one still works.
    let mut c = secure_stream(&server).await;
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-NONE", &old, &[], &fast).await;
    assert!(ok.is("success", SASL2), "{ok:?}");
    let newest = token_of(&ok).expect("rotated again: the old token is still old");
    // Once the newest token is used, older ones are done with.
    let mut c = secure_stream(&server).await;
    let ok = fast_login(&mut c, "alice", "HT-SHA-256-NONE", &newest, &[], &fast).await;
    assert!(ok.is("success", SASL2), "{ok:?}");
    assert!(token_of(&ok).is_none());
    for stale in [old, new] {
        assert_eq!(refused(&server, &stale, &fast).await, "not-authorized");
    }
}

#[tokio::test]
async fn without_bind2_the_stream_goes_on_authenticated_and_binds_classically() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut c = secure_stream(&server).await;
    // A wrong password fails in the SASL2 namespace; the stream goes on.
    let f = scram_login(&mut c, "alice", "wrong", "").await;
    assert_eq!(failure_condition(&f), "not-authorized");
    // An abort too.
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'/>"
    ))
    .await;
    let challenge = c.recv().await;
    assert!(challenge.is("challenge", SASL2), "{challenge:?}");
    c.send(&format!("<abort xmlns='{SASL2}'/>")).await;
    assert_eq!(failure_condition(&c.recv().await), "aborted");

    let plain = B64.encode("\0alice\0password");
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{plain}</initial-response></authenticate>"
    ))
    .await;
    let success = c.recv().await;
    assert!(success.is("success", SASL2), "{success:?}");
    assert_eq!(
        success
            .child_text("authorization-identifier", SASL2)
            .as_deref(),
        Some(format!("alice@{DOMAIN}").as_str())
    );
    let features = c.recv().await;
    assert!(
        features
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some()
    );
    // A second authentication on the stream is a stream error (XEP-0388 §3.7).
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{plain}</initial-response></authenticate>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");

    // Classic resource binding after a SASL2 login.
    let mut c = secure_stream(&server).await;
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{plain}</initial-response></authenticate>"
    ))
    .await;
    assert!(c.recv().await.is("success", SASL2));
    let features = c.recv().await;
    assert!(
        features
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some()
    );
    let jid = c.bind(Some("desk")).await.unwrap();
    assert_eq!(jid, format!("alice@{DOMAIN}/desk"));
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let pong = c.recv_until(|e| e.attr("id") == Some("p1")).await;
    assert_eq!(pong.attr("type"), Some("result"));
}

#[tokio::test]
async fn fast_is_refused_on_an_unencrypted_stream_and_garbage_fails_cleanly() {
    let server = TestServer::start_with(|c| c.c2s.require_tls = false).await;
    server.add_user("alice", "password").await;
    let mut c = Client::connect(server.starttls_addr()).await;
    let features = c.open_stream().await;
    // SASL2 without FAST before TLS.
    let auth = features.child("authentication", SASL2).unwrap();
    assert!(
        auth.child("inline", SASL2)
            .unwrap()
            .child("fast", FAST)
            .is_none()
    );
    let f = fast_login(&mut c, "alice", "HT-SHA-256-NONE", "x", &[], "").await;
    assert_eq!(failure_condition(&f), "invalid-mechanism");

    let mut c = secure_stream(&server).await;
    for bad in ["%%%", "", "YWxpY2U="] {
        c.send(&format!(
            "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'>\
             <initial-response>{bad}</initial-response></authenticate>"
        ))
        .await;
        let f = c.recv().await;
        assert!(f.is("failure", SASL2), "{bad}: {f:?}");
    }
    // Too many failures end the stream, as with classic SASL.
    let mut ended = false;
    for _ in 0..10 {
        if c.try_send_raw(format!("<authenticate xmlns='{SASL2}' mechanism='NOPE'/>").as_bytes())
            .await
            .is_err()
        {
            ended = true;
            break;
        }
        match c.next_event().await {
            Some(xmppd::xml::StreamEvent::Stanza(el)) if el.is("failure", SASL2) => {}
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the stream outlived repeated failures");
}

#[tokio::test]
async fn bind2_clients_get_what_the_archive_lacks_from_offline_storage_only() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut bob = server.login("bob", "pc").await;
    bob.send(&format!(
        "<message to='alice@{DOMAIN}' type='chat' id='m1'><body>while you were away</body></message>"
    ))
    .await;
    let jid = xmppd::addr::parse_bare(&format!("alice@{DOMAIN}")).unwrap();
    let offline = server.ctx().storage.offline.clone();
    wait_for_offline(&offline, &jid, "the message stored offline", |n| n > 0).await;

    let mut alice = secure_stream(&server).await;
    let success = scram_login(
        &mut alice,
        "alice",
        "password",
        &format!("{}<bind xmlns='{BIND2}'/>", user_agent(AGENT)),
    )
    .await;
    alice.jid = success
        .child_text("authorization-identifier", SASL2)
        .unwrap();
    // Where the archive ends, so the client knows it has something to catch up on.
    let end = success
        .child("bound", BIND2)
        .and_then(|b| b.child("metadata", "urn:xmpp:mam:2"))
        .and_then(|m| m.child("end", "urn:xmpp:mam:2"))
        .and_then(|e| e.attr("id"))
        .expect("the archive's last message")
        .to_string();
    alice.recv().await; // features
    alice.available().await;
    // The message is in the archive, where a Bind 2 client catches up: it is not sent
    // again from offline storage (which would come before the archive's answer, as
    // presence is handled first), and offline storage lets it go.
    alice
        .send("<iq type='set' id='mam1'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
        .await;
    let mut from_archive = 0;
    loop {
        let el = alice.recv().await;
        if el.attr("id") == Some("mam1") {
            assert_eq!(el.attr("type"), Some("result"), "{el:?}");
            break;
        }
        if el.name != "message" {
            continue;
        }
        let result = el.child("result", "urn:xmpp:mam:2");
        assert!(result.is_some(), "delivered from offline storage: {el:?}");
        assert_eq!(result.and_then(|r| r.attr("id")), Some(end.as_str()));
        from_archive += 1;
    }
    assert_eq!(from_archive, 1);
    wait_for_offline(&offline, &jid, "offline storage to let it go", |n| n == 0).await;
}

/// Polls `user`'s offline messages until their number satisfies `done` (the store
/// announces nothing); panics after 5 s.
async fn wait_for_offline(
    offline: &std::sync::Arc<dyn xmppd::storage::OfflineStore>,
    user: &xmppd::addr::BareJid,
    what: &str,
    done: impl Fn(usize) -> bool,
) {
    for _ in 0..500 {
        if done(offline.list(user).await.unwrap().len()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_session_is_resumed_inside_authenticate_and_a_stale_one_falls_back_to_binding() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let (mut first, token) = {
        let mut c = secure_stream(&server).await;
        let success = scram_login(
            &mut c,
            "alice",
            "password",
            &format!(
                "{}<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/></bind>\
                 <request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
                user_agent(AGENT)
            ),
        )
        .await;
        c.jid = success
            .child_text("authorization-identifier", SASL2)
            .unwrap();
        c.recv().await; // features
        (c, (token_of(&success).unwrap(), success))
    };
    let (token, success) = token;
    let previd = success
        .child("bound", BIND2)
        .and_then(|b| b.child("enabled", SM))
        .and_then(|e| e.attr("id"))
        .unwrap()
        .to_string();
    let full = first.jid.clone();
    first.available().await;
    let mut bob = server.login("bob", "pc").await;
    bob.send(&format!(
        "<message to='{full}' type='chat' id='lost'><body>are you there?</body></message>"
    ))
    .await;
    first.recv_until(|e| e.attr("id") == Some("lost")).await;
    // The phone loses its network before acknowledging anything.
    first.drop_connection();
    let ctx = server.ctx().clone();
    support::wait_until("hibernation", || ctx.sm.hibernated_count() == 1).await;

    let mut back = secure_stream(&server).await;
    let resume = format!(
        "{}<resume xmlns='{SM}' previd='{previd}' h='0'/><bind xmlns='{BIND2}'><tag>Phone</tag></bind><fast xmlns='{FAST}'/>",
        user_agent(AGENT)
    );
    let success = fast_login(&mut back, "alice", "HT-SHA-256-NONE", &token, &[], &resume).await;
    assert!(success.is("success", SASL2), "{success:?}");
    assert_eq!(
        success
            .child_text("authorization-identifier", SASL2)
            .as_deref(),
        Some(full.as_str())
    );
    let resumed = success
        .child("resumed", SM)
        .expect("resumed inside the success");
    assert_eq!(resumed.attr("previd"), Some(previd.as_str()));
    assert!(
        success.child("bound", BIND2).is_none(),
        "the bind request is ignored"
    );
    let features = back.recv().await;
    assert_eq!(features.name, "features");
    assert!(features.child("sm", SM).is_none());
    // What the client never acknowledged comes again.
    let again = back.recv_until(|e| e.attr("id") == Some("lost")).await;
    assert_eq!(
        again.child_text("body", "jabber:client").as_deref(),
        Some("are you there?")
    );

    // A stale id: the success says so, and a new session is bound instead.
    let mut late = secure_stream(&server).await;
    let resume = format!(
        "{}<resume xmlns='{SM}' previd='no-such-session' h='0'/><bind xmlns='{BIND2}'><tag>Tablet</tag></bind>",
        user_agent("tablet-agent")
    );
    let success = scram_login(&mut late, "alice", "password", &resume).await;
    assert!(success.is("success", SASL2), "{success:?}");
    assert!(success.child("failed", SM).is_some(), "{success:?}");
    assert!(success.child("bound", BIND2).is_some(), "{success:?}");
    let jid = success
        .child_text("authorization-identifier", SASL2)
        .unwrap();
    assert!(jid.starts_with(&format!("alice@{DOMAIN}/Tablet/")), "{jid}");
}
