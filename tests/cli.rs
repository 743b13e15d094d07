//! The `taskmint` binary end to end: `dev init`, `serve`, every client
//! command, its output (text, one `--json` document, JSON lines), its errors
//! and exit statuses, and the README's quick start, run verbatim.

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
    ] {
        let out = run(
            dir.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(fragment), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    // An argument error is clap's: whole, status 2.
    let args = with(&["mint", "jwt", "--task", "t", "--aud", "db", "--ttl", "soon"]);
    let out = run(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid duration `soon`"), "{err}");
    assert!(err.contains("For more information, try '--help'."), "{err}");

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
        json_of(&cli(&["status", "--credential", &id, "--json"]))["state"],
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

    let st = cli(&["status", "--credential", &id, "--json"]);
    assert_eq!(st.status.code(), Some(5), "revoked: {st:?}");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
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
    let superseded = cli(&[
        "status",
        "--credential",
        j["credential_id"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(superseded.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&superseded.stdout).unwrap();
    assert_eq!(v["reason"], "superseded");

    // A denial by the policy: status 3, the policy's answer in one line.
    let err = cli(&["revoke", "--trust-domain", "example.org"]);
    assert_eq!(err.status.code(), Some(3), "{err:?}");
    let err = String::from_utf8(err.stderr).unwrap();
    assert!(
        err.starts_with("error: PERMISSION_DENIED: ") && err.contains("no policy permits"),
        "{err}"
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
                "--json",
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
    assert_eq!(deny.status.code(), Some(3));
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
    assert!(String::from_utf8_lossy(&not_admin.stderr).contains("error: PERMISSION_DENIED: "));

    let inv = as_("admin", &["inventory", "--json"]);
    assert!(inv.status.success(), "{inv:?}");
    let inv = json_of(&inv);
    let tasks = inv["grants"].as_array().unwrap();
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

/// Runs `args` with stdout a pipe whose reader is already gone.
#[cfg(unix)]
fn with_closed_stdout(dir: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn argument_errors_are_shown_whole_with_status_2_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["crl"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    for fragment in [
        "error: the following required arguments were not provided:",
        "--out <OUT>",
        "Usage: taskmint crl --out <OUT>",
        "For more information, try '--help'.",
    ] {
        assert!(err.contains(fragment), "{fragment}: {err}");
    }
    let out = run(dir.path(), &["mint", "jwt", "--tsk", "t", "--aud", "db"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("tip: a similar argument exists: '--task'"),
        "{err}"
    );
    let out = run(dir.path(), &["statsu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("'status'"));

    // Completions: a script naming the commands, for each shell asked.
    let bash = run(dir.path(), &["completions", "bash"]);
    assert!(bash.status.success(), "{bash:?}");
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("_taskmint()"), "{script}");
    for command in ["delivery", "health", "completions", "inventory"] {
        assert!(script.contains(command), "{command}");
    }
    let zsh = run(dir.path(), &["completions", "zsh"]);
    assert!(
        String::from_utf8(zsh.stdout)
            .unwrap()
            .starts_with("#compdef taskmint")
    );
    assert_eq!(
        run(dir.path(), &["completions", "tcsh"]).status.code(),
        Some(2)
    );
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_command_quietly_with_status_141() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["policy", "schema"][..],
        &["completions", "bash"][..],
        &["--help"][..],
    ] {
        let out = with_closed_stdout(dir.path(), args);
        let err = String::from_utf8(out.stderr.clone()).unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] == "--help" {
            // clap's own help ignores a failed write.
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        } else {
            assert_eq!(out.status.code(), Some(141), "{args:?}: {out:?}");
            assert_eq!(err, "", "quiet: {args:?}");
        }
    }
}

/// A served dev trust domain with its config edited by `edit` first.
fn serve_edited(dir: &Path, edit: impl FnOnce(String) -> String) -> (Serve, String) {
    let init = run(dir, &["dev", "init"]);
    assert!(init.status.success(), "{init:?}");
    let cfg = dir.join("certs/dev/taskmint.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, edit(text)).unwrap();
    serve(dir)
}

fn as_who(dir: &Path, server: &str, who: &str, args: &[&str]) -> Output {
    let all: Vec<String> = args
        .iter()
        .map(|s| s.to_string())
        .chain(conn_as(dir, server, who))
        .collect();
    Command::new(BIN)
        .current_dir(dir)
        .args(&all)
        .output()
        .unwrap()
}

/// stdout is exactly one JSON document on one line.
fn one_document(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_cli_prints_text_one_json_document_and_meaningful_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, server) = serve(dir.path());
    let d = dir.path();
    let agent = |args: &[&str]| as_who(d, &server, "agent", args);
    let admin = |args: &[&str]| as_who(d, &server, "admin", args);

    // Health, over mTLS: waits for the server, then says it serves.
    let h = agent(&["health", "--wait", "30s"]);
    assert_eq!(h.status.code(), Some(0), "{h:?}");
    assert_eq!(String::from_utf8_lossy(&h.stdout), "serving\n");
    let h = one_document(&agent(&["health", "--json"]));
    assert_eq!(h, serde_json::json!({"service": "", "status": "serving"}));
    let h = one_document(&agent(&[
        "health",
        "--service",
        "taskmint.v1.Issuer",
        "--json",
    ]));
    assert_eq!(h["status"], "serving");
    let down = as_who(
        d,
        &format!("127.0.0.1:{}", free_port()),
        "agent",
        &["health"],
    );
    assert_eq!(down.status.code(), Some(1), "{down:?}");

    // The dev defaults agree: 15 minutes is allowed, 30 is refused by the
    // limit, which names its config key (the README's words).
    let ok = one_document(&agent(&[
        "mint", "jwt", "--task", "ttl", "--aud", "db", "--ttl", "15m", "--json",
    ]));
    assert!(ok["token"].is_string());
    let long = agent(&[
        "mint", "jwt", "--task", "ttl", "--aud", "db", "--ttl", "30m",
    ]);
    assert_eq!(long.status.code(), Some(1), "{long:?}");
    assert_eq!(
        String::from_utf8(long.stderr).unwrap(),
        "error: INVALID_ARGUMENT: requested ttl 30m exceeds the configured maximum 15m \
         (limits.max_ttl)\n"
    );

    let begun = agent(&[
        "task",
        "begin",
        "--task",
        "T",
        "--purpose",
        "deploy",
        "--label",
        "env=prod",
    ]);
    assert!(
        String::from_utf8_lossy(&begun.stdout).starts_with("task T begun, deadline "),
        "{begun:?}"
    );
    let jwt = one_document(&agent(&[
        "mint", "jwt", "--task", "T", "--aud", "db", "--json",
    ]));
    let id = jwt["credential_id"].as_str().unwrap().to_owned();
    // Plain `mint jwt`: the token alone.
    let token = agent(&["mint", "jwt", "--task", "T", "--aud", "db"]);
    let token = String::from_utf8(token.stdout).unwrap();
    assert_eq!(token.trim_end().split('.').count(), 3, "{token}");
    assert_eq!(token.lines().count(), 1);

    // status: text for people, one document with --json, 0 only for active.
    let st = agent(&["status", "--credential", &id]);
    assert_eq!(st.status.code(), Some(0));
    let text = String::from_utf8(st.stdout).unwrap();
    assert!(text.starts_with("active, expires 20"), "{text}");
    assert_eq!(
        one_document(&agent(&["status", "--credential", &id, "--json"]))["state"],
        "active"
    );
    let unknown = agent(&["status", "--credential", "abcdef"]);
    assert_eq!(unknown.status.code(), Some(7), "{unknown:?}");
    assert_eq!(
        String::from_utf8(unknown.stdout).unwrap(),
        "unknown: not issued by this issuer\n"
    );
    let short = one_document(&agent(&[
        "mint", "jwt", "--task", "T", "--aud", "db", "--ttl", "1s", "--json",
    ]));
    std::thread::sleep(Duration::from_millis(2100));
    let expired = agent(&[
        "status",
        "--credential",
        short["credential_id"].as_str().unwrap(),
    ]);
    assert_eq!(expired.status.code(), Some(6), "{expired:?}");
    assert!(String::from_utf8_lossy(&expired.stdout).starts_with("expired at "));

    // task show: text (the task, one line per credential) or one document.
    let shown = agent(&["task", "show", "--task", "T"]);
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(
        text.starts_with("task T held by spiffe://example.org/workload/agent: active\n"),
        "{text}"
    );
    for fragment in [
        "  purpose   deploy",
        "  label     env=prod",
        "  owner     team-agents",
    ] {
        assert!(text.contains(fragment), "{fragment}: {text}");
    }
    assert!(
        text.contains(&format!("    {id} jwt aud db: active, expires ")),
        "{text}"
    );
    let v = one_document(&agent(&["task", "show", "--task", "T", "--json"]));
    assert_eq!(v["credentials"].as_array().unwrap().len(), 3);
    // A reader that went away: no panic, status 141.
    let mut args = vec!["task", "show", "--task", "T"];
    let c = conn_as(d, &server, "agent");
    args.extend(c.iter().map(String::as_str));
    #[cfg(unix)]
    {
        let closed = with_closed_stdout(d, &args);
        assert_eq!(closed.status.code(), Some(141), "{closed:?}");
        assert!(closed.stderr.is_empty(), "{closed:?}");
    }

    // renew: a JWT's token alone in text, the document with --json.
    let renewed = agent(&["renew", "--credential", &id]);
    assert!(renewed.status.success(), "{renewed:?}");
    let text = String::from_utf8(renewed.stdout).unwrap();
    assert_eq!(text.trim_end().split('.').count(), 3, "{text}");
    let x = one_document(&agent(&[
        "mint", "x509", "--task", "T", "--out", "-", "--json",
    ]));
    let serial = x["credential_id"].as_str().unwrap().to_owned();
    assert!(
        x["cert_pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(x["key_pem"].as_str().unwrap().contains("PRIVATE KEY"));
    let r = one_document(&agent(&[
        "renew",
        "--credential",
        &serial,
        "--out",
        "-",
        "--json",
    ]));
    assert_eq!(r["renewal_count"], 1);
    assert!(r["cert_pem"].is_string() && r["key_pem"].is_string());

    // `--out -` is stdout: PEM for mint x509, DER for the CRL; no file `-`.
    let pem = agent(&["mint", "x509", "--task", "T", "--out", "-"]);
    assert!(pem.status.success(), "{pem:?}");
    let certs = taskmint::pem::certs(&pem.stdout).unwrap();
    assert_eq!(certs.len(), 2, "leaf, then chain");
    assert!(String::from_utf8_lossy(&pem.stdout).contains("-----BEGIN PRIVATE KEY-----"));
    let crl = agent(&["crl", "--out", "-"]);
    assert!(crl.status.success(), "{crl:?}");
    x509_parser::parse_x509_crl(&crl.stdout).expect("the DER CRL on stdout");
    let both = agent(&["crl", "--out", "-", "--json"]);
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    assert!(!d.join("-").exists(), "no file named `-`");
    let crl_file = one_document(&agent(&["crl", "--out", "c.der", "--json"]));
    assert_eq!(crl_file["path"], "c.der");

    // policy status: text for people, one document with --json.
    let ps = admin(&["policy", "status"]);
    let text = String::from_utf8(ps.stdout).unwrap();
    assert!(
        text.starts_with("policy ") && text.contains("workloads-mint-own-tasks"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    let v = one_document(&admin(&["policy", "status", "--json"]));
    assert_eq!(v["policies"].as_array().unwrap().len(), 9);

    // One document per command, lists included.
    let inv = one_document(&admin(&["inventory", "--json"]));
    let grants = inv["grants"].as_array().unwrap();
    assert!(grants.iter().any(|g| g["task_id"] == "T"), "{inv}");
    assert!(one_document(&admin(&["audit", "review", "--json"]))["tasks"].is_array());
    assert!(one_document(&agent(&["bundle", "--json"]))["keys"].is_array());
    let complete = one_document(&agent(&["task", "complete", "--task", "T", "--json"]));
    assert_eq!(complete["state"], "completed");
    assert!(
        one_document(&admin(&[
            "audit",
            "task",
            "--task",
            "T",
            "--holder",
            "spiffe://example.org/workload/agent",
            "--json"
        ]))["events"]
            .is_array()
    );
    // A stream: JSON lines, one document each.
    let export = admin(&["audit", "export"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 3, "{lines:?}");

    // An admin call by a workload: denied, status 3.
    let denied = agent(&["delivery"]);
    assert_eq!(denied.status.code(), Some(3), "{denied:?}");
}

#[test]
fn delivery_shows_overdue_subscribers_and_denials_name_the_policy_or_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An ack deadline short enough to pass in the test; a ttl limit above
    // the policy's, so the policy decides a longer request.
    let (_serve, server) = serve_edited(d, |t| {
        t.replace("ack_deadline = \"30s\"", "ack_deadline = \"1s\"")
            .replace("max_ttl = \"15m\"", "max_ttl = \"1h\"")
    });
    let agent = |args: &[&str]| as_who(d, &server, "agent", args);
    let admin = |args: &[&str]| as_who(d, &server, "admin", args);
    until_up(|| agent(&["health"]));

    // Nothing revoked yet: nothing overdue.
    let fine = admin(&["delivery", "--json"]);
    assert_eq!(fine.status.code(), Some(0), "{fine:?}");
    let v = one_document(&fine);
    assert_eq!(v["subscribers"][0]["name"], "sidecar");
    assert_eq!(v["subscribers"][0]["overdue"], false);

    // Denied by the policy, with the cause: the ttl, and what would do.
    let denied = agent(&["mint", "jwt", "--task", "D", "--aud", "db", "--ttl", "20m"]);
    assert_eq!(denied.status.code(), Some(3), "{denied:?}");
    let err = String::from_utf8(denied.stderr).unwrap();
    assert!(
        err.ends_with(
            "no policy permits; ttl_seconds 1200 is more than the policy permits here: \
             policy `workloads-mint-own-tasks` permits it with ttl_seconds up to 900\n"
        ),
        "{err}"
    );
    // Refused by a limit, which names its key.
    let too_long = agent(&["task", "begin", "--task", "L", "--lifetime", "9h"]);
    assert_eq!(too_long.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&too_long.stderr).contains("(limits.max_task_lifetime)"),
        "{too_long:?}"
    );

    // A revocation no one acknowledges: overdue after the deadline.
    one_document(&agent(&[
        "mint", "jwt", "--task", "D", "--aud", "db", "--json",
    ]));
    agent(&["task", "complete", "--task", "D"]);
    let started = Instant::now();
    let overdue = loop {
        let out = admin(&["delivery"]);
        if out.status.code() == Some(9) {
            break out;
        }
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "never overdue");
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8(overdue.stdout).unwrap();
    assert!(
        text.contains(
            "sidecar (spiffe://example.org/workload/sidecar): never acknowledged; OVERDUE since"
        ),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&admin(&["delivery", "--json"]).stdout).unwrap();
    assert_eq!(v["subscribers"][0]["overdue"], true);
    assert_eq!(v["subscribers"][0]["oldest_unacked_seq"], 1);

    // The sidecar acknowledges as it prints: no longer overdue.
    let watched = as_who(
        d,
        &server,
        "sidecar",
        &[
            "watch",
            "--after",
            "0",
            "--count",
            "1",
            "--subscriber",
            "sidecar",
        ],
    );
    assert!(watched.status.success(), "{watched:?}");
    let ev = one_document(&watched);
    assert_eq!(ev["reason"], "task_completed");
    let v = one_document(&admin(&["delivery", "--json"]));
    assert_eq!(v["subscribers"][0]["overdue"], false);
    assert_eq!(v["subscribers"][0]["acked_seq"], 1);
}

#[test]
fn policy_eval_fills_the_context_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(run(d, &["dev", "init"]).status.success());
    let eval = |action: &str, resource: &str, extra: &[&str]| {
        let mut args = vec![
            "policy",
            "eval",
            "--principal",
            "spiffe://example.org/workload/agent",
            "--action",
            action,
            "--resource",
            resource,
        ];
        args.extend(extra);
        run(d, &args)
    };
    // No --context: a plain request under the config's defaults.
    let allow = eval("mint_jwt", "Audience::\"db\"", &[]);
    assert_eq!(allow.status.code(), Some(0), "{allow:?}");
    assert_eq!(
        String::from_utf8(allow.stdout).unwrap(),
        "allow: permitted by policy `workloads-mint-own-tasks`\n"
    );
    for (action, resource) in [
        (
            "mint_x509",
            "Task::\"spiffe://example.org/workload/agent#t\"",
        ),
        ("renew", "Task::\"spiffe://example.org/workload/agent#t\""),
        (
            "begin_task",
            "Task::\"spiffe://example.org/workload/agent#t\"",
        ),
        (
            "read_task",
            "Task::\"spiffe://example.org/workload/agent#t\"",
        ),
        (
            "revoke",
            "Workload::\"spiffe://example.org/workload/agent\"",
        ),
        ("watch", "Issuer::\"taskmint\""),
    ] {
        let out = eval(action, resource, &["--json"]);
        assert_eq!(out.status.code(), Some(0), "{action}: {out:?}");
        assert_eq!(one_document(&out)["decision"], "allow", "{action}");
    }
    // Given attributes override the defaults.
    let deny = eval(
        "mint_jwt",
        "Audience::\"db\"",
        &["--context", r#"{"ttl_seconds":1800}"#, "--json"],
    );
    assert_eq!(deny.status.code(), Some(3), "{deny:?}");
    let v: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "no policy permits");
    // A delegate has no default; given as a SPIFFE ID, the forbid decides.
    let task = "Task::\"spiffe://example.org/workload/agent#t\"";
    let missing = eval("delegate", task, &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("action `delegate` needs `delegate` in --context"),
        "{missing:?}"
    );
    let forbid = eval(
        "delegate",
        task,
        &["--context", r#"{"delegate":"spiffe://other.org/x"}"#],
    );
    assert_eq!(forbid.status.code(), Some(3));
    assert_eq!(
        String::from_utf8(forbid.stdout).unwrap(),
        "deny: denied by policy `delegates-stay-in-trust-domain`\n"
    );
}

/// The README's quick start, every `sh` block between its markers, run as
/// one bash script in a fresh directory against the issuer it starts. Only
/// the environment differs from a reader's terminal: `cargo run --release
/// [-q] -- ARGS` runs this build's binary with ARGS, `cargo test` (the test
/// suite itself, running now) is skipped, and the issuer listens on a free
/// port (`TASKMINT_LISTEN`, `TASKMINT_SERVER`) instead of 8443.
#[cfg(unix)]
#[test]
fn the_readme_quick_start_runs_verbatim() {
    let (status, out, err) = run_readme_block("quickstart", &[], |script| {
        for must in [
            "cargo run --release -- serve",
            "cargo test",
            "task begin",
            "mint jwt",
        ] {
            assert!(script.contains(must), "the quick start lost `{must}`");
        }
    });
    assert!(
        status.success(),
        "the quick start failed ({status}):\n{out}\n{err}"
    );
    // What the README says it prints.
    for fragment in [
        "serving\n",
        "task build-42 begun, deadline ",
        "active, expires ",
        "/tmp/build-42/cert.pem: OK",
        "task completed: 2 credential(s) revoked",
        "(task_completed)",
        "exit status 5",
        "\"reason\":\"task_completed\"",
        "acknowledged through seq 1 at ",
    ] {
        assert!(
            out.contains(fragment),
            "`{fragment}` missing from:\n{out}\n{err}"
        );
    }
}

/// The README's enforcement walkthrough, run as written (the issuer, the
/// enforcer and the checks), with its own ports.
#[test]
fn the_readme_enforcement_walkthrough_runs_verbatim() {
    let enforcer = format!("127.0.0.1:{}", free_port());
    let (status, out, err) = run_readme_block(
        "enforce-demo",
        &[
            ("TASKMINT_ENFORCE_LISTEN", enforcer.clone()),
            ("TASKMINT_ENFORCER", enforcer),
        ],
        |script| {
            for must in ["enforce --config certs/dev/enforce.toml", "enforce check"] {
                assert!(script.contains(must), "the walkthrough lost `{must}`");
            }
        },
    );
    assert!(
        status.success(),
        "the walkthrough failed ({status}):\n{out}\n{err}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("allowed") || l.starts_with("denied"))
            .collect::<Vec<_>>(),
        [
            "allowed: spiffe://example.org/workload/agent (task demo-7)",
            "denied 403: token is bound to another certificate (cnf)",
            "denied 403: credential revoked",
        ],
        "{out}\n{err}"
    );
}

/// Runs the `sh` blocks between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
/// in README.md as one bash script (`cargo run` standing for this build's
/// binary) in a fresh directory, with the issuer on a free port, and returns
/// its status, stdout and stderr. `check` sees the script first.
fn run_readme_block(
    name: &str,
    env: &[(&str, String)],
    check: impl FnOnce(&str),
) -> (std::process::ExitStatus, String, String) {
    use std::os::unix::process::CommandExt;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, rest) = readme
        .split_once(&format!("<!-- {name}:begin -->"))
        .unwrap_or_else(|| panic!("README.md marks its {name} block"));
    let (section, _) = rest
        .split_once(&format!("<!-- {name}:end -->"))
        .unwrap_or_else(|| panic!("README.md closes its {name} block"));
    let mut script = String::new();
    let mut in_sh = false;
    for line in section.lines() {
        match (in_sh, line.trim_end()) {
            (false, "```sh") => in_sh = true,
            (true, "```") => in_sh = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_sh, "an unclosed sh block");
    check(&script);
    let prelude = r#"set -euo pipefail
shopt -s expand_aliases
cargo() {
  case "$*" in
    test*) echo "(cargo test: skipped, the test suite is running)" ;;
    "run --release -q -- "*) shift 4; "$TASKMINT_BIN" "$@" ;;
    "run --release -- "*) shift 3; "$TASKMINT_BIN" "$@" ;;
    *) echo "unexpected: cargo $*" >&2; return 64 ;;
  esac
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.sh"));
    std::fs::write(&path, format!("{prelude}{script}")).unwrap();
    let port = free_port();
    let (stdout, stderr) = (dir.path().join("out.txt"), dir.path().join("err.txt"));
    let mut cmd = Command::new("bash");
    cmd.arg(&path)
        .current_dir(dir.path())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("TASKMINT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("TASKMINT_BIN", BIN)
        .env("TASKMINT_LISTEN", format!("127.0.0.1:{port}"))
        .env("TASKMINT_SERVER", format!("127.0.0.1:{port}"))
        .env("TASKMINT_ENFORCE_ISSUERS", format!("127.0.0.1:{port}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id();
    // Whatever happens, the processes it started go with the script.
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }
    let _group = Group(pgid);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the {name} block hangs: {}",
            std::fs::read_to_string(&stderr).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status,
        std::fs::read_to_string(&stdout).unwrap(),
        std::fs::read_to_string(&stderr).unwrap(),
    )
}
