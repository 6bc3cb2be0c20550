//! Command line: `xmppd serve | check | user ...`. `src/main.rs` only hands over the server's
//! entry point, so everything here is testable and the binary stays thin.

use std::fmt::Display;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::admin::control::{self, Password, Request, Response};
use crate::admin::{self, AdminError};
use crate::config::{self, Config, ConfigError};

#[derive(Debug, Parser)]
#[command(name = "xmppd", version, about = "A federated XMPP server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (built-in defaults without --config).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration and the deployment around it (certificates, permissions,
    /// DNS); print every problem found, each with its fix.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Skip the DNS checks.
        #[arg(long)]
        offline: bool,
        /// DNS server to ask (`IP:port`, repeatable); default: s2s.dns_servers, else the
        /// system's.
        #[arg(long)]
        dns_server: Vec<std::net::SocketAddr>,
        /// This machine's public address (repeatable), to check that DNS points here.
        #[arg(long)]
        public_ip: Vec<std::net::IpAddr>,
    },
    /// Manage accounts (through the running server, or directly when it is stopped).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Manage invitations (XEP-0401/XEP-0445 tokens that let someone register).
    Invite {
        #[command(subcommand)]
        action: InviteCommand,
    },
    /// Import accounts and their data into the database (the server must be stopped).
    Import {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        source: ImportSource,
        /// Largest file read whole (Prosody files, users file), in bytes.
        #[arg(long, global = true, default_value_t = crate::migrate::Limits::default().max_file_bytes)]
        max_file_bytes: u64,
        /// Largest XML element held while reading XEP-0227, in bytes.
        #[arg(long, global = true, default_value_t = crate::migrate::Limits::default().max_element_bytes)]
        max_element_bytes: usize,
        /// Most bytes of one account's data held while reading XEP-0227.
        #[arg(long, global = true, default_value_t = crate::migrate::Limits::default().max_user_bytes)]
        max_user_bytes: usize,
    },
    /// Ask the running server whether it answers (its control socket); exit 0 if it does
    /// (container health checks).
    Health {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Export every account and its data as XEP-0227 (the server must be stopped).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only accounts of this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Output file (created with mode 0600); standard output without it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Create an account invitation; prints its xmpp: URI and landing page URL.
    Create {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The vhost (default: the first).
        #[arg(long)]
        domain: Option<String>,
        /// Reserve this account name for the invitee.
        #[arg(long)]
        username: Option<String>,
        /// The account registered with it becomes a server admin.
        #[arg(long)]
        admin: bool,
        /// Validity: seconds, or a number with s, m, h, d or w (default: invites.default_expiry_secs).
        #[arg(long, value_parser = parse_duration)]
        expires: Option<u64>,
        /// How many accounts may be registered with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List valid invitations, one per line.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke an invitation by its token.
    Revoke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        token: String,
    },
}

/// `3600`, `90s`, `30m`, `12h`, `7d`, `2w` → seconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit {unit:?} (s, m, h, d or w)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("out of range: {s:?}"))
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// A XEP-0227 file (also what `ejabberdctl export_piefxis` writes).
    Xep0227 { file: PathBuf },
    /// A Prosody data dir (internal storage), e.g. /var/lib/prosody.
    Prosody {
        data_dir: PathBuf,
        /// Only this host (repeatable); default: every host with accounts.
        #[arg(long)]
        host: Vec<String>,
    },
    /// A users file: `user@domain:password` per line (see docs/operations.md).
    Users { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is prompted for, or read as one line from stdin.
    Add {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// user@domain
        jid: String,
    },
    /// Set an account's password (prompted for, or one line from stdin).
    Passwd {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// user@domain
        jid: String,
    },
    /// Remove an account with its roster and offline messages.
    Remove {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// user@domain
        jid: String,
    },
    /// List accounts, one per line.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only accounts of this domain.
        domain: Option<String>,
    },
}

