//! Relais edge: the caching reverse proxy (data plane).
//!
//! Entry points: [`config::Config`] (load and validate), [`proxy::Edge`] (the request path,
//! reload), [`server::start`] (listeners). See ARCHITECTURE.md for the map.

pub mod accesslog;
pub mod admin;
pub mod cache;
pub mod clock;
pub mod config;
pub mod follow;
pub mod metrics;
pub mod proto;
pub mod proxy;
pub mod range;
pub mod response;
pub mod server;
pub mod shard;
pub mod stats;
pub mod tls;
pub mod upstream;

pub use proxy::{Edge, EdgeOptions};
