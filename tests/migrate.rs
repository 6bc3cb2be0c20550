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
    // Stamped with when Prosody stored it (this run), once.
    let delays: Vec<&Element> = msg.elements().filter(|e| e.name == "delay").collect();
    assert_eq!(delays.len(), 1, "{msg:?}");
    let stamp = xmppd::modules::mam::parse_stamp(delays[0].attr("stamp").unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(now - stamp < 600_000_000, "{msg:?}");
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

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn bare(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const CAPULET: &str = "capulet.lit";

fn capulet_ok(d: &str) -> bool {
    d == CAPULET
}

async fn import_0227(
    storage: &xmppd::storage::Storage,
    path: &std::path::Path,
    limits: &migrate::Limits,
) -> Result<migrate::Report, migrate::MigrateError> {
    migrate::xep0227::import(path, storage, limits, 4096, &capulet_ok).await
}

/// Everything stored for an account, comparable across databases (archive UIDs are not:
/// each database makes its own).
async fn snapshot(storage: &xmppd::storage::Storage, jid: &str) -> String {
    let j = bare(jid);
    let creds = storage.accounts.get(&j).await.unwrap();
    let roster = storage.roster.roster(&j).await.unwrap().items;
    let offline: Vec<String> = storage
        .offline
        .list(&j)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.stanza)
        .collect();
    let vcard = storage.profiles.vcard(jid).await.unwrap();
    let private = storage.profiles.private_all(jid).await.unwrap();
    let mut pep = Vec::new();
    for (name, record) in storage.pubsub.nodes(jid).await.unwrap() {
        let items: Vec<(String, String)> = storage
            .pubsub
            .items(jid, &name, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.id, i.payload))
            .collect();
        pep.push((name, record, items));
    }
    let archive: Vec<(u64, String, String)> = storage
        .archive
        .query(&j, &xmppd::storage::ArchiveQuery::default())
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| (m.pos.micros, m.with, m.stanza))
        .collect();
    format!("{creds:?}\n{roster:?}\n{offline:?}\n{vcard:?}\n{private:?}\n{pep:?}\n{archive:?}")
}

#[tokio::test]
async fn ejabberd_piefxis_imports_and_passwords_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), CAPULET);
    let report = migrate::run_import(
        &cfg,
        &migrate::Source::Xep0227(fixture("ejabberd_piefxis.xml")),
        &migrate::Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.accounts, 2, "{report}");
    assert_eq!(report.sha1_only, 0, "{report}");
    assert_eq!(
        (
            report.roster_items,
            report.offline,
            report.vcards,
            report.private
        ),
        (2, 1, 1, 1),
        "{report}"
    );
    assert_eq!(
        (report.pep_nodes, report.pep_items, report.archived),
        (1, 1, 1),
        "{report}"
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("urn:example:unknown")),
        "{report}"
    );

    let server = start_on(dir.path(), CAPULET, |_| {}).await;
    let addr = server.starttls_addr();
    for mech in [Mech::ScramSha1, Mech::ScramSha256, Mech::Plain] {
        let c = Client::login_opts(addr, "juliet", opts(mech, "pencil", CAPULET))
            .await
            .unwrap();
        c.close().await;
    }
    let mut nurse = Client::login_opts(addr, "nurse", opts(Mech::ScramSha256, "s3crEt", CAPULET))
        .await
        .unwrap();
    assert_eq!(roster_of(&mut nurse).await.elements().count(), 0);
    nurse.close().await;
    let mut juliet = Client::login_opts(addr, "juliet", opts(Mech::ScramSha1, "pencil", CAPULET))
        .await
        .unwrap();
    let roster = roster_of(&mut juliet).await;
    let romeo = roster
        .elements()
        .find(|i| i.attr("jid") == Some("romeo@montague.net"))
        .unwrap();
    assert_eq!(romeo.attr("subscription"), Some("both"));
    assert_eq!(
        romeo.child_text("group", "jabber:iq:roster").as_deref(),
        Some("Friends")
    );
    let nurse_item = roster
        .elements()
        .find(|i| i.attr("jid") == Some("nurse@capulet.lit"))
        .unwrap();
    assert_eq!(nurse_item.attr("ask"), Some("subscribe"));
    assert_eq!(
        vcard_of(&mut juliet)
            .await
            .child_text("FN", "vcard-temp")
            .as_deref(),
        Some("Juliet Capulet")
    );
    let private = juliet
        .iq("<iq type='get'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query></iq>")
        .await;
    assert!(
        format!("{private:?}").contains("Juliet & co"),
        "{private:?}"
    );
    // The offline message keeps the time the old server stored it: one delay, that stamp.
    juliet.send("<presence/>").await;
    let msg = juliet
        .recv_until(|e| e.name == "message" && e.child("body", "jabber:client").is_some())
        .await;
    let delays: Vec<&Element> = msg.elements().filter(|e| e.name == "delay").collect();
    assert_eq!(delays.len(), 1, "{msg:?}");
    assert_eq!(
        delays[0].attr("stamp"),
        Some("2009-07-21T00:32:29Z"),
        "{msg:?}"
    );
    juliet.close().await;
    server.stop().await;
}

