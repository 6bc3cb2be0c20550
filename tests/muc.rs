//! XEP-0045 multi-user chat over real sockets: rooms created (instant and reserved) and
//! configured, joined by several users, messages fanned out, nick changes, kicks and bans,
//! refusals (members-only, password, moderated, taken nick, not an occupant, bad
//! configuration), history on join, MAM on the room, limits, invitations, self-pings,
//! destruction, departure at session end and persistence across a restart.

mod support;

use support::{Client, TestServer};
use xmppd::xml::Element;

const MUC: &str = "http://jabber.org/protocol/muc";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const DATA: &str = "jabber:x:data";
const CLIENT: &str = "jabber:client";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const DELAY: &str = "urn:xmpp:delay";
const SERVICE: &str = "conference.localhost";

fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

fn codes(p: &Element) -> Vec<u16> {
    p.child("x", MUC_USER)
        .map(|x| {
            x.elements()
                .filter(|e| e.is("status", MUC_USER))
                .filter_map(|s| s.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn item(p: &Element) -> &Element {
    p.child("x", MUC_USER)
        .and_then(|x| x.child("item", MUC_USER))
        .expect("muc#user item")
}

fn condition(el: &Element) -> String {
    assert_eq!(el.attr("type"), Some("error"), "expected an error: {el:?}");
    el.child("error", CLIENT)
        .and_then(|e| e.elements().find(|c| c.ns == STANZAS))
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn is_from(el: &Element, name: &str, from: &str) -> bool {
    el.name == name && el.attr("from") == Some(from)
}

async fn users(names: &[&str]) -> (TestServer, Vec<Client>) {
    users_with(names, |_| {}).await
}

async fn users_with(
    names: &[&str],
    tweak: impl FnOnce(&mut xmppd::config::Config),
) -> (TestServer, Vec<Client>) {
    let server = TestServer::start_with(tweak).await;
    let mut clients = Vec::new();
    for n in names {
        server.add_user(n, "password").await;
        let mut c = server.login(n, "r").await;
        // Available, so that messages to the bare JID (invitations) are delivered live.
        c.available().await;
        clients.push(c);
    }
    (server, clients)
}

/// Sends a join; returns the error or self-presence (110).
async fn try_join(c: &mut Client, room: &str, nick: &str, x_extra: &str) -> Element {
    c.send(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{MUC}'>{x_extra}</x></presence>"
    ))
    .await;
    let me = format!("{room}/{nick}");
    c.recv_until(|e| {
        e.name == "presence"
            && e.attr("from") == Some(me.as_str())
            && (e.attr("type") == Some("error") || codes(e).contains(&110))
    })
    .await
}

/// Joins an unlocked room: self-presence, then waits for the subject that ends a join.
async fn join(c: &mut Client, room: &str, nick: &str) -> Element {
    let p = try_join(c, room, nick, "").await;
    assert_ne!(p.attr("type"), Some("error"), "join refused: {p:?}");
    // History, if any, then the subject.
    loop {
        let m = c.recv_until(|e| e.name == "message").await;
        if m.has_child("subject", CLIENT) {
            return p;
        }
    }
}

/// Waits until `c` saw `nick` arrive in the room.
async fn seen(c: &mut Client, room: &str, nick: &str) {
    let from = format!("{room}/{nick}");
    c.recv_until(|e| is_from(e, "presence", &from) && e.attr("type").is_none())
        .await;
}

/// Creates an instant room (§10.1.2): join, then accept the default configuration.
async fn create_instant(c: &mut Client, room: &str, nick: &str) {
    let p = try_join(c, room, nick, "").await;
    assert!(codes(&p).contains(&201), "{p:?}");
    assert_eq!(item(&p).attr("affiliation"), Some("owner"));
    let r = c
        .iq(&format!(
            "<iq type='set' to='{room}'><query xmlns='{MUC_OWNER}'>\
             <x xmlns='{DATA}' type='submit'/></query></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

/// Submits a configuration form with these fields.
async fn configure(c: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
    let mut x = field("FORM_TYPE", "http://jabber.org/protocol/muc#roomconfig");
    for (k, v) in fields {
        x.push_str(&field(k, v));
    }
    c.iq(&format!(
        "<iq type='set' to='{room}'><query xmlns='{MUC_OWNER}'>\
         <x xmlns='{DATA}' type='submit'>{x}</x></query></iq>"
    ))
    .await
}

async fn say(c: &mut Client, room: &str, id: &str, body: &str) {
    c.send(&format!(
        "<message to='{room}' type='groupchat' id='{id}'><body>{body}</body></message>"
    ))
    .await;
}

async fn recv_body(c: &mut Client, id: &str) -> Element {
    c.recv_until(|e| e.name == "message" && e.attr("id") == Some(id))
        .await
}

async fn admin_set(c: &mut Client, room: &str, item: &str) -> Element {
    c.iq(&format!(
        "<iq type='set' to='{room}'><query xmlns='{MUC_ADMIN}'>{item}</query></iq>"
    ))
    .await
}

#[tokio::test]
async fn service_in_disco_with_public_rooms_and_room_info() {
    let (server, mut cs) = users(&["alice"]).await;
    let a = &mut cs[0];
    let items = a
        .iq(&format!(
            "<iq type='get' to='localhost'><query xmlns='{DISCO_ITEMS}'/></iq>"
        ))
        .await;
    let listed: Vec<_> = items
        .child("query", DISCO_ITEMS)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert!(listed.contains(&SERVICE), "{listed:?}");

    let info = a
        .iq(&format!(
            "<iq type='get' to='{SERVICE}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    let q = info.child("query", DISCO_INFO).unwrap();
    let identity = q.child("identity", DISCO_INFO).unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("conference"), Some("text"))
    );
    assert!(
        q.elements()
            .any(|f| f.name == "feature" && f.attr("var") == Some(MUC))
    );

    // §10.1.4: a unique room name.
    let unique = a
        .iq(&format!(
            "<iq type='get' to='{SERVICE}'><unique xmlns='http://jabber.org/protocol/muc#unique'/></iq>"
        ))
        .await;
    let name = unique
        .child("unique", "http://jabber.org/protocol/muc#unique")
        .map(Element::text)
        .unwrap_or_default();
    assert!(name.len() >= 16, "{unique:?}");

    let cave = room("cave");
    create_instant(a, &cave, "al").await;
    let r = configure(a, &cave, &[("muc#roomconfig_roomname", "The Cave")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let hidden = room("hidden");
    create_instant(a, &hidden, "al").await;
    configure(a, &hidden, &[("muc#roomconfig_publicroom", "0")]).await;

    let items = a
        .iq(&format!(
            "<iq type='get' to='{SERVICE}'><query xmlns='{DISCO_ITEMS}'/></iq>"
        ))
        .await;
    let rooms: Vec<_> = items
        .child("query", DISCO_ITEMS)
        .unwrap()
        .elements()
        .map(|i| (i.attr("jid").unwrap_or(""), i.attr("name").unwrap_or("")))
        .collect();
    assert_eq!(rooms, [(cave.as_str(), "The Cave")]);

    let info = a
        .iq(&format!(
            "<iq type='get' to='{cave}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    let q = info.child("query", DISCO_INFO).unwrap();
    let features: Vec<_> = q
        .elements()
        .filter(|f| f.name == "feature")
        .filter_map(|f| f.attr("var"))
        .collect();
    for f in [
        MUC,
        "muc_temporary",
        "muc_public",
        "muc_open",
        MAM,
        OCCUPANT_ID,
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let form = q.child("x", DATA).expect("roominfo form");
    let occupants = form
        .elements()
        .find(|f| f.attr("var") == Some("muc#roominfo_occupants"))
        .and_then(|f| f.child_text("value", DATA));
    assert_eq!(occupants.as_deref(), Some("1"));

    let missing = a
        .iq(&format!(
            "<iq type='get' to='{}'><query xmlns='{DISCO_INFO}'/></iq>",
            room("none")
        ))
        .await;
    assert_eq!(condition(&missing), "item-not-found");
    server.stop().await;
}

#[tokio::test]
async fn instant_room_three_users_fan_out() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("coven");

    // Locked until the owner accepts the instant configuration (§10.1.1).
    let p = try_join(a, &r, "al", "").await;
    assert!(
        codes(&p).contains(&201) && codes(&p).contains(&110),
        "{p:?}"
    );
    let refused = try_join(b, &r, "bo", "").await;
    assert_eq!(condition(&refused), "item-not-found");
    let ok = a
        .iq(&format!(
            "<iq type='set' to='{r}'><query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'/></query></iq>"
        ))
        .await;
    assert_eq!(ok.attr("type"), Some("result"));

    // The newcomer gets the others' presence before its own.
    b.send(&format!(
        "<presence to='{r}/bo'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let first = b.recv_until(|e| e.name == "presence").await;
    assert_eq!(first.attr("from"), Some(format!("{r}/al").as_str()));
    assert_eq!(item(&first).attr("role"), Some("moderator"));
    // Semi-anonymous: a participant does not see real JIDs.
    assert_eq!(item(&first).attr("jid"), None);
    let own = b.recv_until(|e| e.name == "presence").await;
    assert_eq!(own.attr("from"), Some(format!("{r}/bo").as_str()));
    assert!(codes(&own).contains(&110));
    assert_eq!(item(&own).attr("role"), Some("participant"));
    assert!(own.has_child("occupant-id", OCCUPANT_ID));
    b.recv_until(|e| e.name == "message" && e.has_child("subject", CLIENT))
        .await;
    // The moderator sees bob arrive, with his real JID.
    let seen = a
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(item(&seen).attr("jid"), Some("bob@localhost/r"));
    assert!(!codes(&seen).contains(&110));

    join(c, &r, "ca").await;

    say(c, &r, "m1", "hello all").await;
    let mut ids = Vec::new();
    for cl in [&mut *a, &mut *b, &mut *c] {
        let m = recv_body(cl, "m1").await;
        assert_eq!(m.attr("from"), Some(format!("{r}/ca").as_str()));
        assert_eq!(m.attr("type"), Some("groupchat"));
        assert_eq!(m.child_text("body", CLIENT).as_deref(), Some("hello all"));
        let sid = m.child("stanza-id", SID).expect("stanza-id");
        assert_eq!(sid.attr("by"), Some(r.as_str()));
        ids.push(
            m.child("occupant-id", OCCUPANT_ID)
                .and_then(|o| o.attr("id"))
                .unwrap()
                .to_string(),
        );
    }
    assert!(ids.iter().all(|i| i == &ids[0]));

    // A forged occupant-id is replaced by the room's.
    c.send(&format!(
        "<message to='{r}' type='groupchat' id='m2'><body>x</body><occupant-id xmlns='{OCCUPANT_ID}' id='forged'/></message>"
    ))
    .await;
    let m = recv_body(b, "m2").await;
    let ids2: Vec<_> = m
        .elements()
        .filter(|e| e.is("occupant-id", OCCUPANT_ID))
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids2, [ids[0].as_str()]);

    // Leaving: everyone sees the unavailable presence.
    b.send(&format!("<presence to='{r}/bo' type='unavailable'/>"))
        .await;
    let gone = b
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert!(codes(&gone).contains(&110));
    let gone = c
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/bo")) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(!codes(&gone).contains(&110));
    server.stop().await;
}

#[tokio::test]
async fn nick_change_taken_nick_and_messages_from_strangers() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("nicks");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    seen(a, &r, "bo").await;

    // §7.2.9: a nick in use by someone else.
    let taken = try_join(c, &r, "bo", "").await;
    assert_eq!(condition(&taken), "conflict");
    // §7.4: only occupants speak.
    say(c, &r, "x1", "let me in").await;
    let e = recv_body(c, "x1").await;
    assert_eq!(condition(&e), "not-acceptable");

    // §7.6: 303 with the new nick, then the new presence.
    b.send(&format!("<presence to='{r}/bobby'/>")).await;
    let old = a
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(old.attr("type"), Some("unavailable"));
    assert!(codes(&old).contains(&303));
    assert_eq!(item(&old).attr("nick"), Some("bobby"));
    let new = a
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bobby")))
        .await;
    assert_eq!(new.attr("type"), None);
    let own = b
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bobby")))
        .await;
    assert!(codes(&own).contains(&110));
    // Changing to a taken nick is a conflict.
    b.send(&format!("<presence to='{r}/al'/>")).await;
    let e = b
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/al")) && e.attr("type") == Some("error")
        })
        .await;
    assert_eq!(condition(&e), "conflict");

    // A presence the room would have to keep and repeat to everyone: too large.
    let big = "x".repeat(20_000);
    let e = try_join(
        c,
        &r,
        "huge",
        &format!("</x><status>{big}</status><x xmlns='{MUC}'>"),
    )
    .await;
    assert_eq!(condition(&e), "not-acceptable");

    // A join without a nickname.
    c.send(&format!("<presence to='{r}'><x xmlns='{MUC}'/></presence>"))
        .await;
    let e = c
        .recv_until(|e| e.name == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(condition(&e), "jid-malformed");
    server.stop().await;
}

#[tokio::test]
async fn kick_307_ban_301_and_voice() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("court");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    join(c, &r, "ca").await;

    // A participant may not kick.
    let e = admin_set(b, &r, "<item nick='ca' role='none'/>").await;
    assert_eq!(condition(&e), "forbidden");
    // Nobody kicks the owner.
    let e = admin_set(a, &r, "<item nick='al' role='none'/>").await;
    assert_eq!(condition(&e), "not-allowed");

    let ok = admin_set(
        a,
        &r,
        "<item nick='bo' role='none'><reason>noise</reason></item>",
    )
    .await;
    assert_eq!(ok.attr("type"), Some("result"));
    let kicked = b
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(kicked.attr("type"), Some("unavailable"));
    assert!(codes(&kicked).contains(&307) && codes(&kicked).contains(&110));
    assert_eq!(
        item(&kicked).child_text("reason", MUC_USER).as_deref(),
        Some("noise")
    );
    let seen = c
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/bo")) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(codes(&seen).contains(&307));
    // Kicked, not banned: bob may come back.
    join(b, &r, "bo").await;

    let ok = admin_set(a, &r, "<item jid='carol@localhost' affiliation='outcast'/>").await;
    assert_eq!(ok.attr("type"), Some("result"));
    let banned = c
        .recv_until(|e| is_from(e, "presence", &format!("{r}/ca")))
        .await;
    assert!(codes(&banned).contains(&301));
    assert_eq!(item(&banned).attr("affiliation"), Some("outcast"));
    let e = try_join(c, &r, "ca", "").await;
    assert_eq!(condition(&e), "forbidden");
    let list = a
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast'/></query></iq>"
        ))
        .await;
    let jids: Vec<_> = list
        .child("query", MUC_ADMIN)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(jids, ["carol@localhost"]);
    // The last owner cannot step down.
    let e = admin_set(a, &r, "<item jid='alice@localhost' affiliation='member'/>").await;
    assert_eq!(condition(&e), "conflict");
    server.stop().await;
}

#[tokio::test]
async fn moderated_room_refuses_visitors_until_voiced() {
    let (server, mut cs) = users(&["alice", "bob"]).await;
    let [a, b] = &mut cs[..] else { unreachable!() };
    let r = room("stage");
    create_instant(a, &r, "al").await;
    let ok = configure(a, &r, &[("muc#roomconfig_moderatedroom", "1")]).await;
    assert_eq!(ok.attr("type"), Some("result"));
    let p = join(b, &r, "bo").await;
    assert_eq!(item(&p).attr("role"), Some("visitor"));
    say(b, &r, "v1", "may I?").await;
    let e = recv_body(b, "v1").await;
    assert_eq!(condition(&e), "forbidden");

    let ok = admin_set(a, &r, "<item nick='bo' role='participant'/>").await;
    assert_eq!(ok.attr("type"), Some("result"));
    let voiced = b
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/bo"))
                && item(e).attr("role") == Some("participant")
        })
        .await;
    assert!(codes(&voiced).contains(&110));
    say(b, &r, "v2", "thanks").await;
    let m = recv_body(a, "v2").await;
    assert_eq!(m.child_text("body", CLIENT).as_deref(), Some("thanks"));

    // Voice revoked, then asked for (§7.13) and granted by the moderator (§8.6).
    let ok = admin_set(a, &r, "<item nick='bo' role='visitor'/>").await;
    assert_eq!(ok.attr("type"), Some("result"));
    b.recv_until(|e| {
        is_from(e, "presence", &format!("{r}/bo")) && item(e).attr("role") == Some("visitor")
    })
    .await;
    say(b, &r, "v3", "again?").await;
    assert_eq!(condition(&recv_body(b, "v3").await), "forbidden");
    let request = format!(
        "<x xmlns='{DATA}' type='submit'>{}{}</x>",
        field("FORM_TYPE", "http://jabber.org/protocol/muc#request"),
        field("muc#role", "participant")
    );
    b.send(&format!("<message to='{r}'>{request}</message>"))
        .await;
    let form = a
        .recv_until(|e| {
            e.name == "message" && e.attr("from") == Some(r.as_str()) && e.has_child("x", DATA)
        })
        .await;
    let x = form.child("x", DATA).unwrap();
    let value = |var: &str| {
        x.elements()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.child_text("value", DATA))
    };
    assert_eq!(value("muc#roomnick").as_deref(), Some("bo"));
    assert_eq!(value("muc#jid").as_deref(), Some("bob@localhost/r"));
    let approval = format!(
        "<x xmlns='{DATA}' type='submit'>{}{}{}</x>",
        field("FORM_TYPE", "http://jabber.org/protocol/muc#request"),
        field("muc#roomnick", "bo"),
        field("muc#request_allow", "true")
    );
    a.send(&format!("<message to='{r}'>{approval}</message>"))
        .await;
    b.recv_until(|e| {
        is_from(e, "presence", &format!("{r}/bo")) && item(e).attr("role") == Some("participant")
    })
    .await;
    say(b, &r, "v4", "thanks again").await;
    assert_eq!(recv_body(a, "v4").await.attr("type"), Some("groupchat"));
    server.stop().await;
}

#[tokio::test]
async fn reserved_room_members_only_and_password() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("vault");
    let p = try_join(a, &r, "al", "").await;
    assert!(codes(&p).contains(&201));
    // Reserved room (§10.1.3): the owner asks for the form and submits it.
    let form = a
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{MUC_OWNER}'/></iq>"
        ))
        .await;
    let x = form
        .child("query", MUC_OWNER)
        .and_then(|q| q.child("x", DATA))
        .unwrap();
    let vars: Vec<_> = x.elements().filter_map(|f| f.attr("var")).collect();
    for v in [
        "muc#roomconfig_roomname",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_passwordprotectedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_whois",
        "muc#roomconfig_allowpm",
        "muc#roomconfig_historylength",
    ] {
        assert!(vars.contains(&v), "{v} missing");
    }
    // Bad values are refused and change nothing.
    for bad in [
        ("muc#roomconfig_maxusers", "lots"),
        ("muc#roomconfig_whois", "everybody"),
        ("muc#roomconfig_membersonly", "perhaps"),
    ] {
        let e = configure(a, &r, &[bad]).await;
        assert_eq!(condition(&e), "bad-request", "{bad:?}");
    }
    // Still locked after the refused forms.
    let e = try_join(b, &r, "bo", "").await;
    assert_eq!(condition(&e), "item-not-found");
    let ok = configure(
        a,
        &r,
        &[
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "open sesame"),
        ],
    )
    .await;
    assert_eq!(ok.attr("type"), Some("result"));
    let e = try_join(b, &r, "bo", "").await;
    assert_eq!(condition(&e), "registration-required");
    let ok = admin_set(a, &r, "<item jid='bob@localhost' affiliation='member'/>").await;
    assert_eq!(ok.attr("type"), Some("result"));
    let e = try_join(b, &r, "bo", "").await;
    assert_eq!(condition(&e), "not-authorized");
    let e = try_join(b, &r, "bo", "<password>wrong</password>").await;
    assert_eq!(condition(&e), "not-authorized");
    let p = try_join(b, &r, "bo", "<password>open sesame</password>").await;
    assert_eq!(item(&p).attr("affiliation"), Some("member"));
    // Members of a members-only room see who belongs, not who is banned.
    let owners = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{MUC_ADMIN}'><item affiliation='owner'/></query></iq>"
        ))
        .await;
    let jids: Vec<_> = owners
        .child("query", MUC_ADMIN)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(jids, ["alice@localhost"]);
    let e = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast'/></query></iq>"
        ))
        .await;
    assert_eq!(condition(&e), "forbidden");
    let e = try_join(c, &r, "ca", "<password>open sesame</password>").await;
    assert_eq!(condition(&e), "registration-required");
    // Removing bob's membership removes him (321).
    admin_set(a, &r, "<item jid='bob@localhost' affiliation='none'/>").await;
    let out = b
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/bo")) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(codes(&out).contains(&321));
    server.stop().await;
}

