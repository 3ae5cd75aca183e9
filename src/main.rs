//! The `siptap` command: thin shells (files, stdout, the state store) around the sans-IO core.
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use siptap::capture::file::read_file;
use siptap::clock::now_micros;
use siptap::config::Config;
use siptap::pipeline::{Pipeline, Routed};
use siptap::sink::firebase::Delivery;
use siptap::sink::firebase::mp::QueuedEvent;
use siptap::sink::firebase::outbox::Outbox;
use siptap::sink::firebase::sender::{self, SenderConfig, SenderStats};
use siptap::sink::jsonl;
use siptap::store::KnownUsersStore;
use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

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
    /// Add existing users (one address of record `user@domain` per line; `-` for stdin) to the
    /// known-users store, so that they do not `signup` when siptap is first deployed.
    SeedUsers {
        #[arg(long)]
        state: PathBuf,
        file: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    // JSON logs when `siptap run`'s config asks; plain text without timestamps under journald
    let json = matches!(&cli.cmd, Cmd::Run { config, .. } if Config::load(config).is_ok_and(|c| c.run.log_json));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    if json {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
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
        Cmd::Replay { config, state, stats, send, send_timeout, captures } => {
            replay(config, state, stats, send.then_some(send_timeout), captures)
        }
        Cmd::Flush { config, state, timeout, stats } => flush(config, state, timeout, stats),
        Cmd::Run { config, state, allow_root } => {
            siptap::daemon::run(siptap::daemon::RunOptions { config, allow_root, state_dir: state })
        }
        Cmd::Status { metrics } => status(&metrics),
        Cmd::Validate { config, remote, captures } => validate(config, remote, captures),
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

fn replay(
    config: PathBuf,
    state: Option<PathBuf>,
    stats: bool,
    send_timeout: Option<u64>,
    captures: Vec<PathBuf>,
) -> Result<()> {
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
    // with --send, events of delivering tenants are committed to the outbox in batches
    let delivery = match (&state, send_timeout) {
        (Some(dir), Some(_)) => {
            let key = siptap::sink::firebase::identity_key(dir)?;
            let outbox = Outbox::open(dir, cfg.delivery.max_outbox_events, cfg.delivery.when_full)?;
            Some((Delivery::new(&cfg, &key), Arc::new(outbox)))
        }
        _ => None,
    };
    let mut pending: Vec<QueuedEvent> = Vec::new();
    let mut queue_err: Option<anyhow::Error> = None;
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
        if let Some((d, outbox)) = &delivery
            && let Some(q) = d.queue(&r)
        {
            pending.push(q);
            if pending.len() >= 1000 && queue_err.is_none() {
                if let Err(e) = outbox.push(&pending) {
                    queue_err = Some(e);
                }
                pending.clear();
            }
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
    if let Some(e) = queue_err {
        return Err(e).context("cannot queue events in the outbox");
    }
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
    if let (Some((d, outbox)), Some(timeout)) = (delivery, send_timeout) {
        outbox.push(&pending).context("cannot queue events in the outbox")?;
        deliver(&cfg, &d, outbox, timeout, stats)?;
    }
    Ok(())
}

fn flush(config: PathBuf, state: PathBuf, timeout: u64, stats: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let key = siptap::sink::firebase::identity_key(&state)?;
    let outbox = Arc::new(Outbox::open(&state, cfg.delivery.max_outbox_events, cfg.delivery.when_full)?);
    deliver(&cfg, &Delivery::new(&cfg, &key), outbox, timeout, stats)
}

/// Sends the outbox until it is empty or `timeout` seconds pass.
fn deliver(cfg: &Config, d: &Delivery, outbox: Arc<Outbox>, timeout: u64, stats: bool) -> Result<()> {
    let sender_stats = Arc::new(SenderStats::default());
    let scfg = SenderConfig {
        max_in_flight: cfg.delivery.max_in_flight,
        request_timeout: Duration::from_secs(cfg.delivery.request_timeout_secs),
        max_backoff: Duration::from_secs(cfg.delivery.max_backoff_secs),
        poll: Duration::from_millis(100),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    rt.block_on(sender::run(
        outbox.clone(),
        d.targets(),
        scfg,
        sender_stats.clone(),
        true,
        Some(deadline),
        Arc::new(AtomicBool::new(false)),
    ));
    if stats {
        let mut err = std::io::stderr().lock();
        let o = &outbox.stats;
        for (k, v) in [
            ("outbox_queued", o.queued.load(Relaxed)),
            ("outbox_dropped_full", o.dropped_full.load(Relaxed)),
            ("outbox_dropped_too_old", o.dropped_too_old.load(Relaxed)),
            ("outbox_rejected", o.rejected.load(Relaxed)),
            ("outbox_left", outbox.len()),
            ("delivery_requests_ok", sender_stats.requests_ok.load(Relaxed)),
            ("delivery_events_sent", sender_stats.events_sent.load(Relaxed)),
            ("delivery_retries", sender_stats.retries.load(Relaxed)),
            ("delivery_transport_errors", sender_stats.transport_errors.load(Relaxed)),
            ("delivery_5xx_429", sender_stats.http_5xx_429.load(Relaxed)),
            ("delivery_4xx", sender_stats.http_4xx.load(Relaxed)),
            ("delivery_invalid_not_sent", sender_stats.invalid_local.load(Relaxed)),
        ] {
            writeln!(err, "{k:32} {v}")?;
        }
    }
    // only the delivering tenants' queues count: a tenant since disabled keeps its events
    let targets: HashSet<String> = d.targets().into_iter().map(|t| t.tenant).collect();
    let left: usize =
        targets.iter().map(|t| outbox.pending(t, usize::MAX, &HashSet::new()).map(|v| v.len()).unwrap_or(0)).sum();
    if left > 0 {
        bail!("{left} event(s) not delivered within {timeout} s; they stay in the outbox (`siptap flush` sends them)");
    }
    let refused = sender_stats.http_4xx.load(Relaxed) + sender_stats.invalid_local.load(Relaxed);
    if refused > 0 {
        bail!("{refused} request(s) refused or invalid, not retried; kept in the outbox's rejected table");
    }
    Ok(())
}

fn validate(config: PathBuf, remote: bool, captures: Vec<PathBuf>) -> Result<()> {
    let cfg = Config::load(&config)?;
    // ids are keyed hashes; an ephemeral key is enough to check the requests' shape
    let d = Delivery::new(&cfg, &siptap::sink::firebase::random_bytes(32)?);
    if d.is_empty() {
        bail!("no tenant has [tenants.<id>.firebase] enabled: nothing to validate");
    }
    let mut routed = Vec::new();
    if captures.is_empty() {
        routed = sample_events(&cfg);
    } else {
        let mut pipeline = Pipeline::new(&cfg, HashSet::new());
        for c in &captures {
            read_file(c, |frame| pipeline.frame(frame, &mut |r| routed.push(r)))?;
        }
        pipeline.finish(&mut |r| routed.push(r));
    }
    let queued: Vec<QueuedEvent> = routed.iter().filter_map(|r| d.queue(r)).collect();
    let now = now_micros();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
    let mut problems = 0;
    for t in d.targets() {
        let mine: Vec<&QueuedEvent> = queued.iter().filter(|q| q.tenant == t.tenant).collect();
        for (i, batch) in siptap::sink::firebase::mp::batches(&mine).iter().enumerate() {
            // replayed captures are old: judge their shape as if sent when they happened
            let body = siptap::sink::firebase::mp::body(batch);
            let local = siptap::sink::firebase::mp::validate(
                &body,
                if captures.is_empty() { now } else { batch[0].timestamp_micros },
            );
            let names: Vec<&str> = batch.iter().map(|e| e.name.as_str()).collect();
            println!(
                "tenant {} request {} ({} events: {}): {}",
                t.tenant,
                i + 1,
                batch.len(),
                names.join(","),
                if local.is_empty() { "ok" } else { "INVALID" }
            );
            for m in &local {
                println!("  local: {m}");
            }
            problems += local.len();
            if remote {
                match rt.block_on(sender::debug_validate(&client, &t, body)) {
                    Ok(msgs) if msgs.is_empty() => println!("  debug endpoint: no validation messages"),
                    Ok(msgs) => {
                        problems += msgs.len();
                        for m in msgs {
                            println!("  debug endpoint: {m}");
                        }
                    }
                    Err(e) => println!("  debug endpoint unreachable: {e}"),
                }
            }
        }
    }
    if problems > 0 {
        bail!("{problems} validation problem(s)");
    }
    Ok(())
}

/// One event of each kind per delivering tenant, stamped now, for `validate` without a capture.
fn sample_events(cfg: &Config) -> Vec<Routed> {
    use siptap::event::{Direction, EndReason, EndedBy, Event, Kind, Origin, Params};
    let mut v = Vec::new();
    let router = siptap::tenant::Router::new(cfg);
    for t in &cfg.tenants {
        let Some(domain) = t.domains.first() else { continue };
        for kind in Kind::ALL {
            let mut params = Params::default();
            if matches!(kind, Kind::OutgoingCall | Kind::IncomingCall | Kind::CallEnded) {
                params.call_id = Some("sample-call@siptap".into());
                params.direction = Some(Direction::Out);
            }
            if kind == Kind::CallEnded {
                params.answered = Some(true);
                params.status = Some(200);
                params.reason = Some(EndReason::Bye);
                params.ended_by = Some(EndedBy::User);
                params.duration_sec = Some(61.5);
            }
            let event =
                Event { ts: now_micros(), kind, user: format!("sample@{domain}"), params, origin: Origin::default() };
            if let siptap::tenant::Route::To { tenant, name } = router.route(&event) {
                v.push(Routed { tenant, name, event });
            }
        }
    }
    v
}

fn status(url: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let text = rt
        .block_on(async {
            let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
            c.get(format!("{}/metrics", url.trim_end_matches('/'))).send().await?.error_for_status()?.text().await
        })
        .with_context(|| format!("cannot read {url}/metrics (is siptap running, with run.metrics_listen there?)"))?;
    let mut v: Vec<(String, f64)> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, val)) = l.rsplit_once(' ')
            && let Ok(x) = val.parse()
        {
            v.push((k.to_string(), x));
        }
    }
    let get =
        |k: &str| v.iter().filter(|(n, _)| n == k || n.starts_with(&format!("{k}{{"))).map(|(_, x)| x).sum::<f64>();
    println!("siptap at {url}");
    println!(
        "  capture      {:>12} packets   {:>8} dropped by the kernel",
        get("siptap_capture_packets_total"),
        get("siptap_capture_kernel_drops_total")
    );
    println!(
        "  SIP          {:>12} messages  {:>8} malformed   {:>8} duplicate frames",
        get("siptap_sip_messages"),
        get("siptap_sip_malformed"),
        get("siptap_frames_duplicate")
    );
    println!(
        "  state        {:>12} active registrations   {:>8} open call legs",
        get("siptap_active_devices"),
        get("siptap_open_call_legs")
    );
    println!("  events:");
    for (k, x) in v.iter().filter(|(n, _)| n.starts_with("siptap_events_total{")) {
        println!("    {:<60} {x}", k.trim_start_matches("siptap_events_total"));
    }
    let lat_n = get("siptap_delivery_latency_seconds_count");
    let lat = if lat_n > 0.0 { get("siptap_delivery_latency_seconds_sum") / lat_n * 1000.0 } else { 0.0 };
    println!(
        "  outbox       {:>12} queued    {:>8} dropped (full)  {:>8} dropped (>72 h)",
        get("siptap_outbox_depth"),
        get("siptap_outbox_dropped_full_total"),
        get("siptap_outbox_dropped_too_old_total")
    );
    println!(
        "  delivery     {:>12} events sent in {} requests; {} transport errors, {} 5xx/429, {} 4xx; mean latency {lat:.1} ms",
        get("siptap_delivery_events_total"),
        get("siptap_delivery_requests_total{result=\"ok\"}"),
        get("siptap_delivery_requests_total{result=\"transport_error\"}"),
        get("siptap_delivery_requests_total{result=\"5xx_429\"}"),
        get("siptap_delivery_requests_total{result=\"4xx\"}")
    );
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
