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
    /// On a loopback interface the kernel counts every packet twice (once leaving, once
    /// arriving; libpcap keeps only the arriving copy), so its drop counters are halved.
    pub loopback: std::sync::atomic::AtomicBool,
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

/// Frames captured on one interface, handed to the core together: one allocation and one
/// channel send per batch, not per packet (the buffers come back through a pool).
#[derive(Default)]
pub struct FrameBatch {
    pub linktype: u32,
    pub data: Vec<u8>,
    /// (time, offset in `data`, length) per frame.
    pub frames: Vec<(crate::capture::Micros, u32, u32)>,
}

impl FrameBatch {
    pub fn iter(&self) -> impl Iterator<Item = crate::capture::Frame<'_>> {
        self.frames.iter().map(|&(ts, off, len)| crate::capture::Frame {
            ts,
            linktype: self.linktype,
            data: &self.data[off as usize..(off + len) as usize],
        })
    }
    fn clear(&mut self) {
        self.data.clear();
        self.frames.clear();
    }
}

/// Empty batches for the capture threads to fill (the core gives them back).
#[derive(Default)]
pub struct BatchPool(std::sync::Mutex<Vec<FrameBatch>>);

impl BatchPool {
    /// A batch from the pool, or a new one with room for a full batch (reserved, not touched: it
    /// never grows by doubling past its bound).
    fn take(&self) -> FrameBatch {
        self.0.lock().expect("not poisoned").pop().unwrap_or_else(|| FrameBatch {
            linktype: 0,
            data: Vec::with_capacity(BATCH_ROOM),
            frames: Vec::with_capacity(BATCH_FRAMES),
        })
    }
    /// Returns a batch; a few are kept for reuse (at most `POOL_BATCHES` of `BATCH_ROOM`: about
    /// 8 MiB), the rest freed. The bytes of batches in flight are bounded by the input budget
    /// (`run.queue_mib`).
    pub fn give(&self, mut b: FrameBatch) {
        b.clear();
        let mut v = self.0.lock().expect("not poisoned");
        if v.len() < POOL_BATCHES && b.data.capacity() <= BATCH_ROOM {
            v.push(b);
        }
    }
}

/// Batches kept for reuse.
const POOL_BATCHES: usize = 2;
/// A batch goes to the core when it holds this many frames or bytes...
const BATCH_FRAMES: usize = 16_384;
const BATCH_BYTES: usize = 4 << 20;
/// The largest frame captured (libpcap's snapshot length).
const SNAPLEN: usize = 65_535;
/// A batch's bytes at most: it is handed over once it reaches `BATCH_BYTES`, so the last frame
/// added may take it past by one frame.
const BATCH_ROOM: usize = BATCH_BYTES + SNAPLEN;
/// ...or when a frame comes this long (by packet time, in microseconds) after its first one...
const BATCH_WAIT_MICROS: crate::capture::Micros = 250_000;
/// ...or when the ring has nothing more ready and the batch was begun [`HOLD_FEW`] ago, or
/// [`HOLD`] once it holds [`FEW_FRAMES`] or more (traffic of over about 5,000 packets/s). Each
/// hand-over wakes the decoding thread and the core to caches that other work cooled: handing over
/// every block as the kernel retired it cost 2.37 -> 1.93 and 2.70 -> 2.20 us of CPU per packet
/// at 50,000 packets/s against a 50 ms hold (two paired probes), and at 10,000 packets/s a 200 ms
/// hold instead of 50 ms (2,000 frames a batch, not 500; with room for 4 MiB, not 1 MiB, which cut
/// it short) took a median 3.29 us against 3.69 (six and eight paired runs, all threads). A
/// little traffic goes on after 50 ms, as before: its wake-ups cost next to nothing, and its
/// state reaches the once-a-second save sooner. 200 ms more latency is nothing to an analytics
/// event.
const HOLD_FEW: std::time::Duration = std::time::Duration::from_millis(50);
const HOLD: std::time::Duration = std::time::Duration::from_millis(200);
const FEW_FRAMES: usize = 256;