#[tokio::test]
async fn history_on_rejoin_with_limits_and_subject() {
    let (server, mut cs) = users(&["alice", "bob"]).await;
    let [a, b] = &mut cs[..] else { unreachable!() };
    let r = room("tales");
    create_instant(a, &r, "al").await;
    a.send(&format!(
        "<message to='{r}' type='groupchat' id='s'><subject>Old tales</subject></message>"
    ))
    .await;
    recv_body(a, "s").await;
    for i in 0..4 {
        say(a, &r, &format!("h{i}"), &format!("tale {i}")).await;
        recv_body(a, &format!("h{i}")).await;
    }
    // A participant may not change the subject by default.
    join(b, &r, "bo").await;
    b.send(&format!(
        "<message to='{r}' type='groupchat' id='s2'><subject>mine</subject></message>"
    ))
    .await;
    assert_eq!(condition(&recv_body(b, "s2").await), "forbidden");
    b.send(&format!("<presence to='{r}/bo' type='unavailable'/>"))
        .await;
    b.recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;

    b.send(&format!(
        "<presence to='{r}/bo'><x xmlns='{MUC}'><history maxstanzas='2'/></x></presence>"
    ))
    .await;
    b.recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    let mut got = Vec::new();
    loop {
        let m = b.recv_until(|e| e.name == "message").await;
        if let Some(subject) = m.child_text("subject", CLIENT) {
            assert_eq!(subject, "Old tales");
            assert_eq!(m.attr("from"), Some(format!("{r}/al").as_str()));
            break;
        }
        let delay = m.child("delay", DELAY).expect("history is delayed");
        assert_eq!(delay.attr("from"), Some(r.as_str()));
        assert!(delay.attr("stamp").is_some());
        got.push(m.child_text("body", CLIENT).unwrap());
    }
    assert_eq!(got, ["tale 2", "tale 3"]);

    // maxchars='0': no history at all, the subject still comes.
    b.send(&format!("<presence to='{r}/bo' type='unavailable'/>"))
        .await;
    b.recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    b.send(&format!(
        "<presence to='{r}/bo'><x xmlns='{MUC}'><history maxchars='0'/></x></presence>"
    ))
    .await;
    b.recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    let m = b.recv_until(|e| e.name == "message").await;
    assert!(m.has_child("subject", CLIENT), "{m:?}");
    server.stop().await;
}

