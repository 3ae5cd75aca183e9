//! `siptap run`'s listeners under attack, on loopback (no capture, no privilege needed): the HEP
//! listener's trust rules, its connection cap and idle timeout, and /health answering while idle
//! connections pile up on both ports.
mod common;
use common::live::{Reaped, start_run};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_cfg(dir: &Path, hep: &str, metrics: u16) -> std::path::PathBuf {
    let p = dir.join("siptap.toml");
    std::fs::write(
        &p,
        format!(
            "sip_servers = [\"127.0.0.10\"]\n[hep]\n{hep}\n[run]\ninterfaces = []\nmetrics_listen = \"127.0.0.1:{metrics}\"\nstate_dir = \"{}\"\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn start(cfg: &Path) -> Reaped {
    start_run(cfg, None)
}

/// GET a path; `None` when nothing answered within `within`.
fn get(port: u16, path: &str, within: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), within).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_healthy(port: u16) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if get(port, "/health", Duration::from_secs(1)).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("siptap did not become healthy");
}

fn metric(port: u16, name: &str) -> u64 {
    let body = get(port, "/metrics", Duration::from_secs(5)).expect("metrics answer");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("siptap_{name} ")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[test]
fn a_hep_listener_without_sources_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_cfg(dir.path(), &format!("listen = \"127.0.0.1:{}\"", free_port()), free_port());
    for cmd in [vec!["check-config"], vec!["run", "--allow-root"]] {
        let mut args = cmd.clone();
        args.extend(["--config", cfg.to_str().unwrap()]);
        let out = Command::new(env!("CARGO_BIN_EXE_siptap")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(err.contains("siptap.toml:3: hep.listen: refusing to take HEP from anyone"), "{cmd:?}: {err}");
    }
}

#[test]
fn check_config_warns_about_listeners_open_to_the_network_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("siptap.toml");
    std::fs::write(
        &p,
        "sip_servers = [\"127.0.0.10\"]\n[hep]\nlisten = \"0.0.0.0:9060\"\n[[hep.sources]]\naddress = \"192.0.2.7\"\n[run]\nmetrics_listen = \"0.0.0.0:9109\"\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
    )
    .unwrap();
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("siptap.toml:4: hep.sources: a source without a password"), "{text}");
    assert!(text.contains("siptap.toml:3: hep.listen: listens beyond this host without a password"), "{text}");
    assert!(
        text.contains("siptap.toml:7: run.metrics_listen: metrics and health are served beyond this host"),
        "{text}"
    );
}

#[test]
fn hep_connections_are_capped_idle_ones_closed_and_health_answers_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let (hep, metrics) = (free_port(), free_port());
    let cfg = write_cfg(
        dir.path(),
        &format!("listen = \"127.0.0.1:{hep}\"\nallow_any_source = true\nmax_connections = 8\nidle_timeout_secs = 1"),
        metrics,
    );
    let _siptap = start(&cfg);
    wait_healthy(metrics);
    // 100 idle connections: 8 are served, the others closed at once
    let conns: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(("127.0.0.1", hep)).unwrap()).collect();
    assert!(get(metrics, "/health", Duration::from_secs(2)).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
    std::thread::sleep(Duration::from_millis(300));
    let closed = |c: &TcpStream| {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 1];
        let mut r = c;
        match r.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    let open_now = conns.iter().filter(|c| !closed(c)).count();
    assert_eq!(open_now, 8, "connections served at once");
    // the 8 stay silent past hep.idle_timeout_secs: siptap closes them
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(conns.iter().filter(|c| !closed(c)).count(), 0);
    std::thread::sleep(Duration::from_millis(1200)); // one tick publishes the counters
    assert!(metric(metrics, "hep_tcp_connections_refused_total") >= 92);
    assert_eq!(metric(metrics, "hep_tcp_connections_idle_closed_total"), 8);
    assert!(get(metrics, "/health", Duration::from_secs(2)).is_some_and(|r| r.starts_with("HTTP/1.1 200")));
}

#[test]
fn health_answers_while_idle_connections_pile_up_on_the_metrics_port() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let cfg = write_cfg(dir.path(), "", metrics);
    let _siptap = start(&cfg);
    wait_healthy(metrics);
    // 600 connections that never send a request: more than the endpoint serves at once
    let _idle: Vec<TcpStream> = (0..600).filter_map(|_| TcpStream::connect(("127.0.0.1", metrics)).ok()).collect();
    // within the request timeout (2 s) the idle ones are dropped and /health answers again
    let t = Instant::now();
    loop {
        if get(metrics, "/health", Duration::from_secs(1)).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(6), "/health did not answer within 6 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
