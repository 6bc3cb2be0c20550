//! XEP-0050 ad-hoc commands and the XEP-0133 admin commands over the wire.

mod support;

use support::{Client, LoginOptions, TestServer};
use xmppd::xml::Element;

const CMD: &str = "http://jabber.org/protocol/commands";
const ADMIN: &str = "http://jabber.org/protocol/admin#";

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

async fn server() -> TestServer {
    let server = TestServer::start_with(|c| c.server.admins = vec!["boss@localhost".into()]).await;
    server.add_user("boss", "password").await;
    server.add_user("bob", "password").await;
    server
}

async fn login(server: &TestServer, user: &str, password: &str) -> Result<Client, String> {
    Client::login_opts(
        server.starttls_addr(),
        user,
        LoginOptions {
            password: password.into(),
            ..LoginOptions::default()
        },
    )
    .await
}

async fn execute(c: &mut Client, node: &str) -> Element {
    c.iq(&format!(
        "<iq type='set' to='localhost'><command xmlns='{CMD}' node='{node}' action='execute'/></iq>"
    ))
    .await
}

fn command(reply: &Element) -> &Element {
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    reply.child("command", CMD).unwrap()
}

/// Runs a two-stage command: execute, then submit `fields` (var, values) in its session.
async fn run(c: &mut Client, node: &str, fields: &[(&str, &[&str])]) -> Element {
    let first = execute(c, node).await;
    let cmd = command(&first);
    assert_eq!(cmd.attr("status"), Some("executing"), "{first:?}");
    assert!(cmd.has_child("x", "jabber:x:data"));
    let session = cmd.attr("sessionid").unwrap().to_string();
    let mut xml = String::new();
    for (var, values) in fields {
        xml.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            xml.push_str(&format!("<value>{v}</value>"));
        }
        xml.push_str("</field>");
    }
    c.iq(&format!(
        "<iq type='set' to='localhost'><command xmlns='{CMD}' node='{node}' \
         sessionid='{session}'><x xmlns='jabber:x:data' type='submit'>{xml}</x></command></iq>"
    ))
    .await
}

fn completed(reply: &Element) {
    assert_eq!(
        command(reply).attr("status"),
        Some("completed"),
        "{reply:?}"
    );
}

