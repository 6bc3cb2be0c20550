//! The container image: its baked-in configuration is valid, its health check command
//! tells a running server from a stopped one, and (when asked, as it takes minutes) the
//! image builds.

mod support;

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn image_config_is_valid() {
    let cfg = xmppd::config::load_file(&repo().join("docker/xmppd.toml")).unwrap();
    xmppd::config::validate(&cfg).unwrap();
    assert_eq!(cfg.data_dir, Path::new("/var/lib/xmppd"));
}

fn health(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xmppd"))
        .args(["health", "-c", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn health_check_answers_only_for_a_running_server() {
    let server = support::TestServer::start().await;
    let toml = server.dir.path().join("health.toml");
    std::fs::write(
        &toml,
        format!(
            "data_dir = \"{}\"\n[[vhost]]\ndomain = \"localhost\"\n",
            server.config.data_dir.display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let toml = toml.clone();
        move || health(&toml)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = server.dir.path().to_path_buf();
    server.stop().await;
    let out = health(&dir.join("health.toml"));
    assert_eq!(out.status.code(), Some(1));
}

/// `docker build` compiles xmppd in release mode from scratch: minutes, not for every test
/// run. Runs with XMPPD_DOCKER_TEST=1 and a working `docker info`.
#[test]
fn image_builds() {
    if std::env::var_os("XMPPD_DOCKER_TEST").is_none() {
        eprintln!("skipped: set XMPPD_DOCKER_TEST=1 to build the image (takes minutes)");
        return;
    }
    let info = Command::new("docker").arg("info").output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: `docker info` failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: docker not found: {e}");
            return;
        }
    }
    let out = Command::new("docker")
        .current_dir(repo())
        .args(["build", "-f", "docker/Dockerfile", "-t", "xmppd:test", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{.Config.User}} {{json .Config.Healthcheck}}",
            "xmppd:test",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("xmppd "), "{text}");
    assert!(text.contains("health"), "{text}");
}
