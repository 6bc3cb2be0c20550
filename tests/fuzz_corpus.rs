//! Replays every saved fuzz input (seed corpora and crash regressions under `fuzz/`)
//! through the fuzz targets with plain `cargo test`, so that a fixed crash stays fixed
//! without AFL++ installed. The targets live in `fuzz/src/lib.rs`.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod targets;

/// Runs one target over `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`; names
/// every input that panicked.
fn replay(name: &str) {
    let (_, target) = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                inputs.push(path);
            }
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no saved inputs for {name}");
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).expect("readable input");
        let run = std::panic::catch_unwind(|| target(&data));
        if run.is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{name}: inputs that panic: {failed:#?}");
}

#[test]
fn framer() {
    replay("framer");
}

#[test]
fn stanza() {
    replay("stanza");
}

#[test]
fn c2s() {
    replay("c2s");
}

#[test]
fn sasl() {
    replay("sasl");
}

#[test]
fn jid() {
    replay("jid");
}

#[test]
fn bosh() {
    replay("bosh");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn negotiate_c2s() {
    replay("negotiate_c2s");
}

#[test]
fn negotiate_s2s() {
    replay("negotiate_s2s");
}
