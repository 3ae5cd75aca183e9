//! `siptap status`: a one-screen summary read from a running siptap's metrics endpoint.
use anyhow::{Context, Result};
use std::time::Duration;

pub fn status(url: &str) -> Result<()> {
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
    // the sum of a metric's samples whose labels contain every `filter` (e.g. `result="ok"`)
    let sum = |k: &str, filter: &[&str]| {
        v.iter()
            .filter(|(n, _)| {
                let (name, labels) = n.split_once('{').unwrap_or((n, ""));
                name == k && filter.iter().all(|f| labels.contains(f))
            })
            .map(|(_, x)| x)
            .sum::<f64>()
    };
    let get = |k: &str| sum(k, &[]);
    let label = |k: &str, l: &str| {
        v.iter().find_map(|(n, _)| {
            let rest = n.strip_prefix(k)?.strip_prefix('{')?;
            let at = rest.find(&format!("{l}=\""))? + l.len() + 2;
            rest[at..].split('"').next().map(str::to_string)
        })
    };
    println!(
        "siptap {} at {url} (pid {}, config {})",
        label("siptap_build_info", "version").unwrap_or_default(),
        label("siptap_build_info", "pid").unwrap_or_default(),
        label("siptap_build_info", "config").unwrap_or_default()
    );
    println!(
        "  config       last reload {}; {} applied, {} refused",
        if get("siptap_config_last_reload_successful") == 1.0 {
            "applied"
        } else {
            "REFUSED (the previous configuration runs; see the log)"
        },
        sum("siptap_config_reloads_total", &["result=\"ok\""]),
        sum("siptap_config_reloads_total", &["result=\"refused\""])
    );
    println!(
        "  capture      {:>12} packets   {:>8} dropped by the kernel",
        get("siptap_capture_packets_total"),
        get("siptap_capture_kernel_drops_total")
    );
    println!(
        "  SIP          {:>12} messages  {:>8} malformed   {:>8} duplicate frames",
        get("siptap_sip_messages_total"),
        get("siptap_sip_malformed_total"),
        get("siptap_frames_duplicate_total")
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
        "  outbox       {:>12} queued    {:>8} dropped (full)  {:>8} dropped (>72 h)  {:>8} rejected (kept)",
        get("siptap_outbox_events"),
        get("siptap_outbox_dropped_full_total"),
        get("siptap_outbox_dropped_too_old_total"),
        get("siptap_outbox_rejected_events")
    );
    let req = |r: &str| sum("siptap_delivery_requests_total", &[&format!("result=\"{r}\"")]);
    println!(
        "  delivery     {:>12} events sent in {} requests; {} transport errors, {} 5xx/429, {} 4xx; mean latency {lat:.1} ms",
        get("siptap_delivery_events_total"),
        req("ok"),
        req("transport_error"),
        req("5xx_429"),
        req("4xx")
    );
    Ok(())
}