/// Parses the command line and runs it; `serve` is the server's entry point
/// (`xmppd::server::run`), passed in by `main.rs`.
pub fn main<F, Fut, E>(serve: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => run_serve(config.as_deref(), serve),
        Command::Check {
            config,
            offline,
            dns_server,
            public_ip,
        } => run_check(
            &config,
            &crate::check::CheckOptions {
                offline,
                dns_servers: dns_server,
                public_ips: public_ip,
            },
        ),
        Command::User { action } => run_user(action),
        Command::Invite { action } => run_invite(action),
        Command::Import {
            config,
            source,
            max_file_bytes,
            max_element_bytes,
            max_user_bytes,
        } => {
            let source = match source {
                ImportSource::Xep0227 { file } => crate::migrate::Source::Xep0227(file),
                ImportSource::Prosody { data_dir, host } => crate::migrate::Source::Prosody {
                    data_dir,
                    hosts: (!host.is_empty()).then_some(host),
                },
                ImportSource::Users { file } => crate::migrate::Source::Users(file),
            };
            let limits = crate::migrate::Limits {
                max_file_bytes,
                max_element_bytes,
                max_user_bytes,
                ..Default::default()
            };
            run_offline(config.as_deref(), async |cfg| {
                crate::migrate::run_import(cfg, &source, &limits)
                    .await
                    .map(|r| r.to_string())
            })
        }
        Command::Health { config } => run_offline(config.as_deref(), async |cfg| {
            match control::request(&admin::control_socket_path(cfg), &Request::Ping).await {
                Ok(Response::Pong) => Ok("ok".into()),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }),
        Command::Export {
            config,
            domain,
            output,
        } => run_offline(config.as_deref(), async |cfg| {
            crate::migrate::run_export(cfg, domain.as_deref(), output.as_deref())
                .await
                .map(|n| format!("exported {n} account(s)"))
        }),
    }
}