#[tokio::test]
async fn mam_query_on_the_room() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("records");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    let mut sids = Vec::new();
    for i in 0..5 {
        say(b, &r, &format!("r{i}"), &format!("entry {i}")).await;
        let m = recv_body(b, &format!("r{i}")).await;
        sids.push(
            m.child("stanza-id", SID)
                .unwrap()
                .attr("id")
                .unwrap()
                .to_string(),
        );
    }
    // Anyone who may enter may read (an open room): carol is not even in it.
    let id = c.new_id();
    c.send(&format!(
        "<iq type='set' id='{id}' to='{r}'><query xmlns='{MAM}' queryid='q1'>\
         <set xmlns='http://jabber.org/protocol/rsm'><max>3</max><before/></set></query></iq>"
    ))
    .await;
    let mut results = Vec::new();
    let fin = loop {
        let e = c
            .recv_until(|e| e.name == "message" || e.attr("id") == Some(id.as_str()))
            .await;
        if e.name == "iq" {
            break e;
        }
        assert_eq!(e.attr("from"), Some(r.as_str()));
        results.push(e);
    };
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    let got: Vec<(String, String)> = results
        .iter()
        .map(|m| {
            let res = m.child("result", MAM).unwrap();
            let fwd = res
                .child("forwarded", "urn:xmpp:forward:0")
                .and_then(|f| f.child("message", CLIENT))
                .unwrap();
            assert_eq!(fwd.attr("from"), Some(format!("{r}/bo").as_str()));
            (
                res.attr("id").unwrap().to_string(),
                fwd.child_text("body", CLIENT).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (sids[2].clone(), "entry 2".to_string()),
            (sids[3].clone(), "entry 3".to_string()),
            (sids[4].clone(), "entry 4".to_string())
        ]
    );

    // A members-only room's archive is for members.
    configure(a, &r, &[("muc#roomconfig_membersonly", "1")]).await;
    let e = c
        .iq(&format!(
            "<iq type='set' to='{r}'><query xmlns='{MAM}'/></iq>"
        ))
        .await;
    assert_eq!(condition(&e), "forbidden");
    server.stop().await;
}

