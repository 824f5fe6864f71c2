//! Integration tests: the real gateway on ephemeral loopback ports, real
//! backends behind it, real TLS in front of it.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

mod admin;
mod admin_token;
mod auth;
mod auth_budgets;
mod cluster;
mod console;
mod edge_conns;
mod edge_requests;
mod hostile;
mod jwt_config;
mod lambda;
mod lifecycle;
mod observability;
mod openapi;
mod openapi_config;
mod proxy;
mod ratelimit;
mod rules;
mod tls;
mod upstream;
mod usage;
