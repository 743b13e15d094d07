//! A development trust domain: a root, the issuer's serving SVID, the
//! per-task signing CA, a JWT key, workload SVIDs and a complete config, all
//! made with rcgen. `taskmint dev init` writes it; the tests build their
//! fixtures (including the broken ones) from the same [`DevRoot`].
//!
//! Nothing here is for production: the root key is written next to the
//! bundle so more workloads can be added later.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Why the dev trust domain could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The directory already holds one and `--force` was not given.
    #[error("`{0}` already holds a dev trust domain; pass --force to overwrite it")]
    Exists(PathBuf),
    /// A name is not valid.
    #[error("{0}")]
    Invalid(String),
    /// Writing failed.
    #[error("cannot write `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
}

/// A dev root CA that can sign leaves and intermediates.
pub struct DevRoot {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevRoot")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A generated certificate with its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 key PEM.
    pub key_pem: String,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 key DER.
    pub key_der: Vec<u8>,
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(days);
}

impl DevRoot {
    /// A new self-signed root for `trust_domain`, valid for ten years.
    pub fn new(trust_domain: &str) -> Result<Self, DevError> {
        spiffe::TrustDomain::new(trust_domain)
            .map_err(|e| DevError::Invalid(format!("trust domain `{trust_domain}`: {e}")))?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "taskmint dev");
        p.distinguished_name
            .push(DnType::CommonName, format!("{trust_domain} dev root"));
        p.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut p, 3650);
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads a root written earlier (`bundle.pem` + `root.key`).
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, DevError> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM (the trust bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Parameters of a well-formed workload X.509-SVID for `spiffe_id`, valid
    /// for `days`. Tests break one property at a time from here.
    pub fn svid_params(spiffe_id: &str, days: i64) -> Result<CertificateParams, DevError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "taskmint dev");
        p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, days);
        Ok(p)
    }

    /// Signs `params` for a fresh P-256 key.
    pub fn sign(&self, params: &CertificateParams) -> Result<Issued, DevError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// A workload SVID for `spiffe://<td>/workload/<name>`, valid 90 days.
    pub fn workload(&self, name: &str) -> Result<Issued, DevError> {
        let id = format!("spiffe://{}/workload/{name}", self.trust_domain);
        spiffe::SpiffeId::new(&id)
            .map_err(|e| DevError::Invalid(format!("workload name `{name}`: {e}")))?;
        self.sign(&Self::svid_params(&id, 90)?)
    }

    /// The issuer's serving SVID: `spiffe://<td>/taskmint`, also valid for
    /// `localhost` and `127.0.0.1` so generic TLS tools can talk to it.
    pub fn server_svid(&self) -> Result<Issued, DevError> {
        let mut p = Self::svid_params(&format!("spiffe://{}/taskmint", self.trust_domain), 90)?;
        p.subject_alt_names
            .push(SanType::DnsName("localhost".try_into()?));
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        self.sign(&p)
    }

    /// The intermediate that signs per-task certificates (path length 0).
    pub fn signing_ca(&self) -> Result<Issued, DevError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "taskmint dev");
        p.distinguished_name.push(
            DnType::CommonName,
            format!("{} taskmint signing CA", self.trust_domain),
        );
        p.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain).try_into()?,
        )];
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // A CA signs certificates and CRLs only: X509-SVID Appendix A keeps
        // digitalSignature for leaves.
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, 365);
        self.sign(&p)
    }
}

/// What `dev init` wrote.
#[derive(Debug, Clone)]
pub struct DevInit {
    /// The config file.
    pub config: PathBuf,
    /// Workload names with their SVID and key paths.
    pub workloads: Vec<(String, PathBuf, PathBuf)>,
}

fn write(path: &Path, content: &str, secret: bool) -> Result<(), DevError> {
    let io = |source| DevError::Io {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mode = if secret { 0o600 } else { 0o644 };
        // Remove first: `mode` only applies when the file is created.
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io)?;
        f.write_all(content.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        std::fs::write(path, content).map_err(io)
    }
}

/// The default workloads.
pub const DEFAULT_WORKLOADS: &[&str] = &["agent", "sidecar", "admin"];

