//! The target API: a small orders service described by an OpenAPI document.
//!
//! - [`core`]: authenticate (JWT against the IdP's JWKS), authorize per user and scope, answer.
//! - [`front`]: the axum router (also served through `lambda_http` on Lambda).

pub mod config;
pub mod core;
pub mod front;

pub use config::TargetConfig;
pub use core::Deps;