/// The longest a frame stays in the capture path before it is handed on: the ring's block
/// timeout, then a batch held while the ring is empty or spanning its packet-time limit.
pub(super) const MAX_HOLD_MICROS: crate::capture::Micros = READ_TIMEOUT_MS as crate::capture::Micros * 1000
    + if BATCH_WAIT_MICROS > HOLD.as_micros() as crate::capture::Micros {
        BATCH_WAIT_MICROS
    } else {
        HOLD.as_micros() as crate::capture::Micros
    };

/// How long a batch of `frames` frames is held while the ring has nothing ready.
fn hold(frames: usize) -> std::time::Duration {
    if frames < FEW_FRAMES { HOLD_FEW } else { HOLD }
}

/// libpcap's read timeout: without immediate mode, Linux captures through TPACKET_V3, where the
/// kernel fills whole blocks of the ring and hands one over when it is full or this old: one
/// wake-up per block instead of one per packet, and packets packed tightly (immediate mode
/// falls back to fixed 64 KiB slots, so a 32 MiB buffer held only 512 packets).
const READ_TIMEOUT_MS: i32 = 50;

/// The running captures: each interface's counters, and the threads to join on shutdown.
pub struct Captures {
    pub stats: Vec<(String, Arc<CaptureStats>)>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

/// Opens every configured interface; each gets a thread that sends batches of frames until
/// `stop`.
pub fn start(
    cfg: &Config,
    tx: SyncSender<Input>,
    budget: Arc<InputBudget>,
    pool: Arc<BatchPool>,
    stop: Arc<AtomicBool>,
) -> Result<Captures> {
    let filter = bpf_filter(cfg);
    let mut all = Vec::new();
    let mut threads = Vec::new();
    let devices = pcap::Device::list().unwrap_or_default();
    for name in &cfg.run.interfaces {
        let device = devices.iter().find(|d| &d.name == name);
        if device.is_none() && name != "any" {
            let known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            anyhow::bail!(
                "run.interfaces: there is no capture device {name:?} on this host (known: {})",
                known.join(", ")
            );
        }
        let cap = pcap::Capture::from_device(name.as_str())
            .with_context(|| format!("capture device {name}"))?
            .immediate_mode(false)
            .snaplen(SNAPLEN as i32)
            .buffer_size((cfg.run.buffer_mib as i32).saturating_mul(1 << 20))
            .timeout(READ_TIMEOUT_MS)
            .open()
            .with_context(|| format!("cannot capture on {name} (needs CAP_NET_RAW)"))?;
        // non-blocking: when the ring has nothing ready, the batch in hand goes to the core
        // before waiting (a lone REGISTER is not held back until more traffic comes)
        let mut cap = cap.setnonblock().with_context(|| format!("non-blocking capture on {name}"))?;
        cap.filter(&filter, true).with_context(|| format!("BPF filter on {name}"))?;
        let linktype = cap.get_datalink().0 as u32;
        let stats = Arc::new(CaptureStats::default());
        stats.loopback.store(device.is_some_and(|d| d.flags.is_loopback()), Ordering::Relaxed);
        all.push((name.clone(), stats.clone()));
        let (tx, stop, name, budget, pool) = (tx.clone(), stop.clone(), name.clone(), budget.clone(), pool.clone());
        let t = std::thread::Builder::new().name(format!("capture-{name}")).spawn(move || {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&cap);
            let mut last_publish = std::time::Instant::now();
            let mut drops = DropLog::default();
            let mut batch = pool.take();
            // the first frame's time, by its packet time: no clock read per packet
            let mut first_ts = 0;
            // and when it was begun, by the clock (one read per batch): for `hold`
            let mut started = std::time::Instant::now();
            // packets received and not yet added to the shared counter (an atomic add per
            // packet showed in profiles)
            let mut unchecked = 0u64;
            // (a small `run.queue_mib` is not filled by one batch in the making: its frames
            // count against the budget from the start)
            let batch_bytes = BATCH_BYTES.min(budget.max_bytes() / 4);
            let send = |batch: &mut FrameBatch| -> bool {
                let full = std::mem::replace(batch, pool.take());
                tx.send(Input::Frames(full)).is_ok()
            };
            while !stop.load(Ordering::Relaxed) {
                // every packet the ring holds ready, in one call (`pcap_next_ex` went through the
                // same read path once per packet: about 300 instructions each, in profiles)
                let mut gone = false;
                let got = cap.dispatch(None, |p| {
                    if gone {
                        return;
                    }
                    let ts = p.header.ts.tv_sec * 1_000_000 + p.header.ts.tv_usec;
                    if budget.admit(p.data.len()) {
                        if batch.frames.is_empty() {
                            batch.linktype = linktype;
                            first_ts = ts;
                            started = std::time::Instant::now();
                        }
                        let off = batch.data.len() as u32;
                        batch.data.extend_from_slice(p.data);
                        batch.frames.push((ts, off, p.data.len() as u32));
                    }
                    if (batch.frames.len() >= BATCH_FRAMES
                        || batch.data.len() >= batch_bytes
                        || !batch.frames.is_empty() && ts - first_ts >= BATCH_WAIT_MICROS)
                        && !send(&mut batch)
                    {
                        gone = true;
                    }
                });
                if gone {
                    return;
                }
                match got {
                    Ok(n) if n > 0 => {
                        // the counters, every so many packets
                        unchecked += n as u64;
                        if unchecked < 256 {
                            continue;
                        }
                        stats.received.fetch_add(std::mem::take(&mut unchecked), Ordering::Relaxed);
                    }
                    Ok(_) => {
                        // nothing ready: hand over what we have if it has been held long
                        // enough (`hold`), then sleep until the kernel retires a block, the batch
                        // is due, or a quarter second passes (to notice a stop)
                        stats.received.fetch_add(std::mem::take(&mut unchecked), Ordering::Relaxed);
                        let mut wait_ms = 250;
                        if !batch.frames.is_empty() {
                            let (age, held_for) = (started.elapsed(), hold(batch.frames.len()));
                            if age >= held_for {
                                if !send(&mut batch) {
                                    return;
                                }
                            } else {
                                wait_ms = (held_for - age).as_millis() as i32 + 1;
                            }
                        }
                        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                        // SAFETY: one valid pollfd, for the duration of the call
                        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
                    }
                    Err(e) => {
                        tracing::error!(interface = %name, error = %e, "capture failed");
                        return;
                    }
                }
                if last_publish.elapsed() >= std::time::Duration::from_secs(1) {
                    publish(&mut cap, &stats);
                    drops.check(&name, &stats);
                    last_publish = std::time::Instant::now();
                }
            }
            stats.received.fetch_add(unchecked, Ordering::Relaxed);
            if !batch.frames.is_empty() {
                send(&mut batch);
            }
            publish(&mut cap, &stats);
        })?;
        threads.push(t);
    }
    Ok(Captures { stats: all, threads })
}

/// The kernel's drop counters (the packets received are counted by the capture loop).
fn publish(cap: &mut pcap::Capture<pcap::Active>, stats: &CaptureStats) {
    if let Ok(s) = cap.stats() {
        let copies = if stats.loopback.load(Ordering::Relaxed) { 2 } else { 1 };
        stats.dropped.store(u64::from(s.dropped) / copies, Ordering::Relaxed);
        stats.if_dropped.store(u64::from(s.if_dropped) / copies, Ordering::Relaxed);
    }
}

/// Logs kernel drops when they grow, at most once a minute per interface, with what to do.
#[derive(Default)]
struct DropLog {
    logged: u64,
    at: Option<std::time::Instant>,
}

impl DropLog {
    fn check(&mut self, name: &str, stats: &CaptureStats) {
        let now = stats.dropped.load(Ordering::Relaxed) + stats.if_dropped.load(Ordering::Relaxed);
        if now > self.logged && self.at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            tracing::warn!(
                interface = %name,
                dropped = now - self.logged,
                dropped_total = now,
                "the kernel dropped packets before siptap read them: events may be missing; raise run.buffer_mib (restart needed) or check the CPU siptap gets"
            );
            self.logged = now;
            self.at = Some(std::time::Instant::now());
        }
    }
}
