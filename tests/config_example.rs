//! The shipped example configuration must parse, validate, equal the built-in defaults and
//! mention every key.

use std::path::{Path, PathBuf};

use xmppd::config::{self, Config, ConfigError};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/xmppd.example.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

#[test]
fn example_equals_defaults_and_validates() {
    let cfg = config::load_file(&example_path()).unwrap();
    assert_eq!(cfg, Config::default());
    config::validate(&cfg).unwrap();
}

/// Every leaf key of the configuration appears in the example, set or commented out, so a
/// new field cannot be added without documenting it.
#[test]
fn example_documents_every_key() {
    let text = example_text();
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&value, &mut keys);
    // Optional keys are absent from the serialized defaults.
    keys.push("certificate".into());
    keys.push("key".into());
    assert!(keys.len() > 20, "{keys:?}");
    for key in keys {
        let documented = text.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(documented, "key `{key}` is not in the example config");
    }
}

fn collect_keys(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match v {
                    toml::Value::Table(_) => collect_keys(v, out),
                    toml::Value::Array(a) if a.iter().all(|x| x.is_table()) && !a.is_empty() => {
                        for x in a {
                            collect_keys(x, out);
                        }
                    }
                    _ => out.push(k.clone()),
                }
            }
        }
        _ => unreachable!("config root is a table"),
    }
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let text = example_text().replace("max_depth = 32\n", "max_depth = 32\nmax_dept = 16\n");
    let err = config::parse_str(&text, Some(Path::new("x.toml"))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
    assert_eq!(err.key(), Some("limits.max_dept"), "{msg}");
    assert!(msg.contains("unknown field `max_dept`"), "{msg}");
    assert!(msg.contains("max_depth"), "expected keys listed: {msg}");

    let text = format!("tls_cert = \"x\"\n{}", example_text());
    let err = config::parse_str(&text, None).unwrap_err();
    assert_eq!(err.key(), Some("tls_cert"), "{err}");
    assert!(
        err.to_string()
            .starts_with("<config>:1:1: tls_cert: unknown field"),
        "{err}"
    );
}

#[test]
fn empty_file_is_the_default() {
    assert_eq!(config::parse_str("", None).unwrap(), Config::default());
}
