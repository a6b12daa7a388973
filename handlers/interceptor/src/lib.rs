//! The Gateway REQUEST interceptor: passthrough mode (the user's JWT goes on) and broker mode
//! (a service token from the token broker replaces it; [`broker_client`]).
//!
//! - [`core::handle`]: event in → output out (pure apart from JWT verification).
//! - [`front`]: the two front doors, a Lambda (`lambda_runtime`) and an axum router that speaks
//!   Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`) for the local stack.

pub mod broker_client;
pub mod config;
pub mod core;
pub mod front;

pub use config::InterceptorConfig;
pub use core::{Deps, handle};