#[tokio::test]
async fn persistent_room_survives_a_restart_with_affiliations() {
    let (mut server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let r = room("keep");
    {
        let [a, b, _] = &mut cs[..] else {
            unreachable!()
        };
        create_instant(a, &r, "al").await;
        let ok = configure(
            a,
            &r,
            &[
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_membersonly", "1"),
                ("muc#roomconfig_roomname", "Keep"),
            ],
        )
        .await;
        assert_eq!(ok.attr("type"), Some("result"));
        admin_set(a, &r, "<item jid='bob@localhost' affiliation='member'/>").await;
        admin_set(a, &r, "<item jid='carol@localhost' affiliation='outcast'/>").await;
        a.send(&format!(
            "<message to='{r}' type='groupchat' id='s'><subject>Kept</subject></message>"
        ))
        .await;
        recv_body(a, "s").await;
        let _ = b;
    }
    drop(cs);
    server.restart().await;
    let mut a = server.login("alice", "r").await;
    let mut b = server.login("bob", "r").await;
    let mut c = server.login("carol", "r").await;
    // Back without being created again: no 201, bob still a member, carol still banned.
    let p = try_join(&mut a, &r, "al", "").await;
    assert!(!codes(&p).contains(&201), "{p:?}");
    assert_eq!(item(&p).attr("affiliation"), Some("owner"));
    let s = a
        .recv_until(|e| e.name == "message" && e.has_child("subject", CLIENT))
        .await;
    assert_eq!(s.child_text("subject", CLIENT).as_deref(), Some("Kept"));
    let p = join(&mut b, &r, "bo").await;
    assert_eq!(item(&p).attr("affiliation"), Some("member"));
    let e = try_join(&mut c, &r, "ca", "").await;
    assert_eq!(condition(&e), "forbidden");
    let items = a
        .iq(&format!(
            "<iq type='get' to='{SERVICE}'><query xmlns='{DISCO_ITEMS}'/></iq>"
        ))
        .await;
    let names: Vec<_> = items
        .child("query", DISCO_ITEMS)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("name"))
        .collect();
    assert_eq!(names, ["Keep"]);

    // A temporary room is gone once empty: joining creates it anew.
    let t = room("brief");
    create_instant(&mut a, &t, "al").await;
    a.send(&format!("<presence to='{t}/al' type='unavailable'/>"))
        .await;
    a.recv_until(|e| is_from(e, "presence", &format!("{t}/al")))
        .await;
    let p = try_join(&mut a, &t, "al", "").await;
    assert!(codes(&p).contains(&201));
    server.stop().await;
}

