//! Invitations end to end: `xmppd invite create|list|revoke` through the control socket,
//! XEP-0445 registration with a token (and tokens that are expired, revoked or used up),
//! XEP-0401/XEP-0379 contact invitations making mutual contacts, and the landing page.

mod support;

use std::process::{Command, Output};

use support::{Client, LoginOptions, TIMEOUT, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode};
use xmppd::xml::Element;

const REG: &str = "jabber:iq:register";
const PARS: &str = "urn:xmpp:pars:0";
const CMD: &str = "http://jabber.org/protocol/commands";

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
    TestServer::start_with(|c| {
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::Http,
            address: "127.0.0.1:0".parse().unwrap(),
            tls: TlsMode::DirectTls,
        });
    })
    .await
}

/// Runs the xmppd binary against the running test server's data directory.
fn cli(server: &TestServer, args: &[&str]) -> Output {
    let config = server.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[[vhost]]\ndomain = \"localhost\"\n",
            server.dir.path().display()
        ),
    )
    .unwrap();
    let mut all = args.to_vec();
    let c = config.to_str().unwrap();
    all.extend(["-c", c]);
    Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(&all)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn token_of(uri: &str) -> String {
    let start = uri.find("preauth=").unwrap() + "preauth=".len();
    uri[start..].split(';').next().unwrap().to_string()
}

/// A stream after STARTTLS, before authentication.
async fn tls_stream(server: &TestServer) -> Client {
    let mut c = Client::connect(server.starttls_addr()).await;
    c.open_stream().await;
    c.starttls().await;
    let features = c.open_stream().await;
    assert!(
        features.has_child("register", "urn:xmpp:ibr-token:0"),
        "{features:?}"
    );
    c
}

async fn preauth(c: &mut Client, token: &str) -> Element {
    c.iq(&format!(
        "<iq type='set' to='localhost'><preauth xmlns='{PARS}' token='{token}'/></iq>"
    ))
    .await
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
            ..LoginOptions::default()
        },
    )
    .await
}

/// Registers `user` with `token` on a new stream: the preauth reply, then the register reply.
async fn register_with(server: &TestServer, token: &str, user: &str) -> (Element, Option<Element>) {
    let mut c = tls_stream(server).await;
    let pre = preauth(&mut c, token).await;
    if pre.attr("type") != Some("result") {
        return (pre, None);
    }
    let reg = register(&mut c, user, "a good password").await;
    (pre, Some(reg))
}

