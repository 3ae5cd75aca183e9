//! The `siptap` command: thin shells (files, stdout, the state store) around the sans-IO core.
mod cli;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use siptap::config::Config;
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: each event's strings are allocated on the state thread
/// and freed after they are written, and glibc's `malloc` and `free` took 13% of that thread's
/// instructions. Built without transparent huge pages (the `no_thp` feature): with them its
/// arenas took about 15 MB more RSS (README, "Performance": the allocator round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// A benchmark's aid, with --threads 1: after every N frames, sleep MS milliseconds (the
        /// cadence of a live capture's batches; the events are the same).
        #[arg(long, value_name = "N:MS", value_parser = parse_pause)]
        pause_every: Option<(u64, u64)>,
        /// Also write a self-contained HTML page of what was derived (per tenant: events over
        /// time, registrations, call outcomes; the counters that explain what was not an event).
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// Capture files, read in the order given.
        #[arg(required = true)]
        captures: Vec<PathBuf>,
    },
    /// Deliver what is left in the outbox of a state directory.
    Flush {
        /// The TOML configuration (the tenants' Firebase settings).
        #[arg(long, default_value = "/etc/siptap/config.toml")]
        config: PathBuf,
        /// The state directory whose outbox to deliver.
        #[arg(long)]
        state: PathBuf,
        /// Seconds to keep trying before leaving the rest in the outbox.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Print the delivery counters (requests, events, errors, latency) on stderr at the end.
        #[arg(long)]
        stats: bool,
    },
    /// Cluster mode: a delivery worker only. Takes events from the cluster's stream (shared with
    /// every other worker) and sends them to Firebase, acknowledging each after its 2xx; runs
    /// until SIGTERM or Ctrl-C, or until the stream has been idle for --until-idle seconds.
    Deliver {
        /// The TOML configuration (its [cluster] and the tenants' Firebase settings).
        #[arg(long, default_value = "/etc/siptap/config.toml")]
        config: PathBuf,
        /// Where the cluster's keys are cached (default: run.state_dir).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Stop once the stream has had nothing to deliver for this many seconds.
        #[arg(long)]
        until_idle: Option<u64>,
        /// Print the delivery and cluster counters on stderr at the end.
        #[arg(long)]
        stats: bool,
        /// Instead of delivering: put the events of the cluster's rejected stream (refused by
        /// Firebase, invalid, too old) back into the event stream, and exit.
        #[arg(long)]
        requeue_rejected: bool,
        /// With --requeue-rejected: only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Build the Measurement Protocol requests for a capture's events (or one sample event of
    /// each kind per tenant) and check them locally; with --remote also against each tenant's
    /// /debug/mp/collect, printing its validation messages.
    Validate {
        /// The TOML configuration.
        #[arg(long, default_value = "/etc/siptap/config.toml")]
        config: PathBuf,
        /// Also send each request to the tenant's /debug/mp/collect (needs the network; sends
        /// nothing that counts).
        #[arg(long)]
        remote: bool,
        /// Capture files whose events to check; none: one sample event of each kind per tenant.
        captures: Vec<PathBuf>,
    },
    /// Run as a daemon: live capture (libpcap) and/or HEP input, events to the Firebase outbox or
    /// JSON lines, Prometheus metrics on localhost. SIGHUP reloads the configuration, SIGTERM stops.
    Run {
        /// The TOML configuration.
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
        /// The running siptap's metrics endpoint (run.metrics_listen).
        #[arg(long, default_value = "http://127.0.0.1:9109")]
        metrics: String,
    },
    /// Check a configuration and, when it is good, tell the running siptap (SIGHUP) to load it;
    /// exit status 1 and every error when it is not (systemd's ExecReload: `systemctl reload`
    /// then fails instead of reporting success while the old configuration keeps running).
    Reload {
        /// The TOML configuration the daemon runs with.
        #[arg(long, default_value = "/etc/siptap/config.toml")]
        config: PathBuf,
        /// The daemon's process id ($MAINPID under systemd).
        #[arg(long)]
        pid: u32,
    },
    /// Write the HTML page of what a `siptap run` derived (the counts it keeps in its state
    /// directory, saved once a minute): the same page as `replay --report`.
    Report {
        /// The daemon's state directory.
        #[arg(long, default_value = "/var/lib/siptap")]
        state: PathBuf,
        /// The page to write.
        #[arg(long, value_name = "FILE.html")]
        output: PathBuf,
    },
    /// Write the manual pages (siptap.1 and one per command), generated from this command line.
    Man {
        /// Directory to write them to.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Check a configuration file and exit: every error in it (file:line: key: message), then
    /// the warnings. Exit status 0 when it would run, 1 when not.
    CheckConfig {
        /// The TOML configuration to check.
        #[arg(long, default_value = "/etc/siptap/config.toml")]
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
        /// The state directory (its known-users store).
        #[arg(long)]
        state: PathBuf,
        /// One `user@domain` per line; `-` reads stdin.
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
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Events still queued.
        #[arg(long)]
        queued: bool,
        /// Refused by the endpoint (4xx) or invalid.
        #[arg(long)]
        rejected: bool,
        /// Older than 72 hours when sent.
        #[arg(long)]
        too_old: bool,
        /// Pushed out of a full outbox.
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

/// `N:MS` of `replay --pause-every`.
fn parse_pause(s: &str) -> Result<(u64, u64), String> {
    let (n, ms) = s.split_once(':').ok_or("expected N:MS (frames:milliseconds)")?;
    let n = n.parse().map_err(|e| format!("frames {n:?}: {e}"))?;
    let ms = ms.parse().map_err(|e| format!("milliseconds {ms:?}: {e}"))?;
    Ok((n, ms))
}

fn main() {
    let cli = Cli::parse();
    // JSON logs when `siptap run`'s config asks; plain text without timestamps under journald;
    // colour only on a terminal; RUST_LOG filters (default: info)
    let json = matches!(&cli.cmd, Cmd::Run { config, .. } if Config::load(config).is_ok_and(|c| c.run.log_json));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
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
        Cmd::Replay { config, state, stats, send, send_timeout, threads, pause_every, report, captures } => {
            let threads =
                threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1));
            if pause_every.is_some() && threads != 1 {
                anyhow::bail!("--pause-every needs --threads 1");
            }
            let pause = pause_every.map(|(n, ms)| (n.max(1), std::time::Duration::from_millis(ms)));
            let feeding = cli::replay::Feeding { threads: threads.max(1), pause };
            cli::replay::replay(config, state, stats, send.then_some(send_timeout), feeding, report, captures)
        }
        Cmd::Flush { config, state, timeout, stats } => cli::deliver::flush(config, state, timeout, stats),
        Cmd::Deliver { config, state, until_idle, stats, requeue_rejected, tenant } => {
            if requeue_rejected {
                cli::deliver::cluster_requeue(config, state, tenant)
            } else {
                cli::deliver::cluster_deliver(config, state, until_idle, stats)
            }
        }
        Cmd::Run { config, state, allow_root } => {
            siptap::daemon::run(siptap::daemon::RunOptions { config, allow_root, state_dir: state })
        }
        Cmd::Status { metrics } => cli::status::status(&metrics),
        Cmd::Reload { config, pid } => {
            if let Err(errors) = Config::check_all(&config) {
                for e in &errors {
                    eprintln!("siptap: error: {e}");
                }
                anyhow::bail!("{}: not reloaded: the running configuration stays", config.display());
            }
            // SAFETY: kill(2) with a plain signal number has no memory effects
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
                anyhow::bail!("cannot signal siptap (pid {pid}): {}", std::io::Error::last_os_error());
            }
            println!("{}: ok; siptap (pid {pid}) told to reload", config.display());
            Ok(())
        }
        Cmd::Report { state, output } => {
            let Some(report) = siptap::sink::report::Report::load(&state)? else {
                anyhow::bail!(
                    "{}: no report yet (siptap run saves one a minute after it starts, and at stop)",
                    state.join(siptap::sink::report::FILE).display()
                );
            };
            std::fs::write(&output, report.html()).with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}: written", output.display());
            Ok(())
        }
        Cmd::Man { dir } => cli::man::write(Cli::command(), &dir),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "siptap", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Validate { config, remote, captures } => cli::validate::validate(config, remote, captures),
        Cmd::CheckConfig { config } => {
            let cfg = match Config::check_all(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("siptap: error: {e}");
                    }
                    anyhow::bail!(
                        "{}: {} error(s); the configuration was not accepted",
                        config.display(),
                        errors.len()
                    );
                }
            };
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            let cluster = match &cfg.cluster {
                Some(c) => format!(
                    ", cluster mode: sensor {}, {} NATS server(s), {} replica(s), auth {:?}",
                    c.sensor,
                    c.nats.len(),
                    c.replicas,
                    c.auth
                ),
                None => String::new(),
            };
            println!(
                "{}: ok ({} tenant(s), {} server address(es){cluster})",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument of every command says what it is for.
    #[test]
    fn every_option_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for s in c.get_subcommands() {
                if s.get_about().is_none() {
                    missing.push(format!("{path} {}", s.get_name()));
                }
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "siptap", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
        Cli::command().debug_assert();
    }
}