#[tokio::test]
async fn session_end_leaves_the_room() {
    let (server, mut cs) = users(&["alice", "bob"]).await;
    let r = room("exits");
    {
        let [a, b] = &mut cs[..] else { unreachable!() };
        create_instant(a, &r, "al").await;
        join(b, &r, "bo").await;
        a.recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
            .await;
    }
    let b = cs.pop().unwrap();
    b.close().await;
    let a = &mut cs[0];
    let gone = a
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    // And bob's nick is free again.
    let mut b2 = server.login("bob", "r2").await;
    join(&mut b2, &r, "bo").await;
    server.stop().await;
}

#[tokio::test]
async fn two_sessions_under_one_nick() {
    let (server, mut cs) = users(&["alice", "bob"]).await;
    let r = room("twins");
    let [a, b] = &mut cs[..] else { unreachable!() };
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    let mut b2 = server.login("bob", "phone").await;
    join(&mut b2, &r, "bo").await;
    // Another user cannot take the nick, bob's second session can.
    say(a, &r, "t1", "both of you").await;
    recv_body(a, "t1").await;
    recv_body(b, "t1").await;
    recv_body(&mut b2, "t1").await;
    // One session leaving keeps the occupant.
    b2.send(&format!("<presence to='{r}/bo' type='unavailable'/>"))
        .await;
    let own = b2
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    say(a, &r, "t2", "still there?").await;
    recv_body(a, "t2").await;
    recv_body(b, "t2").await;
    // The departed session got no copy: the room answers its self-ping as a stranger's,
    // and that answer comes before anything else it could have been sent.
    b2.send(&format!(
        "<iq type='get' id='pp' to='{r}/bo'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let first = b2
        .recv_until(|e| matches!(e.attr("id"), Some("t2" | "pp")))
        .await;
    assert_eq!(first.attr("id"), Some("pp"));
    assert_eq!(condition(&first), "not-acceptable");
    server.stop().await;
}

#[tokio::test]
async fn private_messages_self_ping_and_invites() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("parlour");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;

    // §7.5: through the occupant JID, from the sender's occupant JID.
    b.send(&format!(
        "<message to='{r}/al' type='chat' id='p1'><body>psst</body></message>"
    ))
    .await;
    let pm = recv_body(a, "p1").await;
    assert_eq!(pm.attr("from"), Some(format!("{r}/bo").as_str()));
    assert!(pm.has_child("x", MUC_USER));
    b.send(&format!(
        "<message to='{r}/nobody' type='chat' id='p2'><body>?</body></message>"
    ))
    .await;
    assert_eq!(condition(&recv_body(b, "p2").await), "item-not-found");
    b.send(&format!(
        "<message to='{r}/al' type='groupchat' id='p3'><body>?</body></message>"
    ))
    .await;
    assert_eq!(condition(&recv_body(b, "p3").await), "bad-request");
    c.send(&format!(
        "<message to='{r}/al' type='chat' id='p4'><body>hi</body></message>"
    ))
    .await;
    assert_eq!(condition(&recv_body(c, "p4").await), "not-acceptable");
    configure(a, &r, &[("muc#roomconfig_allowpm", "moderators")]).await;
    b.send(&format!(
        "<message to='{r}/al' type='chat' id='p5'><body>psst</body></message>"
    ))
    .await;
    assert_eq!(condition(&recv_body(b, "p5").await), "forbidden");

    // The room itself answers pings.
    let pong = c
        .iq(&format!(
            "<iq type='get' to='{r}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    assert_eq!(pong.attr("type"), Some("result"));

    // XEP-0410: a self-ping is answered by the room while joined.
    let pong = b
        .iq(&format!(
            "<iq type='get' to='{r}/bo'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let e = c
        .iq(&format!(
            "<iq type='get' to='{r}/ca'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    assert_eq!(condition(&e), "not-acceptable");

    // §7.8.2: a mediated invitation comes from the room.
    a.send(&format!(
        "<message to='{r}'><x xmlns='{MUC_USER}'><invite to='carol@localhost'><reason>tea</reason></invite></x></message>"
    ))
    .await;
    let inv = c
        .recv_until(|e| e.name == "message" && e.has_child("x", MUC_USER))
        .await;
    assert_eq!(inv.attr("from"), Some(r.as_str()));
    let invite = inv
        .child("x", MUC_USER)
        .and_then(|x| x.child("invite", MUC_USER))
        .unwrap();
    assert_eq!(invite.attr("from"), Some("alice@localhost/r"));
    assert_eq!(
        invite.child_text("reason", MUC_USER).as_deref(),
        Some("tea")
    );
    // XEP-0249: a direct invitation goes from user to user untouched.
    a.send(&format!(
        "<message to='carol@localhost'><x xmlns='jabber:x:conference' jid='{r}' reason='tea'/></message>"
    ))
    .await;
    let direct = c
        .recv_until(|e| e.name == "message" && e.has_child("x", "jabber:x:conference"))
        .await;
    assert_eq!(direct.attr("from"), Some("alice@localhost/r"));
    server.stop().await;
}

#[tokio::test]
async fn destroy_sends_everyone_to_the_alternate_venue() {
    let (server, mut cs) = users(&["alice", "bob"]).await;
    let [a, b] = &mut cs[..] else { unreachable!() };
    let r = room("ruin");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    let e = b
        .iq(&format!(
            "<iq type='set' to='{r}'><query xmlns='{MUC_OWNER}'><destroy/></query></iq>"
        ))
        .await;
    assert_eq!(condition(&e), "forbidden");
    let alt = room("newplace");
    let ok = a
        .iq(&format!(
            "<iq type='set' to='{r}'><query xmlns='{MUC_OWNER}'><destroy jid='{alt}'><reason>moved</reason></destroy></query></iq>"
        ))
        .await;
    assert_eq!(ok.attr("type"), Some("result"));
    let p = b
        .recv_until(|e| is_from(e, "presence", &format!("{r}/bo")))
        .await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    let d = p
        .child("x", MUC_USER)
        .and_then(|x| x.child("destroy", MUC_USER))
        .unwrap();
    assert_eq!(d.attr("jid"), Some(alt.as_str()));
    assert_eq!(d.child_text("reason", MUC_USER).as_deref(), Some("moved"));
    let info = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    assert_eq!(condition(&info), "item-not-found");
    server.stop().await;
}

#[tokio::test]
async fn limits_answer_with_the_xep_errors() {
    let (server, mut cs) = users_with(&["alice", "bob", "carol"], |c| {
        c.muc.max_occupants = 2;
        c.muc.max_rooms_per_user = 1;
        c.muc.message_burst = 2;
        c.muc.messages_per_sec = 1;
    })
    .await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("small");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    let e = try_join(c, &r, "ca", "").await;
    assert_eq!(condition(&e), "service-unavailable");
    let e = try_join(a, &room("second"), "al", "").await;
    assert_eq!(condition(&e), "not-allowed");
    let e = configure(a, &r, &[("muc#roomconfig_maxusers", "3")]).await;
    assert_eq!(condition(&e), "bad-request");
    // Three at once: two within the burst, the third refused (the allowance refills at
    // one a second, far slower than these arrive).
    for i in 0..3 {
        say(b, &r, &format!("f{i}"), "fast").await;
    }
    for i in 0..2 {
        assert_eq!(
            recv_body(b, &format!("f{i}")).await.attr("type"),
            Some("groupchat")
        );
    }
    assert_eq!(condition(&recv_body(b, "f2").await), "resource-constraint");
    server.stop().await;
}

const RETRACT: &str = "urn:xmpp:message-retract:1";
const MODERATE: &str = "urn:xmpp:message-moderate:1";

/// The archive ids and forwarded messages of a MAM query at the room, in order.
async fn room_archive(c: &mut Client, room: &str) -> Vec<(String, Element)> {
    let id = c.new_id();
    c.send(&format!(
        "<iq type='set' id='{id}' to='{room}'><query xmlns='{MAM}' queryid='{id}'/></iq>"
    ))
    .await;
    let mut out = Vec::new();
    loop {
        let e = c
            .recv_until(|e| {
                e.attr("id") == Some(id.as_str())
                    || e.child("result", MAM).and_then(|r| r.attr("queryid")) == Some(id.as_str())
            })
            .await;
        if e.name == "iq" {
            assert_eq!(e.attr("type"), Some("result"), "{e:?}");
            return out;
        }
        let result = e.child("result", MAM).unwrap();
        let fwd = result
            .child("forwarded", "urn:xmpp:forward:0")
            .and_then(|f| f.child("message", CLIENT))
            .unwrap()
            .clone();
        out.push((result.attr("id").unwrap().to_string(), fwd));
    }
}

#[tokio::test]
async fn moderation_and_retraction_leave_tombstones() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("forum");
    create_instant(a, &r, "al").await;
    join(b, &r, "bo").await;
    join(c, &r, "ca").await;
    let mut sids = Vec::new();
    for (i, text) in ["rude words", "a typo", "fine"].iter().enumerate() {
        say(b, &r, &format!("b{i}"), text).await;
        let m = recv_body(c, &format!("b{i}")).await;
        sids.push(
            m.child("stanza-id", SID)
                .unwrap()
                .attr("id")
                .unwrap()
                .to_string(),
        );
    }

    // XEP-0425: a participant may not moderate; a moderator may.
    let moderate = |id: &str| {
        format!(
            "<iq type='set' to='{r}'><moderate xmlns='{MODERATE}' id='{id}'>\
             <retract xmlns='{RETRACT}'/><reason>not here</reason></moderate></iq>"
        )
    };
    let e = c.iq(&moderate(&sids[0])).await;
    assert_eq!(condition(&e), "forbidden");
    let e = a.iq(&moderate("no-such-id")).await;
    assert_eq!(condition(&e), "item-not-found");
    let ok = a.iq(&moderate(&sids[0])).await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    for cl in [&mut *a, &mut *b, &mut *c] {
        let m = cl
            .recv_until(|e| e.name == "message" && e.has_child("retract", RETRACT))
            .await;
        assert_eq!(m.attr("from"), Some(r.as_str()));
        let retract = m.child("retract", RETRACT).unwrap();
        assert_eq!(retract.attr("id"), Some(sids[0].as_str()));
        let by = retract.child("moderated", MODERATE).unwrap();
        assert_eq!(by.attr("by"), Some(format!("{r}/al").as_str()));
        assert_eq!(
            retract.child_text("reason", MODERATE).as_deref(),
            Some("not here")
        );
    }

    // XEP-0424: only the author retracts a message.
    let retract = |id: &str, mid: &str| {
        format!(
            "<message to='{r}' type='groupchat' id='{mid}'><retract xmlns='{RETRACT}' id='{id}'/>\
             <body>retracted</body></message>"
        )
    };
    c.send(&retract(&sids[1], "x1")).await;
    assert_eq!(condition(&recv_body(c, "x1").await), "forbidden");
    b.send(&retract(&sids[1], "x2")).await;
    let m = recv_body(c, "x2").await;
    assert_eq!(
        m.child("retract", RETRACT).and_then(|x| x.attr("id")),
        Some(sids[1].as_str())
    );

    // The archive keeps tombstones in place of both, and the untouched message.
    let archived = room_archive(c, &r).await;
    let find = |sid: &str| {
        archived
            .iter()
            .find(|(id, _)| id == sid)
            .map(|(_, m)| m)
            .unwrap_or_else(|| panic!("{sid} not in the archive: {archived:?}"))
    };
    let t0 = find(&sids[0]);
    assert!(!t0.has_child("body", CLIENT));
    let r0 = t0.child("retracted", RETRACT).expect("tombstone");
    assert!(r0.has_child("moderated", MODERATE));
    let t1 = find(&sids[1]);
    assert!(!t1.has_child("body", CLIENT) && t1.has_child("retracted", RETRACT));
    assert_eq!(
        find(&sids[2]).child_text("body", CLIENT).as_deref(),
        Some("fine")
    );

    // Newcomers' history shows the tombstones too.
    let mut late = server.login("carol", "late").await;
    late.send(&format!(
        "<presence to='{r}/late'><x xmlns='{MUC}'/></presence>"
    ))
    .await;
    let first = late
        .recv_until(|e| e.name == "message" && e.child("delay", DELAY).is_some())
        .await;
    assert!(first.has_child("retracted", RETRACT), "{first:?}");
    server.stop().await;
}

const REGISTER: &str = "jabber:iq:register";

#[tokio::test]
async fn registration_reserves_a_nick_and_a_repeated_join_gets_the_room_again() {
    let (server, mut cs) = users(&["alice", "bob", "carol"]).await;
    let [a, b, c] = &mut cs[..] else {
        unreachable!()
    };
    let r = room("club");
    create_instant(a, &r, "al").await;

    // §7.10: the form, then the submitted nick.
    let form = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{REGISTER}'/></iq>"
        ))
        .await;
    let x = form
        .child("query", REGISTER)
        .and_then(|q| q.child("x", DATA))
        .unwrap();
    assert!(
        x.elements()
            .any(|f| f.attr("var") == Some("muc#register_roomnick"))
    );
    let submit = |nick: &str| {
        format!(
            "<iq type='set' to='{r}'><query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>{}{}</x></query></iq>",
            field("FORM_TYPE", "http://jabber.org/protocol/muc#register"),
            field("muc#register_roomnick", nick)
        )
    };
    let ok = b.iq(&submit("bobby")).await;
    assert_eq!(ok.attr("type"), Some("result"), "{ok:?}");
    let again = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{REGISTER}'/></iq>"
        ))
        .await;
    let q = again.child("query", REGISTER).unwrap();
    assert!(q.has_child("registered", REGISTER));
    assert_eq!(q.child_text("username", REGISTER).as_deref(), Some("bobby"));
    // §7.12: the reserved nick by disco.
    let info = b
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{DISCO_INFO}' node='x-roomuser-item'/></iq>"
        ))
        .await;
    let id = info
        .child("query", DISCO_INFO)
        .and_then(|q| q.child("identity", DISCO_INFO))
        .unwrap();
    assert_eq!(id.attr("name"), Some("bobby"));
    // Bob is a member with that nick; nobody else may use or register it.
    let list = a
        .iq(&format!(
            "<iq type='get' to='{r}'><query xmlns='{MUC_ADMIN}'><item affiliation='member'/></query></iq>"
        ))
        .await;
    let member = list
        .child("query", MUC_ADMIN)
        .and_then(|q| q.child("item", MUC_ADMIN))
        .unwrap();
    assert_eq!(
        (member.attr("jid"), member.attr("nick")),
        (Some("bob@localhost"), Some("bobby"))
    );
    let e = try_join(c, &r, "bobby", "").await;
    assert_eq!(condition(&e), "conflict");
    let e = c.iq(&submit("bobby")).await;
    assert_eq!(condition(&e), "conflict");

    // A join repeated by a session still in the room (a client that reconnected with
    // the same resource) gets the occupants, its own presence and the subject again.
    join(b, &r, "bobby").await;
    let p = try_join(b, &r, "bobby", "").await;
    assert!(codes(&p).contains(&110));
    b.recv_until(|e| e.name == "message" && e.has_child("subject", CLIENT))
        .await;

    // Unregistering frees the nick.
    let ok = b
        .iq(&format!(
            "<iq type='set' to='{r}'><query xmlns='{REGISTER}'><remove/></query></iq>"
        ))
        .await;
    assert_eq!(ok.attr("type"), Some("result"));
    b.send(&format!("<presence to='{r}/bobby' type='unavailable'/>"))
        .await;
    b.recv_until(|e| {
        is_from(e, "presence", &format!("{r}/bobby")) && e.attr("type") == Some("unavailable")
    })
    .await;
    join(c, &r, "bobby").await;
    server.stop().await;
}

