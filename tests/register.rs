//! XEP-0077 in-band registration over the wire: open registration off by default, its
//! limits when on, password change (TLS only) and account removal by the owner.

mod support;

use support::{Client, LoginOptions, TestServer};
use xmppd::xml::Element;

const REG: &str = "jabber:iq:register";

fn condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "{e:?}");
    e.child("error", "jabber:client")
        .and_then(|err| {
            err.elements()
                .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name != "text")
        })
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// A stream after STARTTLS, before authentication; returns it with its features.
async fn tls_stream(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    let features = c.open_stream().await;
    (c, features)
}

fn has_register_feature(features: &Element) -> bool {
    features.has_child("register", "http://jabber.org/features/iq-register")
}

async fn register(c: &mut Client, user: &str, password: &str) -> Element {
    c.iq(&format!(
        "<iq type='set'><query xmlns='{REG}'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    ))
    .await
}

async fn login(server: &TestServer, user: &str, password: &str) -> Result<Client, String> {
    Client::login_opts(
        server.starttls_addr(),
        user,
        LoginOptions {
            password: password.into(),
            resource: None,
            ..LoginOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_is_off_by_default() {
    let server = TestServer::start().await;
    // Invitations are on by default: the features say a token may register.
    let (mut c, features) = tls_stream(&server).await;
    assert!(has_register_feature(&features), "{features:?}");
    assert!(features.has_child("register", "urn:xmpp:ibr-token:0"));
    let form = c
        .iq(&format!("<iq type='get'><query xmlns='{REG}'/></iq>"))
        .await;
    assert_eq!(form.attr("type"), Some("result"), "{form:?}");
    let reply = register(&mut c, "newbie", "long enough password").await;
    assert_eq!(condition(&reply), "not-allowed");
    assert!(
        login(&server, "newbie", "long enough password")
            .await
            .is_err()
    );

    // Without invitations nothing is offered, and registering is still not allowed.
    let server = TestServer::start_with(|c| c.invites.enabled = false).await;
    let (mut c, features) = tls_stream(&server).await;
    assert!(!has_register_feature(&features), "{features:?}");
    assert!(!features.has_child("register", "urn:xmpp:ibr-token:0"));
    let reply = register(&mut c, "newbie", "long enough password").await;
    assert_eq!(condition(&reply), "not-allowed");

    // Before TLS, an iq is no negotiation step at all.
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.send(&format!(
        "<iq type='get' id='x'><query xmlns='{REG}'/></iq>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_with_its_limits() {
    let server = TestServer::start_with(|c| {
        c.registration.open = true;
        c.registration.max_per_ip = 2;
        c.registration.min_password_length = 10;
        c.invites.enabled = false;
    })
    .await;
    let (mut c, features) = tls_stream(&server).await;
    assert!(has_register_feature(&features));
    let form = c
        .iq(&format!("<iq type='get'><query xmlns='{REG}'/></iq>"))
        .await;
    let q = form.child("query", REG).unwrap();
    assert!(q.has_child("username", REG) && q.has_child("password", REG));

    // A weak password, a reserved name, a missing field.
    assert_eq!(
        condition(&register(&mut c, "alice", "short").await),
        "not-acceptable"
    );
    assert_eq!(
        condition(&register(&mut c, "admin", "a long password").await),
        "conflict"
    );
    let reply = c
        .iq(&format!(
            "<iq type='set'><query xmlns='{REG}'><username>x</username></query></iq>"
        ))
        .await;
    assert_eq!(condition(&reply), "not-acceptable");
    drop(c);

    let (mut c, _) = tls_stream(&server).await;
    let ok = register(&mut c, "alice", "a long password").await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    // Taken now.
    assert_eq!(
        condition(&register(&mut c, "Alice", "a long password").await),
        "conflict"
    );
    let ok = register(&mut c, "bob", "a long password").await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    // Two from this address in the window: the third is refused.
    assert_eq!(
        condition(&register(&mut c, "carol", "a long password").await),
        "resource-constraint"
    );
    // The registering stream authenticates next, as XEP-0077 §3.1 has it.
    c.authenticate(
        "alice",
        &LoginOptions {
            password: "a long password".into(),
            ..LoginOptions::default()
        },
    )
    .await
    .unwrap();
    login(&server, "bob", "a long password").await.unwrap();
    assert!(login(&server, "carol", "a long password").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_over_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    let mut c = login(&server, "alice", "password").await.unwrap();
    let info = c
        .iq(&format!("<iq type='get'><query xmlns='{REG}'/></iq>"))
        .await;
    let q = info.child("query", REG).unwrap();
    assert!(q.has_child("registered", REG), "{info:?}");

    // Too short, empty, someone else's name: refused.
    let set = |user: &str, pw: &str| {
        format!(
            "<iq type='set'><query xmlns='{REG}'><username>{user}</username>\
             <password>{pw}</password></query></iq>"
        )
    };
    assert_eq!(
        condition(&c.iq(&set("alice", "short")).await),
        "not-acceptable"
    );
    assert_eq!(condition(&c.iq(&set("alice", "")).await), "bad-request");
    assert_eq!(
        condition(&c.iq(&set("bob", "new password!")).await),
        "bad-request"
    );

    let ok = c.iq(&set("alice", "new password!")).await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    assert!(login(&server, "alice", "password").await.is_err());
    login(&server, "alice", "new password!").await.unwrap();
    // The session that changed it goes on.
    let ping = c
        .iq("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(ping.attr("type"), Some("result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_refused_without_tls() {
    let server = TestServer::start_with(|c| c.c2s.require_tls = false).await;
    server.add_user("alice", "password").await;
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.authenticate("alice", &LoginOptions::default())
        .await
        .unwrap();
    c.open_stream().await;
    c.bind(Some("plain")).await.unwrap();
    let reply = c
        .iq(&format!(
            "<iq type='set'><query xmlns='{REG}'><username>alice</username>\
             <password>new password!</password></query></iq>"
        ))
        .await;
    assert_eq!(condition(&reply), "not-authorized");
    login(&server, "alice", "password").await.unwrap();
    assert!(login(&server, "alice", "new password!").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_removal_closes_sessions_and_deletes_data() {
    let server = TestServer::start().await;
    server.add_user("alice", "password").await;
    server.add_user("bob", "password").await;
    let mut phone = login(&server, "alice", "password").await.unwrap();
    let mut laptop = login(&server, "alice", "password").await.unwrap();
    let set = phone
        .iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>")
        .await;
    assert_eq!(set.attr("type"), Some("result"));
    let alice = xmppd::addr::parse_bare("alice@localhost").unwrap();
    assert_eq!(
        server
            .ctx()
            .storage
            .roster
            .roster(&alice)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Only the remove element may be in the query.
    let bad = phone
        .iq(&format!(
            "<iq type='set'><query xmlns='{REG}'><remove/><username>x</username></query></iq>"
        ))
        .await;
    assert_eq!(condition(&bad), "bad-request");

    phone
        .send(&format!(
            "<iq type='set' id='rm'><query xmlns='{REG}'><remove/></query></iq>"
        ))
        .await;
    // Both sessions end with not-authorized (XEP-0077 §3.2).
    assert_eq!(phone.expect_stream_error().await, "not-authorized");
    assert_eq!(laptop.expect_stream_error().await, "not-authorized");
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&alice)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .ctx()
            .storage
            .roster
            .roster(&alice)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(login(&server, "alice", "password").await.is_err());
}
