//! PEP across federation with a real peer, Debian's Prosody: OMEMO device lists published
//! on either server reach the other server's contact at the resource whose XEP-0115
//! capabilities ask for them (each server queries the remote resource's capabilities
//! through the other).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::ca::TestCa;
use support::dns::TestDns;
use support::{Client, LoginOptions, Mech, TestServer};
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode, VhostConfig};
use xmppd::modules::pubsub::caps::ver_string;
use xmppd::xml::Element;

const OURS: &str = "xmppd.example";
const OUR_IP: &str = "127.0.0.10";
const PROSODY: &str = "prosody.example";
const PROSODY_IP: &str = "127.0.0.11";
const DISCO: &str = "http://jabber.org/protocol/disco#info";
const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";

fn free_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

struct Prosody {
    child: tokio::process::Child,
    dir: PathBuf,
    c2s: std::net::SocketAddr,
}

impl Prosody {
    /// `trusted_ca`: the CA Prosody trusts for peer certificates.
    async fn start(dir: &Path, ca: &TestCa, trusted_ca: &TestCa, dns: &TestDns) -> Prosody {
        std::fs::create_dir_all(dir).unwrap();
        let (crt, key) = ca.issue(PROSODY, dir);
        let cafile = trusted_ca.write_ca(dir);
        let c2s_port = free_port(PROSODY_IP);
        let s2s_port = free_port(PROSODY_IP);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let d = dir.display();
        let config = format!(
            r#"
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "{PROSODY_IP}" }}
local_interfaces = {{ "{PROSODY_IP}" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {s2s_port} }}
s2s_direct_tls_ports = {{ }}
s2s_interfaces = {{ "{PROSODY_IP}" }}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{
  "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "time"; "version"; "pep";
}}
modules_disabled = {{ "s2s_bidi" }}
authentication = "internal_hashed"
storage = "internal"
allow_registration = false
c2s_require_encryption = false
s2s_require_encryption = true
s2s_secure_auth = false
ssl = {{ certificate = "{crt}"; key = "{key}"; cafile = "{cafile}"; }}
unbound = {{ forward = {{ "{dns_ip}@{dns_port}" }}, resolvconf = false, hoststxt = false }}
VirtualHost "{PROSODY}"
"#,
            crt = crt.display(),
            key = key.display(),
            cafile = cafile.display(),
            dns_ip = dns.addr.ip(),
            dns_port = dns.addr.port(),
        );
        let cfg = dir.join("prosody.cfg.lua");
        std::fs::write(&cfg, config).unwrap();
        for user in ["pam", "olga"] {
            let out = tokio::process::Command::new("prosodyctl")
                .arg("--config")
                .arg(&cfg)
                .args(["register", user, PROSODY, "password"])
                .output()
                .await
                .expect("prosodyctl not found: install Debian's prosody (scripts/test.sh does)");
            assert!(
                out.status.success(),
                "prosodyctl register failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let child = tokio::process::Command::new("prosody")
            .arg("--config")
            .arg(&cfg)
            .arg("-F")
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("start prosody");
        let c2s: std::net::SocketAddr = format!("{PROSODY_IP}:{c2s_port}").parse().unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(c2s).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dns.add_srv(
            &format!("_xmpp-server._tcp.{PROSODY}"),
            0,
            0,
            s2s_port,
            "xmpp.prosody.example",
        );
        dns.add_addr("xmpp.prosody.example", PROSODY_IP);
        Prosody {
            child,
            dir: dir.to_path_buf(),
            c2s,
        }
    }

    async fn login(&self, node: &str) -> Client {
        Client::login_opts(
            self.c2s,
            node,
            LoginOptions {
                mech: Mech::ScramSha1,
                resource: Some("r".into()),
                domain: Some(PROSODY.into()),
                ..LoginOptions::default()
            },
        )
        .await
        .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

async fn recv_presence(c: &mut Client, kind: &str, from_bare: &str) -> Element {
    let from_bare = from_bare.to_string();
    let kind = kind.to_string();
    c.recv_until(move |e| {
        e.name == "presence"
            && e.attr("type") == Some(kind.as_str())
            && e.attr("from")
                .is_some_and(|f| f.split('/').next() == Some(from_bare.as_str()))
    })
    .await
}

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
    let (crt, key) = ca.issue(OURS, dir.path());
    std::fs::create_dir_all(dir.path().join("ours")).unwrap();
    let cafile = ca.write_ca(&dir.path().join("ours"));
    let dns_addr = dns.addr;
    let ours = TestServer::start_with(|c| {
        c.vhosts = vec![VhostConfig {
            domain: OURS.into(),
            certificate: Some(crt),
            key: Some(key),
        }];
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::S2s,
            address: format!("{OUR_IP}:0").parse().unwrap(),
            tls: TlsMode::Starttls,
        });
        c.s2s.dns_servers = vec![dns_addr];
        c.s2s.ca_file = Some(cafile);
    })
    .await;
    dns.add_srv(
        &format!("_xmpp-server._tcp.{OURS}"),
        0,
        0,
        ours.s2s_addr(TlsMode::Starttls).port(),
        "xmpp.xmppd.example",
    );
    dns.add_addr("xmpp.xmppd.example", OUR_IP);
    let prosody = Prosody::start(&dir.path().join("prosody"), &ca, &ca, &dns).await;
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