/// An occupant whose session is gone without a word (a race with its departure): the
/// router bounces the room's next message back to the room at once, while the room is
/// still delivering; the room must take that error (dropping the occupant, 333) instead
/// of waiting on itself.
#[tokio::test]
async fn a_vanished_occupant_is_dropped_on_the_bounce() {
    let (server, mut cs) = users(&["alice"]).await;
    let a = &mut cs[0];
    let r = room("ghosts");
    create_instant(a, &r, "al").await;
    // A join from a session that does not exist, as if it ended right after joining.
    let join = xmppd::xml::parse_stanza(&format!(
        "<presence xmlns='jabber:client' from='ghost@localhost/gone' to='{r}/ghost'>\
         <x xmlns='{MUC}'/></presence>"
    ))
    .unwrap();
    xmppd::router::route(server.ctx(), join).await;
    seen(a, &r, "ghost").await;
    say(a, &r, "g1", "anyone there?").await;
    recv_body(a, "g1").await;
    let gone = a
        .recv_until(|e| {
            is_from(e, "presence", &format!("{r}/ghost")) && e.attr("type") == Some("unavailable")
        })
        .await;
    assert!(codes(&gone).contains(&333), "{gone:?}");
    // The room still answers.
    say(a, &r, "g2", "still here").await;
    recv_body(a, "g2").await;
    server.stop().await;
}

#[tokio::test]
async fn retention_prunes_persistent_room_archives() {
    let (server, mut cs) = users_with(&["alice"], |c| {
        c.archive.retention_days = 1;
        c.archive.prune_interval_secs = 1;
    })
    .await;
    let a = &mut cs[0];
    let r = room("annals");
    create_instant(a, &r, "al").await;
    configure(a, &r, &[("muc#roomconfig_persistentroom", "1")]).await;
    // Two days old: expired (stored first: an archive's positions never go back).
    let archive = &server.ctx().storage.archive;
    let room_jid = xmppd::addr::parse_bare(&r).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let old = now - 2 * 86_400 * 1_000_000;
    let stanza = format!(
        "<message xmlns='jabber:client' from='{r}/al' type='groupchat'><body>old</body></message>"
    );
    archive
        .append(
            &room_jid,
            xmppd::storage::NewArchived {
                with: &format!("{r}/al"),
                stanza: stanza.into(),
                micros: old,
            },
        )
        .await
        .unwrap();
    say(a, &r, "new", "fresh").await;
    recv_body(a, "new").await;
    assert_eq!(archive.count(&room_jid).await.unwrap(), 2);
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while archive.count(&room_jid).await.unwrap() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old message was not pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
}
