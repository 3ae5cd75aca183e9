//! The wall clock, for the shells only (live capture, delivery, the command line). Nothing under
//! `decode`, `sip` or `state` reads it: the core's time is the packets'.
use crate::capture::Micros;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> Micros {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