#[tokio::test]
async fn xep0227_export_import_round_trip() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = xmppd::storage::Storage::open_sled(&a.path().join("db")).unwrap();
    import_0227(
        &sa,
        &fixture("ejabberd_piefxis.xml"),
        &migrate::Limits::default(),
    )
    .await
    .unwrap();
    // A SHA-1-only account too.
    let legacy = xmppd::sasl::StoredCredentials::sha1_only(
        xmppd::sasl::StoredCredentials::from_password("old", 4096)
            .unwrap()
            .sha1,
    );
    sa.accounts
        .create(&bare("tybalt@capulet.lit"), &legacy)
        .await
        .unwrap();
    let export = a.path().join("export.xml");
    let mut out = Vec::new();
    let n = migrate::xep0227::export(&sa, None, &mut out).await.unwrap();
    assert_eq!(n, 3);
    std::fs::write(&export, &out).unwrap();
    let sb = xmppd::storage::Storage::open_sled(&b.path().join("db")).unwrap();
    let report = import_0227(&sb, &export, &migrate::Limits::default())
        .await
        .unwrap();
    assert_eq!((report.accounts, report.sha1_only), (3, 1), "{report}");
    assert_eq!(
        (report.offline, report.archived, report.pep_items),
        (1, 1, 1),
        "{report}"
    );
    for jid in [
        "juliet@capulet.lit",
        "nurse@capulet.lit",
        "tybalt@capulet.lit",
    ] {
        assert_eq!(snapshot(&sa, jid).await, snapshot(&sb, jid).await, "{jid}");
    }
    // And the second export is the first one again (except archive UIDs).
    let mut again = Vec::new();
    migrate::xep0227::export(&sb, None, &mut again)
        .await
        .unwrap();
    let strip_ids = |s: &[u8]| {
        let s = String::from_utf8_lossy(s).into_owned();
        s.split("<result")
            .map(|p| {
                p.split_once("'>")
                    .map_or(p.to_string(), |(_, r)| r.to_string())
            })
            .collect::<Vec<_>>()
            .join("")
    };
    assert_eq!(strip_ids(&out), strip_ids(&again));
}

#[tokio::test]
async fn users_file_creates_accounts_that_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(dir.path(), CAPULET);
    let file = dir.path().join("users.txt");
    std::fs::write(
        &file,
        "# bulk\nromeo@capulet.lit:wherefore: art thou\n\n\
         benvolio@capulet.lit:{SCRAM-SHA-1}4096$QSXCR+Q6sek8bf92$6dlGYMOdZcOPutkcNY8U2g7vK9Y=$D+CSWLOshSulAsxiupA+qs2/fTE=\n",
    )
    .unwrap();
    let report = migrate::run_import(
        &cfg,
        &migrate::Source::Users(file),
        &migrate::Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!((report.accounts, report.sha1_only), (2, 1), "{report}");
    let server = start_on(dir.path(), CAPULET, |_| {}).await;
    let addr = server.starttls_addr();
    Client::login_opts(
        addr,
        "romeo",
        opts(Mech::ScramSha256, "wherefore: art thou", CAPULET),
    )
    .await
    .unwrap()
    .close()
    .await;
    Client::login_opts(addr, "benvolio", opts(Mech::ScramSha1, "pencil", CAPULET))
        .await
        .unwrap()
        .close()
        .await;
    server.stop().await;
}

/// Accounts in a database (opened after the import closed it).
async fn accounts_in(dir: &std::path::Path) -> usize {
    let s = xmppd::storage::Storage::open_sled(&dir.join("db")).unwrap();
    s.accounts.list().await.unwrap().len()
}

