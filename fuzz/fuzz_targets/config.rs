//! Config loading: `Config::from_toml` (parse, resolve paths, validate) on
//! arbitrary text. It must refuse or accept, never panic; what it accepts
//! validates again unchanged, every SPIFFE pattern in it parses, and the
//! rate limit it configures answers (a token, or the wait for one) without
//! panicking, even once the burst is spent.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use taskmint::config::Config;
use taskmint::identity::SpiffePattern;
use taskmint::ratelimit::RateLimiter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text, Path::new("/etc/taskmint")) else {
        return;
    };
    cfg.validate().expect("an accepted config validates again");
    for pattern in cfg.policy.groups.iter().flat_map(|g| &g.members) {
        SpiffePattern::parse(pattern).expect("an accepted group pattern parses");
    }
    for rule in &cfg.ownership.rules {
        SpiffePattern::parse(&rule.pattern).expect("an accepted ownership pattern parses");
    }
    // Every path was made absolute against the config's directory.
    assert!(cfg.ca.cert.is_absolute() && cfg.policy.file.is_absolute());
    let _ = cfg.jwt_issuer();
    let rate = &cfg.limits.rate;
    if rate.burst <= 64 {
        let limiter = RateLimiter::new(rate.per_second, rate.burst);
        let refused = (0..=rate.burst)
            .filter(|_| limiter.check("w").is_err())
            .count();
        assert!(refused <= 1);
    }
});
