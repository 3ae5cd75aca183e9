//! The sans-IO state machines: registrations, call legs and the known-users set behind `signup`,
//! and the durable form of their state (`snapshot`).
pub mod call;
pub mod deadlines;
pub mod fingerprint;
pub mod registration;
pub mod shared;
pub mod snapshot;
pub mod tracker;
pub mod users;

pub use tracker::{Servers, Tracker, TrackerConfig};
