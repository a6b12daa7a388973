//! The token broker (central account): a caller proves its IAM identity with a presigned
//! `sts:GetCallerIdentity` request, the broker checks its role against a policy, reads the service
//! credential from Secrets Manager and returns a short-lived service token from the IdP.
//!
//! - [`core::Broker::handle`]: the whole decision, one `POST /token` body in, a reply out.
//! - [`policy`]: which roles may receive which credentials.
//! - [`secrets`]: Secrets Manager (real SDK) or a local file, behind one trait.
//! - [`front`]: axum router and the Lambda front door. [`config`]: environment.

pub mod config;
pub mod core;
pub mod front;
pub mod policy;
pub mod secrets;

pub use core::{Broker, BrokerSettings, Reply};
