//! siptap: derives softphone analytics events from passively captured SIP signalling.
//!
//! The data's path, one module per step:
//! `capture` (frames) -> `decode` (SIP bytes) -> `sip` (message view) -> `state` (registrations
//! and call legs) -> `event` + `tenant` (routed events) -> `sink` (output). `pipeline` joins them.
pub mod bytes;
pub mod capture;
pub mod clock;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod decode;
pub mod event;
#[doc(hidden)]
pub mod fuzz_harness;
pub mod pipeline;
pub mod sink;
pub mod sip;
pub mod state;
pub mod store;
pub mod tenant;
#[doc(hidden)]
pub mod testkit;
pub mod timefmt;
