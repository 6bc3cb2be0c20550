//! Import and export: a real Debian Prosody's data dir imported with the users' old
//! passwords still working, XEP-0227 round trips, ejabberd-style PIEFXIS, users files and
//! hostile import files.

mod support;

use support::ca::TestCa;
use support::dns::TestDns;
use support::prosody::{PROSODY, Prosody};
use support::{Client, LoginOptions, Mech, TestServer};
use xmppd::config::VhostConfig;
use xmppd::migrate;
use xmppd::xml::Element;

const PROSODY_IP: &str = "127.0.0.13";

/// Fills a real Prosody with data through its own protocol handlers, then stops it.
async fn filled_prosody(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = TestCa::new("migrate test CA");
    let dns = TestDns::start("127.0.0.1").await;
    let prosody = Prosody::start(
        &dir.join("prosody"),
        PROSODY_IP,
        &ca,
        &ca,
        &dns,
        &["vcard_legacy", "private", "offline", "pep", "mam"],
        &[],
    )
    .await;
    let mut pam = prosody.login("pam").await;
    let olga = format!("olga@{PROSODY}");
    let r = pam
        .iq(&format!(
            "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{olga}' name='Olga \"O\" \u{e9}'>\
             <group>Friends</group><group>Work</group></item></query></iq>"
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = pam
        .iq("<iq type='set'><vCard xmlns='vcard-temp'><FN>Pam Beesly</FN><NICKNAME>pam</NICKNAME></vCard></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = pam
        .iq("<iq type='set'><query xmlns='jabber:iq:private'><notes xmlns='urn:example:notes'><n>x</n></notes></query></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = pam
        .iq("<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:example:mood'>\
             <item id='current'><mood xmlns='urn:example:mood'>happy</mood></item></publish></pubsub></iq>")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    pam.close().await;
    let mut o = prosody.login("olga").await;
    o.send(&format!(
        "<message to='pam@{PROSODY}' type='chat' id='m1'><body>while you were away</body></message>"
    ))
    .await;
    // A round trip after the message: it has been handled (stored offline) by then.
    o.iq("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    o.close().await;
    prosody.stop().await;
    dir.join("prosody").join("data")
}

fn config_for(data_dir: &std::path::Path, domain: &str) -> xmppd::config::Config {
    let mut cfg = support::test_config(data_dir);
    cfg.vhosts = vec![VhostConfig {
        domain: domain.into(),
        certificate: None,
        key: None,
    }];
    cfg
}

async fn start_on(
    data_dir: &std::path::Path,
    domain: &str,
    tweak: impl FnOnce(&mut xmppd::config::Config),
) -> TestServer {
    let d = data_dir.to_path_buf();
    let domain = domain.to_string();
    TestServer::start_with(move |c| {
        c.data_dir = d;
        c.vhosts = vec![VhostConfig {
            domain,
            certificate: None,
            key: None,
        }];
        tweak(c);
    })
    .await
}

fn opts(mech: Mech, password: &str, domain: &str) -> LoginOptions {
    LoginOptions {
        mech,
        password: password.into(),
        resource: Some("r".into()),
        domain: Some(domain.into()),
        ..LoginOptions::default()
    }
}

async fn roster_of(c: &mut Client) -> Element {
    let r = c
        .iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    r.child("query", "jabber:iq:roster").unwrap().clone()
}

async fn vcard_of(c: &mut Client) -> Element {
    let r = c
        .iq("<iq type='get'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    r.child("vCard", "vcard-temp").unwrap().clone()
}

#[tokio::test]
async fn prosody_data_dir_imports_with_old_passwords_working() {
    let dir = tempfile::tempdir().unwrap();
    let prosody_data = filled_prosody(dir.path()).await;
    let ours = dir.path().join("xmppd");
    std::fs::create_dir_all(&ours).unwrap();
    let cfg = config_for(&ours, PROSODY);
    let source = migrate::Source::Prosody {
        data_dir: prosody_data.clone(),
        hosts: None,
    };
    let report = migrate::run_import(&cfg, &source, &migrate::Limits::default())
        .await
        .unwrap();
    assert_eq!(report.accounts, 2, "{report}");
    assert_eq!(report.sha1_only, 2, "{report}");
    assert_eq!(report.roster_items, 1, "{report}");
    assert_eq!(report.offline, 1, "{report}");
    assert_eq!(report.private, 1, "{report}");
    assert!(report.pep_items >= 1, "{report}");
    assert!(report.archived >= 1, "{report}");
    // A second run changes nothing and says so.
    let again = migrate::run_import(&cfg, &source, &migrate::Limits::default())
        .await
        .unwrap();
    assert_eq!((again.accounts, again.existing.len()), (0, 2), "{again}");

    let server = start_on(&ours, PROSODY, |c| c.c2s.offer_scram_sha256 = false).await;
    let addr = server.starttls_addr();
    // SCRAM-SHA-1 with the password set in Prosody.
    let mut pam = Client::login_opts(addr, "pam", opts(Mech::ScramSha1, "password", PROSODY))
        .await
        .unwrap();
    let roster = roster_of(&mut pam).await;
    let item = roster.elements().next().expect("imported roster item");
    assert_eq!(item.attr("jid"), Some(format!("olga@{PROSODY}").as_str()));
    assert_eq!(item.attr("name"), Some("Olga \"O\" \u{e9}"));
    let groups: Vec<String> = item.elements().map(|g| g.text()).collect();
    assert_eq!(groups, ["Friends", "Work"]);
    let vcard = vcard_of(&mut pam).await;
    assert_eq!(
        vcard.child_text("FN", "vcard-temp").as_deref(),
        Some("Pam Beesly")
    );
    // The offline message waits for the first available presence.
    pam.send("<presence/>").await;
    let msg = pam
        .recv_until(|e| e.name == "message" && e.child("body", "jabber:client").is_some())
        .await;
    assert_eq!(
        msg.child_text("body", "jabber:client").as_deref(),
        Some("while you were away")
    );
    pam.close().await;
    // A wrong password still fails; SCRAM-SHA-256 is not offered (and would fail).
    assert!(
        Client::login_opts(addr, "olga", opts(Mech::ScramSha1, "wrong", PROSODY))
            .await
            .is_err()
    );
    let mut c = Client::connect(addr).await;
    c.domain = PROSODY.into();
    c.open_stream().await;
    c.starttls().await;
    let features = c.open_stream().await;
    let mechs: Vec<String> = features
        .child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .unwrap()
        .elements()
        .map(|m| m.text())
        .collect();
    assert!(
        !mechs.iter().any(|m| m.starts_with("SCRAM-SHA-256")),
        "{mechs:?}"
    );
    // PLAIN checks the SHA-1 verifier, then upgrades the account to both hashes.
    let olga = Client::login_opts(addr, "olga", opts(Mech::Plain, "password", PROSODY))
        .await
        .unwrap();
    olga.close().await;
    let jid = xmppd::addr::parse_bare(&format!("olga@{PROSODY}")).unwrap();
    let creds = server
        .ctx()
        .storage
        .accounts
        .get(&jid)
        .await
        .unwrap()
        .unwrap();
    assert!(creds.has_sha256());
    server.stop().await;
    // With SCRAM-SHA-256 offered again, the upgraded account uses it.
    let server = start_on(&ours, PROSODY, |_| {}).await;
    let olga = Client::login_opts(
        server.starttls_addr(),
        "olga",
        opts(Mech::ScramSha256, "password", PROSODY),
    )
    .await
    .unwrap();
    olga.close().await;
    // Not yet upgraded: SCRAM-SHA-256 fails for pam as a wrong password would.
    assert!(
        Client::login_opts(
            server.starttls_addr(),
            "pam",
            opts(Mech::ScramSha256, "password", PROSODY)
        )
        .await
        .is_err()
    );
    server.stop().await;
}
