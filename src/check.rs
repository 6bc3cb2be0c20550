//! `xmppd check`: finds operators' mistakes before users do, as `prosodyctl check` does.
//! Each finding is one line: severity, what is wrong, how to fix it. Checks: the
//! configuration, certificates (names for every vhost and its services, chain, expiry, key
//! match), file permissions of keys and the data dir, and DNS (SRV records pointing at
//! this server's listeners, A/AAAA) unless offline.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::config::{self, Config, ListenerKind, TlsMode};
use crate::dns::Resolve;
use crate::net::tls::{self, TlsError};
use crate::net::verify::{CertError, TrustStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about (a vhost, a file, a DNS name).
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: {}: {}", self.subject, self.problem)?;
        if !self.fix.is_empty() {
            write!(f, " — fix: {}", self.fix)?;
        }
        Ok(())
    }
}

fn finding(severity: Severity, subject: &str, problem: String, fix: &str) -> Finding {
    Finding {
        severity,
        subject: subject.to_string(),
        problem,
        fix: fix.to_string(),
    }
}

/// How `check` runs.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Skip DNS.
    pub offline: bool,
    /// DNS servers to ask (empty: `s2s.dns_servers`, else the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// This machine's public addresses, to check that DNS points here; empty: the
    /// listeners' addresses when they are specific (not 0.0.0.0/::).
    pub public_ips: Vec<IpAddr>,
}

