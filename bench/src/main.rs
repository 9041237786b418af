//! `cofre-bench`: parse arguments, pick the TLS crypto provider, call the library.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    // rustic_backend's reqwest brings aws-lc-rs next to our ring: with two providers compiled in,
    // rustls needs one chosen explicitly (as the agent does).
    let _ = rustls::crypto::ring::default_provider().install_default();
    cofre_bench::run(cofre_bench::Cli::parse())
}
