//! Delivery to a local fake Measurement Protocol server (tests/common/mp_server.rs): every event
//! of the lab captures arrives, across outages, a restart and a `kill -9` mid-batch; duplicates
//! are limited to the batches in flight at the kill; 4xx is never retried; the secret never shows.
mod common;
use common::mp_server::FakeMp;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-ApiSecret-value";

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Lab captures (real sipp + Kamailio traffic) shifted so that they end `ago` before now.
fn recent_capture(dir: &Path, ago: Duration) -> PathBuf {
    let lab = root().join("fixtures/lab/captures");
    let mut frames = Vec::new();
    for c in ["register.pcap", "call_caller_bye.pcap", "call_busy.pcap", "call_cancel.pcap", "call_tcp.pcap"] {
        frames.extend(flood::read(&lab.join(c)));
    }
    let last = frames.iter().map(|f| f.ts).max().unwrap();
    let shift = now_micros() - ago.as_micros() as i64 - last;
    for f in &mut frames {
        f.ts += shift;
    }
    let p = dir.join("recent.pcap");
    flood::write(&p, frames);
    p
}

fn config(dir: &Path, endpoint: &str) -> PathBuf {
    let p = dir.join("siptap.toml");
    std::fs::write(
        &p,
        format!(
            "sip_servers = [\"127.0.0.10:5060\"]\n[delivery]\nmax_in_flight = 2\nmax_backoff_secs = 1\nrequest_timeout_secs = 5\n\
             [tenants.lab]\ndomains = [\"lab.example\"]\n[tenants.lab.firebase]\napp_id = \"1:1234567890:android:0a1b2c3d4e5f\"\n\
             api_secret_env = \"SIPTAP_TEST_API_SECRET\"\nendpoint = \"{endpoint}\"\nallow_insecure_endpoint = true\n"
        ),
    )
    .unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    let out =
        Command::new(env!("CARGO_BIN_EXE_siptap")).args(args).env("SIPTAP_TEST_API_SECRET", SECRET).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(SECRET), "the API secret appeared in siptap's output");
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    capture: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

fn setup(endpoint: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let capture = recent_capture(dir.path(), Duration::from_secs(60));
    let config = config(dir.path(), endpoint);
    let state = dir.path().join("state");
    Setup { capture, config, state, _dir: dir }
}

impl Setup {
    fn replay_send(&self, timeout: u64) -> Output {
        run(&[
            "replay",
            "--send",
            "--stats",
            "--send-timeout",
            &timeout.to_string(),
            "--state",
            self.state.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
            self.capture.to_str().unwrap(),
        ])
    }
    fn flush(&self) -> Output {
        run(&[
            "flush",
            "--timeout",
            "30",
            "--state",
            self.state.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
        ])
    }
    /// The events replay derives (checked by the lab tests), as (name, timestamp_micros) counts.
    /// The events replay derives (checked by the lab tests), in order, as (name, time).
    fn expected_in_order(&self) -> Vec<(String, String)> {
        let out = run(&["replay", "--config", self.config.to_str().unwrap(), self.capture.to_str().unwrap()]);
        parse_lines(&String::from_utf8(out.stdout).unwrap())
            .iter()
            .map(|e| (e["event"].as_str().unwrap().to_string(), e["time"].as_str().unwrap().to_string()))
            .collect()
    }

    /// The same, as counts.
    fn expected(&self) -> HashMap<(String, String), usize> {
        let mut m = HashMap::new();
        for k in self.expected_in_order() {
            *m.entry(k).or_default() += 1;
        }
        m
    }
}

fn counts(events: &[(String, i64, String)]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for (name, ts, _) in events {
        *m.entry((name.clone(), siptap::timefmt::rfc3339_micros(*ts))).or_default() += 1;
    }
    m
}

#[test]
fn every_event_arrives_once_in_valid_requests() {
    let mp = FakeMp::start();
    let s = setup(&mp.url());
    let out = s.replay_send(30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = s.expected();
    // register 6; caller_bye 7 (bob signs up); busy, cancel and tcp 6 each (bob's new boot
    // cycle: app_start and login, then callin, callout and two callends)
    assert_eq!(want.values().sum::<usize>(), 6 + 7 + 6 + 6 + 6, "lab events in these captures");
    assert_eq!(counts(&mp.accepted_events()), want);
    for r in mp.requests() {
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.app_id, "1:1234567890:android:0a1b2c3d4e5f");
        assert_eq!(r.api_secret, SECRET);
        let body = r.body.to_string();
        // phone numbers and SIP addresses do not reach Google by default
        assert!(!body.contains("alice") && !body.contains("bob") && !body.contains("127.0.0"), "{body}");
        assert!(r.body["user_id"].as_str().is_some_and(|u| u.len() == 32));
    }
    // a call's events share a (hashed) call_id and a session
    let evs: Vec<Value> = mp.requests().iter().flat_map(|r| r.body["events"].as_array().unwrap().clone()).collect();
    let ends = evs.iter().filter(|e| e["name"] == "callend").count();
    assert_eq!(ends, 8);
    for e in &evs {
        assert!(e["params"]["session_id"].as_i64().is_some());
    }
}