/// Certificates expiring sooner than this are reported.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Runs every check; findings sorted with errors first.
pub async fn run(cfg: &Config, path: Option<&Path>, opts: &CheckOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg_name = path.map_or("config".to_string(), |p| p.display().to_string());
    if let Err(errs) = config::validate(cfg) {
        for e in errs {
            out.push(finding(
                Severity::Error,
                &cfg_name,
                e.to_string(),
                "correct the configuration",
            ));
        }
        // The rest would only repeat these errors in other words.
        return out;
    }
    for e in tls::check_configured_certs(cfg) {
        if !matches!(e, TlsError::Io { .. }) {
            out.push(finding(
                Severity::Error,
                &cfg_name,
                e.to_string(),
                "configure the key that belongs to the certificate (and PEM files that parse)",
            ));
        }
    }
    check_data_dir(cfg, &mut out);
    let trust = TrustStore::load(cfg.s2s.ca_file.as_deref()).ok();
    for v in &cfg.vhosts {
        let names = service_names(cfg, &v.domain);
        match (&v.certificate, &v.key) {
            (Some(crt), Some(key)) => {
                check_cert(&v.domain, &names, crt, trust.as_ref(), &mut out);
                check_key_permissions(key, &mut out);
            }
            _ => out.push(finding(
                Severity::Warning,
                &v.domain,
                "no certificate configured: a self-signed development certificate is used, \
                 which clients and other servers do not trust"
                    .into(),
                "set `certificate` and `key` for the vhost (e.g. from Let's Encrypt)",
            )),
        }
    }
    if !opts.offline {
        let servers = if opts.dns_servers.is_empty() {
            cfg.s2s.dns_servers.clone()
        } else {
            opts.dns_servers.clone()
        };
        match crate::dns::hickory::HickoryResolver::new(&servers) {
            Ok(r) => {
                for v in &cfg.vhosts {
                    check_dns(cfg, &v.domain, &r, opts, &mut out).await;
                }
            }
            Err(e) => out.push(finding(
                Severity::Error,
                "DNS",
                format!("cannot set up a resolver: {e}"),
                "check /etc/resolv.conf or s2s.dns_servers, or run with --offline",
            )),
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The vhost and the service domains configured under it.
fn service_names(cfg: &Config, domain: &str) -> Vec<String> {
    let mut names = vec![domain.to_string()];
    if cfg.muc.enabled {
        names.push(format!("{}.{domain}", cfg.muc.subdomain));
    }
    if cfg.upload.enabled {
        names.push(format!("{}.{domain}", cfg.upload.subdomain));
    }
    if cfg.pubsub.enabled {
        names.push(format!("pubsub.{domain}"));
    }
    names
}

#[cfg(unix)]
fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

fn check_data_dir(cfg: &Config, out: &mut Vec<Finding>) {
    let dir = cfg.data_dir.display().to_string();
    let Some(mode) = mode(&cfg.data_dir) else {
        out.push(finding(
            Severity::Info,
            &dir,
            "the data dir does not exist yet".into(),
            "",
        ));
        return;
    };
    if mode & 0o002 != 0 {
        out.push(finding(
            Severity::Error,
            &dir,
            format!("the data dir is world-writable (mode {:o})", mode & 0o777),
            &format!("chmod 700 {dir}"),
        ));
    } else if mode & 0o005 != 0 {
        out.push(finding(
            Severity::Warning,
            &dir,
            format!(
                "the data dir (password verifiers, messages) is open to every user (mode {:o})",
                mode & 0o777
            ),
            &format!("chmod 700 {dir}"),
        ));
    }
}

fn check_key_permissions(key: &Path, out: &mut Vec<Finding>) {
    let name = key.display().to_string();
    if let Some(mode) = mode(key)
        && mode & 0o004 != 0
    {
        out.push(finding(
            Severity::Error,
            &name,
            format!(
                "the private key is readable by every user (mode {:o})",
                mode & 0o777
            ),
            &format!("chmod 600 {name} (or 640 with a group only xmppd is in)"),
        ));
    }
}

fn check_cert(
    domain: &str,
    names: &[String],
    crt: &Path,
    trust: Option<&TrustStore>,
    out: &mut Vec<Finding>,
) {
    let subject = format!("{domain} ({})", crt.display());
    let Ok(pem) = std::fs::read(crt) else {
        // validate() reported the unreadable file already.
        return;
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = chain.first() else {
        return;
    };
    let parsed = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => c,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                &subject,
                format!("the certificate does not parse: {e}"),
                "replace the certificate file",
            ));
            return;
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let validity = parsed.validity();
    let not_after = validity.not_after.to_datetime();
    let not_before = validity.not_before.to_datetime();
    let expired = not_after < now;
    if expired {
        out.push(finding(
            Severity::Error,
            &subject,
            format!("the certificate expired on {}", not_after.date()),
            "renew it (and reload or restart xmppd)",
        ));
    } else if not_after - now < time::Duration::days(EXPIRY_WARNING_DAYS) {
        out.push(finding(
            Severity::Warning,
            &subject,
            format!(
                "the certificate expires in {} day(s), on {}",
                (not_after - now).whole_days(),
                not_after.date()
            ),
            "renew it now; check that automatic renewal works",
        ));
    }
    if not_before > now {
        out.push(finding(
            Severity::Error,
            &subject,
            format!("the certificate is not valid before {}", not_before.date()),
            "check the machine's clock, or the certificate",
        ));
    }
    // Names through webpki, which implements RFC 6125 matching (wildcards included).
    if let Ok(ee) = webpki::EndEntityCert::try_from(leaf) {
        for name in names {
            let ok = ServerName::try_from(name.as_str())
                .ok()
                .is_some_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok());
            if !ok {
                out.push(finding(
                    Severity::Error,
                    &subject,
                    format!("the certificate does not cover {name}"),
                    &format!("get a certificate whose subjectAltName includes {name}"),
                ));
            }
        }
    }
    let self_signed = parsed.subject() == parsed.issuer() && chain.len() == 1;
    if self_signed {
        out.push(finding(
            Severity::Warning,
            &subject,
            "the certificate is self-signed: clients and servers will not trust it".into(),
            "use a certificate from a CA (e.g. Let's Encrypt)",
        ));
    } else if let Some(trust) = trust
        && !expired
        && let Err(CertError::Untrusted(why)) = trust.verify(&chain, domain)
    {
        out.push(finding(
            Severity::Error,
            &subject,
            format!("the chain does not lead to a trusted root ({why})"),
            "put the intermediate certificates after the leaf in the file (fullchain.pem)",
        ));
    }
}

/// Which SRV services the listeners offer, with their ports.
fn expected_srv(cfg: &Config) -> Vec<(&'static str, u16, Option<IpAddr>)> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let service = match (l.kind, l.tls) {
            (ListenerKind::C2s, TlsMode::Starttls) => "_xmpp-client._tcp",
            (ListenerKind::C2s, TlsMode::DirectTls) => "_xmpps-client._tcp",
            (ListenerKind::S2s, TlsMode::Starttls) => "_xmpp-server._tcp",
            (ListenerKind::S2s, TlsMode::DirectTls) => "_xmpps-server._tcp",
            _ => continue,
        };
        let ip = l.address.ip();
        out.push((
            service,
            l.address.port(),
            (!ip.is_unspecified()).then_some(ip),
        ));
    }
    out
}

