//! Intentionally empty: the end-to-end harness and its tests live in the `e2e` test binary
//! (`e2e/main.rs`), so that scenarios are modules of one binary rather than one binary each.
