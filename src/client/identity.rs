//! Where a client's identity comes from: flags, `TASKMINT_*` variables, the
//! SPIFFE Workload API, or the dev trust domain, in that order (the README's
//! "Client identity" section is the user-facing statement of these rules).
//!
//! 1. `--workload-api URI`: the SVID (and the issuer's bundle) from a SPIRE
//!    agent. Giving `--svid`/`--svid-key` too is an error, not a tie-break.
//! 2. `--svid FILE --svid-key FILE`.
//! 3. `TASKMINT_SVID` + `TASKMINT_SVID_KEY`.
//! 4. `SPIFFE_ENDPOINT_SOCKET`: the Workload API.
//! 5. The dev identity `certs/dev/agent.{pem,key}`, looked up in the current
//!    directory (where `taskmint dev init` and the first `taskmint serve`
//!    write it), and only when nothing above is given. When it is missing
//!    the error names the path tried and every way to give an identity.
//!
//! The roots that verify the issuer: `--bundle`, else `TASKMINT_BUNDLE`,
//! else the Workload API's bundle of the issuer's trust domain when the SVID
//! comes from it, else `bundle.pem` in the SVID file's own directory.

use std::path::{Path, PathBuf};

use super::ClientError;

/// The variable naming the SVID chain file.
pub const SVID_ENV: &str = "TASKMINT_SVID";
/// The variable naming the SVID key file.
pub const SVID_KEY_ENV: &str = "TASKMINT_SVID_KEY";
/// The variable naming the bundle file.
pub const BUNDLE_ENV: &str = "TASKMINT_BUNDLE";
/// Where the dev identity lives, relative to the current directory.
pub const DEV_DIR: &str = "certs/dev";

/// What the caller asked for explicitly (command-line flags).
#[derive(Debug, Clone, Default)]
pub struct IdentityFlags {
    /// `--workload-api`.
    pub workload_api: Option<String>,
    /// `--svid`.
    pub svid: Option<PathBuf>,
    /// `--svid-key`.
    pub svid_key: Option<PathBuf>,
    /// `--bundle`.
    pub bundle: Option<PathBuf>,
}

/// The identity a client presents, and the roots it verifies the issuer
/// with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A SPIFFE Workload API endpoint; `bundle` overrides its roots.
    WorkloadApi {
        /// The endpoint URI (or absolute socket path).
        endpoint: String,
        /// An explicit bundle file, if one was given.
        bundle: Option<PathBuf>,
    },
    /// PEM files.
    Files {
        /// SVID chain, leaf first.
        svid: PathBuf,
        /// PKCS#8 key.
        svid_key: PathBuf,
        /// Roots that verify the issuer.
        bundle: PathBuf,
    },
}

impl IdentitySource {
    /// Applies the precedence above to `flags`, the process environment and
    /// the current directory.
    pub fn resolve(flags: &IdentityFlags) -> Result<Self, ClientError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::resolve_with(flags, |k| std::env::var(k).ok(), &cwd)
    }

    /// [`IdentitySource::resolve`] with the environment and the current
    /// directory given (for tests).
    pub fn resolve_with(
        flags: &IdentityFlags,
        env: impl Fn(&str) -> Option<String>,
        cwd: &Path,
    ) -> Result<Self, ClientError> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let bundle_given = flags
            .bundle
            .clone()
            .or_else(|| env(BUNDLE_ENV).map(PathBuf::from));
        let pair =
            |svid: Option<PathBuf>, key: Option<PathBuf>, names: (&str, &str)| match (svid, key) {
                (Some(s), Some(k)) => Ok(Some((s, k))),
                (None, None) => Ok(None),
                (Some(_), None) => Err(ClientError::Config(format!(
                    "{} is given without {}: give both, the SVID chain and its key",
                    names.0, names.1
                ))),
                (None, Some(_)) => Err(ClientError::Config(format!(
                    "{} is given without {}: give both, the SVID chain and its key",
                    names.1, names.0
                ))),
            };
        let files = |(svid, svid_key): (PathBuf, PathBuf)| {
            let bundle = match &bundle_given {
                Some(b) => b.clone(),
                None => beside(&svid)?,
            };
            Ok(Self::Files {
                svid,
                svid_key,
                bundle,
            })
        };
        if let Some(endpoint) = &flags.workload_api {
            if flags.svid.is_some() || flags.svid_key.is_some() {
                return Err(ClientError::Config(
                    "--workload-api and --svid/--svid-key name two identities: give one".into(),
                ));
            }
            return Ok(Self::WorkloadApi {
                endpoint: endpoint.clone(),
                bundle: bundle_given,
            });
        }
        let flag_files = pair(
            flags.svid.clone(),
            flags.svid_key.clone(),
            ("--svid", "--svid-key"),
        )?;
        if let Some(p) = flag_files {
            return files(p);
        }
        let env_files = pair(
            env(SVID_ENV).map(PathBuf::from),
            env(SVID_KEY_ENV).map(PathBuf::from),
            (SVID_ENV, SVID_KEY_ENV),
        )?;
        if let Some(p) = env_files {
            return files(p);
        }
        if let Some(endpoint) = env(crate::identity::ENDPOINT_ENV) {
            return Ok(Self::WorkloadApi {
                endpoint,
                bundle: bundle_given,
            });
        }
        let dev = cwd.join(DEV_DIR);
        let svid = dev.join("agent.pem");
        if !svid.is_file() {
            return Err(ClientError::Config(format!(
                "no workload identity: give --workload-api URI, or --svid FILE and --svid-key FILE \
                 (or {SVID_ENV} and {SVID_KEY_ENV}), or export {}; the dev identity `{}` \
                 (tried only when none of these is given) does not exist",
                crate::identity::ENDPOINT_ENV,
                svid.display()
            )));
        }
        files((svid, dev.join("agent.key")))
    }
}

