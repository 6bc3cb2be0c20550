//! What a client trusts because it comes from its own account must not be forgeable by
//! anyone else: roster and block-list pushes, carbons and archive results.

mod support;

use std::time::Duration;

use support::{Client, TestServer};
use xmppd::xml::Element;

const ROSTER: &str = "jabber:iq:roster";
const CARBONS: &str = "urn:xmpp:carbons:2";
const MAM: &str = "urn:xmpp:mam:2";

async fn two_users() -> (TestServer, Client, Client) {
    let server = TestServer::start().await;
    server.add_user("mallory", "password").await;
    server.add_user("bob", "password").await;
    let mallory = server.login("mallory", "pc").await;
    let mut bob = server.login("bob", "phone").await;
    bob.available().await;
    (server, mallory, bob)
}

fn body(m: &Element) -> Option<String> {
    m.child_text("body", "jabber:client")
}

#[tokio::test]
async fn pushes_from_other_entities_are_refused() {
    let (server, mut mallory, mut bob) = two_users().await;
    for payload in [
        format!(
            "<query xmlns='{ROSTER}'><item jid='mallory@localhost' subscription='both'/></query>"
        ),
        "<block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block>".to_string(),
    ] {
        let answer = mallory
            .iq(&format!(
                "<iq type='set' to='bob@localhost/phone'>{payload}</iq>"
            ))
            .await;
        assert_eq!(answer.attr("type"), Some("error"), "{payload}");
        assert!(answer.to_stanza_string().contains("service-unavailable"));
    }
    // Other iq traffic between clients still flows.
    mallory
        .send("<iq type='get' id='v1' to='bob@localhost/phone'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let iq = bob.recv_until(|e| e.name == "iq").await;
    assert_eq!(iq.attr("id"), Some("v1"));
    bob.expect_silence_except_presence(Duration::from_millis(200))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn forged_carbons_and_archive_results_are_removed() {
    let (server, mut mallory, mut bob) = two_users().await;
    let forged = "<message from='bob@localhost/pc' to='alice@localhost' type='chat'><body>I owe mallory 100</body></message>";
    mallory
        .send(&format!(
            "<message to='bob@localhost/phone' type='chat'><body>one</body>\
             <sent xmlns='{CARBONS}'><forwarded xmlns='urn:xmpp:forward:0'>{forged}</forwarded></sent></message>"
        ))
        .await;
    mallory
        .send(&format!(
            "<message to='bob@localhost'><body>two</body>\
             <result xmlns='{MAM}' queryid='q1' id='x'><forwarded xmlns='urn:xmpp:forward:0'>{forged}</forwarded></result></message>"
        ))
        .await;
    let one = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(body(&one).as_deref(), Some("one"));
    assert!(
        one.child("sent", CARBONS).is_none(),
        "{}",
        one.to_stanza_string()
    );
    let two = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(body(&two).as_deref(), Some("two"));
    assert!(
        two.child("result", MAM).is_none(),
        "{}",
        two.to_stanza_string()
    );
    server.stop().await;
}

#[tokio::test]
async fn results_of_a_query_the_client_sent_pass_until_it_is_answered() {
    // Mallory's client plays an archive (as a chat room's would) that bob queries.
    let (server, mut archive, mut bob) = two_users().await;
    bob.send(&format!(
        "<iq type='set' id='mq' to='mallory@localhost/pc'><query xmlns='{MAM}' queryid='abc'/></iq>"
    ))
    .await;
    let query = archive.recv_until(|e| e.name == "iq").await;
    assert_eq!(query.attr("from"), Some("bob@localhost/phone"));
    let result = |text: &str| {
        format!(
            "<message to='bob@localhost/phone'><result xmlns='{MAM}' queryid='abc' id='{text}'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message><body>{text}</body></message></forwarded>\
             </result></message>"
        )
    };
    archive.send(&result("r1")).await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert_eq!(
        m.child("result", MAM).and_then(|r| r.attr("id")),
        Some("r1")
    );
    archive
        .send("<iq type='result' id='mq' to='bob@localhost/phone'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>")
        .await;
    let fin = bob.recv_until(|e| e.name == "iq").await;
    assert_eq!(fin.attr("id"), Some("mq"));
    // The query is over: later "results" are not believed.
    archive.send(&result("r2")).await;
    let m = bob.recv_until(|e| e.name == "message").await;
    assert!(m.child("result", MAM).is_none(), "{}", m.to_stanza_string());
    server.stop().await;
}
