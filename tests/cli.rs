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

/// Starts `taskmint serve` in `dir` on a free port. With no --config it
/// writes certs/dev (dev init) on first run.
fn serve(dir: &Path) -> (Serve, String) {
    let server = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["serve", "--listen", &server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Serve(child), server)
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
    let (_serve, server) = serve(dir.path());
    let c = conn(dir.path(), &server);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(c.iter().cloned())
            .collect()
    };
    let jwt = until_up(|| {
        let args = with(&[
            "mint", "jwt", "--task", "cli-1", "--aud", "db", "--ttl", "90s", "--json",
        ]);
        Command::new(BIN)
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap()
    });
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

#[test]
fn a_second_issuer_on_one_sqlite_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, server) = serve(dir.path());
    let mut bundle = vec!["bundle".to_string()];
    bundle.extend(conn(dir.path(), &server));
    let args: Vec<&str> = bundle.iter().map(String::as_str).collect();
    until_up(|| run(dir.path(), &args));
    let second = run(
        dir.path(),
        &["serve", "--listen", &format!("127.0.0.1:{}", free_port())],
    );
    assert!(!second.status.success());
    let err = String::from_utf8(second.stderr).unwrap();
    assert!(
        err.contains("in use by another taskmint process") && err.contains("PostgreSQL"),
        "{err}"
    );
    // The first one still serves.
    assert!(run(dir.path(), &args).status.success());
}

