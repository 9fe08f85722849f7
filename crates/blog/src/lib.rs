//! The `blog` binary's library half: how each service is started from a
//! configuration, alone (`blog serve`) or all together (`blog up`). Kept apart
//! from `main` so integration tests start the very same code.

pub mod cli;
pub mod ops;
pub mod parts;
pub mod report;
pub mod settings;
pub mod startup;
