//! tokentrail auth: JWT verification pinned per issuer, JWKS caching, token minting for the local
//! IdP, and the closed set of failure reasons (re-exported from telemetry, which records them).

pub mod claims;
pub mod iam;
pub mod jwks;
pub mod mint;
pub mod oauth;
pub mod verify;
pub mod wire;

pub use claims::Claims;
pub use jwks::{JwksCache, JwksConfig};
pub use mint::{MintError, SigningKey};
pub use telemetry::FailureReason;
pub use verify::{AuthError, IssuerPolicy, VerifiedToken, Verifier, bearer_token};
pub use wire::{Rejection, RejectionBody};