#[tokio::test]
async fn hostile_import_files_give_clear_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(&dir.path().join("data"), CAPULET);
    let limits = migrate::Limits {
        max_file_bytes: 64 * 1024,
        max_element_bytes: 32 * 1024,
        max_depth: 16,
        max_user_bytes: 256 * 1024,
    };
    let good = std::fs::read_to_string(fixture("ejabberd_piefxis.xml")).unwrap();
    let huge_text = format!(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='p'>\
         <vCard xmlns='vcard-temp'><FN>{}</FN></vCard></user></host></server-data>",
        "x".repeat(1 << 20)
    );
    let huge_tag = format!(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='p'>\
         <vCard xmlns='vcard-temp' a='{}'/></user></host></server-data>",
        "x".repeat(1 << 20)
    );
    let deep = format!(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='p'>\
         <vCard xmlns='vcard-temp'>{}{}</vCard></user></host></server-data>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    // Many small messages: each within bounds, together too much for one user.
    let many = format!(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='capulet.lit'><user name='a' password='p'>\
         <offline-messages>{}</offline-messages></user></host></server-data>",
        "<message xmlns='jabber:client'><body>0123456789012345678901234567890123456789</body></message>"
            .repeat(20_000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("many messages", many, "max-user-bytes"),
        (
            "truncated",
            good[..good.len() * 3 / 4].to_string(),
            "truncated",
        ),
        ("cut in a tag", good[..good.len() - 8].to_string(), ""),
        ("huge text", huge_text, "max-element-bytes"),
        ("huge tag", huge_tag, "max-element-bytes"),
        ("deep", deep, "deeply"),
        ("mismatched", good.replace("</vCard>", "</vcard>"), ""),
        (
            "entity bomb",
            "<!DOCTYPE x [<!ENTITY a 'aaaa'>]><server-data xmlns='urn:xmpp:pie:0'/>".into(),
            "DOCTYPE",
        ),
        ("wrong root", "<html/>".into(), "server-data"),
        (
            "unknown host",
            good.replace("capulet.lit", "verona.lit"),
            "not configured",
        ),
        (
            "bad scram",
            good.replace(
                "<iter-count>4096</iter-count>",
                "<iter-count>-1</iter-count>",
            ),
            "iter-count",
        ),
        (
            "xinclude",
            "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'>\
             <xi:include href='/etc/passwd'/></server-data>"
                .into(),
            "XInclude",
        ),
    ];
    for (what, content, expect) in cases {
        let f = dir.path().join("in.xml");
        std::fs::write(&f, content).unwrap();
        let err = migrate::run_import(&cfg, &migrate::Source::Xep0227(f), &limits)
            .await
            .expect_err(what);
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.contains("in.xml"),
            "{what}: the error names the file: {err}"
        );
        assert_eq!(
            accounts_in(&cfg.data_dir).await,
            0,
            "{what}: nothing stored"
        );
    }

    // Prosody: a broken account file, a truncated roster, an oversized archive.
    let pdir = dir.path().join("prosody");
    let host = pdir.join("capulet%2elit");
    std::fs::create_dir_all(host.join("accounts")).unwrap();
    std::fs::create_dir_all(host.join("roster")).unwrap();
    std::fs::create_dir_all(host.join("archive")).unwrap();
    std::fs::write(host.join("accounts/a.dat"), "return { password = \"pw\" };").unwrap();
    let source = migrate::Source::Prosody {
        data_dir: pdir.clone(),
        hosts: None,
    };
    let prosody_cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "truncated roster",
            "roster/a.dat",
            "return { [\"b@capulet.lit\"] = { subscription = \"both\"".into(),
            "truncated",
        ),
        (
            "code",
            "roster/a.dat",
            "return os.execute(\"rm -rf /\")".into(),
            "unsupported",
        ),
        (
            "huge archive",
            "archive/a.list",
            format!("item({{ \"{}\" }});", "x".repeat(100_000)),
            "larger than",
        ),
        (
            "bad escape",
            "roster/a.dat",
            "return { [\"\\400\"] = {} }".into(),
            "escape",
        ),
    ];
    for (what, file, content, expect) in prosody_cases {
        let _ = std::fs::remove_file(host.join("roster/a.dat"));
        let _ = std::fs::remove_file(host.join("archive/a.list"));
        std::fs::write(host.join(file), content).unwrap();
        let err = migrate::run_import(&cfg, &source, &limits)
            .await
            .expect_err(what);
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.contains(file.split('/').next().unwrap()),
            "{what}: names the file: {err}"
        );
        assert_eq!(
            accounts_in(&cfg.data_dir).await,
            0,
            "{what}: nothing stored"
        );
    }

    // A users file with one bad line stores none of the good ones.
    let f = dir.path().join("users.txt");
    std::fs::write(&f, "a@capulet.lit:pw\nnot a jid\n").unwrap();
    let err = migrate::run_import(&cfg, &migrate::Source::Users(f.clone()), &limits)
        .await
        .unwrap_err();
    assert!(err.contains("users.txt:2"), "{err}");
    std::fs::write(&f, "a@capulet.lit:\u{7}\n").unwrap();
    let err = migrate::run_import(&cfg, &migrate::Source::Users(f), &limits)
        .await
        .unwrap_err();
    assert!(err.contains("SASLprep") && !err.contains('\u{7}'), "{err}");
    assert_eq!(accounts_in(&cfg.data_dir).await, 0);
}

