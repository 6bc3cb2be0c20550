//! Storage faults at start, with the real binary: a data dir that cannot be written, a
//! damaged database and one locked by a running server each end in a clear error and exit
//! status 1, never a panic.

#[path = "support/process.rs"]
mod process;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use process::{Started, Xmppd, write_config};

/// Starts the server, which must refuse: returns its log.
fn refused(config: &Path) -> String {
    match Xmppd::start(config) {
        Started::Running(mut x) => panic!("xmppd started: {}", x.log_text()),
        Started::Exited(status, log) => {
            assert_eq!(status.code(), Some(1), "{log}");
            assert!(!log.contains("panicked"), "{log}");
            log
        }
    }
}

/// Starts and stops a server so that `data` holds a database.
fn create_database(config: &Path) {
    let mut x = Xmppd::running(config);
    x.sigterm();
    let status = x
        .wait(Duration::from_secs(15))
        .expect("no exit after SIGTERM");
    assert!(status.success());
}

#[test]
fn unwritable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root writes through permissions: then use a directory on a read-only file system.
    let writable = std::fs::write(data.join("probe"), b"").is_ok();
    let (config, expected) = if writable {
        let proc_dir = Path::new("/proc/xmppd-test-data");
        (
            write_config(dir.path(), proc_dir, ""),
            "cannot create the data directory",
        )
    } else {
        (
            write_config(dir.path(), &data, ""),
            "cannot open the database",
        )
    };
    let log = refused(&config);
    assert!(log.contains(expected), "{log}");
    let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700));
}

#[test]
fn damaged_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, "");
    create_database(&config);
    let db = data.join("db");
    let original = std::fs::read(db.join("db")).unwrap();

    // Garbage instead of the log: sled would recover it as an empty database.
    let garbage: Vec<u8> = (0..original.len().max(4096))
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    std::fs::write(db.join("db"), &garbage).unwrap();
    let log = refused(&config);
    assert!(log.contains("cannot open the database"), "{log}");
    assert!(log.contains("damaged"), "{log}");

    // A damaged settings file.
    std::fs::write(db.join("db"), &original).unwrap();
    std::fs::write(db.join("conf"), &garbage[..512]).unwrap();
    let log = refused(&config);
    assert!(log.contains("cannot open the database"), "{log}");
}

#[test]
fn database_locked_by_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), &data, "");
    let first = Xmppd::running(&config);
    let log = refused(&config);
    assert!(log.contains("in use by another process"), "{log}");
    first.kill9();
}
