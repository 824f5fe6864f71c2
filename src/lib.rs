//! gatehouse: a secure API gateway.
//!
//! The binary (`main.rs`) reads flags and environment and hands the library
//! typed settings ([`app::StartOptions`]); [`app`] builds the shared state,
//! [`server::start`] serves it. Tests drive the same parts through
//! [`server::start`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub(crate) mod body;
mod breaker;
pub mod config;
pub(crate) mod conn;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod gateway;
pub mod openapi;
pub mod proxy;
pub mod ratelimit;
pub(crate) mod route;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
pub mod validate;
pub mod watch;

/// The boxed error type used for bodies and upstream failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