/// Writes a dev trust domain and config into `dir`.
pub fn init(
    dir: &Path,
    trust_domain: &str,
    workloads: &[String],
    listen: &str,
    force: bool,
) -> Result<DevInit, DevError> {
    let config = dir.join("taskmint.toml");
    if config.exists() && !force {
        return Err(DevError::Exists(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| DevError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let root = DevRoot::new(trust_domain)?;
    write(&dir.join("bundle.pem"), root.cert_pem(), false)?;
    write(&dir.join("root.key"), &root.key_pem, true)?;

    let server = root.server_svid()?;
    write(&dir.join("taskmint.pem"), &server.cert_pem, false)?;
    write(&dir.join("taskmint.key"), &server.key_pem, true)?;

    let ca = root.signing_ca()?;
    write(&dir.join("signing-ca.pem"), &ca.cert_pem, false)?;
    write(&dir.join("signing-ca.key"), &ca.key_pem, true)?;

    let jwt = KeyPair::generate()?;
    write(&dir.join("jwt.key"), &jwt.serialize_pem(), true)?;

    let mut written = Vec::new();
    for name in workloads {
        let w = root.workload(name)?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write(&cert, &w.cert_pem, false)?;
        write(&key, &w.key_pem, true)?;
        written.push((name.clone(), cert, key));
    }
    write(
        &dir.join("policy.cedar"),
        &crate::policy::DEFAULT_POLICY.replace("TRUST_DOMAIN", trust_domain),
        false,
    )?;
    write(&config, &config_text(trust_domain, listen), false)?;
    if workloads.iter().any(|w| w == "sidecar") {
        write(
            &dir.join("enforce.toml"),
            &enforce_config_text(listen),
            false,
        )?;
    }
    Ok(DevInit {
        config,
        workloads: written,
    })
}

/// Adds the discovery listener to the dev trust domain in `dir` (written by
/// [`init`]): a dev web PKI CA (`discovery-ca.pem`, what relying parties
/// trust, separate from the SPIFFE root), a server certificate for
/// `localhost`, `127.0.0.1`, `::1` and the listen address signed by it
/// (`discovery.pem`, `discovery.key`), and a `[discovery]` section on
/// `listen`, with `jwt.issuer` set to the listener's URL as OpenID Connect
/// relying parties require. Returns that URL.
pub fn add_discovery(dir: &Path, listen: &str) -> Result<String, DevError> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| DevError::Invalid(format!("discovery address `{listen}`: {e}")))?;
    let url = if addr.ip().is_unspecified() {
        format!("https://localhost:{}", addr.port())
    } else {
        format!("https://{addr}")
    };
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "taskmint dev");
    p.distinguished_name
        .push(DnType::CommonName, "taskmint dev discovery CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, 3650);
    let ca_cert = p.self_signed(&ca_key)?;
    let ca = Issuer::new(p, ca_key);

    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "taskmint dev");
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
        p.subject_alt_names.push(SanType::IpAddress(addr.ip()));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, 365);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca)?;
    write(&dir.join("discovery-ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("discovery.pem"), &cert.pem(), false)?;
    write(&dir.join("discovery.key"), &key.serialize_pem(), true)?;

    let config = dir.join("taskmint.toml");
    let io = |source| DevError::Io {
        path: config.clone(),
        source,
    };
    let text = std::fs::read_to_string(&config).map_err(io)?;
    let text = text.replacen(
        "[jwt]\nkey = \"jwt.key\"\n",
        &format!(
            "[jwt]\nkey = \"jwt.key\"\n# The discovery URL: OpenID Connect relying parties compare it with `iss`.\nissuer = \"{url}\"\n"
        ),
        1,
    );
    let text = text
        .lines()
        .filter(|l| !l.starts_with("# issuer = "))
        .collect::<Vec<_>>()
        .join("\n");
    let section = format!(
        r#"

# HTTPS for relying parties (no client certificate): OpenID Connect
# discovery at /.well-known/openid-configuration, the JWKS at /keys, the
# SPIFFE bundle endpoint (https_web) at /.
[discovery]
listen = "{addr}"
# A web PKI server certificate, re-read when it changes; the dev one is
# signed by discovery-ca.pem, which relying parties must trust.
cert = "discovery.pem"
key = "discovery.key"
# What relying parties reach it at (jwks_uri is built from it).
url = "{url}"
max_connections = 256
handshake_timeout = "10s"
request_timeout = "10s"
connection_timeout = "60s"
"#
    );
    write(&config, &format!("{text}{section}"), false)?;
    Ok(url)
}

/// The config of `taskmint enforce` for the dev `sidecar` workload, next
/// to the issuer's: it follows the issuer at `listen` and serves Envoy's
/// ext_authz on 127.0.0.1:9191 for the audience `db`.
pub fn enforce_config_text(listen: &str) -> String {
    format!(
        r#"# taskmint enforce configuration, written by `taskmint dev init`.
# Paths are relative to this file. See README, "Enforcement".

# The issuer replicas whose revocation feed is followed (one at a time).
issuers = ["{listen}"]
# The enforcer's own SVID (or: workload_api = "unix:///run/spire/agent.sock").
svid = "sidecar.pem"
svid_key = "sidecar.key"
bundle = "bundle.pem"
# Acknowledges under this name: an expected subscriber of the issuer.
subscriber = "sidecar"
# Envoy's ext_authz cluster points here (plain HTTP/2: keep it local).
listen = "127.0.0.1:9191"
# A bearer token must name one of these in `aud`.
audiences = ["db"]
leeway = "5s"
# Tokens must be bound (cnf.x5t#S256) to the peer certificate Envoy passes.
require_cnf = true
# No event or heartbeat for this long: every check is refused with 503.
max_staleness = "30s"
# The cursor and deny entries, kept across restarts.
state_dir = "data/enforce"
# Remove the bearer token before the request reaches the service.
strip_bearer = false
"#
    )
}

/// The `[store]` line of a dev config: the SQLite file.
pub const SQLITE_STORE_LINE: &str = r#"path = "data/taskmint.db""#;

/// A complete config for a dev trust domain laid out by [`init`]; paths are
/// relative to the config's own directory.
pub fn config_text(trust_domain: &str, listen: &str) -> String {
    format!(
        r#"# taskmint configuration, written by `taskmint dev init`.
# Relative paths are resolved against this file's directory.

# The issuer's own trust domain (its SVID, signing CA and JWT key belong to it).
trust_domain = "{trust_domain}"

# May revoke, complete or inspect anything.
admins = ["spiffe://{trust_domain}/workload/admin"]

[listen]
addr = "{listen}"
handshake_timeout = "10s"
# No call in flight for this long: the connection is closed.
idle_timeout = "5m"
max_connections = 10000
# Connections one SPIFFE ID may hold on this replica (pods may share an ID).
max_connections_per_workload = 1000
# Advertised in SETTINGS_MAX_CONCURRENT_STREAMS.
max_concurrent_streams = 100
keepalive_interval = "30s"
keepalive_timeout = "10s"
request_timeout = "30s"

[trust]
# Bundle files and the serving SVID are re-read when their content changes.
reload_interval = "5s"
# Federation: every <trust-domain>.pem dropped here is trusted for that domain.
bundle_dir = "federation"

[[trust.domains]]
name = "{trust_domain}"
bundle = "bundle.pem"

[server]
cert = "taskmint.pem"
key = "taskmint.key"

[ca]
cert = "signing-ca.pem"
key = "signing-ca.key"
crl_validity = "1h"

[jwt]
key = "jwt.key"
# issuer = "spiffe://{trust_domain}/taskmint"

[store]
{SQLITE_STORE_LINE}

[limits]
default_ttl = "5m"
# The dev policy (policy.cedar) permits the same 15 minutes: keep the two in
# step, or the lower one decides (a policy denial names its policies).
max_ttl = "15m"
default_task_lifetime = "15m"
max_task_lifetime = "8h"
max_renewals = 3
max_active_credentials = 100
break_glass_max_lifetime = "1h"
max_delegation_depth = 3
# Per-workload token buckets, one per class of call, kept by each replica on
# its own. Every call takes a token before its request is decoded; over the
# limit it is RESOURCE_EXHAUSTED with a retry hint.
# MintX509, MintJwt, Renew:
rate = {{ per_second = 100.0, burst = 200 }}
# BeginTask, CompleteTask, DelegateTask, Revoke:
task_rate = {{ per_second = 20.0, burst = 50 }}
# GetTask, CheckStatus, GetCrl, GetTrustBundle, health checks:
read_rate = {{ per_second = 100.0, burst = 200 }}
# WatchRevocations, AckRevocations:
watch_rate = {{ per_second = 20.0, burst = 50 }}
# Every Admin call:
admin_rate = {{ per_second = 20.0, burst = 50 }}
# What one workload may hold at once.
max_active_tasks = 1000
max_subscriber_names = 16
max_watch_streams = 16

[policy]
# Cedar policy, validated against the schema built into taskmint; re-read
# when it changes and on SIGHUP (a bad file is refused, the old one stays).
file = "policy.cedar"
reload_interval = "2s"

# Groups usable in policies as Group::"name" (admins are in Group::"admins").
[[policy.groups]]
name = "agents"
members = ["spiffe://{trust_domain}/workload/agent*"]

[ownership]
# Refuse tasks that end up without an accountable owner.
require_owner = false

# First match wins; an owner named at BeginTask needs a policy that allows it.
[[ownership.rules]]
pattern = "spiffe://{trust_domain}/workload/agent*"
owner = "team-agents"

[feed]
heartbeat_interval = "10s"
subscriber_buffer = 1024
retention = "24h"
ack_deadline = "30s"
reaper_interval = "1s"

# Subscribers expected to acknowledge every revocation (delivery evidence).
[[feed.subscribers]]
name = "sidecar"
spiffe_id = "spiffe://{trust_domain}/workload/sidecar"
"#
    )
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::DevRoot;

    /// The dev signing CA signs certificates and CRLs, nothing else
    /// (X509-SVID Appendix A: digitalSignature is for leaves).
    #[test]
    fn the_dev_signing_ca_may_only_sign_certificates_and_crls() {
        let ca = DevRoot::new("example.org").unwrap().signing_ca().unwrap();
        let (_, cert) = X509Certificate::from_der(&ca.cert_der).unwrap();
        let ku = cert.key_usage().unwrap().expect("a key usage").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature());
    }

    /// The dev config's `limits.max_ttl` and the dev policy agree: the
    /// policy permits a mint at the configured maximum and not past it, so
    /// a request over it is refused by the limit, which names itself.
    #[test]
    fn the_dev_policy_permits_what_the_dev_config_allows() {
        use crate::identity::SpiffeId;
        use crate::policy::{Engine, Groups, MintContext, PolicyDoc, Request, Resource, schema};
        let dir = tempfile::tempdir().unwrap();
        let out = super::init(
            dir.path(),
            "example.org",
            &["agent".into()],
            "127.0.0.1:0",
            false,
        )
        .unwrap();
        let cfg = crate::config::Config::load(&out.config).unwrap();
        let max = cfg.limits.max_ttl.as_secs() as i64;
        assert_eq!(max, 900);
        let path = dir.path().join("policy.cedar");
        let doc = PolicyDoc::load(&path, &schema()).unwrap();
        let engine = Engine::with_doc(schema(), doc, Groups::new(Vec::new(), &[]), &path, 0);
        let agent = SpiffeId::new("spiffe://example.org/workload/agent").unwrap();
        let mint = |ttl| {
            Request::MintJwt(MintContext {
                task_id: "t".into(),
                ttl_seconds: ttl,
                break_glass: false,
                depth: 0,
            })
        };
        let db = Resource::Audience("db".into());
        assert!(engine.authorize(&agent, mint(max), &db).unwrap().allowed);
        let over = engine.authorize(&agent, mint(max + 1), &db).unwrap();
        assert!(!over.allowed);
        // Nothing permits it; the hint names the cap the policy keeps.
        assert_eq!(
            engine.hint(&agent, &mint(1800), &db).as_deref(),
            Some(
                "ttl_seconds 1800 is more than the policy permits here: policy \
                 `workloads-mint-own-tasks` permits it with ttl_seconds up to 900"
            )
        );
    }
}