/// `bundle.pem` in the SVID file's directory, which must exist.
fn beside(svid: &Path) -> Result<PathBuf, ClientError> {
    let dir = svid
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let bundle = dir.join("bundle.pem");
    if bundle.is_file() {
        Ok(bundle)
    } else {
        Err(ClientError::Config(format!(
            "no bundle to verify the issuer: `{}` (beside the SVID) does not exist; \
             give --bundle FILE or {BUNDLE_ENV}",
            bundle.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        flags: IdentityFlags,
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<IdentitySource, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        IdentitySource::resolve_with(&flags, |k| env.get(k).cloned(), cwd)
            .map_err(|e| e.to_string())
    }

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        d
    }

    #[test]
    fn flags_beat_variables_which_beat_the_workload_api_variable() {
        let d = dir_with(&["f/a.pem", "f/bundle.pem", "e/b.pem", "e/bundle.pem"]);
        let p = |s: &str| d.path().join(s);
        let env = [
            (SVID_ENV, p("e/b.pem").to_str().unwrap().to_owned()),
            (SVID_KEY_ENV, p("e/b.key").to_str().unwrap().to_owned()),
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///agent.sock".into()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let flags = IdentityFlags {
            svid: Some(p("f/a.pem")),
            svid_key: Some(p("f/a.key")),
            ..Default::default()
        };
        assert_eq!(
            resolve(flags, &env, d.path()).unwrap(),
            IdentitySource::Files {
                svid: p("f/a.pem"),
                svid_key: p("f/a.key"),
                bundle: p("f/bundle.pem"),
            }
        );
        assert_eq!(
            resolve(IdentityFlags::default(), &env, d.path()).unwrap(),
            IdentitySource::Files {
                svid: p("e/b.pem"),
                svid_key: p("e/b.key"),
                bundle: p("e/bundle.pem"),
            }
        );
        assert_eq!(
            resolve(IdentityFlags::default(), &env[2..], d.path()).unwrap(),
            IdentitySource::WorkloadApi {
                endpoint: "unix:///agent.sock".into(),
                bundle: None,
            }
        );
        let flags = IdentityFlags {
            workload_api: Some("unix:///other.sock".into()),
            bundle: Some(p("roots.pem")),
            ..Default::default()
        };
        assert_eq!(
            resolve(flags, &env, d.path()).unwrap(),
            IdentitySource::WorkloadApi {
                endpoint: "unix:///other.sock".into(),
                bundle: Some(p("roots.pem")),
            }
        );
    }

    #[test]
    fn the_dev_identity_is_used_only_when_nothing_is_given_and_named_when_missing() {
        let d = dir_with(&["certs/dev/agent.pem", "certs/dev/bundle.pem"]);
        let dev = d.path().join("certs/dev");
        assert_eq!(
            resolve(IdentityFlags::default(), &[], d.path()).unwrap(),
            IdentitySource::Files {
                svid: dev.join("agent.pem"),
                svid_key: dev.join("agent.key"),
                bundle: dev.join("bundle.pem"),
            }
        );
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(IdentityFlags::default(), &[], empty.path()).unwrap_err();
        let tried = empty.path().join("certs/dev/agent.pem");
        assert!(e.contains(&format!("`{}`", tried.display())), "{e}");
        for way in [
            "--workload-api",
            "--svid FILE",
            "TASKMINT_SVID",
            "SPIFFE_ENDPOINT_SOCKET",
        ] {
            assert!(e.contains(way), "{way} missing from: {e}");
        }
    }

    #[test]
    fn half_an_identity_or_two_identities_are_refused() {
        let d = dir_with(&[]);
        let flags = IdentityFlags {
            svid: Some("a.pem".into()),
            ..Default::default()
        };
        let e = resolve(flags, &[], d.path()).unwrap_err();
        assert!(e.contains("--svid is given without --svid-key"), "{e}");
        let e = resolve(IdentityFlags::default(), &[(SVID_KEY_ENV, "k")], d.path()).unwrap_err();
        assert!(
            e.contains("TASKMINT_SVID_KEY is given without TASKMINT_SVID"),
            "{e}"
        );
        let flags = IdentityFlags {
            workload_api: Some("unix:///a.sock".into()),
            svid: Some("a.pem".into()),
            ..Default::default()
        };
        let e = resolve(flags, &[], d.path()).unwrap_err();
        assert!(e.contains("two identities"), "{e}");
    }

    #[test]
    fn a_missing_bundle_beside_the_svid_is_named() {
        let d = dir_with(&["a.pem"]);
        let flags = IdentityFlags {
            svid: Some(d.path().join("a.pem")),
            svid_key: Some(d.path().join("a.key")),
            ..Default::default()
        };
        let e = resolve(flags.clone(), &[], d.path()).unwrap_err();
        assert!(
            e.contains(&format!("`{}`", d.path().join("bundle.pem").display())),
            "{e}"
        );
        assert!(e.contains("--bundle FILE or TASKMINT_BUNDLE"), "{e}");
        let ok = resolve(flags, &[(BUNDLE_ENV, "/roots.pem")], d.path()).unwrap();
        assert!(
            matches!(ok, IdentitySource::Files { bundle, .. } if bundle == Path::new("/roots.pem"))
        );
    }
}
