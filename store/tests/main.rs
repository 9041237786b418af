//! Integration tests of cofre-store: the store runs in-process on 127.0.0.1:0 (its own runtime
//! thread) and is driven by the real restic CLI, reqwest and raw TCP.

mod common;

mod append_only;
mod config_fuzz;
mod hostile;
mod parse_fuzz;
mod quota;
mod restic_cycle;
mod rustic;
mod slow_clients;
mod upload;
