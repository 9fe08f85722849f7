//! The bus as a service sees it: a place to publish the outbox's events and a
//! source of events to apply exactly once.
//!
//! - [`relay`] moves committed outbox rows to the bus, oldest first, and
//!   deletes each only after the bus has acknowledged it.
//! - [`Consumer`] applies an incoming event and records it in one
//!   transaction, so a redelivery changes nothing.
//! - [`catch_up`] replays what the bus stored since the last applied event.
//! - [`Rebuilder`] applies the whole log again to a cleared read model.

mod client;
mod consumer;
mod nats;
mod nats_config;
mod rebuild;
mod relay;
mod wiring;

pub use client::{BusClient, BusConfig, BusError, Rejected};
pub use consumer::{
    BatchResult, BatchResults, Consumer, ConsumesNothing, DeadLetter, Handler, Outcome, Received,
    catch_up, consume, events_api, events_route,
};
pub use nats::{MAX_DELIVER, Nats, Placed, StreamEvent};
pub use nats_config::{
    DEFAULT_MAX_BYTES, DEFAULT_STREAM, NatsAuth, NatsConfig, StreamConfig, parse_size, show_size,
};
pub use rebuild::{Clear, Phase, Progress, Rebuilder, Reset, rebuild_api, rebuild_routes};
pub use relay::{PUBLISH_WAIT, RelayState, relay};
pub use wiring::{BuildError, Emitter, ServiceConfig, readiness};
