//! `[ssf]`: the Shared Signals Framework transmitter (`src/ssf/`): the
//! issuer identifier its SETs carry and the receivers it delivers them to,
//! by RFC 8936 poll on the discovery listener or RFC 8935 push. Off unless
//! the section is present; it needs `[discovery]`, which serves it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Config;

/// The transmitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsfConfig {
    /// The transmitter's issuer identifier: an `https://` URL without query
    /// or fragment. Every SET (over SSF and on the gRPC feed) carries it as
    /// `iss`, and the transmitter metadata names it as `issuer`.
    pub issuer: String,
    /// The receivers, each acknowledging under its name.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
}

/// How a receiver gets its SETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SsfDelivery {
    /// RFC 8936: the receiver polls the discovery listener.
    Poll,
    /// RFC 8935: taskmint POSTs each SET to the receiver's `url`.
    Push,
}

impl SsfDelivery {
    /// `poll` or `push`, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Push => "push",
        }
    }
}

/// One receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// The name its acknowledgements are recorded under (delivery
    /// evidence, like a feed subscriber's).
    pub name: String,
    /// `poll` or `push`.
    pub delivery: SsfDelivery,
    /// Push: the receiver's endpoint (`https://`).
    #[serde(default)]
    pub url: Option<String>,
    /// Poll: the bearer token the receiver presents. Push: the one taskmint
    /// presents.
    #[serde(default)]
    pub token: Option<SecretToken>,
    /// Push: PEM roots that verify the receiver's certificate; web PKI roots
    /// (the `webpki-roots` crate) when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Push: client certificate chain (PEM) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Push: its private key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// A bearer token from the config: never printed, zeroized on drop.
#[derive(Clone)]
pub struct SecretToken(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl SecretToken {
    /// Wraps `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(zeroize::Zeroizing::new(token.into()))
    }

    /// The token itself, to present or compare.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretToken {
    // A config written back out must not carry the secret either.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Shortest token accepted: a poll token is the only thing between the
/// internet and the revocation feed.
pub const MIN_TOKEN_LEN: usize = 16;

/// Checks an `https://` URL with a host and no query or fragment; returns
/// the part after the scheme.
fn https_url<'a>(key: &str, url: &'a str) -> Result<&'a str, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{key} `{url}` must be an https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.contains(['?', '#']) || url.parse::<hyper::Uri>().is_err() {
        return Err(format!(
            "{key} `{url}` must name a host and have no query or fragment"
        ));
    }
    Ok(rest)
}

