//! The chaos suite: the gateway and every replica of several clusters as real `atoll`
//! processes, each in a network namespace of its own; faults injected by killing, pausing and
//! restarting them and by cutting, half-cutting and degrading the links between them; a
//! workload of writes and pipelines recorded as a history; and one checker per invariant over
//! that history, the processes' logs and the final state.
//!
//! - [`broken`]: the deliberately broken gateway (the `atoll-chaos-gateway` binary).
//! - [`sandbox`]: namespaces, the bridge, routes and packet filters.
//! - [`delay`]: the delaying proxy between sites (this kernel has no netem).
//! - [`harness`]: the mesh placed in the sandbox, and the suite's clients.
//! - [`nemesis`]: the named faults, each held for a duration, composed into timed plans.
//! - [`postgres`]: the gateway's PostgreSQL in its namespace, for the database restart, or the
//!   gateway replicas' in a namespace of its own.
//! - [`database`]: what the suite reads from the gateway replicas' database (the lease's holder
//!   and history, the attempts, the clusters' heartbeat times).
//! - [`workload`]: annotation writers and the pipeline submitter.
//! - [`history`]: what the clients did and when the faults began and healed.
//! - [`checkers`]: the invariants, pure functions of the evidence.
//! - [`scenario`]: each scenario as a plan (or a bespoke drill), and the run that ties it all
//!   together.
//!
//! `docs/reliability.md` describes the scenarios and holds the figures of the last runs.

pub mod broken;
pub mod checkers;
pub mod database;
pub mod delay;
pub mod harness;
pub mod history;
pub mod nemesis;
pub mod postgres;
pub mod sandbox;
pub mod scenario;
pub mod workload;
