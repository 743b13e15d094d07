//! The `taskmint` binary end to end: `dev init`, `serve`, `mint jwt`,
//! `mint x509`, `bundle`, and one-line errors with a non-zero exit.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_taskmint");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn conn(dir: &Path, server: &str) -> Vec<String> {
    let d = dir.join("certs/dev");
    vec![
        "--server".into(),
        server.into(),
        "--svid".into(),
        d.join("agent.pem").display().to_string(),
        "--svid-key".into(),
        d.join("agent.key").display().to_string(),
        "--bundle".into(),
        d.join("bundle.pem").display().to_string(),
    ]
}

#[test]
fn the_cli_mints_both_kinds_and_reports_errors_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    // `serve` with no --config writes certs/dev (dev init) on first run.
    let _serve = Serve(
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["serve", "--listen", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = conn(dir.path(), &server);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(c.iter().cloned())
            .collect()
    };
    let started = Instant::now();
    let jwt = loop {
        let args = with(&[
            "mint", "jwt", "--task", "cli-1", "--aud", "db", "--ttl", "90s", "--json",
        ]);
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        if out.status.success() {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server never came up: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let v: serde_json::Value = serde_json::from_slice(&jwt.stdout).unwrap();
    assert_eq!(v["task_id"], "cli-1");
    assert_eq!(v["spiffe_id"], "spiffe://example.org/workload/agent");
    assert_eq!(v["token"].as_str().unwrap().split('.').count(), 3);
    assert!(v["credential_id"].as_str().unwrap().len() == 32);
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));

    let out_dir = dir.path().join("out");
    let args = with(&[
        "mint",
        "x509",
        "--task",
        "cli-1",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    let x = run(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(x.status.success(), "{x:?}");
    let v: serde_json::Value = serde_json::from_slice(&x.stdout).unwrap();
    let cert_pem = std::fs::read(v["cert_path"].as_str().unwrap()).unwrap();
    assert_eq!(
        taskmint::pem::certs(&cert_pem).unwrap().len(),
        2,
        "leaf, then chain"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(v["key_path"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let b = run(
        dir.path(),
        &with(&["bundle", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(b.status.success());
    let jwks: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let pem = run(
        dir.path(),
        &with(&["bundle"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        String::from_utf8(pem.stdout)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    for (args, fragment) in [
        (
            with(&[
                "mint", "jwt", "--task", "cli-1", "--aud", "db", "--ttl", "2h",
            ]),
            "exceeds the configured maximum",
        ),
        (
            with(&["mint", "jwt", "--task", "a b", "--aud", "db"]),
            "task id `a b`",
        ),
        (
            with(&["mint", "jwt", "--task", "t", "--aud", "db", "--ttl", "soon"]),
            "invalid duration `soon`",
        ),
    ] {
        let out = run(
            dir.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(fragment), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }

    let wrong_port = conn(dir.path(), &format!("127.0.0.1:{}", free_port()));
    let mut args = vec!["mint", "jwt", "--task", "t", "--aud", "db"];
    args.extend(wrong_port.iter().map(String::as_str));
    let out = run(dir.path(), &args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("error: cannot connect")
    );

    // dev init refuses to overwrite without --force.
    let again = run(dir.path(), &["dev", "init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8(again.stderr).unwrap().contains("--force"));
}
