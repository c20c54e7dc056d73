//! Deliberate breakage for the chaos suite, to show that its checkers catch what they claim to.
//!
//! Compiled in only with the `chaos-switches` feature, which only the chaos suite's crate turns
//! on (a build of `atoll` on its own never has it), and even then off unless the gateway's
//! environment turns a switch on (`ATOLL_CHAOS_DISABLE_FENCING=1`,
//! `ATOLL_CHAOS_IGNORE_MATRIX=1`). The gateway warns loudly when one is.

use std::sync::OnceLock;

/// The environment variable that turns term fencing off (with the feature).
pub const DISABLE_FENCING_ENV: &str = "ATOLL_CHAOS_DISABLE_FENCING";

/// The environment variable that makes forwarding ignore the matrix (with the feature).
pub const IGNORE_MATRIX_ENV: &str = "ATOLL_CHAOS_IGNORE_MATRIX";

/// Whether the gateway must act on leaders of stale terms instead of refusing them.
pub fn fencing_disabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switched_on(DISABLE_FENCING_ENV))
}

/// Whether every edge between clusters must be pulled, whatever the matrix says.
pub fn matrix_ignored() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switched_on(IGNORE_MATRIX_ENV))
}

/// Whether the environment turns switch `env` on: only ever in a build with the feature.
fn switched_on(env: &str) -> bool {
    cfg!(feature = "chaos-switches") && std::env::var(env).is_ok_and(|v| v == "1")
}