/// Runs `call` until it succeeds (the server started by [`serve`] may still be
/// coming up), for at most 30 s.
fn until_up(mut call: impl FnMut() -> Output) -> Output {
    let started = Instant::now();
    loop {
        let out = call();
        if out.status.success() {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server never came up: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn the_cli_drives_tasks_revocation_renewal_watch_and_crl() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (_serve, server) = serve(dir.path());
    let c = conn(dir.path(), &server);
    let cli = |args: &[&str]| -> Output {
        let all: Vec<String> = args
            .iter()
            .map(|s| s.to_string())
            .chain(c.iter().cloned())
            .collect();
        Command::new(BIN)
            .current_dir(dir.path())
            .args(&all)
            .output()
            .unwrap()
    };
    let task = json_of(&until_up(|| {
        cli(&[
            "task",
            "begin",
            "--task",
            "T1",
            "--purpose",
            "deploy",
            "--ticket",
            "CHG-9",
            "--lifetime",
            "10m",
            "--json",
        ])
    }));
    assert_eq!(task["state"], "active");
    assert_eq!(task["ticket"], "CHG-9");

    let id = json_of(&cli(&[
        "mint", "jwt", "--task", "T1", "--aud", "db", "--json",
    ]))["credential_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        json_of(&cli(&["status", "--credential", &id]))["state"],
        "active"
    );

    // A sidecar follows the feed from the start and acknowledges what it prints.
    let d = dir.path().join("certs/dev");
    let mut watch = Serve(
        Command::new(BIN)
            .current_dir(dir.path())
            .args([
                "watch",
                "--after",
                "0",
                "--subscriber",
                "sidecar",
                "--json",
                "--server",
                &server,
            ])
            .arg("--svid")
            .arg(d.join("sidecar.pem"))
            .arg("--svid-key")
            .arg(d.join("sidecar.key"))
            .arg("--bundle")
            .arg(d.join("bundle.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    let done = json_of(&cli(&["task", "complete", "--task", "T1", "--json"]));
    assert_eq!(done["state"], "completed");
    assert_eq!(done["revoked"], 1);

    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch printed nothing");
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["seq"], 1);
    assert_eq!(ev["kind"], "task");
    assert_eq!(ev["reason"], "task_completed");
    assert_eq!(ev["credential_ids"], serde_json::json!([id]));
    assert_eq!(ev["set"].as_str().unwrap().split('.').count(), 3);
    for key in ["task_id", "spiffe_id", "revoked_at", "expires_at"] {
        assert!(ev[key].is_string(), "{key} missing: {ev}");
    }

    let st = json_of(&cli(&["status", "--credential", &id]));
    assert_eq!(st["state"], "revoked");
    assert_eq!(st["reason"], "task_completed");
    assert!(st["revoked_at"].is_string() && st["expires_at"].is_string());

    let shown = json_of(&cli(&["task", "show", "--task", "T1", "--json"]));
    assert_eq!(shown["credentials"][0]["state"], "revoked");

    let out = dir.path().join("x");
    let x = json_of(&cli(&[
        "mint",
        "x509",
        "--task",
        "T2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let serial = x["credential_id"].as_str().unwrap().to_owned();
    let r = json_of(&cli(&[
        "revoke",
        "--credential",
        &serial,
        "--reason",
        "rotated",
        "--json",
    ]));
    assert_eq!(r["revoked"], 1);
    let again = json_of(&cli(&["revoke", "--credential", &serial, "--json"]));
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already revoked")
    );
    let crl_path = dir.path().join("crl.der");
    json_of(&cli(&[
        "crl",
        "--out",
        crl_path.to_str().unwrap(),
        "--json",
    ]));
    let der = std::fs::read(&crl_path).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![serial]);

    let j = json_of(&cli(&[
        "mint", "jwt", "--task", "T3", "--aud", "db", "--json",
    ]));
    let renewed = json_of(&cli(&[
        "renew",
        "--credential",
        j["credential_id"].as_str().unwrap(),
        "--revoke-previous",
        "--json",
    ]));
    assert_eq!(renewed["renewal_count"], 1);
    assert!(renewed["token"].is_string());
    assert_eq!(
        json_of(&cli(&[
            "status",
            "--credential",
            j["credential_id"].as_str().unwrap()
        ]))["reason"],
        "superseded"
    );

    let err = cli(&["revoke", "--trust-domain", "example.org"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8(err.stderr)
            .unwrap()
            .contains("PermissionDenied")
    );
}

fn conn_as(dir: &Path, server: &str, name: &str) -> Vec<String> {
    let mut c = conn(dir, server);
    let d = dir.join("certs/dev");
    c[3] = d.join(format!("{name}.pem")).display().to_string();
    c[5] = d.join(format!("{name}.key")).display().to_string();
    c
}

#[test]
fn the_cli_governs_policy_break_glass_delegation_audit_and_inventory() {
    let dir = tempfile::tempdir().unwrap();
    // A second admin reviews what the first opens (separation of duties).
    let init = Command::new(BIN)
        .current_dir(dir.path())
        .args(["dev", "init"])
        .args(["--workload", "agent", "--workload", "sidecar"])
        .args(["--workload", "admin", "--workload", "admin2"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let cfg = dir.path().join("certs/dev/taskmint.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_admin2 = text.replace(
        r#"admins = ["spiffe://example.org/workload/admin"]"#,
        r#"admins = ["spiffe://example.org/workload/admin", "spiffe://example.org/workload/admin2"]"#,
    );
    assert_ne!(text, with_admin2);
    std::fs::write(&cfg, with_admin2).unwrap();
    let (_serve, server) = serve(dir.path());
    let as_ = |who: &str, args: &[&str]| -> Output {
        let all: Vec<String> = args
            .iter()
            .map(|s| s.to_string())
            .chain(conn_as(dir.path(), &server, who))
            .collect();
        Command::new(BIN)
            .current_dir(dir.path())
            .args(&all)
            .output()
            .unwrap()
    };
    let parent = json_of(&until_up(|| {
        as_(
            "agent",
            &[
                "task",
                "begin",
                "--task",
                "P",
                "--aud",
                "db",
                "--aud",
                "queue",
                "--lifetime",
                "10m",
                "--json",
            ],
        )
    }));
    assert_eq!(parent["owner"], "team-agents");
    assert_eq!(parent["audiences"], serde_json::json!(["db", "queue"]));

    // Policies are checked and tried offline.
    let ok = run(dir.path(), &["policy", "check", "certs/dev/policy.cedar"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("admins-administer"));
    std::fs::write(dir.path().join("bad.cedar"), "permit (principal, action").unwrap();
    let bad = run(dir.path(), &["policy", "check", "bad.cedar"]);
    assert!(!bad.status.success());
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("does not parse"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let eval = |ttl: u64| {
        run(
            dir.path(),
            &[
                "policy",
                "eval",
                "--principal",
                "spiffe://example.org/workload/agent",
                "--action",
                "mint_jwt",
                "--resource",
                "Audience::\"db\"",
                "--context",
                &format!(
                    r#"{{"task_id":"t","ttl_seconds":{ttl},"renewal_count":0,"break_glass":false,"depth":0}}"#
                ),
            ],
        )
    };
    let allow = eval(300);
    let v = json_of(&allow);
    assert_eq!(v["decision"], "allow");
    assert_eq!(
        v["policies"],
        serde_json::json!(["workloads-mint-own-tasks"])
    );
    let deny = eval(3600);
    assert_eq!(deny.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(v["reason"], "no policy permits");

    // Delegation to a sub-agent.
    let child = json_of(&as_(
        "agent",
        &[
            "task",
            "delegate",
            "--task",
            "P",
            "--to",
            "spiffe://example.org/workload/sidecar",
            "--aud",
            "db",
            "--child",
            "P.sub",
            "--json",
        ],
    ));
    assert_eq!(child["holder"], "spiffe://example.org/workload/sidecar");
    assert_eq!(child["depth"], 1);
    let j = json_of(&as_(
        "sidecar",
        &["mint", "jwt", "--task", "P.sub", "--aud", "db", "--json"],
    ));
    assert!(j["token"].is_string());

    // Break-glass: flags are required together, then it awaits review.
    let missing = as_(
        "admin",
        &["task", "begin", "--task", "INC", "--break-glass"],
    );
    assert!(!missing.status.success());
    let bg = as_(
        "admin",
        &[
            "task",
            "begin",
            "--task",
            "INC",
            "--break-glass",
            "--justification",
            "database down",
            "--ticket",
            "INC-1",
            "--lifetime",
            "10m",
            "--owner",
            "sre-oncall",
        ],
    );
    assert!(bg.status.success(), "{bg:?}");
    assert!(String::from_utf8_lossy(&bg.stdout).contains("BREAK-GLASS"));
    let review = as_("admin", &["audit", "review"]);
    assert!(
        String::from_utf8_lossy(&review.stdout).contains("INC-1"),
        "{review:?}"
    );
    let not_admin = as_("agent", &["audit", "review"]);
    assert!(String::from_utf8_lossy(&not_admin.stderr).contains("PermissionDenied"));

    let inv = as_("admin", &["inventory", "--json"]);
    assert!(inv.status.success(), "{inv:?}");
    let tasks: Vec<serde_json::Value> = String::from_utf8(inv.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = tasks
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in ["P", "P.sub", "INC"] {
        assert!(ids.contains(&id), "{ids:?}");
    }

    let own = as_(
        "admin",
        &["audit", "review", "--mark-reviewed", "INC", "--note", "ok"],
    );
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("may not review it"),
        "{own:?}"
    );
    json_of(&as_(
        "admin2",
        &[
            "audit",
            "review",
            "--mark-reviewed",
            "INC",
            "--holder",
            "spiffe://example.org/workload/admin",
            "--note",
            "ok",
            "--json",
        ],
    ));
    let review = as_("admin", &["audit", "review"]);
    assert!(
        String::from_utf8_lossy(&review.stdout).contains("no break-glass grants awaiting review")
    );

    // Completing the parent cascades; the timeline shows it.
    json_of(&as_(
        "agent",
        &["task", "complete", "--task", "P", "--json"],
    ));
    let timeline = as_(
        "admin",
        &[
            "audit",
            "task",
            "--task",
            "P.sub",
            "--holder",
            "spiffe://example.org/workload/sidecar",
        ],
    );
    let text = String::from_utf8(timeline.stdout).unwrap();
    for fragment in ["begun", "issued", "revoked", "workloads-mint-own-tasks"] {
        assert!(text.contains(fragment), "{fragment}: {text}");
    }

    let export = as_("admin", &["audit", "export", "--since", "0"]);
    assert!(export.status.success(), "{export:?}");
    let seqs: Vec<u64> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // Offline verification, while the issuer runs.
    let v = run(
        dir.path(),
        &["audit", "verify", "--config", "certs/dev/taskmint.toml"],
    );
    assert!(v.status.success(), "{v:?}");
    assert!(String::from_utf8_lossy(&v.stdout).contains("intact"));
}
