//! What the integration tests share, by concern: the engines a test runs
//! on, the system it starts, and the calls it makes.

#[macro_use]
mod engines;
mod api;
pub mod stand_in;
mod system;

pub use api::{ONE_COMMENT_FLOW, count_type, types};
pub use engines::{Engines, engines, postgres_url, unique};
pub use system::{CONVERGE, TestSystem, all, taking_events};

/// Fails the test with every problem found, counted, one per line.
pub fn assert_none(problems: &[String], what: &str) {
    assert!(
        problems.is_empty(),
        "{} {what}:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
