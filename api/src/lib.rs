//! What every atoll component shares: identities, wire types, TLS, the HTTP server and client.
//!
//! - [`ids`]: newtypes for cluster names, labels, node ids and terms.
//! - [`identity`]: SPIFFE-style identities carried in certificates.
//! - [`pki`]: the mesh CA: create, load, issue.
//! - [`tls`]: rustls configs (aws-lc-rs, TLS 1.3, mutual), identity-checking verification.
//! - [`serve`]: the mTLS HTTP server (peer identity per request) and the plain ops listener.
//! - [`error`]: the `{"error": {"code", "message"}}` envelope and its status table, and the
//!   middleware that puts the framework's own refusals in it.
//! - [`exposition`]: `/metrics` in the format a scraper asks for (OpenMetrics, or 0.0.4 text).
//! - [`node`]: wire types of a replica's API.
//! - [`client`]: the HTTP client of that API; [`gateway_client`]: of the gateway's, over the
//!   replicas [`gateway_addrs`] says to try (the one in use first, the next on failure).
//! - [`config_file`]: YAML config loading with env overrides and path-naming errors.
//! - [`gateway`]: wire types of the gateway API (enrollment, heartbeats, matrix, tokens).
//! - [`token`]: join and user tokens (format, hashing, the CA fingerprint a join token pins).
//! - [`jobs`]: wire types of pipelines, jobs, and the lease/report protocol.
//! - [`ticket`]: edge tickets the gateway signs for one output transfer.
//! - [`spec`]: the job spec (a superset of InfraBox's), parsed and checked with every problem named.
//!
//! Invariants: a peer is known by the identity in its verified certificate, never by its
//! address; nothing here accepts a connection without a client certificate from the mesh CA;
//! aws-lc-rs is the only crypto provider.

pub mod client;
pub mod config_file;
pub mod error;
pub mod exposition;
pub mod gateway;
pub mod gateway_addrs;
pub mod gateway_client;
pub mod identity;
pub mod ids;
pub mod jobs;
pub mod node;
pub mod openapi;
pub mod pki;
pub mod pod;
pub mod serve;
pub mod spec;
pub mod ticket;
pub mod tls;
pub mod token;

pub use error::ApiError;
pub use error::ErrorCode;
pub use identity::Identity;
pub use ids::ClusterName;

/// Version of this build, reported by every component.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
