//! The `siptap` command: thin shells (files, stdout, the state store) around the sans-IO core.
mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use siptap::config::Config;
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
        /// Also deliver the events of tenants with Firebase settings (needs --state: the outbox
        /// lives there, so nothing is lost if delivery is interrupted).
        #[arg(long, requires = "state")]
        send: bool,
        /// With --send: how long to keep trying before leaving the rest in the outbox.
        #[arg(long, default_value_t = 120)]
        send_timeout: u64,
        /// Threads: 2 reads, decodes and parses on one and follows the state on the other (the
        /// same events, in the same order); 1 does everything on one. Default: 2 when the machine
        /// has two cores or more.
        #[arg(long)]
        threads: Option<usize>,
        /// Capture files, read in the order given.
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// Deliver what is left in the outbox of a state directory.
    Flush {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[arg(long)]
        stats: bool,
    },
    /// Build the Measurement Protocol requests for a capture's events (or one sample event of
    /// each kind per tenant) and check them locally; with --remote also against each tenant's
    /// /debug/mp/collect, printing its validation messages.
    Validate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        remote: bool,
        captures: Vec<PathBuf>,
    },
    /// Run as a daemon: live capture (libpcap) and/or HEP input, events to the Firebase outbox or
    /// JSON lines, Prometheus metrics on localhost. SIGHUP reloads the configuration, SIGTERM stops.
    Run {
        #[arg(long, default_value = "/etc/siptap/config.toml")]
        config: PathBuf,
        /// Overrides run.state_dir.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Run even as root (not recommended: siptap needs only CAP_NET_RAW).
        #[arg(long)]
        allow_root: bool,
    },
    /// One-screen summary from a running siptap's metrics endpoint.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:9109")]
        metrics: String,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// What the outbox holds per tenant and state (queued, refused, invalid, too old, dropped),
    /// with the server's answers; `requeue` and `drop` fix it. Works beside a running daemon.
    Outbox {
        /// The state directory (with outbox.redb).
        #[arg(long, default_value = "/var/lib/siptap", global = true)]
        state: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Add existing users (one address of record `user@domain` per line; `-` for stdin) to the
    /// known-users store, so that they do not `signup` when siptap is first deployed.
    SeedUsers {
        #[arg(long)]
        state: PathBuf,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Queue rejected events again (after fixing what made them fail); by default the refused
    /// and invalid ones.
    Requeue {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Refused by the endpoint (4xx) or invalid.
        #[arg(long)]
        rejected: bool,
        /// Older than 72 hours when sent (GA4 will still refuse them unless their time is fixed).
        #[arg(long)]
        too_old: bool,
        /// Pushed out of a full outbox (when_full = drop_oldest).
        #[arg(long)]
        dropped: bool,
    },
    /// Drop events for good (asks for --yes).
    Drop {
        #[arg(long)]
        tenant: Option<String>,
        /// Events still queued.
        #[arg(long)]
        queued: bool,
        #[arg(long)]
        rejected: bool,
        #[arg(long)]
        too_old: bool,
        #[arg(long)]
        dropped: bool,
        /// Everything above.
        #[arg(long)]
        all: bool,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // JSON logs when `siptap run`'s config asks; plain text without timestamps under journald;
    // colour only on a terminal; RUST_LOG filters (default: info)
    let json = matches!(&cli.cmd, Cmd::Run { config, .. } if Config::load(config).is_ok_and(|c| c.run.log_json));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(filter)
        .with_ansi(terminal);
    if json {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
    if let Err(e) = run(cli) {
        eprintln!("siptap: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Replay { config, state, stats, send, send_timeout, threads, captures } => {
            let threads =
                threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1));
            cli::replay::replay(config, state, stats, send.then_some(send_timeout), threads, captures)
        }
        Cmd::Flush { config, state, timeout, stats } => cli::deliver::flush(config, state, timeout, stats),
        Cmd::Run { config, state, allow_root } => {
            siptap::daemon::run(siptap::daemon::RunOptions { config, allow_root, state_dir: state })
        }
        Cmd::Status { metrics } => cli::status::status(&metrics),
        Cmd::Validate { config, remote, captures } => cli::validate::validate(config, remote, captures),
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} tenant(s), {} server address(es))",
                config.display(),
                cfg.tenants.len(),
                cfg.servers.len()
            );
            Ok(())
        }
        Cmd::SeedUsers { state, file } => cli::users::seed_users(state, file),
        Cmd::Outbox { state, json, action } => match action {
            None => cli::outbox::show(&state, json),
            Some(OutboxAction::Requeue { tenant, rejected, too_old, dropped }) => {
                cli::outbox::requeue(&state, tenant.as_deref(), rejected, too_old, dropped)
            }
            Some(OutboxAction::Drop { tenant, queued, rejected, too_old, dropped, all, yes }) => {
                cli::outbox::drop(&state, tenant.as_deref(), queued, rejected, too_old, dropped, all, yes)
            }
        },
    }
}
