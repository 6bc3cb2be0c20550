//! The real `xmppd` binary as a child process: a config in a temp dir, accounts added with
//! `xmppd user add`, the listening address read from its log, SIGTERM and SIGKILL.
//! Included with `#[path]` by the tests that run the binary (examples share `support`,
//! and only tests know the binary's path).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a start or an exit may take before a test gives up.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a config for `localhost` with one STARTTLS c2s listener on an ephemeral port and
/// the data dir `data`, plus `extra` TOML; returns its path.
pub fn write_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("xmppd.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "{}"
log_level = "info"
[[vhost]]
domain = "localhost"
[[listener]]
kind = "c2s"
address = "127.0.0.1:0"
tls = "starttls"
[c2s]
scram_iterations = 4096
[s2s]
dns_servers = ["127.0.0.1:9"]
{extra}
"#,
            data.display()
        ),
    )
    .unwrap();
    path
}

/// `xmppd user add` on a stopped server.
pub fn add_user(config: &Path, jid: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(["user", "add", "--config"])
        .arg(config)
        .arg(jid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `xmppd serve`.
pub struct Xmppd {
    child: Child,
    /// Log lines (stderr), as they come.
    lines: mpsc::Receiver<String>,
    /// Everything logged so far.
    pub log: Vec<String>,
    pub c2s: SocketAddr,
}

/// Drops terminal colour sequences, so log lines can be matched as text.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// How a start ended: running, or the process exited (status, its stderr).
pub enum Started {
    Running(Xmppd),
    Exited(ExitStatus, String),
}

impl Xmppd {
    /// Starts `xmppd serve --config <config>` and waits until its c2s listener is bound,
    /// or it exits.
    pub fn start(config: &Path) -> Started {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xmppd"))
            .args(["serve", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(plain(&line)).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let addr = line
                        .contains("listening")
                        .then(|| {
                            line.split_whitespace()
                                .find_map(|w| w.strip_prefix("addr="))
                        })
                        .flatten()
                        .and_then(|a| a.parse().ok());
                    log.push(line);
                    if let Some(c2s) = addr {
                        return Started::Running(Xmppd {
                            child,
                            lines,
                            log,
                            c2s,
                        });
                    }
                }
                // stderr closed: the process is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_timeout(&mut child, PROCESS_TIMEOUT)
                        .expect("xmppd closed stderr but did not exit");
                    return Started::Exited(status, log.join("\n"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("xmppd did not start: {}", log.join("\n"));
                }
            }
        }
    }

    /// Starts the server, which must come up.
    pub fn running(config: &Path) -> Xmppd {
        match Self::start(config) {
            Started::Running(x) => x,
            Started::Exited(status, log) => panic!("xmppd exited ({status}): {log}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown at all, as in a crash or power loss of the process.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_timeout(&mut self.child, limit);
        self.log.extend(self.lines.try_iter());
        status
    }

    /// Everything logged so far.
    pub fn log_text(&mut self) -> String {
        self.log.extend(self.lines.try_iter());
        self.log.join("\n")
    }
}

impl Drop for Xmppd {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls for the child's exit (std has no wait with a timeout).
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