/// Runs a command on the stopped server's storage; its message goes to stderr (standard
/// output may carry an export).
fn run_offline(
    path: Option<&Path>,
    f: impl AsyncFnOnce(&Config) -> Result<String, String>,
) -> ExitCode {
    let Some(cfg) = load_config(path) else {
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(f(&cfg)) {
        Ok(msg) => {
            eprintln!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn fail(msg: impl Display) -> ExitCode {
    eprintln!("xmppd: {msg}");
    ExitCode::FAILURE
}

/// Loads (or defaults) and validates the configuration, printing every error.
fn load_config(path: Option<&Path>) -> Option<Config> {
    let cfg = match path {
        None => Config::default(),
        Some(p) => match config::load_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("xmppd: {e}");
                return None;
            }
        },
    };
    if let Err(errs) = config::validate(&cfg) {
        print_config_errors(path, &errs);
        return None;
    }
    Some(cfg)
}

fn print_config_errors(path: Option<&Path>, errs: &[ConfigError]) {
    for e in errs {
        match (e, path) {
            (ConfigError::Invalid { .. }, Some(p)) => eprintln!("{}: {e}", p.display()),
            _ => eprintln!("{e}"),
        }
    }
}

fn run_serve<F, Fut, E>(path: Option<&Path>, serve: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let Some(cfg) = load_config(path) else {
        return ExitCode::FAILURE;
    };
    init_tracing(&cfg.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(async {
        let token = CancellationToken::new();
        tokio::spawn(watch_signals(token.clone()));
        serve(cfg, token).await
    });
    // The server bounded its own shutdown; what it abandoned (a stuck blocking call) must
    // not hold the exit: dropping the runtime would wait for it without limit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is set up by now; a second copy on stderr would only repeat it.
            tracing::error!(error = %e, "server stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` when set (and valid), else the configured level; logs go to stderr.
fn init_tracing(configured: &str) {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var_os("RUST_LOG").map(|_| EnvFilter::try_from_default_env());
    let (filter, env_error) = match from_env {
        Some(Ok(f)) => (f, None),
        Some(Err(e)) => (EnvFilter::new(configured), Some(e)),
        // Validated already; "info" only guards against a caller that skipped validation.
        None => (
            EnvFilter::try_new(configured).unwrap_or_else(|_| EnvFilter::new("info")),
            None,
        ),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(e) = env_error {
        tracing::warn!(error = %e, "ignoring invalid RUST_LOG");
    }
}

/// First Ctrl-C/SIGTERM: graceful shutdown. A second one: exit at once.
async fn watch_signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            None
        }
    };
    next_signal(&mut term).await;
    tracing::info!("shutdown requested; signal again to exit immediately");
    token.cancel();
    next_signal(&mut term).await;
    tracing::warn!("second signal: exiting without finishing shutdown");
    std::process::exit(130);
}

async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    let term_recv = async {
        match term {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_recv => {}
    }
}

fn run_check(path: &Path, opts: &crate::check::CheckOptions) -> ExitCode {
    let cfg = match config::load_file(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let findings = rt.block_on(crate::check::run(&cfg, Some(path), opts));
    if crate::check::print(&findings, path) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads a password: from the terminal (asked twice) or, when stdin is not a terminal, as
/// its first line. Never from the command line, where other users could see it.
fn read_password(jid: &str) -> Result<Zeroizing<String>, String> {
    if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password(format!("Password for {jid}: "))
                .map_err(|e| format!("reading password: {e}"))?,
        );
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat password: ")
                .map_err(|e| format!("reading password: {e}"))?,
        );
        if *first != *again {
            return Err("passwords do not match".into());
        }
        Ok(first)
    } else {
        let mut line = Zeroizing::new(String::new());
        let n = std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading password from stdin: {e}"))?;
        if n == 0 {
            return Err("no password on standard input".into());
        }
        let len = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(len);
        Ok(line)
    }
}

fn run_user(action: UserCommand) -> ExitCode {
    let path = match &action {
        UserCommand::Add { config, .. }
        | UserCommand::Passwd { config, .. }
        | UserCommand::Remove { config, .. }
        | UserCommand::List { config, .. } => config.clone(),
    };
    let Some(cfg) = load_config(path.as_deref()) else {
        return ExitCode::FAILURE;
    };
    // Check the JID before asking for a password that would be wasted.
    let request = match &action {
        UserCommand::Add { jid, .. } | UserCommand::Passwd { jid, .. } => {
            if let Err(e) = admin::account_jid(&cfg, jid) {
                return fail(e);
            }
            let password = match read_password(jid) {
                Ok(p) => Password::new(p.as_str()),
                Err(e) => return fail(e),
            };
            if matches!(action, UserCommand::Add { .. }) {
                Request::Add {
                    jid: jid.clone(),
                    password,
                }
            } else {
                Request::Passwd {
                    jid: jid.clone(),
                    password,
                }
            }
        }
        UserCommand::Remove { jid, .. } => Request::Remove { jid: jid.clone() },
        UserCommand::List { domain, .. } => Request::List {
            domain: domain.clone(),
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(user_request(&cfg, &request)) {
        Ok(Response::Done { jid }) => {
            match request {
                Request::Add { .. } => println!("user {jid} added"),
                Request::Passwd { .. } => println!("password of {jid} changed"),
                _ => println!("user {jid} removed"),
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Users { users }) => {
            for u in users {
                println!("{u}");
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(format!("unexpected answer from the server: {other:?}")),
        Err(e) => fail(e),
    }
}

fn run_invite(action: InviteCommand) -> ExitCode {
    let path = match &action {
        InviteCommand::Create { config, .. }
        | InviteCommand::List { config }
        | InviteCommand::Revoke { config, .. } => config.clone(),
    };
    let Some(cfg) = load_config(path.as_deref()) else {
        return ExitCode::FAILURE;
    };
    let request = match action {
        InviteCommand::Create {
            domain,
            username,
            admin,
            expires,
            uses,
            ..
        } => Request::InviteCreate {
            domain,
            username,
            admin,
            expires_secs: expires,
            uses: Some(uses),
        },
        InviteCommand::List { .. } => Request::InviteList,
        InviteCommand::Revoke { token, .. } => Request::InviteRevoke { token },
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(user_request(&cfg, &request)) {
        Ok(Response::Invite { invite }) => {
            println!("{}", invite.uri);
            if let Some(url) = &invite.landing_url {
                println!("{url}");
            }
            println!("expires {}", invite.expires);
            ExitCode::SUCCESS
        }
        Ok(Response::Invites { invites }) => {
            for i in invites {
                println!(
                    "{} expires={} uses_left={}{} {}",
                    i.token,
                    i.expires,
                    i.uses_left,
                    if i.admin { " admin" } else { "" },
                    i.uri
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Revoked) => {
            println!("invitation revoked");
            ExitCode::SUCCESS
        }
        Ok(other) => fail(format!("unexpected answer from the server: {other:?}")),
        Err(e) => fail(e),
    }
}

/// The listeners the configuration names (for landing pages while the server is stopped).
fn configured_listeners(
    cfg: &Config,
) -> Vec<(
    crate::config::ListenerKind,
    crate::config::TlsMode,
    std::net::SocketAddr,
)> {
    cfg.listeners
        .iter()
        .map(|l| (l.kind, l.tls, l.address))
        .collect()
}

/// Through the running server's control socket if there is one, else on the storage itself.
async fn user_request(cfg: &Config, req: &Request) -> Result<Response, AdminError> {
    match control::request(&admin::control_socket_path(cfg), req).await {
        Err(AdminError::NotRunning { .. }) => {}
        other => return other,
    }
    admin::ensure_data_dir(&cfg.data_dir)
        .map_err(|e| AdminError::Config(format!("data_dir {}: {e}", cfg.data_dir.display())))?;
    let storage = admin::open_storage_offline(cfg)?;
    Ok(match req {
        Request::Add { jid, password } => Response::Done {
            jid: admin::add_user(&storage, cfg, jid, password.as_str()).await?,
        },
        Request::Passwd { jid, password } => Response::Done {
            jid: admin::set_password(&storage, cfg, jid, password.as_str()).await?,
        },
        Request::Remove { jid } => Response::Done {
            jid: admin::remove_user(&storage, jid).await?,
        },
        Request::List { domain } => Response::Users {
            users: admin::list_users(&storage, domain.as_deref()).await?,
        },
        Request::Ping => Response::Pong,
        Request::InviteCreate {
            domain,
            username,
            admin,
            expires_secs,
            uses,
        } => {
            let spec = admin::invites::InviteSpec {
                domain: domain.clone(),
                username: username.clone(),
                register: true,
                admin: *admin,
                expires_secs: *expires_secs,
                uses: *uses,
                privileged: true,
                inviter: None,
            };
            let i = admin::invites::create(&storage, cfg, spec).await?;
            Response::Invite {
                invite: admin::invites::info(cfg, &configured_listeners(cfg), &i),
            }
        }
        Request::InviteList => Response::Invites {
            invites: admin::invites::list(&storage)
                .await?
                .iter()
                .map(|i| admin::invites::info(cfg, &configured_listeners(cfg), i))
                .collect(),
        },
        Request::InviteRevoke { token } => {
            admin::invites::revoke(&storage, token).await?;
            Response::Revoked
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_user_commands_without_password_argument() {
        let cli = Cli::try_parse_from(["xmppd", "user", "add", "-c", "x.toml", "a@b"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::User {
                action: UserCommand::Add { ref jid, config: Some(_) }
            } if jid == "a@b"
        ));
        // There is no way to pass a password on the command line.
        assert!(Cli::try_parse_from(["xmppd", "user", "add", "a@b", "secret"]).is_err());
        assert!(Cli::try_parse_from(["xmppd", "check"]).is_err());
        let cli = Cli::try_parse_from(["xmppd", "invite", "create", "--admin", "--expires", "7d"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Invite {
                action: InviteCommand::Create {
                    admin: true,
                    expires: Some(604_800),
                    uses: 1,
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from(["xmppd", "invite", "create", "--expires", "7y"]).is_err());
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert!(parse_duration("0d").is_err());
        let cli = Cli::try_parse_from(["xmppd", "serve"]).unwrap();
        assert!(matches!(cli.command, Command::Serve { config: None }));
    }
}
