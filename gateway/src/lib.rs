//! The atoll gateway (placeholder during construction).
pub mod config;
pub mod db;
pub use db::testing;