async fn check_dns(
    cfg: &Config,
    domain: &str,
    r: &dyn Resolve,
    opts: &CheckOptions,
    out: &mut Vec<Finding>,
) {
    let expected = expected_srv(cfg);
    let mut names: Vec<String> = vec![domain.to_string()];
    // Services are reached by other servers only.
    names.extend(service_names(cfg, domain).into_iter().skip(1));
    for (i, name) in names.iter().enumerate() {
        let is_service = i > 0;
        for (service, port, bound) in &expected {
            if is_service && service.contains("client") {
                continue;
            }
            let srv_name = format!("{service}.{name}");
            let records = match r.srv(&srv_name).await {
                Ok(r) => r,
                Err(e) => {
                    out.push(finding(
                        Severity::Error,
                        &srv_name,
                        format!("lookup failed: {e}"),
                        "check the DNS servers, or run with --offline",
                    ));
                    continue;
                }
            };
            let default_port = match *service {
                "_xmpp-client._tcp" => Some(5222),
                "_xmpp-server._tcp" => Some(5269),
                _ => None,
            };
            if records.is_empty() {
                let a = r.ips(name).await.unwrap_or_default();
                let (sev, problem) = if default_port == Some(*port) && !a.is_empty() {
                    (
                        Severity::Info,
                        format!("no SRV record; {name}'s own address on port {port} is used"),
                    )
                } else {
                    (
                        Severity::Error,
                        format!(
                            "no SRV record, and the fallback ({name} port {}) is not this listener (port {port})",
                            default_port.map_or("none".into(), |p| p.to_string())
                        ),
                    )
                };
                out.push(finding(
                    sev,
                    &srv_name,
                    problem,
                    &format!("add `{srv_name}. SRV 0 5 {port} <this host>.`"),
                ));
                continue;
            }
            if records
                .iter()
                .any(|s| s.target.is_empty() || s.target == ".")
            {
                out.push(finding(
                    Severity::Error,
                    &srv_name,
                    "SRV says the service is not offered (target \".\"), but a listener serves it"
                        .into(),
                    &format!("point the record at this host, port {port}"),
                ));
                continue;
            }
            if !records.iter().any(|s| s.port == *port) {
                let ports: Vec<String> = records.iter().map(|s| s.port.to_string()).collect();
                out.push(finding(
                    Severity::Error,
                    &srv_name,
                    format!(
                        "SRV points at port {} but the listener is on port {port}",
                        ports.join(", ")
                    ),
                    &format!("change the record's port to {port}, or the listener's"),
                ));
            }
            let mine: Vec<IpAddr> = if opts.public_ips.is_empty() {
                bound.iter().copied().collect()
            } else {
                opts.public_ips.clone()
            };
            for s in &records {
                let ips = r.ips(&s.target).await.unwrap_or_default();
                if ips.is_empty() {
                    out.push(finding(
                        Severity::Error,
                        &srv_name,
                        format!("the SRV target {} has no A/AAAA record", s.target),
                        &format!("add an A (and AAAA) record for {}", s.target),
                    ));
                } else if !mine.is_empty() && !ips.iter().any(|ip| mine.contains(ip)) {
                    let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
                    out.push(finding(
                        Severity::Error,
                        &srv_name,
                        format!(
                            "{} resolves to {}, not to this server",
                            s.target,
                            list.join(", ")
                        ),
                        &format!(
                            "point {} at this machine (or the SRV record at a name that is)",
                            s.target
                        ),
                    ));
                }
            }
        }
    }
}

/// Prints the findings (on stderr) and a summary: `config OK` on stdout when there is no
/// error. Returns whether there was none.
pub fn print(findings: &[Finding], path: &Path) -> bool {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    for f in findings {
        eprintln!("{f}");
    }
    if errors == 0 {
        println!("config OK");
        true
    } else {
        eprintln!(
            "{}: {errors} error{}",
            path.display(),
            if errors == 1 { "" } else { "s" }
        );
        false
    }
}
