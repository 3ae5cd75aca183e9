//! Tools for tests and benchmarks, not for production: a generator of large realistic captures.
pub mod capgen;
