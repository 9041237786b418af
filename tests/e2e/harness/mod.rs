//! Reusable pieces for end-to-end tests: real PostgreSQL, a private CA, rustic-server, restic,
//! a demanding data set, tree comparison, process guards and a protected machine (an agent
//! enrolled, its repository and policy defined and assigned, running with its plan).

// Scenario modules each use a part of the harness; the self-test proves every piece, but not
// every convenience method is called from every build of this binary.
#![allow(dead_code, reason = "harness API shared by scenario modules")]

pub mod alerts;
pub mod browser;
pub mod cofre;
pub mod dataset;
pub mod gate;
pub mod pg;
pub mod pki;
pub mod procs;
pub mod protect;
pub mod rest_server;
pub mod restic;
pub mod store;
pub mod tree;

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped thread.
///
/// The synchronous harness uses this for its few async needs (an HTTPS health probe), so it
/// works both from plain `#[test]`s and from inside a `#[tokio::test]` runtime, where a
/// nested `block_on` would panic.
pub fn block_on_isolated<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a tokio runtime for the harness")
                    .block_on(fut)
            })
            .join()
            .expect("harness async helper panicked")
    })
}