#[test]
fn outages_are_retried_until_everything_arrives() {
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().fail = vec![503, 503, 429, 500, 503];
    let s = setup(&mp.url());
    let out = s.replay_send(60);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&mp.accepted_events()), s.expected());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stat_of(&err, "delivery_5xx_429"), 5, "{err}");
}

#[test]
fn a_server_down_then_a_restart_loses_nothing() {
    // a port with nothing listening
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = setup(&format!("http://127.0.0.1:{port}"));
    let out = s.replay_send(2);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stay in the outbox"));
    let mp = FakeMp::on(port);
    let out = s.flush();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&mp.accepted_events()), s.expected());
}

#[test]
fn kill_9_mid_batch_loses_nothing_and_repeats_only_the_batches_in_flight() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = setup(&format!("http://127.0.0.1:{port}"));
    assert!(!s.replay_send(1).status.success(), "nothing listens yet: events stay queued");
    let mp = FakeMp::on(port);
    mp.behaviour.lock().unwrap().hang = true;
    let mut child = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["flush", "--state", s.state.to_str().unwrap(), "--config", s.config.to_str().unwrap()])
        .env("SIPTAP_TEST_API_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while mp.requests().len() < 2 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // the server got (and, as far as we know, recorded) the requests in flight at the kill
    let in_flight = mp.requests();
    assert!(!in_flight.is_empty() && in_flight.len() <= 2, "max_in_flight = 2: {} requests", in_flight.len());
    mp.behaviour.lock().unwrap().hang = false;
    let out = s.flush();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut got = counts(&mp.accepted_events());
    let in_flight_events: Vec<(String, i64, String)> = in_flight
        .iter()
        .flat_map(|r| {
            r.body["events"].as_array().unwrap().iter().map(|e| {
                (e["name"].as_str().unwrap().to_string(), e["timestamp_micros"].as_i64().unwrap(), String::new())
            })
        })
        .collect();
    let dup = counts(&in_flight_events);
    // every event arrived after the restart, once
    assert_eq!(got, s.expected());
    // counting what the killed batches delivered too, an event arrived twice only if it was in flight
    for (k, n) in dup {
        *got.get_mut(&k).unwrap() += n;
    }
    for (k, n) in &got {
        assert!(*n <= 2, "{k:?} arrived {n} times");
    }
}

#[test]
fn a_4xx_is_kept_not_retried() {
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().fail = vec![400];
    let s = setup(&mp.url());
    let out = s.replay_send(30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected table"));
    let reqs = mp.requests();
    let refused: Vec<&Value> = reqs.iter().filter(|r| r.answered == 400).map(|r| &r.body).collect();
    assert_eq!(refused.len(), 1);
    // none of the refused request's events was sent again
    let refused_events = refused[0]["events"].as_array().unwrap().len();
    let total: usize = s.expected().values().sum();
    assert_eq!(mp.accepted_events().len(), total - refused_events);
}

#[test]
fn events_past_the_72_hour_window_are_kept_as_too_old_not_sent() {
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let capture = recent_capture(dir.path(), Duration::from_secs(4 * 24 * 3600));
    let cfg = config(dir.path(), &mp.url());
    let state = dir.path().join("state");
    let out = run(&[
        "replay",
        "--send",
        "--stats",
        "--state",
        state.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        capture.to_str().unwrap(),
    ]);
    // not sent, kept (and shown) as too old; replay --send says so and fails
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(err.contains("31 event(s) older than GA4's 72 hours, not sent"), "{err}");
    assert!(mp.requests().is_empty());
    assert_eq!(stat_of(&err, "outbox_dropped_too_old"), 31, "{err}");
    let list = run(&["outbox", "--state", state.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("tenant lab: queued 0, too_old 31"), "{text}");
}

#[test]
fn validate_checks_locally_and_against_the_debug_endpoint() {
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mp.url());
    let out = run(&["validate", "--remote", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("tenant lab request 1 (6 events: signup,login,app_start,callout,callin,callend): ok"),
        "{text}"
    );
    assert!(text.contains("debug endpoint: no validation messages"), "{text}");
    assert!(mp.requests().iter().all(|r| r.path == "/debug/mp/collect"));
}

#[test]
fn a_missing_secret_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9");
    let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(":10:")
            && err.contains("tenants.lab.firebase.api_secret_env")
            && err.contains("SIPTAP_TEST_API_SECRET"),
        "{err}"
    );
}

