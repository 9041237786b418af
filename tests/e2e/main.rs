//! The single end-to-end test binary: the harness plus one module per scenario.

mod harness;

mod agent_expired;
mod agent_failover;
mod agent_install;
mod agent_install_pinned;
mod agent_limits;
mod agent_process;
mod agent_spool_full;
mod alerts;
mod apply;
mod audit;
mod cli;
mod environment;
mod foundation;
mod fuzz;
mod harness_selftest;
mod kill_points;
mod local_start;
mod maintenance;
mod maintenance_faults;
mod packaging;
mod packaging_deb;
mod people;
mod policies;
mod portal;
mod progress;
mod store;
mod store_failover;
