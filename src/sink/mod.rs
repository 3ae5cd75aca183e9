//! Where routed events go.
pub mod jsonl;
