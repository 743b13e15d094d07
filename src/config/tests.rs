//! Config parsing and validation tests: defaults, relative paths, every
//! refusal, the store's path/url rules.

use super::*;

const MINIMAL: &str = r#"
    trust_domain = "example.org"
    [[trust.domains]]
    name = "example.org"
    bundle = "bundle.pem"
    [server]
    cert = "server.pem"
    key = "server.key"
    [ca]
    cert = "ca.pem"
    key = "ca.key"
    [jwt]
    key = "jwt.key"
    [store]
    path = "data/taskmint.db"
    [policy]
    file = "policy.cedar"
"#;

#[test]
fn paths_resolve_against_the_config_directory() {
    let cfg = Config::from_toml(MINIMAL, Path::new("/etc/tm")).unwrap();
    assert_eq!(
        cfg.store.path.as_deref(),
        Some(Path::new("/etc/tm/data/taskmint.db"))
    );
    assert_eq!(cfg.trust.domains[0].bundle, Path::new("/etc/tm/bundle.pem"));
    assert_eq!(cfg.limits.default_ttl, Duration::from_secs(300));
    assert_eq!(cfg.jwt_issuer(), "spiffe://example.org/taskmint");
    assert_eq!(cfg.policy.file, Path::new("/etc/tm/policy.cedar"));
}

#[test]
fn bad_group_and_owner_patterns_are_refused() {
    let text =
        format!("{MINIMAL}\n[[policy.groups]]\nname = \"ci\"\nmembers = [\"spiffe://*.org/x\"]\n");
    let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
    assert!(err.to_string().contains("policy.groups `ci`"), "{err}");
    let text = format!(
        "{MINIMAL}\n[[ownership.rules]]\npattern = \"spiffe://example.org/a\"\nowner = \"\"\n"
    );
    let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
    assert!(err.to_string().contains("ownership.rules"), "{err}");
}

