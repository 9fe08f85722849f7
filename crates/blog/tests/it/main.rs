//! The integration tests: one binary, a module per concern. Each test that
//! runs on several engine combinations is one named test per combination
//! (`faults::a_status_never_moves_back::postgres_nats`), so a failure says
//! which.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod bad_input;
mod course_flow;
mod faults;
mod nats;
mod pipeline;
mod process;
