//! The command line as an operator uses it: `check`, `--version`, and the
//! errors a broken configuration produces.

mod common;

use std::process::Command;

fn run(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(common::bin());
    command.args(args).env_remove("MCP_METER_TEST_UNSET");
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_lists_every_problem_with_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"nowhere\"\nallowed_origins = [\"not a url\"]\n[upstream]\ncommand = \"sh\"\nurl = \"ftp://x\"\n[plugins]\norder = [\"billing_magic\"]\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "server.listen:",
        "server.allowed_origins[0]:",
        "upstream: set only one of `command` and `url`",
        "plugins.order[0]: unknown plugin \"billing_magic\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_names_unset_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:9/mcp\"\n[upstream.headers]\nAuthorization = \"Bearer ${MCP_METER_TEST_UNSET}\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(
            "upstream.headers.Authorization: environment variable MCP_METER_TEST_UNSET is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_good_file_and_the_examples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, "[upstream]\ncommand = \"sh\"\n").unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok"));
    for example in std::fs::read_dir(common::root().join("config-examples")).unwrap() {
        let example = example.unwrap().path();
        let (code, _, stderr) = run(
            &["check", "--config", example.to_str().unwrap()],
            &[
                ("UPSTREAM_TOKEN", "t"),
                ("STRIPE_WEBHOOK_SECRET", "whsec_example"),
                ("STRIPE_SECRET_KEY", "sk_test_example"),
                ("MCP_METER_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
            ],
        );
        assert_eq!(code, Some(0), "{}: {stderr}", example.display());
    }
}

#[test]
fn check_refuses_a_missing_file_and_unknown_keys() {
    let (code, _, stderr) = run(&["check", "--config", "/nonexistent/mcp-meter.toml"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read the file"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[upstream]\ncommand = \"sh\"\ntimeout = 3\n").unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown field `timeout`"), "{stderr}");
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = run(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("mcp-meter "), "{stdout}");
}
