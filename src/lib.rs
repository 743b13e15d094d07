//! taskmint: a gRPC issuer of per-task, short-lived credentials for workloads
//! that already hold a SPIFFE X.509-SVID.
//!
//! A workload connects over mTLS with its SVID; taskmint authenticates it by
//! that SVID alone, and mints X.509-SVIDs (from the workload's CSR) or
//! JWT-SVIDs bound to the caller's SPIFFE ID and a task id. Every credential
//! is durable in the store before it is returned.
//!
//! # Layout
//!
//! Every module, each owning one thing; the doors between them are narrow:
//! only [`grpc`] knows protobuf and `tonic::Status`, only [`store`] knows
//! SQL, only [`policy`] knows Cedar, only [`ca`] and [`jwt`] hold signing
//! keys. `docs/ARCHITECTURE.md` draws a mint and a revocation through them.
//!
//! - [`clock`]: Unix seconds and RFC 3339.
//! - [`config`]: the `taskmint.toml` tree and its validation.
//! - [`pem`]: PEM reading for certificates and keys.
//! - [`identity`]: SPIFFE IDs, task ids, ID patterns, trust bundles, the
//!   caller-SVID rules, the SPIFFE Workload API as a source of SVIDs.
//! - [`tls`]: rustls server config, the hot-reloaded bundles and serving SVID.
//! - [`ca`]: the per-task X.509 signing CA (template, sign, validate, CRL).
//! - [`jwt`]: JWT-SVID claims, ES256 signing, the JWK.
//! - [`trust`]: the trust bundle document served to relying parties.
//! - [`audit`]: audit events, the hash chain and its verification.
//! - [`retention`]: what ages out of the store (`store.retention`), the
//!   audit archive and the checkpoint the trail is pruned behind.
//! - [`ratelimit`]: per-workload limits: a token bucket per class of call,
//!   open watch streams, refusals counted for the audit trail.
//! - [`policy`]: Cedar: actions and their typed contexts, entities, the
//!   policy document and its reload, evaluation.
//! - [`store`]: the `Store` trait, its records and conformance suite, the
//!   SQLite backend (one writer thread owns every write) and the PostgreSQL
//!   backend (row locks in each transaction).
//! - [`issuer`]: the gate (rate limit, policy, audit, refusal) and one file
//!   per capability: tasks, mint, renew, revoke, feed, admin, bundle.
//! - [`revocation`]: the ordered revocation log, live hub, watch feed,
//!   delivery evidence, deadline reaper, SETs.
//! - [`grpc`]: the three services (`Issuer`, `Revocations`, `Admin`), one
//!   file each, the accept loop, the guard layer that admits every call
//!   before it is decoded, the codec, the one Error -> Status map.
//! - [`ops`]: what is served besides gRPC: the discovery listener (OIDC
//!   discovery, JWKS, SPIFFE bundle endpoint).
//! - [`ssf`]: the Shared Signals transmitter on the discovery listener:
//!   SSF 1.0 metadata, RFC 8936 poll, RFC 8935 push to configured receivers.
//! - [`server`]: assembly from config; `serve` and the tests start here.
//! - [`ops`]: the operations listener (metrics, `/healthz`, `/readyz`), the
//!   log format, the caller's trace context.
//! - [`enforce`]: `taskmint enforce`, the sidecar that follows the feed
//!   into a deny set and answers Envoy's ext_authz `Check`, failing closed
//!   when the feed is stale; embeddable as a library.
//! - [`client`]: a Rust client for workloads (SVID from files or the Workload
//!   API), with a resuming feed watcher.
//! - [`devca`]: a development trust domain (used by `dev init` and tests).
//! - [`cli`]: the `taskmint` command line, one file per subcommand.
//!
//! `taskmint bench` lives in the binary (`src/bench/`), not here, so the
//! library pulls in no benchmarking or plotting dependencies.
#![forbid(unsafe_code)]

pub mod audit;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod devca;
pub mod enforce;
mod error;
pub mod grpc;
pub mod identity;
pub mod issuer;
pub mod jwt;
pub mod ops;
pub mod pem;
pub mod policy;
pub mod ratelimit;
pub mod retention;
pub mod revocation;
pub mod server;
pub mod ssf;
pub mod store;
pub mod tls;
pub mod trust;

pub use error::Error;
