//! The single end-to-end test binary: the harness plus one module per scenario.

mod harness;

mod harness_selftest;
mod foundation;
