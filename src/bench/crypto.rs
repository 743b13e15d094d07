//! The in-process ceiling: what the signing work alone costs on this
//! machine, with no network, policy or store. Two figures per credential
//! kind: the bare primitive (aws-lc-rs), and the issuer's own signing path
//! (what `MintJwt` / `MintX509` run between policy and store, including the
//! post-signing check of what was signed). Per core, and for all cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::EcdsaKeyPair;
use serde::Serialize;

use taskmint::ca::{self, SigningCa, X509Template};
use taskmint::identity::{SpiffeId, TaskId};
use taskmint::jwt::{Claims, Confirmation, JwtSigner};

/// One ceiling figure.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// What was measured.
    pub what: String,
    /// Microseconds per operation on one core.
    pub us_per_op: f64,
    /// Operations per second on one core.
    pub per_core_per_s: f64,
    /// Operations per second with one thread per core.
    pub all_cores_per_s: f64,
    /// Threads used for `all_cores_per_s`.
    pub threads: usize,
}

/// The signing material a ceiling run needs.
pub struct Material {
    /// The issuer's JWT key.
    pub jwt: JwtSigner,
    /// The issuer's signing CA.
    pub ca: SigningCa,
    /// Raw P-256 key (PKCS#8) for the bare primitive.
    pub raw: EcdsaKeyPair,
    /// CSRs prepared ahead (DER).
    pub csrs: Vec<Vec<u8>>,
}

fn claims(i: u64) -> Claims {
    let now = taskmint::clock::now_unix();
    Claims {
        sub: "spiffe://example.org/workload/bench-0".into(),
        aud: "db".into(),
        iat: now,
        nbf: now - 10,
        exp: now + 300,
        jti: format!("{i:032x}"),
        iss: "spiffe://example.org/taskmint".into(),
        task_id: "bench".into(),
        task_holder: "spiffe://example.org/workload/bench-0".into(),
        owner: String::new(),
        break_glass: false,
        act: None,
        cnf: Confirmation {
            x5t_s256: "LrC7keQcobUGtbNWk9GUbW7eOv6Bu7q_-oP7bnTqh-8".into(),
        },
    }
}

/// Runs `op` repeatedly for `d` on one thread; returns operations done.
fn spin(d: Duration, mut op: impl FnMut(u64)) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        for _ in 0..16 {
            op(n);
            n += 1;
        }
    }
    (n, start.elapsed())
}

fn measure(what: &str, d: Duration, threads: usize, op: Arc<dyn Fn(u64) + Send + Sync>) -> Ceiling {
    // Warm caches and lazy initialisation first.
    spin(Duration::from_millis(100), |i| op(i));
    let (n, el) = spin(d, |i| op(i));
    let per_core = n as f64 / el.as_secs_f64();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = op.clone();
            std::thread::spawn(move || spin(d, |i| op(i)))
        })
        .collect();
    let all: f64 = handles
        .into_iter()
        .map(|h| {
            let (n, el) = h.join().expect("ceiling thread");
            n as f64 / el.as_secs_f64()
        })
        .sum();
    Ceiling {
        what: what.to_owned(),
        us_per_op: 1e6 / per_core,
        per_core_per_s: per_core,
        all_cores_per_s: all,
        threads,
    }
}

/// Measures the four ceilings for `d` each.
pub fn ceilings(m: Arc<Material>, d: Duration) -> Vec<Ceiling> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let message = serde_json::to_vec(&claims(0)).expect("claims serialise");
    let rng = SystemRandom::new();
    let mut out = Vec::new();
    let mm = m.clone();
    out.push(measure(
        "ES256 signature (aws-lc-rs, parsed key)",
        d,
        threads,
        Arc::new(move |_| {
            mm.raw.sign(&rng, &message).expect("sign");
        }),
    ));
    let mm = m.clone();
    out.push(measure(
        "JWT-SVID: claims -> signed token -> validated (issuer path)",
        d,
        threads,
        Arc::new(move |i| {
            mm.jwt.sign(&claims(i)).expect("jwt");
        }),
    ));
    for checked in [false, true] {
        let mm = m.clone();
        let id = SpiffeId::new("spiffe://example.org/workload/bench-0").expect("id");
        let task = TaskId::parse("bench").expect("task id");
        out.push(measure(
            if checked {
                "X.509-SVID: CSR parse + verify -> signed leaf -> validated (issuer path)"
            } else {
                "X.509 leaf from a CSR: parse + verify CSR, sign"
            },
            d,
            threads,
            Arc::new(move |i| {
                let csr = &mm.csrs[i as usize % mm.csrs.len()];
                let key = ca::parse_csr(csr).expect("csr");
                let mut serial = [0u8; 19];
                serial[0] = 0x40;
                serial[11..].copy_from_slice(&i.to_be_bytes());
                let now = taskmint::clock::now_unix();
                let t = X509Template {
                    spiffe_id: &id,
                    task_id: &task,
                    task_holder: "spiffe://example.org/workload/bench-0",
                    owner: "",
                    break_glass: false,
                    serial: &serial,
                    not_before: now - 10,
                    not_after: now + 300,
                };
                if checked {
                    mm.ca.issue(&t, &key).expect("leaf");
                } else {
                    mm.ca.sign_unchecked(&t, &key).expect("leaf");
                }
            }),
        ));
    }
    out
}
