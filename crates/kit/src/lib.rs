//! The service kit: everything the blog's services share and nothing that is
//! any one service's business.

pub mod background;
pub mod client;
pub mod correlation;
pub mod error;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod retry;
pub mod serve;
pub mod telemetry;

pub use correlation::Correlation;
pub use error::{ApiError, CreateRefusals, ErrorBody, FieldError};
pub use tokio_util::sync::CancellationToken;