async fn command_nodes(c: &mut Client) -> Vec<String> {
    let items = c
        .iq(&format!(
            "<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items' node='{CMD}'/></iq>"
        ))
        .await;
    assert_eq!(items.attr("type"), Some("result"), "{items:?}");
    items
        .first_element()
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("node").map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admins_are_refused() {
    let server = server().await;
    let mut bob = login(&server, "bob", "password").await.unwrap();
    let info = bob
        .iq("<iq type='get' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert!(
        info.first_element()
            .unwrap()
            .elements()
            .any(|f| f.attr("var") == Some(CMD)),
        "{info:?}"
    );
    // Bob sees only what he may run.
    let nodes = command_nodes(&mut bob).await;
    assert_eq!(nodes, ["urn:xmpp:invite#invite"], "{nodes:?}");
    for cmd in [
        "add-user",
        "delete-user",
        "get-online-users-list",
        "announce",
    ] {
        let reply = execute(&mut bob, &format!("{ADMIN}{cmd}")).await;
        assert_eq!(condition(&reply), "forbidden", "{cmd}");
    }
    let reply = execute(&mut bob, "urn:example:none").await;
    assert_eq!(condition(&reply), "item-not-found");
    // A made-up session is refused.
    let reply = bob
        .iq(&format!(
            "<iq type='set' to='localhost'><command xmlns='{CMD}' node='urn:xmpp:invite#invite' \
             sessionid='nope'/></iq>"
        ))
        .await;
    assert_eq!(condition(&reply), "bad-request");
    let bare = xmppd::addr::parse_bare("bob@localhost").unwrap();
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&bare)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_adds_changes_disables_and_deletes_users() {
    let server = server().await;
    let mut boss = login(&server, "boss", "password").await.unwrap();
    let nodes = command_nodes(&mut boss).await;
    for cmd in [
        "add-user",
        "delete-user",
        "disable-user",
        "change-user-password",
    ] {
        assert!(nodes.contains(&format!("{ADMIN}{cmd}")), "{nodes:?}");
    }

    // Add: the new account logs in.
    let reply = run(
        &mut boss,
        &format!("{ADMIN}add-user"),
        &[
            ("accountjid", &["carol@localhost"]),
            ("password", &["carol's password"]),
            ("password-verify", &["carol's password"]),
        ],
    )
    .await;
    completed(&reply);
    let mut carol = login(&server, "carol", "carol's password").await.unwrap();
    // An existing one is a conflict.
    let reply = run(
        &mut boss,
        &format!("{ADMIN}add-user"),
        &[("accountjid", &["carol@localhost"]), ("password", &["x"])],
    )
    .await;
    assert_eq!(condition(&reply), "conflict");

    // Change password: her session ends, the new password works, the old does not.
    let reply = run(
        &mut boss,
        &format!("{ADMIN}change-user-password"),
        &[
            ("accountjid", &["carol@localhost"]),
            ("password", &["new one"]),
        ],
    )
    .await;
    completed(&reply);
    assert_eq!(carol.expect_stream_error().await, "not-authorized");
    assert!(login(&server, "carol", "carol's password").await.is_err());
    let mut carol = login(&server, "carol", "new one").await.unwrap();

    // Disable: the session ends and nobody can log in; her data stays.
    let reply = run(
        &mut boss,
        &format!("{ADMIN}disable-user"),
        &[("accountjids", &["carol@localhost"])],
    )
    .await;
    completed(&reply);
    assert_eq!(carol.expect_stream_error().await, "not-authorized");
    assert!(login(&server, "carol", "new one").await.is_err());
    let carol_jid = xmppd::addr::parse_bare("carol@localhost").unwrap();
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&carol_jid)
            .await
            .unwrap()
            .is_some()
    );

    // Delete: bob's session ends and his account is gone.
    let mut bob = login(&server, "bob", "password").await.unwrap();
    let reply = run(
        &mut boss,
        &format!("{ADMIN}delete-user"),
        &[("accountjids", &["bob@localhost", "carol@localhost"])],
    )
    .await;
    completed(&reply);
    assert_eq!(bob.expect_stream_error().await, "not-authorized");
    let bob_jid = xmppd::addr::parse_bare("bob@localhost").unwrap();
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&bob_jid)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&carol_jid)
            .await
            .unwrap()
            .is_none()
    );
    assert!(login(&server, "bob", "password").await.is_err());

    // A JID of another domain is not ours to manage.
    let reply = run(
        &mut boss,
        &format!("{ADMIN}delete-user"),
        &[("accountjids", &["x@elsewhere.example"])],
    )
    .await;
    assert_eq!(condition(&reply), "not-acceptable");

    // Cancelling a session.
    let first = execute(&mut boss, &format!("{ADMIN}add-user")).await;
    let session = command(&first).attr("sessionid").unwrap().to_string();
    let cancel = boss
        .iq(&format!(
            "<iq type='set' to='localhost'><command xmlns='{CMD}' node='{ADMIN}add-user' \
             sessionid='{session}' action='cancel'/></iq>"
        ))
        .await;
    assert_eq!(command(&cancel).attr("status"), Some("canceled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_online_users_and_announces() {
    let server = server().await;
    let mut boss = login(&server, "boss", "password").await.unwrap();
    let mut bob = login(&server, "bob", "password").await.unwrap();
    bob.available().await;

    let reply = execute(&mut boss, &format!("{ADMIN}get-online-users-list")).await;
    completed(&reply);
    let x = command(&reply).child("x", "jabber:x:data").unwrap();
    let field = x
        .elements()
        .find(|f| f.attr("var") == Some("onlineuserjids"))
        .unwrap();
    let users: Vec<String> = field.elements().map(|v| v.text()).collect();
    assert_eq!(users, ["bob@localhost", "boss@localhost"]);

    let reply = run(
        &mut boss,
        &format!("{ADMIN}announce"),
        &[
            ("subject", &["Maintenance"]),
            ("announcement", &["Down at noon", "for an hour"]),
        ],
    )
    .await;
    completed(&reply);
    let msg = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(msg.attr("from"), Some("localhost"));
    assert_eq!(
        msg.child_text("body", "jabber:client").as_deref(),
        Some("Down at noon\nfor an hour")
    );
    assert_eq!(
        msg.child_text("subject", "jabber:client").as_deref(),
        Some("Maintenance")
    );
}
