//! Operations: what taskmint serves besides its mTLS gRPC API, for people
//! and systems that hold no SVID.
//!
//! - [`discovery`]: the optional HTTPS listener for relying parties (OpenID
//!   Connect discovery, the JWKS, the SPIFFE bundle endpoint).

pub mod discovery;
