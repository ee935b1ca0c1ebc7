//! `Stripe-Signature` headers made by Stripe's own Python library
//! (`stripe`, pinned in `tests/python/requirements.txt`;
//! `tests/python/stripe_sign.py`), independently of mcp-meter's verifier.
//!
//! The interpreter comes from `MCP_METER_PYTHON` (`scripts/test` sets it),
//! else `<repo>/.venv/bin/python`; a missing interpreter or library fails
//! the test, it is never skipped.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::common::root;

/// The Python interpreter with Stripe's library; panics with a fix
/// otherwise.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var("MCP_METER_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| root().join(".venv/bin/python").display().to_string());
        let fix = "run `bash scripts/test`, or: python3 -m venv .venv && \
                   .venv/bin/pip install -r tests/python/requirements.txt, \
                   then set MCP_METER_PYTHON=$PWD/.venv/bin/python";
        match Command::new(&python).args(["-c", "import stripe"]).output() {
            Ok(out) if out.status.success() => python,
            Ok(out) => panic!(
                "Stripe's Python library is not importable with {python}: {}\n{fix}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("cannot run the Python interpreter {python}: {e}\n{fix}"),
        }
    })
}

/// `Stripe-Signature` headers made by Stripe's library, one per
/// (payload, secret, timestamp).
pub fn sign_all(requests: &[(&str, &str, i64)]) -> Vec<String> {
    let input = Value::Array(
        requests
            .iter()
            .map(|(payload, secret, timestamp)| {
                json!({"payload": payload, "secret": secret, "timestamp": timestamp})
            })
            .collect(),
    );
    let mut child = Command::new(python())
        .arg(root().join("tests/python/stripe_sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stripe_sign.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to stripe_sign.py");
    let out = child.wait_with_output().expect("stripe_sign.py");
    assert!(
        out.status.success(),
        "stripe_sign.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let document: Value = serde_json::from_slice(&out.stdout).expect("stripe_sign.py prints JSON");
    assert_eq!(document["stripe_version"], "16.1.0", "{document}");
    document["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| h.as_str().expect("a header").to_owned())
        .collect()
}

pub fn sign(payload: &str, secret: &str, timestamp: i64) -> String {
    sign_all(&[(payload, secret, timestamp)]).remove(0)
}
