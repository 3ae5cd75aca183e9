//! Receives HEP v3 over UDP and TCP (Kamailio `siptrace`, OpenSIPS, FreeSWITCH, Asterisk
//! `res_hep`, heplify) and hands each packet to the core.
use super::Input;
use crate::clock::now_micros;
use anyhow::{Context, Result};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

pub fn start(addr: SocketAddr, tx: SyncSender<Input>, stop: Arc<AtomicBool>) -> Result<()> {
    let udp = UdpSocket::bind(addr).with_context(|| format!("cannot listen for HEP on udp {addr}"))?;
    udp.set_read_timeout(Some(Duration::from_millis(250)))?;
    let (utx, ustop) = (tx.clone(), stop.clone());
    std::thread::Builder::new().name("hep-udp".into()).spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !ustop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp.recv_from(&mut buf)
                && utx.send(Input::Hep { ts: now_micros(), sender: from.ip(), data: buf[..n].to_vec() }).is_err()
            {
                return;
            }
        }
    })?;
    let tcp = TcpListener::bind(addr).with_context(|| format!("cannot listen for HEP on tcp {addr}"))?;
    tcp.set_nonblocking(true)?;
    std::thread::Builder::new().name("hep-tcp".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((conn, from)) => {
                    let (tx, stop) = (tx.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(250)));
                        read_stream(conn, from, tx, stop)
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?;
    Ok(())
}

/// HEP over TCP: packets one after another, each framed by its own length field.
fn read_stream(mut conn: std::net::TcpStream, from: SocketAddr, tx: SyncSender<Input>, stop: Arc<AtomicBool>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16_384];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        loop {
            if buf.len() < 6 {
                break;
            }
            if &buf[..4] != b"HEP3" {
                tracing::warn!(%from, "HEP stream out of sync; connection dropped");
                return;
            }
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            if len < 6 {
                return;
            }
            if buf.len() < len {
                break;
            }
            let pkt: Vec<u8> = buf.drain(..len).collect();
            if tx.send(Input::Hep { ts: now_micros(), sender: from.ip(), data: pkt }).is_err() {
                return;
            }
        }
    }
}
