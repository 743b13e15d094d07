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
//! - [`clock`]: Unix seconds and RFC 3339.
//! - [`config`]: the `taskmint.toml` tree and its validation.
//! - [`identity`]: SPIFFE IDs, task ids, trust bundles, the caller-SVID rules.
//! - [`tls`]: rustls server config, the hot-reloaded bundles and serving SVID.
//! - [`ca`]: the per-task X.509 signing CA (template, sign, validate).
//! - [`jwt`]: JWT-SVID claims, ES256 signing, the JWK.
//! - [`trust`]: the trust bundle document served to relying parties.
//! - [`store`]: the `Store` trait and its SQLite backend; the only SQL.
//! - [`issuer`]: tasks, minting, renewal, revocation, status, CRL.
//! - [`revocation`]: the ordered revocation log, live hub, watch feed,
//!   delivery evidence, deadline reaper, SETs.
//! - [`grpc`]: the only protobuf/`tonic::Status` code; accept loop and auth gate.
//! - [`server`]: assembly from config; `serve` and the tests start here.
//! - [`client`]: a Rust client for workloads.
//! - [`devca`]: a development trust domain (used by `dev init` and tests).
//! - [`cli`]: the `taskmint` command line.
#![forbid(unsafe_code)]

pub mod audit;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod devca;
mod error;
pub mod grpc;
pub mod identity;
pub mod issuer;
pub mod jwt;
pub mod pem;
pub mod policy;
pub mod ratelimit;
pub mod revocation;
pub mod server;
pub mod store;
pub mod tls;
pub mod trust;

pub use error::Error;
