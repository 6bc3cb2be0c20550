//! PEP across federation with a real peer, Debian's Prosody: OMEMO device lists published
//! on either server reach the other server's contact at the resource whose XEP-0115
//! capabilities ask for them (each server queries the remote resource's capabilities
//! through the other).

mod support;

use std::time::Duration;

use support::ca::TestCa;
use support::dns::TestDns;
use support::prosody::{Prosody, recv_presence, start_xmppd};
use support::{Client, TestServer};
use xmppd::modules::pubsub::caps::ver_string;
use xmppd::xml::Element;

const OUR_IP: &str = "127.0.0.10";
const PROSODY_IP: &str = "127.0.0.11";
const DISCO: &str = "http://jabber.org/protocol/disco#info";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";

async fn roster_both(c: &mut Client, jid: &str) {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let roster = c
            .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        let both = roster
            .child("query", "jabber:iq:roster")
            .and_then(|q| q.elements().find(|i| i.attr("jid") == Some(jid)))
            .is_some_and(|i| i.attr("subscription") == Some("both"));
        if both {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{jid}: no subscription 'both'"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client's disco#info with `+notify` for device lists.
fn caps_query() -> Element {
    Element::new("query", DISCO)
        .with_child(
            Element::new("identity", DISCO)
                .with_attr("category", "client")
                .with_attr("type", "phone"),
        )
        .with_child(Element::new("feature", DISCO).with_attr("var", DISCO))
        .with_child(Element::new("feature", DISCO).with_attr("var", format!("{DEVICELIST}+notify")))
}

async fn send_caps_presence(c: &mut Client) {
    let ver = ver_string(&caps_query());
    c.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
         node='https://xmppd.test/c' ver='{ver}'/></presence>"
    ))
    .await;
}

/// Answers disco#info queries (from any server) until an event from `owner` arrives
/// (others, such as the client's own device list, are left aside); returns it.
async fn answer_until_event(c: &mut Client, owner: &str) -> Element {
    loop {
        let el = c
            .recv_until(|e| {
                (e.name == "iq"
                    && e.attr("type") == Some("get")
                    && e.child("query", DISCO).is_some())
                    || (e.name == "message"
                        && e.attr("from") == Some(owner)
                        && e.child("event", EVENT).is_some())
            })
            .await;
        if el.name == "message" {
            return el;
        }
        let node = el.child("query", DISCO).and_then(|q| q.attr("node"));
        let mut query = caps_query();
        if let Some(node) = node {
            query.set_attr("node", node);
        }
        let reply = Element::new("iq", "jabber:client")
            .with_attr("type", "result")
            .with_attr("id", el.attr("id").unwrap())
            .with_attr("to", el.attr("from").unwrap())
            .with_child(query);
        c.send(&reply.to_stanza_string()).await;
    }
}

fn device_id(m: &Element) -> Option<String> {
    m.child("event", EVENT)?
        .first_element()?
        .first_element()?
        .first_element()?
        .first_element()?
        .attr("id")
        .map(str::to_string)
}

fn publish_devicelist(id: u32) -> String {
    format!(
        "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{DEVICELIST}'>\
         <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='{id}'/></list></item>\
         </publish></pubsub></iq>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_cross_to_and_from_prosody() {
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
    let ours = start_xmppd(dir.path(), OUR_IP, &ca, &ca, &dns, &[]).await;
    let prosody = Prosody::start(
        &dir.path().join("prosody"),
        PROSODY_IP,
        &ca,
        &ca,
        &dns,
        &["pep"],
        &[],
    )
    .await;
    let result = tokio::time::timeout(Duration::from_secs(90), scenario(&ours, &prosody)).await;
    let log = prosody.log();
    prosody.stop().await;
    ours.stop().await;
    if result.is_err() {
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        panic!(
            "scenario timed out; prosody log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

async fn scenario(ours: &TestServer, prosody: &Prosody) {
    ours.add_user("alice", "password").await;
    let mut alice = ours.login("alice", "r").await;
    alice.available().await;
    let mut pam = prosody.login("pam").await;
    pam.send("<presence/>").await;
    alice
        .send("<presence to='pam@prosody.example' type='subscribe'/>")
        .await;
    recv_presence(&mut pam, "subscribe", "alice@xmppd.example").await;
    pam.send("<presence to='alice@xmppd.example' type='subscribed'/>")
        .await;
    pam.send("<presence to='alice@xmppd.example' type='subscribe'/>")
        .await;
    recv_presence(&mut alice, "subscribe", "pam@prosody.example").await;
    alice
        .send("<presence to='pam@prosody.example' type='subscribed'/>")
        .await;
    roster_both(&mut alice, "pam@prosody.example").await;
    roster_both(&mut pam, "alice@xmppd.example").await;

    // alice (xmppd) publishes; pam's resource on Prosody announces +notify: xmppd learns
    // its capabilities through Prosody and sends the last item, then live ones.
    let r = alice.iq(&publish_devicelist(1)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    send_caps_presence(&mut pam).await;
    let m = answer_until_event(&mut pam, "alice@xmppd.example").await;
    assert_eq!(device_id(&m).as_deref(), Some("1"));
    let r = alice.iq(&publish_devicelist(2)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let m = answer_until_event(&mut pam, "alice@xmppd.example").await;
    assert_eq!(device_id(&m).as_deref(), Some("2"));

    // The other way: pam publishes on Prosody; alice's resource announces +notify and
    // Prosody's query for its capabilities crosses into xmppd.
    send_caps_presence(&mut alice).await;
    let r = pam.iq(&publish_devicelist(7)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let m = answer_until_event(&mut alice, "pam@prosody.example").await;
    assert_eq!(device_id(&m).as_deref(), Some("7"));
}
