//! crm-sync: push customers, leads and appointments from a voice-AI booking assistant into CRMs.
//!
//! The domain (`domain`), the ports and their implementations (`store`, `crm`), the operations
//! (`sync`) and what they read from a request (`requests`), the CRM accounts' shared rate budgets
//! (`budget`) and the HTTP edge every Lambda function shares (`http`).

pub mod budget;
pub mod config;
pub mod connect;
pub mod connection;
pub mod crm;
pub mod domain;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod requests;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod transport;

pub use error::{Error, Result};
pub use sync::App;
