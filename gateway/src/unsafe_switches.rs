//! Deliberate breakage for the chaos suite, to show that its checkers catch what they claim to.
//!
//! Compiled in only with the `chaos-switches` feature, which only the chaos suite's crate turns
//! on (a build of `atoll` on its own never has it), and even then off unless the gateway's
//! environment turns a switch on (`ATOLL_CHAOS_DISABLE_FENCING=1`,
//! `ATOLL_CHAOS_IGNORE_MATRIX=1`). The gateway warns loudly when one is.

/// The environment variable that turns term fencing off (with the feature).
pub const DISABLE_FENCING_ENV: &str = "ATOLL_CHAOS_DISABLE_FENCING";

/// Whether the gateway must act on leaders of stale terms instead of refusing them.
#[cfg(feature = "chaos-switches")]
pub fn fencing_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var(DISABLE_FENCING_ENV).is_ok_and(|v| v == "1"))
}

/// Whether the gateway must act on leaders of stale terms: never, in this build.
#[cfg(not(feature = "chaos-switches"))]
pub fn fencing_disabled() -> bool {
    false
}

/// The environment variable that makes forwarding ignore the matrix (with the feature).
pub const IGNORE_MATRIX_ENV: &str = "ATOLL_CHAOS_IGNORE_MATRIX";

/// Whether every edge between clusters must be pulled, whatever the matrix says.
#[cfg(feature = "chaos-switches")]
pub fn matrix_ignored() -> bool {
    static IGNORED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| std::env::var(IGNORE_MATRIX_ENV).is_ok_and(|v| v == "1"))
}

/// Whether every edge between clusters must be pulled whatever the matrix says: never, in this
/// build.
#[cfg(not(feature = "chaos-switches"))]
pub fn matrix_ignored() -> bool {
    false
}
