//! Federation with a real peer: Debian's Prosody, started on loopback with its own domain,
//! a certificate from the test CA and our test DNS server as its resolver.
//!
//! Domains are under `.example`: Prosody's resolver (libunbound) answers NXDOMAIN for
//! `.test` without asking any server.

mod support;

use std::time::Duration;

use support::ca::TestCa;
use support::dns::TestDns;
use support::prosody::{OURS, PROSODY, Prosody, recv_presence, start_xmppd};
use support::{Client, TestServer};
use xmppd::xml::Element;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const OUR_IP: &str = "127.0.0.9";
const PROSODY_IP: &str = "127.0.0.8";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The roster item for `jid` once its subscription is `both` (polled, 5 s at most), or
/// the last one seen.
async fn subscription_settles(c: &mut Client, jid: &str) -> Element {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let item = roster_item(c, jid).await;
        let settled = item
            .as_ref()
            .is_some_and(|i| i.attr("subscription") == Some("both"));
        if settled || tokio::time::Instant::now() > deadline {
            return item.unwrap_or_else(|| panic!("{jid} not in the roster"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn roster_item(c: &mut Client, jid: &str) -> Option<Element> {
    let roster = c
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    roster
        .child("query", "jabber:iq:roster")
        .and_then(|q| q.elements().find(|i| i.attr("jid") == Some(jid)))
        .cloned()
}

async fn body(c: &mut Client, text: &str) -> Element {
    let text = text.to_string();
    c.recv_until(move |e| {
        e.name == "message"
            && e.child_text("body", "jabber:client").as_deref() == Some(text.as_str())
    })
    .await
}

/// Both sides trust the test CA: SASL EXTERNAL (XEP-0178) in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federates_with_prosody_using_certificates() {
    let (outbound, inbound) = federate(true, false).await;
    assert_eq!(outbound, vec!["SASL EXTERNAL"]);
    assert_eq!(inbound, vec!["SASL EXTERNAL"]);
}

/// Neither side can verify the other's certificate: Server Dialback (XEP-0220) both ways,
/// each verified over a connection back to the authoritative server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federates_with_prosody_using_dialback() {
    let (outbound, inbound) = federate(false, false).await;
    assert_eq!(outbound, vec!["dialback"]);
    assert_eq!(inbound, vec!["dialback"]);
}

/// Chat rooms across servers (XEP-0045): a Prosody user in a room on xmppd and an xmppd
/// user in a room on Prosody's MUC component, messages both ways. The services' domains
/// federate like the vhosts (dialback: the certificates name only the vhosts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_rooms_federate_with_prosody() {
    let (outbound, _inbound) = federate(false, true).await;
    assert!(outbound.contains(&"dialback"), "{outbound:?}");
}

/// Runs the scenario (or the chat room one); returns the authentication methods used for
/// our outbound and inbound streams.
async fn federate(trusted: bool, muc: bool) -> (Vec<&'static str>, Vec<&'static str>) {
    if std::process::Command::new("prosody")
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("Debian's prosody is required for this test (scripts/test.sh installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start("127.0.0.1").await;
    let ca = TestCa::new("xmppd interop CA");
    let stranger = TestCa::new("unrelated CA");
    let trusted_ca = if trusted { &ca } else { &stranger };
    let ours = start_xmppd(dir.path(), OUR_IP, &ca, trusted_ca, &dns, &["conference"]).await;
    let prosody = Prosody::start(
        &dir.path().join("prosody"),
        PROSODY_IP,
        &ca,
        trusted_ca,
        &dns,
        &[],
        &[("conference", "muc")],
    )
    .await;
    let run = async {
        if muc {
            muc_scenario(&ours, &prosody).await;
        } else {
            scenario(&ours, &prosody).await;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(90), run).await;
    let log = prosody.log();
    let s2s = ours.ctx().s2s.get().unwrap().clone();
    eprintln!(
        "outbound (xmppd -> prosody): {:?}\ninbound (prosody -> xmppd): {:?}",
        s2s.established()
            .iter()
            .map(|e| (e.remote.clone(), e.method.name(), e.setup))
            .collect::<Vec<_>>(),
        s2s.inbound_authenticated()
    );
    prosody.stop().await;
    ours.stop().await;
    if result.is_err() {
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        panic!(
            "scenario timed out; prosody log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let outbound = s2s.established().iter().map(|e| e.method.name()).collect();
    let inbound = s2s
        .inbound_authenticated()
        .iter()
        .map(|e| e.method)
        .collect();
    (outbound, inbound)
}

async fn scenario(ours: &TestServer, prosody: &Prosody) {
    ours.add_user("alice", "password").await;
    ours.add_user("oscar", "password").await;
    let mut alice = ours.login("alice", "r").await;
    alice.available().await;
    let mut pam = prosody.login("pam").await;
    pam.send("<presence/>").await;

    // Subscription handshake to 'both'.
    alice
        .send("<presence to='pam@prosody.example' type='subscribe'/>")
        .await;
    recv_presence(&mut pam, "subscribe", "alice@xmppd.example").await;
    pam.send("<presence to='alice@xmppd.example' type='subscribed'/>")
        .await;
    pam.send("<presence to='alice@xmppd.example' type='subscribe'/>")
        .await;
    recv_presence(&mut alice, "subscribed", "pam@prosody.example").await;
    recv_presence(&mut alice, "subscribe", "pam@prosody.example").await;
    alice
        .send("<presence to='pam@prosody.example' type='subscribed'/>")
        .await;
    // Both sides see the subscription once the last `subscribed` crossed over.
    let item = subscription_settles(&mut alice, "pam@prosody.example").await;
    assert_eq!(item.attr("subscription"), Some("both"), "{item:?}");
    let item = subscription_settles(&mut pam, "alice@xmppd.example").await;
    assert_eq!(item.attr("subscription"), Some("both"), "{item:?}");

    // Unavailable at logout, probes at login: pam leaves and comes back.
    pam.close().await;
    recv_presence(&mut alice, "unavailable", "pam@prosody.example").await;
    let mut pam = prosody.login("pam").await;
    pam.send("<presence/>").await;
    // Prosody probes alice at pam's login; xmppd answers with alice's presence.
    pam.recv_until(|e| {
        e.name == "presence"
            && e.attr("type").is_none()
            && e.attr("from") == Some("alice@xmppd.example/r")
    })
    .await;
    alice
        .recv_until(|e| {
            e.name == "presence"
                && e.attr("type").is_none()
                && e.attr("from")
                    .is_some_and(|f| f.starts_with("pam@prosody.example/"))
        })
        .await;
    // And xmppd probes pam when a session of alice's logs in.
    let mut alice2 = ours.login("alice", "second").await;
    alice2.send("<presence/>").await;
    alice2
        .recv_until(|e| {
            e.name == "presence"
                && e.attr("type").is_none()
                && e.attr("from")
                    .is_some_and(|f| f.starts_with("pam@prosody.example/"))
        })
        .await;
    alice2.close().await;

    // A chat message each way.
    alice
        .send("<message to='pam@prosody.example' type='chat'><body>hello prosody</body></message>")
        .await;
    let m = body(&mut pam, "hello prosody").await;
    assert_eq!(m.attr("from"), Some("alice@xmppd.example/r"));
    pam.send("<message to='alice@xmppd.example' type='chat'><body>hello xmppd</body></message>")
        .await;
    let m = body(&mut alice, "hello xmppd").await;
    assert_eq!(m.attr("from"), Some("pam@prosody.example/r"));

    // Messages to users offline on the other side arrive at their login.
    alice
        .send("<message to='olga@prosody.example' type='chat'><body>for olga</body></message>")
        .await;
    pam.send("<message to='oscar@xmppd.example' type='chat'><body>for oscar</body></message>")
        .await;
    // Olga's arrives live if she is quicker than it; oscar's must be stored first.
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while ours
        .ctx()
        .storage
        .offline
        .count(&j("oscar@xmppd.example"))
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "oscar's message not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut olga = prosody.login("olga").await;
    olga.send("<presence/>").await;
    body(&mut olga, "for olga").await;
    let mut oscar = ours.login("oscar", "r").await;
    oscar.send("<presence/>").await;
    body(&mut oscar, "for oscar").await;

    // disco#info of the remote server, both ways.
    let info = alice
        .iq("<iq type='get' to='prosody.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    let info = pam
        .iq("<iq type='get' to='xmppd.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    let query = info
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(query.elements().any(|e| e.name == "identity"));

    // Messages to nonexistent remote users come back as errors, id kept.
    alice
        .send("<message to='nobody@prosody.example' type='chat' id='e1'><body>?</body></message>")
        .await;
    let e = alice
        .recv_until(|e| e.name == "message" && e.attr("id") == Some("e1"))
        .await;
    assert_eq!(e.attr("type"), Some("error"));
    assert!(
        e.child("error", "jabber:client")
            .unwrap()
            .has_child("service-unavailable", STANZAS),
        "{e:?}"
    );
    pam.send("<message to='nobody@xmppd.example' type='chat' id='e2'><body>?</body></message>")
        .await;
    let e = pam
        .recv_until(|e| e.name == "message" && e.attr("id") == Some("e2"))
        .await;
    assert_eq!(e.attr("type"), Some("error"));
    assert!(
        e.child("error", "jabber:client")
            .unwrap()
            .has_child("service-unavailable", STANZAS),
        "{e:?}"
    );
}

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

fn self_presence(e: &Element, occupant: &str) -> bool {
    e.name == "presence"
        && e.attr("from") == Some(occupant)
        && (e.attr("type") == Some("error")
            || e.child("x", MUC_USER).is_some_and(|x| {
                x.elements()
                    .any(|s| s.name == "status" && s.attr("code") == Some("110"))
            }))
}

/// Joins `room` as `nick` and, if the room was created by it, accepts the default
/// configuration (an instant room). Panics on a refused join.
async fn join_room(c: &mut Client, room: &str, nick: &str) {
    let occupant = format!("{room}/{nick}");
    c.send(&format!(
        "<presence to='{occupant}'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let p = c.recv_until(|e| self_presence(e, &occupant)).await;
    assert_ne!(p.attr("type"), Some("error"), "join refused: {p:?}");
    let created = p.child("x", MUC_USER).is_some_and(|x| {
        x.elements()
            .any(|s| s.name == "status" && s.attr("code") == Some("201"))
    });
    if created {
        let r = c
            .iq(&format!(
                "<iq type='set' to='{room}'><query xmlns='{MUC_OWNER}'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
}

async fn groupchat(c: &mut Client, text: &str, from: &str) {
    let (text, from) = (text.to_string(), from.to_string());
    c.recv_until(move |e| {
        e.name == "message"
            && e.attr("type") == Some("groupchat")
            && e.attr("from") == Some(from.as_str())
            && e.child_text("body", "jabber:client").as_deref() == Some(text.as_str())
    })
    .await;
}

async fn muc_scenario(ours: &TestServer, prosody: &Prosody) {
    ours.add_user("alice", "password").await;
    let mut alice = ours.login("alice", "r").await;
    alice.available().await;
    let mut pam = prosody.login("pam").await;
    pam.send("<presence/>").await;

    // A room on xmppd: alice creates it, pam (on Prosody) joins over s2s.
    let hall = format!("hall@conference.{OURS}");
    join_room(&mut alice, &hall, "alice").await;
    join_room(&mut pam, &hall, "pam").await;
    alice
        .recv_until(|e| e.name == "presence" && e.attr("from") == Some(&*format!("{hall}/pam")))
        .await;
    pam.send(&format!(
        "<message to='{hall}' type='groupchat'><body>pam in the hall</body></message>"
    ))
    .await;
    groupchat(&mut alice, "pam in the hall", &format!("{hall}/pam")).await;
    groupchat(&mut pam, "pam in the hall", &format!("{hall}/pam")).await;
    alice
        .send(&format!(
            "<message to='{hall}' type='groupchat'><body>alice in the hall</body></message>"
        ))
        .await;
    groupchat(&mut pam, "alice in the hall", &format!("{hall}/alice")).await;

    // A room on Prosody: pam creates it, alice joins from xmppd.
    let lounge = format!("lounge@conference.{PROSODY}");
    join_room(&mut pam, &lounge, "pam").await;
    join_room(&mut alice, &lounge, "alice").await;
    alice
        .send(&format!(
            "<message to='{lounge}' type='groupchat'><body>alice in the lounge</body></message>"
        ))
        .await;
    groupchat(&mut pam, "alice in the lounge", &format!("{lounge}/alice")).await;
    pam.send(&format!(
        "<message to='{lounge}' type='groupchat'><body>pam in the lounge</body></message>"
    ))
    .await;
    groupchat(&mut alice, "pam in the lounge", &format!("{lounge}/pam")).await;
}
