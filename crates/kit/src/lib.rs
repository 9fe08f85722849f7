//! The service kit: everything the blog's services share and nothing that is
//! any one service's business.

pub mod client;
pub mod error;
pub mod health;
pub mod http;
pub mod retry;
pub mod serve;
pub mod telemetry;

pub use error::{ApiError, FieldError};
pub use tokio_util::sync::CancellationToken;
