//! Debian's Prosody as a federation peer for the tests: started on a loopback address
//! with its own domain, a certificate from the test CA and the test DNS server as its
//! resolver. Domains are under `.example`: Prosody's resolver (libunbound) answers
//! NXDOMAIN for `.test` without asking any server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::ca::TestCa;
use super::dns::TestDns;
use super::{Client, LoginOptions, Mech, TestServer};
use xmppd::config::{ListenerConfig, ListenerKind, TlsMode, VhostConfig};
use xmppd::xml::Element;

pub const PROSODY: &str = "prosody.example";
/// The xmppd side of the pair.
pub const OURS: &str = "xmppd.example";

/// xmppd serving `OURS` with an s2s listener on `ip`, a certificate from `ca`, trusting
/// `trusted_ca` for peers, resolving through `dns`, where its SRV records are published
/// (for `OURS` and for each of `services`' subdomains, e.g. `conference`).
pub async fn start_xmppd(
    dir: &Path,
    ip: &str,
    ca: &TestCa,
    trusted_ca: &TestCa,
    dns: &TestDns,
    services: &[&str],
) -> TestServer {
    let (crt, key) = ca.issue(OURS, dir);
    std::fs::create_dir_all(dir.join("ours")).unwrap();
    let cafile = trusted_ca.write_ca(&dir.join("ours"));
    let dns_addr = dns.addr;
    let address = format!("{ip}:0").parse().unwrap();
    let ours = TestServer::start_with(|c| {
        c.vhosts = vec![VhostConfig {
            domain: OURS.into(),
            certificate: Some(crt),
            key: Some(key),
        }];
        c.listeners.push(ListenerConfig {
            kind: ListenerKind::S2s,
            address,
            tls: TlsMode::Starttls,
        });
        c.s2s.dns_servers = vec![dns_addr];
        c.s2s.ca_file = Some(cafile);
    })
    .await;
    let port = ours.s2s_addr(TlsMode::Starttls).port();
    dns.add_addr("xmpp.xmppd.example", ip);
    dns.add_srv(
        &format!("_xmpp-server._tcp.{OURS}"),
        0,
        0,
        port,
        "xmpp.xmppd.example",
    );
    for sub in services {
        dns.add_srv(
            &format!("_xmpp-server._tcp.{sub}.{OURS}"),
            0,
            0,
            port,
            "xmpp.xmppd.example",
        );
    }
    ours
}

fn free_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A running Prosody serving `PROSODY` on one loopback address.
pub struct Prosody {
    child: tokio::process::Child,
    dir: PathBuf,
    pub c2s: std::net::SocketAddr,
}

impl Prosody {
    /// Starts Prosody on `ip` with a certificate from `ca`, trusting `trusted_ca` for peer
    /// certificates and resolving through `dns` (where its SRV records are added), with
    /// `modules` enabled beside the basic ones and `components` (subdomain, module), e.g.
    /// `("conference", "muc")`.
    pub async fn start(
        dir: &Path,
        ip: &str,
        ca: &TestCa,
        trusted_ca: &TestCa,
        dns: &TestDns,
        modules: &[&str],
        components: &[(&str, &str)],
    ) -> Prosody {
        std::fs::create_dir_all(dir).unwrap();
        let (crt, key) = ca.issue(PROSODY, dir);
        let cafile = trusted_ca.write_ca(dir);
        let c2s_port = free_port(ip);
        let s2s_port = free_port(ip);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let d = dir.display();
        let config = format!(
            r#"
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "{ip}" }}
local_interfaces = {{ "{ip}" }}
c2s_ports = {{ {c2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {s2s_port} }}
s2s_direct_tls_ports = {{ }}
s2s_interfaces = {{ "{ip}" }}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{
  "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "time"; "version";{extra}
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
{component_lines}"#,
            crt = crt.display(),
            key = key.display(),
            cafile = cafile.display(),
            dns_ip = dns.addr.ip(),
            dns_port = dns.addr.port(),
            extra = modules
                .iter()
                .map(|m| format!(" \"{m}\";"))
                .collect::<String>(),
            component_lines = components
                .iter()
                .map(|(sub, module)| format!("Component \"{sub}.{PROSODY}\" \"{module}\"\n"))
                .collect::<String>(),
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
        let c2s: std::net::SocketAddr = format!("{ip}:{c2s_port}").parse().unwrap();
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
        dns.add_addr("xmpp.prosody.example", ip);
        for (sub, _) in components {
            dns.add_srv(
                &format!("_xmpp-server._tcp.{sub}.{PROSODY}"),
                0,
                0,
                s2s_port,
                "xmpp.prosody.example",
            );
        }
        Prosody {
            child,
            dir: dir.to_path_buf(),
            c2s,
        }
    }

    pub async fn login(&self, node: &str) -> Client {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The next presence of type `kind` from `from_bare` (any resource).
pub async fn recv_presence(c: &mut Client, kind: &str, from_bare: &str) -> Element {
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
