//! The trust bundle served by `GetTrustBundle`: the roots of the issuer's
//! own trust domain and its JWT keys, with a persisted sequence.

use super::Issuer;
use crate::Error;
use crate::trust::{self, TrustBundleDoc};

impl Issuer {
    /// The bundle served by `GetTrustBundle`. Its sequence is persisted and
    /// raised only when the served roots or JWT keys change.
    pub async fn trust_bundle(&self) -> Result<TrustBundleDoc, Error> {
        use sha2::{Digest, Sha256};
        let bundles = self.material.bundles();
        let roots = bundles
            .get(&self.trust_domain)
            .map(|b| b.roots().to_vec())
            .unwrap_or_default();
        let jwks = [self.jwt.jwk()];
        let mut h = Sha256::new();
        for r in &roots {
            h.update((r.len() as u64).to_be_bytes());
            h.update(r.as_ref());
        }
        h.update(serde_json::to_vec(&jwks).expect("JWK serialises"));
        let seq = self
            .store
            .bundle_sequence(&hex::encode(h.finalize()))
            .await?;
        Ok(trust::build(self.trust_domain.as_str(), &roots, &jwks, seq))
    }
}
