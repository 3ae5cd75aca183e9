//! Where routed events go.
pub mod firebase;
pub mod jsonl;
pub mod report;
pub mod stream;
