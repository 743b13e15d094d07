//! Trust bundles: the root certificates of each trust domain, kept apart so a
//! chain is only ever checked against the bundle of its own trust domain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, TrustAnchor};
use spiffe::TrustDomain;

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read.
    #[error("cannot read bundle `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no certificate, or one that cannot be a trust anchor.
    #[error("bad bundle `{path}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file in the bundle directory is not named after a trust domain.
    #[error("bundle file `{0}` is not named `<trust-domain>.pem`")]
    BadName(PathBuf),
}

/// The roots of one trust domain.
#[derive(Debug, Clone)]
pub struct Bundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Bundle {
    /// Builds a bundle from DER roots.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        if roots.is_empty() {
            return Err("no certificate in bundle".into());
        }
        let anchors = roots
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| format!("certificate is not a usable trust anchor: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roots, anchors })
    }

    /// Reads a PEM bundle file.
    pub fn from_pem_file(path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| BundleError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let roots = crate::pem::certs(&bytes).map_err(invalid)?;
        Self::from_der(roots).map_err(invalid)
    }

    /// The root certificates, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

/// Bundles by trust domain.
#[derive(Debug, Clone, Default)]
pub struct TrustBundles {
    by_domain: HashMap<TrustDomain, Bundle>,
}

impl TrustBundles {
    /// Adds or replaces the bundle of `td`.
    pub fn insert(&mut self, td: TrustDomain, bundle: Bundle) {
        self.by_domain.insert(td, bundle);
    }

    /// The bundle of `td`, if that trust domain is trusted.
    pub fn get(&self, td: &TrustDomain) -> Option<&Bundle> {
        self.by_domain.get(td)
    }

    /// Trusted trust domains, sorted.
    pub fn domains(&self) -> Vec<&TrustDomain> {
        let mut v: Vec<_> = self.by_domain.keys().collect();
        v.sort();
        v
    }

    /// Loads the configured bundles: the explicit list, then every
    /// `<trust-domain>.pem` in `dir`. A missing `dir` is empty, not an error,
    /// so a federation directory can be created after start. Any failure is
    /// an error (used at start, where a broken config must not serve).
    pub fn load(
        explicit: &[(TrustDomain, PathBuf)],
        dir: Option<&Path>,
    ) -> Result<Self, BundleError> {
        let (out, mut errors) = Self::load_lenient(explicit, dir, None);
        match errors.is_empty() {
            true => Ok(out),
            false => Err(errors.remove(0)),
        }
    }

    /// Like [`TrustBundles::load`], but each source fails alone: a broken
    /// file keeps that trust domain's `previous` bundle (or leaves it out)
    /// and is reported, while every other source still updates. A broken
    /// partner file must not block removing a compromised root elsewhere.
    pub fn load_lenient(
        explicit: &[(TrustDomain, PathBuf)],
        dir: Option<&Path>,
        previous: Option<&TrustBundles>,
    ) -> (Self, Vec<BundleError>) {
        let mut out = Self::default();
        let mut errors = Vec::new();
        let keep_previous =
            |out: &mut Self, errors: &mut Vec<BundleError>, td: &TrustDomain, e: BundleError| {
                if let Some(b) = previous.and_then(|p| p.get(td)) {
                    out.insert(td.clone(), b.clone());
                }
                errors.push(e);
            };
        for (td, path) in explicit {
            match Bundle::from_pem_file(path) {
                Ok(b) => out.insert(td.clone(), b),
                Err(e) => keep_previous(&mut out, &mut errors, td, e),
            }
        }
        if let Some(dir) = dir {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, errors),
                Err(source) => {
                    errors.push(BundleError::Read {
                        path: dir.to_owned(),
                        source,
                    });
                    return (out, errors);
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            paths.sort();
            for path in paths {
                let Some(td) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| TrustDomain::new(s).ok())
                else {
                    errors.push(BundleError::BadName(path.clone()));
                    continue;
                };
                // An explicit entry wins over a file of the same trust domain.
                if explicit.iter().any(|(t, _)| *t == td) {
                    continue;
                }
                match Bundle::from_pem_file(&path) {
                    Ok(b) => out.insert(td, b),
                    Err(e) => keep_previous(&mut out, &mut errors, &td, e),
                }
            }
        }
        (out, errors)
    }
}
