//! Why nothing permitted a request: when no policy matches, the engine
//! tries lower values of the request's own caps (ttl, lifetime, renewal
//! count, depth), one at a time, and names the policy that would permit the
//! request with the highest value it found. The hint speaks only of what the
//! caller asked for and the policies that would apply to it; a denial on
//! another workload's task never reaches the caller as a denial (it is
//! answered as not found), so no hint describes what the caller may not see.

use super::{Engine, Request, Resource};
use crate::identity::SpiffeId;

/// Bisection steps per attribute: enough for any value up to 2^32.
const MAX_STEPS: u32 = 32;

impl Engine {
    /// For a request no policy permits (and none forbids): the attribute
    /// that is likely the cause, e.g. "ttl_seconds 1800 is more than the
    /// policy permits here: policy `p` permits it with ttl_seconds up to
    /// 900". `None` when lowering no single attribute makes it permitted.
    pub fn hint(
        &self,
        principal: &SpiffeId,
        request: &Request,
        resource: &Resource,
    ) -> Option<String> {
        let permits = |name: &str, value: i64| {
            self.authorize(principal, request.with_bound(name, value), resource)
                .ok()
                .filter(|d| d.allowed)
        };
        for (name, value) in request.bounds() {
            if value <= 1 || permits(name, 1).is_none() {
                continue;
            }
            // `lo` is permitted, `hi` is not: the boundary is between.
            let (mut lo, mut hi) = (1i64, value);
            let mut steps = 0;
            while hi - lo > 1 && steps < MAX_STEPS {
                let mid = lo + (hi - lo) / 2;
                if permits(name, mid).is_some() {
                    lo = mid;
                } else {
                    hi = mid;
                }
                steps += 1;
            }
            let d = permits(name, lo)?;
            let ids: Vec<String> = d.policies.iter().map(|p| format!("`{p}`")).collect();
            return Some(format!(
                "{name} {value} is more than the policy permits here: policy {} permits it \
                 with {name} up to {lo}",
                ids.join(", ")
            ));
        }
        None
    }
}
