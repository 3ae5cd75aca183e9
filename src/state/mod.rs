//! The sans-IO state machines: registrations, call legs and the known-users set behind `signup`.
pub mod call;
pub mod registration;
pub mod tracker;

pub use tracker::{Servers, Tracker, TrackerConfig};
