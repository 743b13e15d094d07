//! The shipped deployment files (`deploy/`) load as the server loads them,
//! and the manifests agree with the config they mount: a renamed key, a
//! policy the schema refuses or a port moved on one side only fails here.
//! The manifests' schema and the systemd unit are checked by
//! `.ci/validate-deploy`.

use std::path::{Path, PathBuf};

use taskmint::config::Config;
use taskmint::policy::{PolicyDoc, schema};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Loads a shipped config as if it were installed in `installed_dir`.
fn load(rel: &str, installed_dir: &str) -> Config {
    Config::from_toml(&read(rel), Path::new(installed_dir))
        .unwrap_or_else(|e| panic!("{rel} does not load: {e}"))
}

#[test]
fn systemd_config_loads_with_absolute_state_paths() {
    let cfg = load("deploy/systemd/taskmint.toml", "/etc/taskmint");
    // ProtectSystem=strict leaves only the StateDirectory writable.
    let db = cfg
        .store
        .path
        .as_deref()
        .expect("the systemd config uses SQLite");
    assert!(db.starts_with("/var/lib/taskmint"), "{}", db.display());
    let archive = cfg.store.audit_archive.as_deref().expect("an archive");
    assert!(
        archive.starts_with("/var/lib/taskmint"),
        "{}",
        archive.display()
    );
    assert!(cfg.ca.key.starts_with("/etc/taskmint"));
    let unit = read("deploy/systemd/taskmint.service");
    assert!(unit.contains("StateDirectory=taskmint"));
    assert!(unit.contains("--config /etc/taskmint/taskmint.toml"));
}

#[test]
fn kubernetes_config_loads_and_matches_the_manifests() {
    let cfg = load(
        "deploy/kubernetes/config/taskmint.toml",
        "/etc/taskmint/config",
    );
    assert!(cfg.store.url.is_some(), "replicas share PostgreSQL");
    assert!(cfg.store.path.is_none());
    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert!(deployment.contains("- /etc/taskmint/config/taskmint.toml"));
    let grpc = format!("containerPort: {}", cfg.listen.addr.port());
    assert!(
        deployment.contains(&grpc),
        "the gRPC port {grpc} is not exposed"
    );
    let ops = cfg
        .ops
        .listen
        .expect("the kubelet probes an explicit ops address");
    assert!(!ops.ip().is_loopback(), "probes cannot reach loopback");
    let ops_port = format!("containerPort: {}", ops.port());
    assert!(
        deployment.contains(&ops_port),
        "the ops port {ops_port} is not exposed"
    );
    for probe in ["path: /healthz", "path: /readyz"] {
        assert!(deployment.contains(probe), "no probe on {probe}");
    }
    // The serving SVID comes from the socket the CSI driver mounts.
    let socket = cfg
        .server
        .workload_api
        .as_deref()
        .expect("the Workload API");
    let dir = socket
        .strip_prefix("unix://")
        .and_then(|p| p.rsplit_once('/'))
        .map(|(dir, _)| dir)
        .expect("a unix socket path");
    assert!(
        deployment.contains(&format!("mountPath: {dir}")),
        "{dir} is not mounted"
    );
    assert!(deployment.contains("driver: csi.spiffe.io"));
    // Keys come from the Secret mounted at /etc/taskmint/keys.
    for key in [&cfg.ca.cert, &cfg.ca.key, &cfg.jwt.key] {
        assert!(key.starts_with("/etc/taskmint/keys"), "{}", key.display());
    }
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    assert!(kustomization.contains("config/taskmint.toml"));
    assert!(kustomization.contains("config/policy.cedar"));
    assert_eq!(
        cfg.policy.file,
        Path::new("/etc/taskmint/config/policy.cedar")
    );
}

#[test]
fn shipped_policies_validate_against_the_schema() {
    for rel in [
        "deploy/kubernetes/config/policy.cedar",
        "deploy/systemd/policy.cedar",
    ] {
        let doc = PolicyDoc::parse(&read(rel), &schema())
            .unwrap_or_else(|e| panic!("{rel} is refused: {e}"));
        assert!(!doc.ids.is_empty(), "{rel} permits nothing");
    }
}

/// The Envoy examples and the enforcer configs beside them agree: the
/// ext_authz filter sends the peer certificate and fails closed, its
/// cluster reaches the enforcer's `listen` over HTTP/2 and health-checks
/// the service the enforcer reports on.
#[test]
fn envoy_examples_match_the_enforcer() {
    use taskmint::enforce::EnforceConfig;
    let spire = EnforceConfig::from_toml(
        &read("examples/envoy/enforce-spire.toml"),
        Path::new("/etc/taskmint"),
    )
    .unwrap_or_else(|e| panic!("enforce-spire.toml does not load: {e}"));
    let dev = EnforceConfig::from_toml(
        &taskmint::devca::enforce_config_text("127.0.0.1:8443"),
        Path::new("/x"),
    )
    .unwrap_or_else(|e| panic!("the dev enforce.toml does not load: {e}"));
    for (file, enforcer) in [
        ("examples/envoy/envoy.yaml", &dev),
        ("examples/envoy/envoy-sds.yaml", &spire),
    ] {
        let y = read(file);
        for must in [
            "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version: V3",
            "include_peer_certificate: true",
            "failure_mode_allow: false",
            "require_client_certificate: true",
            "envoy_grpc: { cluster_name: taskmint-enforce }",
            "http2_protocol_options: {}",
        ] {
            assert!(y.contains(must), "{file} lost `{must}`");
        }
        assert!(
            y.contains(&format!(
                "service_name: {}",
                taskmint::enforce::authz::SERVICE
            )),
            "{file}: the health check names another service"
        );
        let endpoint = format!(
            "socket_address: {{ address: {}, port_value: {} }}",
            enforcer.listen.ip(),
            enforcer.listen.port()
        );
        assert!(y.contains(&endpoint), "{file}: no endpoint `{endpoint}`");
        // The filter comes before the router, or it checks nothing.
        let (authz, router) = (
            y.find("name: envoy.filters.http.ext_authz").unwrap(),
            y.find("name: envoy.filters.http.router").unwrap(),
        );
        assert!(authz < router, "{file}: ext_authz after the router");
    }
    assert!(spire.workload_api.is_some());
    assert_eq!(spire.issuers.len(), 3);
}
