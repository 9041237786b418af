//! Cofre's policy rules, written once and shared: *when* a machine backs up (`cron`,
//! `schedule`), *how long* its history is kept (`retention`, restic's `forget` semantics) and
//! what a policy may say at all (`spec`, the validated specification the API accepts, the
//! controller stores and versions, and the agent receives in its plan).
//!
//! Everything here is pure: no clock is read and no I/O is done, so the controller, the agent
//! and the tests evaluate the same rules against whatever time they are given.

pub mod cron;
pub mod retention;
pub mod schedule;
pub mod spec;
