//! `siptap validate`: build the Measurement Protocol requests and check them, locally and with
//! `--remote` against each tenant's debug endpoint.
use anyhow::{Result, bail};
use siptap::capture::file::read_file;
use siptap::clock::now_micros;
use siptap::config::Config;
use siptap::pipeline::Routed;
use siptap::sink::firebase::Delivery;
use siptap::sink::firebase::mp::QueuedEvent;
use siptap::sink::firebase::sender;
use std::path::PathBuf;
use std::time::Duration;

pub fn validate(config: PathBuf, remote: bool, captures: Vec<PathBuf>) -> Result<()> {
    let cfg = Config::load(&config)?;
    // ids are keyed hashes; an ephemeral key is enough to check the requests' shape
    let mut d = Delivery::new(&cfg, &siptap::sink::firebase::random_bytes(32)?);
    if d.is_empty() {
        bail!("no tenant has [tenants.<id>.firebase] enabled: nothing to validate");
    }
    let mut routed = Vec::new();
    if captures.is_empty() {
        routed = sample_events(&cfg);
    } else {
        let mut opened = siptap::store::open_pipeline(&cfg, None)?;
        let pipeline = &mut opened.pipeline;
        for c in &captures {
            read_file(c, |frame| pipeline.frame(frame, &mut |r| routed.push(r)))?;
        }
        pipeline.finish(&mut |r| routed.push(r));
    }
    let queued: Vec<QueuedEvent> = routed.iter().filter_map(|r| d.queue(r, None)).collect();
    let now = now_micros();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
    let mut problems = 0;
    for t in d.targets() {
        let mine: Vec<&QueuedEvent> = queued.iter().filter(|q| q.tenant == t.tenant).collect();
        for (i, batch) in siptap::sink::firebase::mp::batches(&mine).iter().enumerate() {
            // replayed captures are old: judge them as if sent right after their last event (every
            // event of the request is then in the past, and the first within 72 hours of it)
            let body = siptap::sink::firebase::mp::body(batch);
            let at =
                if captures.is_empty() { now } else { batch.iter().map(|e| e.timestamp_micros).max().unwrap_or(now) };
            let local = siptap::sink::firebase::mp::validate(&body, at);
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
                    Err(e) => {
                        // nothing was checked there: that is not a pass
                        problems += 1;
                        println!("  debug endpoint: NOT CHECKED: {e}");
                    }
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
