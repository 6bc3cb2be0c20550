//! `xmppd check`: a deployment full of mistakes gives one finding per mistake, each with
//! its fix; a good one gives no error; DNS is checked against a test DNS server.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::ca::TestCa;
use support::dns::TestDns;
use xmppd::check::{self, CheckOptions, Finding, Severity};
use xmppd::config::{Config, ListenerConfig, ListenerKind, TlsMode, VhostConfig};

const DOMAIN: &str = "good.example";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

fn config(dir: &Path, crt: &Path, key: &Path, ca: &Path) -> Config {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o700);
    let mut cfg = support::test_config(&data);
    cfg.vhosts = vec![VhostConfig {
        domain: DOMAIN.into(),
        certificate: Some(crt.to_path_buf()),
        key: Some(key.to_path_buf()),
    }];
    cfg.listeners = vec![
        ListenerConfig {
            kind: ListenerKind::C2s,
            address: "127.0.0.1:15222".parse().unwrap(),
            tls: TlsMode::Starttls,
        },
        ListenerConfig {
            kind: ListenerKind::S2s,
            address: "127.0.0.1:15269".parse().unwrap(),
            tls: TlsMode::Starttls,
        },
    ];
    cfg.s2s.ca_file = Some(ca.to_path_buf());
    cfg
}

fn all_names() -> Vec<String> {
    ["", "conference.", "upload.", "pubsub."]
        .iter()
        .map(|p| format!("{p}{DOMAIN}"))
        .collect()
}

fn errors(f: &[Finding]) -> Vec<String> {
    f.iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.to_string())
        .collect()
}

fn has(f: &[Finding], severity: Severity, needle: &str) -> bool {
    f.iter()
        .any(|f| f.severity == severity && f.to_string().contains(needle) && !f.fix.is_empty())
}

#[tokio::test]
async fn a_good_deployment_has_no_errors_offline() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    let names = all_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (crt, key) = ca.issue_names(&names, (days(-1), days(90)), "good", dir.path());
    chmod(&key, 0o600);
    let cfg = config(dir.path(), &crt, &key, &ca.write_ca(dir.path()));
    let offline = CheckOptions {
        offline: true,
        ..CheckOptions::default()
    };
    let f = check::run(&cfg, None, &offline).await;
    assert!(errors(&f).is_empty(), "{f:#?}");
    assert!(!f.iter().any(|f| f.severity == Severity::Warning), "{f:#?}");
}

#[tokio::test]
async fn mistakes_are_found_each_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    // Expired, and for other names (a wildcard that covers services, not the vhost).
    let (crt, key) = ca.issue_names(
        &["other.example", "*.good.example"],
        (days(-30), days(-1)),
        "bad",
        dir.path(),
    );
    chmod(&key, 0o644);
    let mut cfg = config(dir.path(), &crt, &key, &ca.write_ca(dir.path()));
    chmod(&cfg.data_dir, 0o777);
    let offline = CheckOptions {
        offline: true,
        ..CheckOptions::default()
    };
    let f = check::run(&cfg, None, &offline).await;
    assert!(has(&f, Severity::Error, "expired"), "{f:#?}");
    assert!(
        has(&f, Severity::Error, "does not cover good.example"),
        "{f:#?}"
    );
    // The wildcard covers one label: conference.good.example is fine.
    assert!(
        !f.iter().any(|x| x.problem.contains("cover conference.")),
        "{f:#?}"
    );
    assert!(has(&f, Severity::Error, "readable by every user"), "{f:#?}");
    assert!(has(&f, Severity::Error, "world-writable"), "{f:#?}");
    // Every finding is one line.
    assert!(f.iter().all(|x| !x.to_string().contains('\n')));

    // Expiring soon; a key of another certificate; a self-signed certificate.
    let (crt2, _) = ca.issue_names(&[DOMAIN], (days(-1), days(5)), "soon", dir.path());
    cfg.vhosts[0].certificate = Some(crt2);
    chmod(&cfg.data_dir, 0o700);
    chmod(&key, 0o600);
    let f = check::run(&cfg, None, &offline).await;
    assert!(has(&f, Severity::Warning, "expires in"), "{f:#?}");
    assert!(has(&f, Severity::Error, "with key"), "{f:#?}");
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let own = rcgen::CertificateParams::new(all_names())
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    std::fs::write(dir.path().join("self.crt"), own.pem()).unwrap();
    std::fs::write(dir.path().join("self.key"), key_pair.serialize_pem()).unwrap();
    chmod(&dir.path().join("self.key"), 0o600);
    cfg.vhosts[0].certificate = Some(dir.path().join("self.crt"));
    cfg.vhosts[0].key = Some(dir.path().join("self.key"));
    let f = check::run(&cfg, None, &offline).await;
    assert!(has(&f, Severity::Warning, "self-signed"), "{f:#?}");
    assert!(errors(&f).is_empty(), "{f:#?}");

    // The binary exits non-zero on errors and prints the findings.
    chmod(&cfg.data_dir, 0o777);
    let toml = dir.path().join("bad.toml");
    std::fs::write(
        &toml,
        format!(
            "data_dir = \"{}\"\n[[vhost]]\ndomain = \"{DOMAIN}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            cfg.data_dir.display(),
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(["check", "--offline", "-c", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("world-writable") && stderr.contains("fix: chmod 700"),
        "{stderr}"
    );
    assert!(stderr.contains("expired"), "{stderr}");
}

#[tokio::test]
async fn dns_records_are_checked_against_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("check CA");
    let names = all_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (crt, key) = ca.issue_names(&names, (days(-1), days(90)), "good", dir.path());
    chmod(&key, 0o600);
    let mut cfg = config(dir.path(), &crt, &key, &ca.write_ca(dir.path()));
    cfg.muc.enabled = false;
    cfg.upload.enabled = false;
    cfg.pubsub.enabled = true;
    let dns = TestDns::start("127.0.0.1").await;
    // Right: c2s SRV at the listener's port, its target on this machine.
    dns.add_srv(
        &format!("_xmpp-client._tcp.{DOMAIN}"),
        0,
        5,
        15222,
        "xmpp.good.example",
    );
    dns.add_addr("xmpp.good.example", "127.0.0.1");
    // Wrong port for s2s; the pubsub service's SRV points at another machine.
    dns.add_srv(
        &format!("_xmpp-server._tcp.{DOMAIN}"),
        0,
        5,
        5269,
        "xmpp.good.example",
    );
    dns.add_srv(
        &format!("_xmpp-server._tcp.pubsub.{DOMAIN}"),
        0,
        5,
        15269,
        "elsewhere.example",
    );
    dns.add_addr("elsewhere.example", "192.0.2.7");
    let opts = CheckOptions {
        offline: false,
        dns_servers: vec![dns.addr],
        public_ips: Vec::new(),
    };
    let f = check::run(&cfg, None, &opts).await;
    let errs = errors(&f);
    assert_eq!(errs.len(), 2, "{f:#?}");
    assert!(
        has(
            &f,
            Severity::Error,
            "SRV points at port 5269 but the listener is on port 15269"
        ),
        "{f:#?}"
    );
    assert!(
        has(
            &f,
            Severity::Error,
            "elsewhere.example resolves to 192.0.2.7, not to this server"
        ),
        "{f:#?}"
    );
    assert!(
        !f.iter().any(|x| x.subject.starts_with("_xmpp-client")),
        "{f:#?}"
    );
}
