//! Cofre's controller: stores policies, machines, jobs, snapshots and audit events in
//! PostgreSQL; serves agents over gRPC with mutual TLS from its own CA; serves the JSON REST
//! API. `main.rs` only parses arguments and calls into here.

pub mod alerts;
pub mod api;
pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod db;
pub mod enrollment;
pub mod error;
pub mod events;
pub mod groups;
pub mod grpc;
pub mod http_server;
pub mod install;
pub mod jobs;
pub mod jwt;
pub mod keys;
pub mod machines;
pub mod maintenance;
pub mod pki;
pub mod plans;
pub mod policies;
pub mod portal;
pub mod repositories;
pub mod seal;
pub mod serve;
pub mod sessions;
pub mod state;
pub mod stores;
pub mod tls_listener;
pub mod up;
pub mod users;

/// Initialises tracing: `pretty` for people, `json` for log collectors.
pub fn init_tracing(format: &str, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("COFRE_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests;
