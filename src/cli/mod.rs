//! The command line: one module per subcommand, each a thin shell around the library.
pub mod deliver;
pub mod man;
pub mod outbox;
pub mod replay;
pub mod status;
pub mod users;
pub mod validate;

/// The process's peak resident memory (Linux `VmHWM`), for `--stats`.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
