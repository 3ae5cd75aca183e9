//! Capture sources: each yields `(timestamp, link type, frame bytes)` to the pipeline.
pub mod file;

/// Microseconds since the Unix epoch: the only clock the core knows.
pub type Micros = i64;

/// One captured frame as the source saw it.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub ts: Micros,
    /// The libpcap LINKTYPE_ value of the interface the frame came from.
    pub linktype: u32,
    pub data: &'a [u8],
}