#[tokio::test]
async fn import_refuses_a_database_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(dir.path(), CAPULET, |_| {}).await;
    let cfg = config_for(dir.path(), CAPULET);
    let err = migrate::run_import(
        &cfg,
        &migrate::Source::Xep0227(fixture("ejabberd_piefxis.xml")),
        &migrate::Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("stop the server"), "{err}");
    let err = migrate::run_export(&cfg, None, None).await.unwrap_err();
    assert!(err.contains("stop the server"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn cli_imports_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = dir.path().join("xmppd.toml");
    std::fs::write(
        &toml,
        format!(
            "data_dir = \"{}\"\n[[vhost]]\ndomain = \"{CAPULET}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let t = toml.to_str().unwrap();
    let fx = fixture("ejabberd_piefxis.xml");
    let out = run(&["import", "-c", t, "xep0227", fx.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("imported 2 account(s)"), "{stderr}");
    let dump = dir.path().join("dump.xml");
    let out = run(&["export", "-c", t, "-o", dump.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dump).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("<user name='juliet'>"), "{text}");
    assert!(text.contains("mechanism='SCRAM-SHA-256'"), "{text}");
    assert!(!text.contains("pencil"));
    // To standard output, one domain only.
    let out = run(&["export", "-c", t, "--domain", "other.lit"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("<user"));
    // A failing import exits non-zero with the reason.
    let out = run(&["import", "-c", t, "users", "/nonexistent/users.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/users.txt"));
}

#[test]
fn prosody_offline_and_archive_times_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("capulet%2elit");
    for d in ["accounts", "offline", "archive"] {
        std::fs::create_dir_all(host.join(d)).unwrap();
    }
    std::fs::write(host.join("accounts/a.dat"), "return { password = \"pw\" };").unwrap();
    let msg = "{ { \"hi\"; name = \"body\"; attr = {}; }; name = \"message\"; \
               attr = { from = \"b@capulet.lit/r\"; to = \"a@capulet.lit\"; type = \"chat\"; \
               stamp = \"2001-09-09T01:46:40Z\" };";
    std::fs::write(
        host.join("offline/a.list"),
        format!("item({msg} [\"when\"] = 1000000000; [\"with\"] = \"\"; key = \"k1\"; }});\n"),
    )
    .unwrap();
    std::fs::write(
        host.join("archive/a.list"),
        format!("item({msg} when = 1000000000.5; with = \"b@capulet.lit\"; key = \"k2\"; }});\n"),
    )
    .unwrap();
    let opts = migrate::prosody::ProsodyImport {
        data_dir: dir.path(),
        hosts: None,
        iterations: 4096,
        limits: migrate::Limits::default(),
    };
    let mut warnings = Vec::new();
    let users = migrate::prosody::read(&opts, &mut warnings).unwrap();
    assert_eq!(users.len(), 1);
    let u = &users[0];
    assert_eq!(u.offline.len(), 1);
    assert_eq!(u.offline[0].0, 1_000_000_000);
    // Prosody's own `stamp` attribute is not part of the stanza.
    assert!(!u.offline[0].1.contains("stamp"), "{}", u.offline[0].1);
    assert_eq!(u.archive[0].micros, 1_000_000_000_500_000);
    assert_eq!(u.archive[0].with, "b@capulet.lit");
    assert!(u.creds.verify_password("pw") && u.creds.has_sha256());
}