#[test]
fn a_full_outbox_says_so_and_applies_its_policy() {
    for (policy, kept_newest) in [("reject_new", false), ("drop_oldest", true)] {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = setup(&format!("http://127.0.0.1:{port}"));
        let text = std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("[delivery]\n", &format!("[delivery]\nmax_outbox_events = 5\nwhen_full = \"{policy}\"\n"));
        std::fs::write(&s.config, text).unwrap();
        let out = s.replay_send(1);
        assert!(!out.status.success(), "nothing listens: events stay queued");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stat_of(&err, "outbox_dropped_full"), 26, "{policy}: {err}");
        if policy == "reject_new" {
            assert!(err.contains("outbox full"), "{err}");
        }
        let mp = FakeMp::on(port);
        assert!(s.flush().status.success());
        let want = s.expected_in_order();
        let got = counts(&mp.accepted_events());
        // reject_new keeps the first five queued, drop_oldest the last five
        let kept = if kept_newest { &want[want.len() - 5..] } else { &want[..5] };
        let mut expect = HashMap::new();
        for k in kept {
            *expect.entry(k.clone()).or_insert(0usize) += 1;
        }
        assert_eq!(got, expect, "{policy}");
    }
}

#[test]
fn the_app_instance_id_comes_from_the_app_then_the_mapping_then_a_keyed_hash() {
    let dir = tempfile::tempdir().unwrap();
    // erin's REGISTER carries ;x-app-id=00112233445566778899aabbccddeeff in its Contact
    let mut frames = flood::read(&root().join("fixtures/lab/captures/register_app_id.pcap"));
    let shift = now_micros() - 60_000_000 - frames.iter().map(|f| f.ts).max().unwrap();
    for f in &mut frames {
        f.ts += shift;
    }
    let capture = dir.path().join("erin.pcap");
    flood::write(&capture, frames);
    std::fs::write(dir.path().join("ids.txt"), "erin@lab.example -> ffffffffffffffffffffffffffffffff\n").unwrap();
    let ids = |extra: &str| -> Vec<String> {
        let mp = FakeMp::start();
        let cfg = config(dir.path(), &mp.url());
        std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + extra).unwrap();
        let state = tempfile::tempdir().unwrap();
        let out = run(&[
            "replay",
            "--send",
            "--state",
            state.path().to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            capture.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        mp.requests().iter().map(|r| r.body["app_instance_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids("app_instance_id_from = \"x-app-id\"\n"), ["00112233445566778899aabbccddeeff"]);
    assert_eq!(ids("app_instance_map = \"ids.txt\"\n"), ["f".repeat(32)]);
    let derived = ids("");
    assert_eq!(derived.len(), 1);
    assert!(derived[0].len() == 32 && derived[0] != "f".repeat(32) && !derived[0].starts_with("0011223344"));
}

fn setup_at(endpoint: &str, ago: i64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lab = root().join("fixtures/lab/captures");
    let mut frames = Vec::new();
    for c in ["register.pcap", "call_caller_bye.pcap", "call_busy.pcap", "call_cancel.pcap", "call_tcp.pcap"] {
        frames.extend(flood::read(&lab.join(c)));
    }
    let last = frames.iter().map(|f| f.ts).max().unwrap();
    let shift = now_micros() - ago - last;
    for f in &mut frames {
        f.ts += shift;
    }
    let capture = dir.path().join("shifted.pcap");
    flood::write(&capture, frames);
    let config = config(dir.path(), endpoint);
    let state = dir.path().join("state");
    Setup { capture, config, state, _dir: dir }
}

fn rejected_events(state: &Path) -> u64 {
    let out = run(&["outbox", "--json", "--state", state.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["reasons"].as_array().unwrap().iter().map(|r| r["events"].as_u64().unwrap()).sum()
}

#[test]
fn rejected_records_never_overwrite_each_other_across_restarts() {
    // every request refused (400), in three processes one after another, each queueing new
    // events into an outbox emptied by the previous one: every refused event is kept
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().fail = vec![400; 1000];
    let s = setup(&mp.url());
    let total: usize = s.expected().values().sum();
    let mut expected_rejected = 0;
    for (i, ago) in [3600, 1800, 600].iter().enumerate() {
        let t = setup_at(&mp.url(), ago * 1_000_000);
        let out = run(&[
            "replay",
            "--send",
            "--stats",
            "--send-timeout",
            "20",
            "--state",
            s.state.to_str().unwrap(),
            "--config",
            s.config.to_str().unwrap(),
            t.capture.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "run {i}: refused requests make replay --send fail");
        // (later runs go on from the saved state: no second signups, so fewer events)
        let queued = stat_of(&String::from_utf8_lossy(&out.stderr), "outbox_queued");
        assert!(queued as usize <= total && queued > 20);
        expected_rejected += queued as usize;
        assert_eq!(rejected_events(&s.state), expected_rejected as u64, "after run {i}");
    }
    assert!(mp.accepted_events().is_empty());
}

#[test]
fn a_408_or_a_503_is_retried_and_only_a_request_error_is_final() {
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().fail = vec![408, 503, 408];
    let s = setup(&mp.url());
    let out = s.replay_send(30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&mp.accepted_events()), s.expected());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stat_of(&err, "delivery_4xx"), 0, "{err}");
    assert_eq!(stat_of(&err, "delivery_5xx_429"), 3, "{err}");
}

#[test]
fn events_ahead_of_this_clock_are_sent_stamped_now_and_counted() {
    // a capture host (or HEP agent) whose clock runs two hours fast
    let mp = FakeMp::start();
    let s = setup_at(&mp.url(), -2 * 3600 * 1_000_000);
    let before = now_micros();
    let out = s.replay_send(30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = mp.accepted_events();
    let want: usize = s.expected().values().sum();
    assert_eq!(got.len(), want, "every event delivered");
    assert!(got.iter().all(|(_, ts, _)| *ts >= before && *ts <= now_micros()), "stamped with the send time");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stat_of(&err, "outbox_timestamps_clamped"), want as u64, "{err}");
    assert!(err.contains("ahead of this host's clock"), "{err}");
}

#[test]
fn replaying_the_same_capture_again_queues_nothing_twice() {
    // nothing listens: the first replay queues every event; a second (as after a kill before the
    // end, or by mistake) queues none again; once the server is up each event arrives once
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = setup(&format!("http://127.0.0.1:{port}"));
    let total: usize = s.expected().values().sum();
    let first = s.replay_send(1);
    let err = String::from_utf8(first.stderr).unwrap();
    assert!(err.contains("Connection refused"), "the cause is logged: {err}");
    assert_eq!(stat_of(&err, "outbox_queued"), total as u64);
    // (the second run goes on from the first's saved state, so it derives fewer events: no second
    // signup, no app_start for a boot cycle already seen; those it does derive are duplicates)
    let second = s.replay_send(1);
    let err = String::from_utf8(second.stderr).unwrap();
    assert_eq!(stat_of(&err, "outbox_queued"), 0, "{err}");
    assert!(stat_of(&err, "outbox_duplicates_skipped") > 0, "{err}");
    assert_eq!(stat_of(&err, "outbox_left"), total as u64, "{err}");
    let mp = FakeMp::on(port);
    assert!(s.flush().status.success());
    assert_eq!(counts(&mp.accepted_events()), s.expected());
}

#[test]
fn retry_after_is_honoured() {
    let mp = FakeMp::start();
    {
        let mut b = mp.behaviour.lock().unwrap();
        b.fail = vec![503];
        b.retry_after = Some(2);
    }
    let s = setup(&mp.url());
    // one request at a time, so that the next request is one sent after the answer
    // (and a backoff cap above the 2 s asked for: max_backoff_secs caps Retry-After too)
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("max_in_flight = 2", "max_in_flight = 1")
        .replace("max_backoff_secs = 1", "max_backoff_secs = 5");
    std::fs::write(&s.config, text).unwrap();
    let out = s.replay_send(30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reqs = mp.requests();
    let failed = reqs.iter().find(|r| r.answered == 503).unwrap().at;
    let next = reqs.iter().filter(|r| r.at > failed).map(|r| r.at).min().unwrap();
    assert!(next - failed >= Duration::from_millis(1900), "the next request came {:?} after", next - failed);
}

#[test]
fn after_a_one_second_blip_the_outbox_drains_at_full_speed() {
    // every request fails for one second; max_backoff_secs is 300 here. One probe at a time
    // during the outage, full speed once the endpoint answers: the drain takes seconds, not minutes
    let mp = FakeMp::start();
    let s = setup(&mp.url());
    let text = std::fs::read_to_string(&s.config).unwrap().replace("max_backoff_secs = 1", "max_backoff_secs = 300");
    std::fs::write(&s.config, text).unwrap();
    mp.behaviour.lock().unwrap().down_until = Some(Instant::now() + Duration::from_secs(1));
    let t = Instant::now();
    let out = s.replay_send(60);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert_eq!(counts(&mp.accepted_events()), s.expected());
    // during the outage: the first requests in flight, then one probe at a time (250 ms doubling)
    let failed = mp.requests().iter().filter(|r| r.answered == 503).count();
    assert!(failed <= 2 + 4, "{failed} requests failed");
}

#[test]
fn deadlines_are_kept_with_requests_hanging() {
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().hang = true;
    let s = setup(&mp.url());
    let text =
        std::fs::read_to_string(&s.config).unwrap().replace("request_timeout_secs = 5", "request_timeout_secs = 60");
    std::fs::write(&s.config, text).unwrap();
    let t = Instant::now();
    let out = s.replay_send(2);
    let took = t.elapsed();
    assert!(!out.status.success());
    // (a hung request would hold it for the 60 s request timeout; the margin is for a loaded runner)
    assert!(took < Duration::from_secs(6), "replay --send-timeout 2 took {took:?}");
    let t = Instant::now();
    let out =
        run(&["flush", "--timeout", "2", "--state", s.state.to_str().unwrap(), "--config", s.config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(5), "flush --timeout 2 took {:?}", t.elapsed());
    // the events of the cancelled requests stayed queued
    mp.behaviour.lock().unwrap().hang = false;
    assert!(s.flush().status.success());
    let got = counts(&mp.accepted_events());
    assert_eq!(got.keys().collect::<std::collections::HashSet<_>>(), s.expected().keys().collect());
}

#[test]
fn the_outbox_command_shows_why_and_requeues_after_a_fix() {
    let mp = FakeMp::start();
    {
        let mut b = mp.behaviour.lock().unwrap();
        b.fail = vec![403; 50];
        b.answer = "api_secret is not valid for this stream".into();
    }
    let s = setup(&mp.url());
    assert!(!s.replay_send(30).status.success());
    let total: usize = s.expected().values().sum();
    let show = run(&["outbox", "--state", s.state.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains(&format!("tenant lab: queued 0, refused {total}")), "{text}");
    assert!(text.contains("refused HTTP 403") && text.contains("api_secret is not valid for this stream"), "{text}");
    // drop asks first
    let refuse = run(&["outbox", "drop", "--rejected", "--state", s.state.to_str().unwrap()]);
    assert!(!refuse.status.success());
    assert!(String::from_utf8_lossy(&refuse.stderr).contains(&format!("would drop {total} event(s)")));
    // the operator fixes the secret; requeue, flush: everything arrives, once
    mp.behaviour.lock().unwrap().fail.clear();
    let rq = run(&["outbox", "requeue", "--state", s.state.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&rq.stdout).contains(&format!("{total} event(s) queued again")));
    assert!(s.flush().status.success());
    assert_eq!(counts(&mp.accepted_events()), s.expected());
    let show = run(&["outbox", "--state", s.state.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("the outbox is empty"));
}

#[test]
fn validate_fails_when_it_could_not_check() {
    let dir = tempfile::tempdir().unwrap();
    // nothing listens
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config(dir.path(), &format!("http://127.0.0.1:{port}"));
    let out = run(&["validate", "--remote", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT CHECKED"));
    // a debug endpoint that answers 500 with a page
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().debug_fails = Some(500);
    let cfg = config(dir.path(), &mp.url());
    let out = run(&["validate", "--remote", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("NOT CHECKED: HTTP 500") && !text.contains("no validation messages"), "{text}");
}

#[test]
fn validate_judges_a_long_capture_by_each_request_not_its_first_event() {
    // a generated capture spanning an hour: no request is reported as being in the future
    use siptap::testkit::capgen::{GenSpec, write_pcap};
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("hour.pcap");
    let spec = GenSpec { users: 50, calls: 200, duration_secs: 3600, ..GenSpec::default() };
    write_pcap(&spec, &cap).unwrap();
    let mp = FakeMp::start();
    let cfg = config(dir.path(), &mp.url());
    let out = run(&["validate", "--config", cfg.to_str().unwrap(), cap.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("future"), "{text}");
}

#[test]
fn a_plain_http_endpoint_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://example.invalid");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("allow_insecure_endpoint = true\n", "");
    std::fs::write(&cfg, text).unwrap();
    let out = run(&["check-config", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tenants.lab.firebase.endpoint") && err.contains("plain http"), "{err}");
    // allowed: accepted, with a warning
    let cfg = config(dir.path(), "http://example.invalid");
    let out = run(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("over plain http"));
}