impl SsfConfig {
    /// Resolves relative paths against `base`.
    pub(super) fn resolve_paths(&mut self, base: &std::path::Path) {
        for r in &mut self.receivers {
            for p in [&mut r.ca, &mut r.client_cert, &mut r.client_key]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// The path of the issuer URL ("" when it has none, never a trailing
    /// slash): the transmitter metadata is also served at
    /// `/.well-known/ssf-configuration<path>`.
    pub fn issuer_path(&self) -> &str {
        let rest = self.issuer.strip_prefix("https://").unwrap_or_default();
        rest.find('/')
            .map(|i| rest[i..].trim_end_matches('/'))
            .unwrap_or_default()
    }

    /// Checks the values; `subscribers` are the `[[feed.subscribers]]`
    /// names, which receivers may not reuse.
    pub(super) fn validate<'a>(
        &self,
        subscribers: impl Iterator<Item = &'a str>,
    ) -> Result<(), String> {
        https_url("ssf.issuer", &self.issuer)?;
        let taken: std::collections::HashSet<&str> = subscribers.collect();
        let mut names = std::collections::HashSet::new();
        let mut poll_tokens = std::collections::HashSet::new();
        for r in &self.receivers {
            let n = &r.name;
            if n.is_empty() || n.len() > crate::issuer::MAX_SUBSCRIBER_LEN {
                return Err(format!(
                    "ssf.receivers: name `{n}` must be 1-{} bytes",
                    crate::issuer::MAX_SUBSCRIBER_LEN
                ));
            }
            if !names.insert(n.as_str()) {
                return Err(format!("ssf.receivers: name `{n}` is repeated"));
            }
            if taken.contains(n.as_str()) {
                return Err(format!(
                    "ssf.receivers: name `{n}` is also a feed.subscribers name; \
                     each acknowledges under its own"
                ));
            }
            if let Some(t) = &r.token {
                if t.expose().len() < MIN_TOKEN_LEN {
                    return Err(format!(
                        "ssf.receivers `{n}`: token must be at least {MIN_TOKEN_LEN} characters"
                    ));
                }
                // It travels in an `Authorization: Bearer` header.
                if !t.expose().bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "ssf.receivers `{n}`: token must be printable ASCII without spaces"
                    ));
                }
            }
            match r.delivery {
                SsfDelivery::Poll => {
                    let Some(t) = &r.token else {
                        return Err(format!(
                            "ssf.receivers `{n}`: a poll receiver needs a token (the bearer it presents)"
                        ));
                    };
                    // The token is how a poll names its receiver.
                    if !poll_tokens.insert(t.expose()) {
                        return Err(format!(
                            "ssf.receivers `{n}`: its token is another poll receiver's; give each its own"
                        ));
                    }
                    if r.url.is_some()
                        || r.ca.is_some()
                        || r.client_cert.is_some()
                        || r.client_key.is_some()
                    {
                        return Err(format!(
                            "ssf.receivers `{n}`: url, ca, client_cert and client_key are for push receivers"
                        ));
                    }
                }
                SsfDelivery::Push => {
                    let Some(url) = &r.url else {
                        return Err(format!("ssf.receivers `{n}`: a push receiver needs a url"));
                    };
                    https_url(&format!("ssf.receivers `{n}` url"), url)?;
                    match (&r.client_cert, &r.client_key) {
                        (Some(_), None) | (None, Some(_)) => {
                            return Err(format!(
                                "ssf.receivers `{n}`: client_cert and client_key go together"
                            ));
                        }
                        (None, None) if r.token.is_none() => {
                            return Err(format!(
                                "ssf.receivers `{n}`: a push receiver needs a token or a \
                                 client certificate (client_cert, client_key) to authenticate with"
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// The `iss` of the SETs this issuer signs: `ssf.issuer` when SSF is
    /// configured (the metadata's `issuer` must equal it), else the
    /// JWT-SVIDs' issuer.
    pub fn set_issuer(&self) -> String {
        match &self.ssf {
            Some(s) => s.issuer.clone(),
            None => self.jwt_issuer(),
        }
    }

    /// The SSF receivers (none without `[ssf]`).
    pub fn ssf_receivers(&self) -> &[ReceiverConfig] {
        self.ssf.as_ref().map_or(&[], |s| &s.receivers)
    }

    /// `[ssf]` is served by `[discovery]`, and its receivers' names are
    /// their own.
    pub(super) fn validate_ssf(&self) -> Result<(), String> {
        let Some(ssf) = &self.ssf else {
            return Ok(());
        };
        if self.discovery.is_none() {
            return Err(
                "[ssf] needs [discovery]: the transmitter metadata and the poll endpoint \
                 are served on the discovery listener"
                    .into(),
            );
        }
        ssf.validate(self.feed.subscribers.iter().map(|s| s.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-poll";

    fn poll(name: &str, token: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: name.into(),
            delivery: SsfDelivery::Poll,
            url: None,
            token: Some(SecretToken::new(token)),
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    fn push(name: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: name.into(),
            delivery: SsfDelivery::Push,
            url: Some("https://rp.example.org/events".into()),
            token: Some(SecretToken::new("push-token-0123456789")),
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }

    fn ssf(receivers: Vec<ReceiverConfig>) -> SsfConfig {
        SsfConfig {
            issuer: "https://issuer.example.org".into(),
            receivers,
        }
    }

    fn err(c: &SsfConfig, subscribers: &[&str]) -> String {
        c.validate(subscribers.iter().copied()).unwrap_err()
    }

    #[test]
    fn the_issuer_is_an_https_url_without_query_or_fragment() {
        ssf(vec![]).validate(std::iter::empty()).unwrap();
        for bad in [
            "http://issuer.example.org",
            "https://",
            "https:///path",
            "https://issuer.example.org?tenant=1",
            "https://issuer.example.org#x",
            "issuer.example.org",
        ] {
            let mut c = ssf(vec![]);
            c.issuer = bad.into();
            let e = err(&c, &[]);
            assert!(e.contains("ssf.issuer") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_issuer_path_is_where_the_path_suffixed_metadata_lives() {
        let mut c = ssf(vec![]);
        assert_eq!(c.issuer_path(), "");
        c.issuer = "https://issuer.example.org/".into();
        assert_eq!(c.issuer_path(), "");
        c.issuer = "https://issuer.example.org/tenants/a/".into();
        assert_eq!(c.issuer_path(), "/tenants/a");
    }

    #[test]
    fn receiver_names_are_unique_and_not_a_subscribers() {
        let e = err(&ssf(vec![poll("rp", TOKEN), push("rp")]), &[]);
        assert!(e.contains("`rp` is repeated"), "{e}");
        let e = err(&ssf(vec![poll("enforcer", TOKEN)]), &["enforcer"]);
        assert!(e.contains("also a feed.subscribers name"), "{e}");
        let e = err(&ssf(vec![poll("", TOKEN)]), &[]);
        assert!(e.contains("name ``"), "{e}");
        ssf(vec![poll("rp-a", TOKEN), push("rp-b")])
            .validate(["enforcer"].into_iter())
            .unwrap();
    }

    #[test]
    fn a_poll_receiver_needs_a_token_of_its_own_and_no_push_settings() {
        let mut r = poll("rp", TOKEN);
        r.token = None;
        let e = err(&ssf(vec![r]), &[]);
        assert!(e.contains("a poll receiver needs a token"), "{e}");
        let e = err(&ssf(vec![poll("rp", "short")]), &[]);
        assert!(e.contains("at least 16 characters"), "{e}");
        let e = err(&ssf(vec![poll("rp", "0123456789 abcdef\n")]), &[]);
        assert!(e.contains("printable ASCII without spaces"), "{e}");
        let e = err(&ssf(vec![poll("a", TOKEN), poll("b", TOKEN)]), &[]);
        assert!(
            e.contains("`b`: its token is another poll receiver's"),
            "{e}"
        );
        let mut r = poll("rp", TOKEN);
        r.url = Some("https://rp.example.org".into());
        let e = err(&ssf(vec![r]), &[]);
        assert!(e.contains("are for push receivers"), "{e}");
    }

    #[test]
    fn a_push_receiver_needs_an_https_url_and_a_token_or_a_client_certificate() {
        let mut r = push("rp");
        r.url = None;
        assert!(err(&ssf(vec![r]), &[]).contains("a push receiver needs a url"));
        let mut r = push("rp");
        r.url = Some("http://rp.example.org/events".into());
        let e = err(&ssf(vec![r]), &[]);
        assert!(e.contains("must be an https:// URL"), "{e}");
        let mut r = push("rp");
        r.token = None;
        let e = err(&ssf(vec![r.clone()]), &[]);
        assert!(e.contains("needs a token or a client certificate"), "{e}");
        r.client_cert = Some("c.pem".into());
        let e = err(&ssf(vec![r.clone()]), &[]);
        assert!(e.contains("client_cert and client_key go together"), "{e}");
        r.client_key = Some("c.key".into());
        ssf(vec![r]).validate(std::iter::empty()).unwrap();
    }

    #[test]
    fn tokens_never_print() {
        let r = push("rp");
        let shown = format!("{r:?}");
        assert!(!shown.contains("push-token"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let written = serde_json::to_string(&r).unwrap();
        assert!(!written.contains("push-token"), "{written}");
    }

    const BASE: &str = r#"
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
        path = "taskmint.db"
        [policy]
        file = "policy.cedar"
        [[feed.subscribers]]
        name = "enforcer"
        spiffe_id = "spiffe://example.org/enforcer"
    "#;

    const DISCOVERY: &str = r#"
        [discovery]
        listen = "127.0.0.1:8444"
        cert = "d.pem"
        key = "d.key"
    "#;

    const SSF: &str = r#"
        [ssf]
        issuer = "https://ssf.example.org/t1"
        [[ssf.receivers]]
        name = "siem"
        delivery = "push"
        url = "https://siem.example.org/events"
        ca = "siem-ca.pem"
        client_cert = "siem-client.pem"
        client_key = "siem-client.key"
        [[ssf.receivers]]
        name = "idp"
        delivery = "poll"
        token = "idp-poll-token-0123456789"
    "#;

    #[test]
    fn from_the_file_paths_resolve_and_sets_carry_the_ssf_issuer() {
        let text = format!("{BASE}{DISCOVERY}{SSF}");
        let cfg = Config::from_toml(&text, std::path::Path::new("/etc/tm")).unwrap();
        assert_eq!(cfg.set_issuer(), "https://ssf.example.org/t1");
        assert_eq!(cfg.jwt_issuer(), "spiffe://example.org/taskmint");
        let r = cfg.ssf_receivers();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].delivery, SsfDelivery::Push);
        assert_eq!(
            r[0].ca.as_deref(),
            Some(std::path::Path::new("/etc/tm/siem-ca.pem"))
        );
        assert_eq!(
            r[0].client_key.as_deref(),
            Some(std::path::Path::new("/etc/tm/siem-client.key"))
        );
        assert_eq!(
            r[1].token.as_ref().unwrap().expose(),
            "idp-poll-token-0123456789"
        );
        // Without [ssf] the SETs keep the JWT issuer.
        let cfg =
            Config::from_toml(&format!("{BASE}{DISCOVERY}"), std::path::Path::new(".")).unwrap();
        assert_eq!(cfg.set_issuer(), "spiffe://example.org/taskmint");
        assert!(cfg.ssf_receivers().is_empty());
    }

    #[test]
    fn ssf_needs_discovery_and_its_own_names_in_the_file() {
        let e = Config::from_toml(&format!("{BASE}{SSF}"), std::path::Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[ssf] needs [discovery]"), "{e}");
        let clash = SSF.replace("name = \"idp\"", "name = \"enforcer\"");
        let e = Config::from_toml(
            &format!("{BASE}{DISCOVERY}{clash}"),
            std::path::Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`enforcer` is also a feed.subscribers name"),
            "{e}"
        );
        let bad = SSF.replace("delivery = \"poll\"", "delivery = \"carrier-pigeon\"");
        let e = Config::from_toml(
            &format!("{BASE}{DISCOVERY}{bad}"),
            std::path::Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("carrier-pigeon"), "{e}");
    }
}
