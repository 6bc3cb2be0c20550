//! XEP-0352 client state indication: an inactive client is spared presence floods and
//! bare chat states, gets the latest presence per contact when it becomes active, and
//! gets messages with a body at once (after what was held).

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::Element;

const CSI: &str = "urn:xmpp:csi:0";

fn show(el: &Element) -> String {
    el.child_text("show", "jabber:client").unwrap_or_default()
}

async fn presence(from: &mut Client, to: &str, show: &str) {
    from.send(&format!(
        "<presence to='{to}'><show>{show}</show></presence>"
    ))
    .await;
}

async fn sync(c: &mut Client) {
    c.iq("<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
}

#[tokio::test]
async fn inactive_client_gets_squashed_presence_and_bodies_at_once() {
    let server = TestServer::start().await;
    for user in ["alice", "carol", "bob"] {
        server.add_user(user, "password").await;
    }
    let mut alice = server.login("alice", "pc").await;
    let mut carol = server.login("carol", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    assert!(bob.features.as_ref().unwrap().has_child("csi", CSI));
    bob.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    sync(&mut bob).await;

    // A presence flood from two contacts (directed presence, no roster needed).
    for s in ["away", "xa", "dnd", "chat", "away"] {
        presence(&mut alice, "bob@localhost/phone", s).await;
    }
    for s in ["dnd", "xa", "chat"] {
        presence(&mut carol, "bob@localhost/phone", s).await;
    }
    carol
        .send("<message to='bob@localhost/phone' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    sync(&mut alice).await;
    sync(&mut carol).await;
    bob.expect_silence(Duration::from_millis(300)).await;

    // Active again: only the latest from each contact, in first-seen order.
    bob.send(&format!("<active xmlns='{CSI}'/>")).await;
    let p1 = bob.recv().await;
    let p2 = bob.recv().await;
    let cs = bob.recv().await;
    assert_eq!(
        (p1.attr("from"), show(&p1).as_str()),
        (Some("alice@localhost/pc"), "away")
    );
    assert_eq!(
        (p2.attr("from"), show(&p2).as_str()),
        (Some("carol@localhost/pc"), "chat")
    );
    assert!(cs.has_child("composing", "http://jabber.org/protocol/chatstates"));
    bob.expect_silence(Duration::from_millis(300)).await;

    // Inactive again: a message with a body passes at once, after the held presence.
    bob.send(&format!("<inactive xmlns='{CSI}'/>")).await;
    sync(&mut bob).await;
    presence(&mut alice, "bob@localhost/phone", "xa").await;
    presence(&mut alice, "bob@localhost/phone", "dnd").await;
    alice
        .send("<message to='bob@localhost/phone' type='chat'><body>wake up</body></message>")
        .await;
    let p = bob.recv().await;
    assert_eq!(p.name, "presence");
    assert_eq!(show(&p), "dnd");
    let m = bob.recv().await;
    assert_eq!(
        m.child_text("body", "jabber:client").as_deref(),
        Some("wake up")
    );
    // Iq requests are never held either.
    carol
        .send("<iq type='get' to='bob@localhost/phone' id='v1'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let iq = bob.recv().await;
    assert_eq!(iq.attr("id"), Some("v1"));
    bob.expect_silence(Duration::from_millis(200)).await;
    server.stop().await;
}
