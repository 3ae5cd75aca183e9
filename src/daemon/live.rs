//! Live capture with libpcap: one thread per interface feeding frames to the core.
use super::{Input, InputBudget};
use crate::config::Config;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

/// Counters of one capture handle: packets handed to the core, and the kernel's drops.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub if_dropped: AtomicU64,
}

/// The BPF filter: SIP and HEP ports over UDP and TCP, plus every non-first IP fragment (which
/// carries no UDP header, so a plain `port 5060` filter would silently drop the rest of a large
/// INVITE), plus IP-in-IP and GRE so that tunnelled SIP is seen.
pub fn bpf_filter(cfg: &Config) -> String {
    let mut ports: Vec<u16> = cfg.sip_ports.clone();
    ports.extend(cfg.servers.iter().filter_map(|(_, p)| *p));
    ports.extend(cfg.hep.ports.iter().copied());
    ports.sort_unstable();
    ports.dedup();
    let port_expr = ports.iter().map(|p| format!("port {p}")).collect::<Vec<_>>().join(" or ");
    format!(
        "((udp or tcp or sctp) and ({port_expr})) or (ip[6:2] & 0x1fff != 0) or (ip6 and ip6[6] == 44) or (ip proto 4) or (ip proto 41) or (ip proto 47)"
    )
}

/// Opens every configured interface; each gets a thread that sends frames until `stop`.
pub fn start(
    cfg: &Config,
    tx: SyncSender<Input>,
    budget: Arc<InputBudget>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(String, Arc<CaptureStats>)>> {
    let filter = bpf_filter(cfg);
    let mut all = Vec::new();
    for name in &cfg.run.interfaces {
        let mut cap = pcap::Capture::from_device(name.as_str())
            .with_context(|| format!("capture device {name}"))?
            .immediate_mode(true)
            .snaplen(65_535)
            .buffer_size((cfg.run.buffer_mib as i32).saturating_mul(1 << 20))
            .timeout(250)
            .open()
            .with_context(|| format!("cannot capture on {name} (needs CAP_NET_RAW)"))?;
        cap.filter(&filter, true).with_context(|| format!("BPF filter on {name}"))?;
        let linktype = cap.get_datalink().0 as u32;
        let stats = Arc::new(CaptureStats::default());
        all.push((name.clone(), stats.clone()));
        let (tx, stop, name, budget) = (tx.clone(), stop.clone(), name.clone(), budget.clone());
        std::thread::Builder::new().name(format!("capture-{name}")).spawn(move || {
            let mut last_publish = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match cap.next_packet() {
                    Ok(p) => {
                        let ts = p.header.ts.tv_sec * 1_000_000 + p.header.ts.tv_usec;
                        if budget.admit(p.data.len())
                            && tx.send(Input::Frame { ts, linktype, data: p.data.to_vec() }).is_err()
                        {
                            return;
                        }
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        if last_publish.elapsed() >= std::time::Duration::from_secs(1) {
                            publish(&mut cap, &stats);
                            last_publish = std::time::Instant::now();
                        }
                    }
                    Err(pcap::Error::TimeoutExpired) => publish(&mut cap, &stats),
                    Err(e) => {
                        tracing::error!(interface = %name, error = %e, "capture failed");
                        return;
                    }
                }
            }
            publish(&mut cap, &stats);
        })?;
    }
    Ok(all)
}

/// The kernel's drop counters (the packets received are counted as they arrive).
fn publish(cap: &mut pcap::Capture<pcap::Active>, stats: &CaptureStats) {
    if let Ok(s) = cap.stats() {
        stats.dropped.store(u64::from(s.dropped), Ordering::Relaxed);
        stats.if_dropped.store(u64::from(s.if_dropped), Ordering::Relaxed);
    }
}
