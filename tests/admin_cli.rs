//! The `xmppd` binary's `check` and `user` commands, with and without a running control
//! socket.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use xmppd::storage::Storage;

fn j(s: &str) -> xmppd::addr::BareJid {
    xmppd::addr::parse_bare(s).unwrap()
}

const PASSWORD: &str = "correct horse battery";

fn xmppd(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    // The child may exit before reading (e.g. bad JID): ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !o.contains(PASSWORD) && !e.contains(PASSWORD),
        "password printed: {o} {e}"
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn err(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    text(&out.stderr)
}

/// A config with its own data dir; returns (config path, data dir).
fn write_config(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let path = dir.join("xmppd.toml");
    std::fs::write(
        &path,
        format!(
            r#"data_dir = "{}"
[[vhost]]
domain = "example.test"
[[listener]]
kind = "c2s"
address = "127.0.0.1:0"
tls = "starttls"
[c2s]
scram_iterations = 4096
"#,
            data.display()
        ),
    )
    .unwrap();
    (path, data)
}

#[test]
fn user_commands_on_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, data) = write_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let pw = format!("{PASSWORD}\n");

    let out = xmppd(&["user", "add", "--config", cfg, "Alice@Example.Test"], &pw);
    assert_eq!(ok(&out), "user alice@example.test added\n");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        err(&xmppd(
            &["user", "add", "-c", cfg, "alice@example.test"],
            &pw
        ))
        .contains("already exists")
    );
    assert!(
        err(&xmppd(&["user", "add", "-c", cfg, "bob@example.test"], ""))
            .contains("no password on standard input")
    );
    assert!(
        err(&xmppd(&["user", "add", "-c", cfg, "bob@other.test"], &pw))
            .contains("\"other.test\" is not a domain served here")
    );
    assert!(
        err(&xmppd(&["user", "add", "-c", cfg, "example.test"], &pw))
            .contains("not a valid account JID")
    );
    assert_eq!(
        ok(&xmppd(
            &["user", "add", "-c", cfg, "bob@example.test"],
            "pw\r\n"
        )),
        "user bob@example.test added\n"
    );

    assert_eq!(
        ok(&xmppd(&["user", "list", "-c", cfg], "")),
        "alice@example.test\nbob@example.test\n"
    );
    assert_eq!(
        ok(&xmppd(
            &["user", "passwd", "-c", cfg, "alice@example.test"],
            "new one\n"
        )),
        "password of alice@example.test changed\n"
    );
    assert!(
        err(&xmppd(
            &["user", "passwd", "-c", cfg, "carol@example.test"],
            &pw
        ))
        .contains("no such user")
    );
    assert_eq!(
        ok(&xmppd(
            &["user", "remove", "-c", cfg, "alice@example.test"],
            ""
        )),
        "user alice@example.test removed\n"
    );
    assert!(
        err(&xmppd(
            &["user", "remove", "-c", cfg, "alice@example.test"],
            ""
        ))
        .contains("no such user")
    );
    assert_eq!(
        ok(&xmppd(&["user", "list", "-c", cfg], "")),
        "bob@example.test\n"
    );
}

#[test]
fn check_prints_every_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[vhost]]\ndomain = \"a b\"\n[limits]\nmax_stanza_bytes = 100\n[c2s]\nscram_iterations = 1\n",
    )
    .unwrap();
    let out = xmppd(&["check", "--config", bad.to_str().unwrap()], "");
    let e = err(&out);
    assert!(
        e.contains("limits.max_stanza_bytes = 100: must be at least 10000"),
        "{e}"
    );
    assert!(
        e.contains("vhost[0].domain = \"a b\": not a valid domain"),
        "{e}"
    );
    assert!(
        e.contains("c2s.scram_iterations = 1: must be at least 4096"),
        "{e}"
    );
    assert!(e.contains("3 errors"), "{e}");
    assert!(!text(&out.stdout).contains("config OK"));

    std::fs::write(&bad, "[limits]\nmax_stanza_bytess = 100000\n").unwrap();
    let e = err(&xmppd(&["check", "-c", bad.to_str().unwrap()], ""));
    assert!(
        e.contains(":2:1: limits.max_stanza_bytess: unknown field"),
        "{e}"
    );

    let e = err(&xmppd(&["check", "-c", "/nonexistent/x.toml"], ""));
    assert!(e.contains("/nonexistent/x.toml: cannot read"), "{e}");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/xmppd.example.toml");
    assert_eq!(
        // Offline: the example's DNS is not ours to check.
        ok(&xmppd(
            &["check", "--offline", "-c", example.to_str().unwrap()],
            ""
        )),
        "config OK\n"
    );

    // Serving refuses a bad configuration the same way, before starting anything.
    let e = err(&xmppd(&["serve", "-c", bad.to_str().unwrap()], ""));
    assert!(e.contains("limits.max_stanza_bytess"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_go_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg_path, data) = write_config(dir.path());
    let cfg = xmppd::config::load_file(&cfg_path).unwrap();
    let storage = Storage::memory();
    let accounts = storage.accounts.clone();
    let token = CancellationToken::new();
    let server = xmppd::admin::control::ControlServer::bind(&data.join("control.sock")).unwrap();
    let task = tokio::spawn(server.serve(storage, Arc::new(cfg), token.clone()));

    let c = cfg_path.to_str().unwrap().to_string();
    let run = move |args: Vec<String>, stdin: String| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            xmppd(&args, &stdin)
        })
    };
    let args = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let out = run(
        args(&["user", "add", "-c", &c, "carol@example.test"]),
        format!("{PASSWORD}\n"),
    )
    .await
    .unwrap();
    assert_eq!(ok(&out), "user carol@example.test added\n");
    assert!(
        accounts
            .get(&j("carol@example.test"))
            .await
            .unwrap()
            .is_some()
    );
    // The server's storage was used, not the database on disk.
    assert!(!data.join("db").exists());
    let out = run(args(&["user", "list", "-c", &c]), String::new())
        .await
        .unwrap();
    assert_eq!(ok(&out), "carol@example.test\n");
    let out = run(
        args(&["user", "add", "-c", &c, "carol@example.test"]),
        format!("{PASSWORD}\n"),
    )
    .await
    .unwrap();
    assert!(err(&out).contains("user carol@example.test already exists"));

    token.cancel();
    task.await.unwrap();
    assert!(!data.join("control.sock").exists());
}
