//! Benchmarks: each prints its own figures and the peer baseline's from the same run.

pub mod failover;
