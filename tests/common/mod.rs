//! Helpers shared by the integration tests: run the real `siptap` binary and compare JSON lines.
#![allow(dead_code)]
pub mod attacks;
pub mod flood;
pub mod hep;
pub mod live;
pub mod mp_server;
pub mod nats;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every lab capture (fixtures/lab/captures/*.pcap), in name order.
pub fn lab_captures() -> Vec<PathBuf> {
    siptap::testkit::lab_captures()
}

/// Whether a command is on the PATH.
pub fn have(bin: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {bin}")).output().is_ok_and(|o| o.status.success())
}

/// Whether the tests run as root (capture, network namespaces, dpkg).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

pub fn siptap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siptap")).args(args).current_dir(root()).output().expect("siptap runs")
}

/// `siptap replay` of captures with a config; returns the events as JSON values (asserts exit 0).
pub fn replay(config: &Path, captures: &[&Path], extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["replay", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    for c in captures {
        args.push(c.to_str().unwrap());
    }
    let out = siptap(&args);
    assert!(out.status.success(), "siptap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_lines(&String::from_utf8(out.stdout).unwrap())
}

pub fn parse_lines(s: &str) -> Vec<Value> {
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Asserts two event lists are equal, showing both in full when not.
pub fn assert_events(name: &str, got: &[Value], want: &[Value]) {
    if got != want {
        let show = |v: &[Value]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
        panic!(
            "{name}: events differ\n--- got ({})\n{}\n--- want ({})\n{}",
            got.len(),
            show(got),
            want.len(),
            show(want)
        );
    }
}

/// A counter's value in the `--stats` lines siptap writes on stderr (`name value`).
pub fn stat_of(stderr: &str, name: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no counter {name} in:\n{stderr}"))
}

/// Says a test could not run here, on stderr directly (libtest hides what a passing test prints
/// with `eprintln!`, so the line shows without `--nocapture`). In CI (`CI=true`) that is a
/// failure: `.ci/run` installs every tool the tests need.
pub fn skipped(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("SKIPPED in CI, where it must run: {why}");
    }
    say_skipped(why);
}

/// A skip for what lives outside the repository (`../shared/pcaps`): said the same way, but not
/// a failure in CI, whose fresh clone may not have that folder beside it.
pub fn skipped_outside(why: &str) {
    say_skipped(why);
}

fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET a path on 127.0.0.1; the body of a 200, else `None`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_accepting(port, path, "*/*")
}

pub fn http_get_accepting(port: u16, path: &str, accept: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some(unchunk(body));
    }
    Some(body.to_string())
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn wait_until(what: &str, within: Duration, f: impl FnMut() -> bool) {
    wait_or_explain(what, within, f, String::new)
}

/// `wait_until`, and on a time-out `explain()` (what the processes under test said) goes into
/// the failure message, so that a timing failure in CI can be read after the fact.
pub fn wait_or_explain(what: &str, within: Duration, mut f: impl FnMut() -> bool, explain: impl FnOnce() -> String) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() >= within {
            panic!("timed out waiting for {what} ({} s)\n{}", within.as_secs(), explain());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
