//! The AgentCore Runtime agent.
//!
//! - [`core::handle`]: reads the user token from the allowlisted custom header, gets its own M2M
//!   token (cached), calls the Gateway's `tools/call` with `Authorization: Bearer <agent token>`
//!   and the user token in `X-Custom-UserToken`.
//! - [`front`]: the container contract (`POST /invocations`, `GET /ping`) as an axum router,
//!   also served through `lambda_http` on Lambda.

pub mod config;
pub mod core;
pub mod front;

pub use config::AgentConfig;
pub use core::Deps;
