//! The `siptap` command: thin shells (files, stdout, the state store) around the sans-IO core.
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use siptap::capture::file::read_file;
use siptap::config::Config;
use siptap::pipeline::{Pipeline, Routed};
use siptap::sink::jsonl;
use siptap::store::KnownUsersStore;
use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "siptap", version, about = "Derive softphone analytics events from passively captured SIP signalling")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read pcap/pcapng captures as one timeline and print the derived events as JSON lines.
    Replay {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// State directory holding the known-users store; without it replay starts empty and keeps nothing.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Print every counter (skipped, malformed, evicted...) on stderr at the end.
        #[arg(long)]
        stats: bool,
        /// Capture files, read in the order given.
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Add existing users (one address of record `user@domain` per line; `-` for stdin) to the
    /// known-users store, so that they do not `signup` when siptap is first deployed.
    SeedUsers {
        #[arg(long)]
        state: PathBuf,
        file: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("siptap: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Replay { config, state, stats, captures } => replay(config, state, stats, captures),
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            println!(
                "{}: ok ({} tenant(s), {} server address(es))",
                config.display(),
                cfg.tenants.len(),
                cfg.servers.len()
            );
            Ok(())
        }
        Cmd::SeedUsers { state, file } => seed_users(state, file),
    }
}

fn replay(config: PathBuf, state: Option<PathBuf>, stats: bool, captures: Vec<PathBuf>) -> Result<()> {
    let cfg = Config::load(&config)?;
    for c in &captures {
        if !c.is_file() {
            bail!("cannot read capture {}: no such file", c.display());
        }
    }
    let store = state.as_deref().map(KnownUsersStore::open).transpose()?;
    let known = match &store {
        Some(s) => s.load()?,
        None => HashSet::new(),
    };
    let mut pipeline = Pipeline::new(&cfg, known);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_err: Option<std::io::Error> = None;
    let mut emit = |r: Routed| {
        if write_err.is_none()
            && let Err(e) = jsonl::write(&mut out, &r)
        {
            write_err = Some(e);
        }
    };
    for c in &captures {
        let fs = read_file(c, |frame| pipeline.frame(frame, &mut emit))?;
        tracing::debug!(file = %c.display(), frames = fs.frames, "capture read");
    }
    pipeline.finish(&mut emit);
    if let Some(e) = write_err {
        // a closed pipe (`| head`) is not worth a complaint
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write events");
        }
    }
    let _ = out.flush();
    if let Some(s) = &store {
        let users: Vec<(String, i64)> = pipeline.take_new_users().into_iter().map(|u| (u, now_micros())).collect();
        s.add(&users)?;
    }
    if stats {
        let mut err = std::io::stderr().lock();
        for (k, v) in pipeline.counters() {
            writeln!(err, "{k:32} {v}")?;
        }
        if let Some(kib) = peak_rss_kib() {
            writeln!(err, "{:32} {kib}", "peak_rss_kib")?;
        }
    }
    Ok(())
}

fn seed_users(state: PathBuf, file: PathBuf) -> Result<()> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut users = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let aor = l.trim_start_matches("sip:").trim_start_matches("sips:");
        let Some((user, domain)) = aor.split_once('@') else {
            bail!("{}:{}: `{l}` is not an address of record (user@domain)", file.display(), n + 1);
        };
        if user.is_empty() || domain.is_empty() || domain.contains(['@', ' ', ';']) {
            bail!("{}:{}: `{l}` is not an address of record (user@domain)", file.display(), n + 1);
        }
        users.push((format!("{user}@{}", domain.to_ascii_lowercase()), 0));
    }
    let store = KnownUsersStore::open(&state)?;
    let added = store.add(&users)?;
    println!("{added} user(s) added, {} already known", users.len() - added);
    Ok(())
}

/// The process's peak resident memory (Linux `VmHWM`), for `--stats`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