#[test]
fn default_ttl_above_max_is_refused() {
    let text = format!("{MINIMAL}\n[limits]\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"\n");
    let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
    assert!(err.to_string().contains("exceeds limits.max_ttl"), "{err}");
}

#[test]
fn unknown_keys_and_bad_durations_are_refused() {
    let err = Config::from_toml(
        &format!("{MINIMAL}\n[limits]\nmax_tl = \"1h\"\n"),
        Path::new("."),
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_tl"), "{err}");
    let err = Config::from_toml(
        &format!("{MINIMAL}\n[limits]\nmax_ttl = \"soon\"\n"),
        Path::new("."),
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid duration `soon`"), "{err}");
}

#[test]
fn store_is_sqlite_or_postgres_and_the_environment_url_wins() {
    let pg = MINIMAL.replace(
        "path = \"data/taskmint.db\"",
        "url = \"postgres://tm@db.internal:5432/taskmint\"\nmax_connections = 4",
    );
    let cfg = Config::from_toml(&pg, Path::new(".")).unwrap();
    assert_eq!(cfg.store.path, None);
    assert_eq!(cfg.store.max_connections, 4);
    assert_eq!(cfg.store.acquire_timeout, Duration::from_secs(10));
    let env = Some("postgres://tm:secret@db2:5432/taskmint".to_owned());
    let cfg = Config::from_toml_env(&pg, Path::new("."), env.clone()).unwrap();
    assert_eq!(cfg.store.url, env);
    assert!(!format!("{cfg:?}").contains("secret"));
    // Both backends named: refused, naming both.
    let err = Config::from_toml_env(MINIMAL, Path::new("."), env).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("store.path") && msg.contains("store.url"),
        "{msg}"
    );
    assert!(msg.contains(STORE_URL_ENV), "{msg}");
    let both = MINIMAL.replace(
        "path = \"data/taskmint.db\"",
        "path = \"data/taskmint.db\"\nurl = \"postgres://db/tm\"",
    );
    assert!(Config::from_toml(&both, Path::new(".")).is_err());
    // Neither, a URL that is not PostgreSQL's, a zero pool, a tiny timeout.
    for (from, to) in [
        ("path = \"data/taskmint.db\"", ""),
        ("path = \"data/taskmint.db\"", "url = \"mysql://db/tm\""),
        (
            "path = \"data/taskmint.db\"",
            "url = \"postgres://db/tm\"\nmax_connections = 0",
        ),
        (
            "path = \"data/taskmint.db\"",
            "url = \"postgres://db/tm\"\nconnect_timeout = \"0s\"",
        ),
    ] {
        let text = MINIMAL.replace(from, to);
        let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("store"), "{err}");
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn bounded_storage_keys_have_safe_defaults_and_limits() {
    let cfg = Config::from_toml(MINIMAL, Path::new("/etc/tm")).unwrap();
    assert_eq!(cfg.store.use_interval, Duration::from_secs(60));
    assert_eq!(cfg.store.retention, Duration::from_secs(30 * 24 * 3600));
    // No archive: the audit trail is never pruned.
    assert_eq!(cfg.store.audit_archive, None);
    let text = MINIMAL.replace(
        "path = \"data/taskmint.db\"",
        "path = \"data/taskmint.db\"\nuse_interval = \"5m\"\nretention = \"7d\"\n\
         audit_archive = \"archive\"",
    );
    let cfg = Config::from_toml(&text, Path::new("/etc/tm")).unwrap();
    assert_eq!(cfg.store.use_interval, Duration::from_secs(300));
    assert_eq!(cfg.store.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(
        cfg.store.audit_archive.as_deref(),
        Some(Path::new("/etc/tm/archive"))
    );
    for (key, bad, says) in [
        ("use_interval", "0s", "store.use_interval must be 1s-1h"),
        ("use_interval", "2h", "store.use_interval must be 1s-1h"),
        ("retention", "59m", "store.retention must be at least 1h"),
    ] {
        let text = MINIMAL.replace(
            "path = \"data/taskmint.db\"",
            &format!("path = \"data/taskmint.db\"\n{key} = \"{bad}\""),
        );
        let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains(says), "{key} = {bad}: {err}");
    }
}

/// MINIMAL with its `[server]` and `[[trust.domains]]` replaced by `server`.
fn with_server(server: &str) -> String {
    MINIMAL
        .replace(
            "[[trust.domains]]\n    name = \"example.org\"\n    bundle = \"bundle.pem\"\n",
            "",
        )
        .replace(
            "[server]\n    cert = \"server.pem\"\n    key = \"server.key\"\n",
            server,
        )
}

#[test]
fn the_workload_api_may_supply_the_serving_svid_and_every_bundle() {
    let text = with_server("[server]\n    workload_api = \"unix:///run/spire/agent.sock\"\n");
    let cfg = Config::from_toml(&text, Path::new("/etc/tm")).unwrap();
    assert_eq!(
        cfg.server.workload_api.as_deref(),
        Some("unix:///run/spire/agent.sock")
    );
    assert!(cfg.server.cert.is_none() && cfg.trust.domains.is_empty());
    // Neither files nor an endpoint: SPIFFE_ENDPOINT_SOCKET decides at start.
    let cfg = Config::from_toml(&with_server(""), Path::new("/etc/tm")).unwrap();
    assert!(cfg.server.cert.is_none() && cfg.server.workload_api.is_none());
}

#[test]
fn the_serving_svid_has_exactly_one_source() {
    let both = MINIMAL.replace(
        "key = \"server.key\"\n",
        "key = \"server.key\"\n    workload_api = \"unix:///run/spire/agent.sock\"\n",
    );
    let e = Config::from_toml(&both, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("choose one source"), "{e}");
    let half = MINIMAL.replace("    key = \"server.key\"\n", "");
    let e = Config::from_toml(&half, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cert and key go together"), "{e}");
    // PEM files for the SVID still need the own trust domain's bundle file.
    let text = with_server("[server]\n    cert = \"s.pem\"\n    key = \"s.key\"\n");
    let e = Config::from_toml(&text, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no bundle"), "{e}");
}
