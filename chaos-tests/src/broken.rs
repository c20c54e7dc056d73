//! The deliberately broken gateway the suite must catch: the `atoll-chaos-gateway` binary (in
//! this crate) run in place of `atoll gateway`, with switches in its environment. Only that
//! binary reads them (into the gateway's `Breakage`); the product `atoll` binary cannot carry
//! them (`tests/switches.rs` shows it).

/// The program run as the broken gateway, built beside `atoll`.
pub const GATEWAY_EXE: &str = "atoll-chaos-gateway";

/// With `1`: the gateway acts on leaders of stale terms instead of refusing them.
pub const DISABLE_FENCING_ENV: &str = "ATOLL_CHAOS_DISABLE_FENCING";

/// With `1`: the gateway has every edge between clusters pulled, whatever the matrix says.
pub const IGNORE_MATRIX_ENV: &str = "ATOLL_CHAOS_IGNORE_MATRIX";

/// With `1`: a gateway replica that held the duties lease goes on scheduling after losing it,
/// its writes no longer fenced on the generation (a zombie scheduler).
pub const LEASE_UNFENCED_ENV: &str = "ATOLL_CHAOS_LEASE_UNFENCED";
