pub mod cache;
pub mod clock;
pub mod config;
