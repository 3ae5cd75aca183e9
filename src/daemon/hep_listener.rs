//! Receives HEP v3 over UDP and TCP (Kamailio `siptrace`, OpenSIPS, FreeSWITCH, Asterisk
//! `res_hep`, heplify) and hands each packet to the core. Who is trusted is the decoder's
//! business (`[[hep.sources]]`); this shell bounds what strangers can cost: the bytes waiting for
//! the core (`InputBudget`), the TCP connections served at once, how long one may stay silent,
//! and a packet's size. A resource error (no file descriptor left, say) is logged, never a panic.
use super::{Input, InputBudget};
use crate::clock::now_micros;
use anyhow::{Context, Result};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The largest HEP packet (its length field is 16 bits).
const MAX_PACKET: usize = 65_535;

/// What the listener turned away.
#[derive(Debug, Default)]
pub struct HepListenerStats {
    pub connections: AtomicU64,
    /// Connections closed at once because `hep.max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed after `hep.idle_timeout_secs` without a byte.
    pub connections_idle: AtomicU64,
    /// Connections closed because their bytes were not HEP.
    pub connections_out_of_sync: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl HepListenerStats {
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("hep_tcp_connections", self.connections.load(Ordering::Relaxed)),
            ("hep_tcp_connections_refused", self.connections_refused.load(Ordering::Relaxed)),
            ("hep_tcp_connections_idle_closed", self.connections_idle.load(Ordering::Relaxed)),
            ("hep_tcp_connections_out_of_sync", self.connections_out_of_sync.load(Ordering::Relaxed)),
            ("hep_tcp_accept_errors", self.accept_errors.load(Ordering::Relaxed)),
        ]
    }
}

/// Hands one packet to the core unless the input queue is full (in bytes or entries).
fn deliver(tx: &SyncSender<Input>, budget: &InputBudget, sender: std::net::IpAddr, data: Vec<u8>) -> bool {
    if !budget.admit(data.len()) {
        return true;
    }
    let n = data.len();
    match tx.try_send(Input::Hep { ts: now_micros(), sender, data }) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            budget.release(n);
            budget.refuse();
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// Binds the UDP socket and serves it on a thread of its own.
pub fn start_udp(
    addr: SocketAddr,
    tx: SyncSender<Input>,
    budget: Arc<InputBudget>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let udp = UdpSocket::bind(addr).with_context(|| format!("cannot listen for HEP on udp {addr}"))?;
    udp.set_read_timeout(Some(Duration::from_millis(250)))?;
    std::thread::Builder::new()
        .name("hep-udp".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_PACKET + 1];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf)
                    && !deliver(&tx, &budget, from.ip(), buf[..n].to_vec())
                {
                    return;
                }
            }
        })
        .context("cannot start the HEP UDP thread")?;
    Ok(())
}

/// Binds the TCP listener (on the caller's thread, so that a bad address fails the start).
pub fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for HEP on tcp {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves HEP over TCP on the async runtime: at most `max_connections` at once (more are
/// closed at once), each closed after `idle` without a byte.
pub async fn serve_tcp(
    listener: std::net::TcpListener,
    tx: SyncSender<Input>,
    budget: Arc<InputBudget>,
    max_connections: usize,
    idle: Duration,
    stats: Arc<HepListenerStats>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve HEP over TCP");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let (conn, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // out of file descriptors, say: wait a little instead of spinning
                if stats.accept_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(error = %e, "cannot accept HEP connections");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if stats.connections_refused.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(%from, max_connections, "HEP connection refused: too many open (hep.max_connections)");
            }
            drop(conn);
            continue;
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (tx, budget, stats) = (tx.clone(), budget.clone(), stats.clone());
        tokio::spawn(async move {
            read_stream(conn, from, &tx, &budget, idle, &stats).await;
            drop(permit);
        });
    }
}

/// HEP over TCP: packets one after another, each framed by its own length field.
async fn read_stream(
    mut conn: tokio::net::TcpStream,
    from: SocketAddr,
    tx: &SyncSender<Input>,
    budget: &InputBudget,
    idle: Duration,
    stats: &HepListenerStats,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16_384);
    let mut chunk = [0u8; 16_384];
    loop {
        let n = match tokio::time::timeout(idle, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                stats.connections_idle.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 6 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            if &buf[..4] != b"HEP3" || len < 6 {
                stats.connections_out_of_sync.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%from, "HEP stream out of sync; connection dropped");
                return;
            }
            if buf.len() < len {
                break;
            }
            let pkt: Vec<u8> = buf.drain(..len).collect();
            if !deliver(tx, budget, from.ip(), pkt) {
                return;
            }
        }
    }
}