/// GET over TLS on the server's https listener.
async fn https_get(server: &TestServer, path: &str) -> (u16, String) {
    let addr = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::DirectTls)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = support::tls_connector(Some(b"http/1.1"))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_lists_and_revokes_through_the_control_socket() {
    let server = server().await;
    let created = stdout(&cli(
        &server,
        &["invite", "create", "--expires", "2d", "--uses", "2"],
    ));
    let mut lines = created.lines();
    let uri = lines.next().unwrap();
    assert!(
        uri.starts_with("xmpp:localhost?register;preauth="),
        "{created}"
    );
    let token = token_of(uri);
    let port = server
        .handle()
        .addr(ListenerKind::Http, TlsMode::DirectTls)
        .unwrap()
        .port();
    assert_eq!(
        lines.next().unwrap(),
        format!("https://localhost:{port}/invite/{token}")
    );

    let listed = stdout(&cli(&server, &["invite", "list"]));
    assert!(listed.contains(&token), "{listed}");
    assert!(listed.contains("uses_left=2"), "{listed}");

    // Used once: one use left.
    let (_, reg) = register_with(&server, &token, "first").await;
    assert_eq!(reg.unwrap().attr("type"), Some("result"));
    login(&server, "first", "a good password").await.unwrap();
    assert!(stdout(&cli(&server, &["invite", "list"])).contains("uses_left=1"));

    stdout(&cli(&server, &["invite", "revoke", &token]));
    assert!(!stdout(&cli(&server, &["invite", "list"])).contains(&token));
    let again = cli(&server, &["invite", "revoke", &token]);
    assert!(!again.status.success());
    // Revoked: refused.
    let (pre, _) = register_with(&server, &token, "second").await;
    assert_eq!(condition(&pre), "item-not-found");

    // An admin invitation makes an admin.
    let created = stdout(&cli(&server, &["invite", "create", "--admin"]));
    let token = token_of(created.lines().next().unwrap());
    let (_, reg) = register_with(&server, &token, "chief").await;
    assert_eq!(reg.unwrap().attr("type"), Some("result"));
    let mut chief = login(&server, "chief", "a good password").await.unwrap();
    let reply = chief
        .iq(&format!(
            "<iq type='set' to='localhost'><command xmlns='{CMD}' \
             node='http://jabber.org/protocol/admin#get-online-users-list' action='execute'/></iq>"
        ))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_are_used_up_expired_or_unknown_are_refused() {
    let server = server().await;
    let ctx = server.ctx();
    let spec = xmppd::admin::invites::InviteSpec {
        register: true,
        privileged: true,
        username: Some("juliet".into()),
        ..Default::default()
    };
    let invite = xmppd::admin::invites::create(&ctx.storage, &ctx.config, spec)
        .await
        .unwrap();
    assert_eq!(
        xmppd::admin::invites::invite_uri(&invite),
        format!("xmpp:juliet@localhost?register;preauth={}", invite.token)
    );

    // Unknown.
    let (pre, _) = register_with(&server, "NoSuchTokenAtAll123", "x").await;
    assert_eq!(condition(&pre), "item-not-found");

    // The reserved name: nobody else gets it, open registration or not, and the token is
    // for that name only.
    let (_, reg) = register_with(&server, &invite.token, "romeo").await;
    assert_eq!(condition(&reg.unwrap()), "not-acceptable");
    let (pre, reg) = register_with(&server, &invite.token, "juliet").await;
    assert_eq!(pre.attr("type"), Some("result"));
    assert_eq!(reg.unwrap().attr("type"), Some("result"));
    login(&server, "juliet", "a good password").await.unwrap();
    // Used up.
    let (pre, _) = register_with(&server, &invite.token, "juliet2").await;
    assert_eq!(condition(&pre), "item-not-found");

    // Expired.
    let spec = xmppd::admin::invites::InviteSpec {
        register: true,
        privileged: true,
        ..Default::default()
    };
    let mut invite = xmppd::admin::invites::create(&ctx.storage, &ctx.config, spec)
        .await
        .unwrap();
    invite.expires = invite.created - 1;
    ctx.storage.invites.put_invite(&invite).await.unwrap();
    let (pre, _) = register_with(&server, &invite.token, "late").await;
    assert_eq!(condition(&pre), "item-not-found");
    let (status, page) = https_get(&server, &format!("/invite/{}", invite.token)).await;
    assert_eq!(status, 404, "{page}");

    // Guessing tokens on one stream ends it.
    let mut c = tls_stream(&server).await;
    for i in 0..server.config.limits.max_auth_attempts {
        let pre = preauth(&mut c, &format!("guess{i}xxxxxx")).await;
        assert_eq!(condition(&pre), "item-not-found");
    }
    c.send(&format!(
        "<iq type='set' id='last'><preauth xmlns='{PARS}' token='guessxxxxxxxx'/></iq>"
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
}

async fn roster_item(c: &mut Client, jid: &str) -> Option<Element> {
    let roster = c
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    roster
        .first_element()?
        .elements()
        .find(|i| i.attr("jid") == Some(jid))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_invitation_makes_mutual_contacts_and_has_a_landing_page() {
    let server = server().await;
    server.add_user("alice", "password").await;
    let mut alice = login(&server, "alice", "password").await.unwrap();
    // Her client asks for the roster, so it gets pushes.
    roster_item(&mut alice, "nobody@localhost").await;

    // XEP-0401: the invitation command answers at once with the link.
    let reply = alice
        .iq(&format!(
            "<iq type='set' to='localhost'><command xmlns='{CMD}' node='urn:xmpp:invite#invite' \
             action='execute'/></iq>"
        ))
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let cmd = reply.child("command", CMD).unwrap();
    assert_eq!(cmd.attr("status"), Some("completed"));
    let x = cmd.child("x", "jabber:x:data").unwrap();
    let field = |var: &str| {
        x.elements()
            .find(|f| f.attr("var") == Some(var))
            .map(|f| f.elements().next().unwrap().text())
            .unwrap()
    };
    let uri = field("uri");
    assert!(
        uri.starts_with("xmpp:alice@localhost?roster;preauth="),
        "{uri}"
    );
    assert!(uri.ends_with(";ibr=y"), "{uri}");
    assert!(field("landing-url").contains("/invite/"));
    assert!(field("expire").ends_with('Z'));
    let token = token_of(&uri);

    // The landing page shows the link (escaped) and a QR code.
    let (status, page) = https_get(&server, &format!("/invite/{token}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("alice@localhost invites you"), "{page}");
    assert!(page.contains(&format!(
        "href=\"xmpp:alice@localhost?roster;preauth={token};ibr=y\""
    )));
    assert!(page.contains("<svg"));
    assert!(
        page.to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    let (status, _) = https_get(&server, "/invite/%3Cscript%3E").await;
    assert_eq!(status, 404);

    // The invitee registers with the token: both are contacts at once.
    let (_, reg) = register_with(&server, &token, "newbie").await;
    assert_eq!(reg.unwrap().attr("type"), Some("result"));
    let push = alice
        .recv_until(|e| {
            e.name == "iq"
                && e.first_element()
                    .and_then(|q| q.first_element())
                    .is_some_and(|i| i.attr("jid") == Some("newbie@localhost"))
        })
        .await;
    let item = push.first_element().unwrap().first_element().unwrap();
    assert_eq!(item.attr("subscription"), Some("both"), "{push:?}");
    let mut newbie = login(&server, "newbie", "a good password").await.unwrap();
    let item = roster_item(&mut newbie, "alice@localhost").await.unwrap();
    assert_eq!(item.attr("subscription"), Some("both"));

    // XEP-0379: an existing user presenting a token in a subscription request.
    server.add_user("bob", "password").await;
    let mut bob = login(&server, "bob", "password").await.unwrap();
    roster_item(&mut bob, "nobody@localhost").await;
    let reply = alice
        .iq(&format!(
            "<iq type='set' to='localhost'><command xmlns='{CMD}' node='urn:xmpp:invite#invite'/></iq>"
        ))
        .await;
    let x = reply
        .child("command", CMD)
        .and_then(|c| c.child("x", "jabber:x:data"))
        .unwrap();
    let uri = x
        .elements()
        .find(|f| f.attr("var") == Some("uri"))
        .unwrap()
        .elements()
        .next()
        .unwrap()
        .text();
    let token = token_of(&uri);
    // Bob's client pre-approves Alice, then asks with the token (XEP-0379 §3.4).
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    bob.send(&format!(
        "<presence to='alice@localhost' type='subscribe'><preauth xmlns='{PARS}' token='{token}'/></presence>"
    ))
    .await;
    // Each side's roster reaches `both` (pushed to the clients that asked for rosters).
    for (c, contact) in [(&mut alice, "bob@localhost"), (&mut bob, "alice@localhost")] {
        c.recv_until(|e| {
            e.name == "iq"
                && e.first_element()
                    .and_then(|q| q.first_element())
                    .is_some_and(|i| {
                        i.attr("jid") == Some(contact) && i.attr("subscription") == Some("both")
                    })
        })
        .await;
    }
    // The token was used.
    assert!(ctx_invite_gone(&server, &token).await);
}

async fn ctx_invite_gone(server: &TestServer, token: &str) -> bool {
    server
        .ctx()
        .storage
        .invites
        .invite(token)
        .await
        .unwrap()
        .is_none()
}

/// A real client library (slixmpp): Alice makes an invitation with XEP-0050, a new client
/// registers with its token (XEP-0077 plus XEP-0445), and both see each other in their
/// rosters (tests/interop/slixmpp_invite.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_registers_with_an_invitation() {
    let server = server().await;
    server.add_user("alice", "password").await;
    let stdout = support::run_slixmpp(&server, "slixmpp_invite.py").await;
    assert!(
        stdout.contains("registered with the invitation"),
        "{stdout}"
    );
    assert!(stdout.contains("subscription: both"), "{stdout}");
    let newbie = xmppd::addr::parse_bare("newbie@localhost").unwrap();
    assert!(
        server
            .ctx()
            .storage
            .accounts
            .get(&newbie)
            .await
            .unwrap()
            .is_some()
    );
    server.stop().await;
}

/// With the server stopped, `xmppd invite create` writes to the storage itself; the
/// server started later accepts the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_invitations_while_the_server_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[[vhost]]\ndomain = \"localhost\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(["invite", "create", "-c", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let token = token_of(stdout(&out).lines().next().unwrap());
    let cfg = support::test_config(dir.path());
    let handle = xmppd::server::start(cfg.clone()).await.unwrap();
    let server = TestServer {
        handle: Some(handle),
        dir,
        config: cfg,
    };
    let (pre, reg) = register_with(&server, &token, "later").await;
    assert_eq!(pre.attr("type"), Some("result"), "{pre:?}");
    assert_eq!(reg.unwrap().attr("type"), Some("result"));
    login(&server, "later", "a good password").await.unwrap();
    server.stop().await;
}
