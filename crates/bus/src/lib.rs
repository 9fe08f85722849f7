//! The bus as a service sees it: a place to publish the outbox's events and a
//! source of events to apply exactly once.
//!
//! - [`relay`] moves committed outbox rows to the bus, oldest first, and
//!   deletes each only after the bus has acknowledged it.
//! - [`Consumer`] applies an incoming event and records it in one
//!   transaction, so a redelivery changes nothing.
//! - [`catch_up`] replays what the bus stored since the last applied event.

mod client;
mod consumer;
mod nats;
mod relay;
mod wiring;

pub use client::{BusClient, BusConfig, BusError, DEFAULT_STREAM, Rejected};
pub use consumer::{Consumer, ConsumesNothing, Handler, Outcome, catch_up, consume, events_route};
pub use nats::MAX_DELIVER;
pub use relay::{PUBLISH_WAIT, RelayState, relay};
pub use wiring::{BuildError, ServiceConfig, readiness};
