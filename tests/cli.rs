//! The `siptap` command's contract: config errors that name key, file and line; failures that
//! exit non-zero; the known-users store across replays; renames, disables and routing.
mod common;
use common::*;
use siptap::capture::file::read_file;
use std::path::{Path, PathBuf};

fn lab(name: &str) -> PathBuf {
    root().join("fixtures/lab/captures").join(name)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("siptap.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const LAB: &str = "sip_servers = [\"127.0.0.10:5060\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n";

/// Runs `check-config` on `text` and returns stderr, asserting failure.
fn config_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), text);
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    assert!(!out.status.success(), "config was accepted:\n{text}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(p.to_str().unwrap()), "error does not name the file: {err}");
    err
}

#[test]
fn config_errors_name_key_file_and_line() {
    let e = config_error("sip_servers = [\"127.0.0.10\"]\nsip_server = 1\n");
    assert!(e.contains(":2: sip_server:") && e.contains("unknown field"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[tenants.lab]\ndomains = \"lab.example\"\n");
    assert!(e.contains(":3: tenants.lab.domains:") && e.contains("sequence"), "{e}");
    let e = config_error("# servers\nsip_servers = []\n");
    assert!(e.contains(":2:") && e.contains("sip_servers"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\", \"not-an-ip\"]\n");
    assert!(e.contains(":1:") && e.contains("not-an-ip"), "{e}");
    let e = config_error(&format!("{LAB}[tenants.other]\ndomains = [\"x.example\",\n  \"LAB.example\"]\n"));
    assert!(e.contains(":6:") && e.contains("tenants.other.domains") && e.contains("lab"), "{e}");
    let e = config_error(&format!("{LAB}[tenants.lab.events]\ncallend = \"screen_view\"\n"));
    assert!(e.contains(":5:") && e.contains("tenants.lab.events.callend") && e.contains("reserved"), "{e}");
    let e = config_error(&format!("{LAB}[tenants.lab.events]\nhangup = \"x\"\n"));
    assert!(e.contains(":5:") && e.contains("hangup"), "{e}");
    let e = config_error(&format!("default_tenant = \"nope\"\n{LAB}"));
    assert!(e.contains(":1:") && e.contains("default_tenant"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[hep]\nports = [9060]\nlisten = \"nope\"\n");
    assert!(e.contains(":4:") && e.contains("hep.listen"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[[hep.sources]]\n");
    assert!(e.contains(":2:") && e.contains("hep.sources"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[run]\nlog_format = \"xml\"\n");
    assert!(e.contains(":3:") && e.contains("run.log_format"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[run]\n\nthreads = 3\n");
    assert!(e.contains(":4: run.threads:") && e.contains("not 1 or 2"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[delivery]\nwhen_full = \"panic\"\n");
    assert!(e.contains(":3: delivery.when_full:") && e.contains("reject_new"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"\n");
    assert!(e.contains(":1:") || e.contains(":2:"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[limits]\nstore_journal_mib = 0\n");
    assert!(e.contains(":3: limits.store_journal_mib:") && e.contains("1 to 1024"), "{e}");
    let e = config_error("sip_servers = [\"127.0.0.10\"]\n[limits]\nstore_journal_mib = 4096\n");
    assert!(e.contains(":3: limits.store_journal_mib:"), "{e}");
}

#[test]
fn cluster_config_errors_name_key_file_and_line_and_never_show_the_token() {
    let c = |body: &str| config_error(&format!("{LAB}[cluster]\n{body}"));
    let e = c("sensor = \"a\"\n");
    assert!(e.contains(":4: cluster.nats:"), "{e}");
    let e = c("nats = []\nsensor = \"a\"\n");
    assert!(e.contains(":5: cluster.nats:") && e.contains("at least one"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\", \"nats://user:pw@host:4222\"]\nsensor = \"a\"\n");
    assert!(e.contains(":5: cluster.nats:") && e.contains("credentials_file") && !e.contains("pw@"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1\"]\nsensor = \"a\"\n");
    assert!(e.contains(":5: cluster.nats:"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\n");
    assert!(e.contains("cluster.sensor") && e.contains("node-a"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a b\"\n");
    assert!(e.contains(":6: cluster.sensor:"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a\"\nreplicas = 0\n");
    assert!(e.contains(":7: cluster.replicas:"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a\"\ntoken_env = \"SIPTAP_NO_SUCH_VAR\"\n");
    assert!(e.contains(":7: cluster.token_env:") && e.contains("SIPTAP_NO_SUCH_VAR"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a\"\ncredentials_file = \"nope.creds\"\n");
    assert!(e.contains(":7: cluster.credentials_file:") && e.contains("nope.creds"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a\"\nsenser = 1\n");
    assert!(e.contains(":7: cluster.senser:") && e.contains("unknown field"), "{e}");
    let e = c("nats = [\"nats://127.0.0.1:4222\"]\nsensor = \"a\"\nduplicate_window_secs = 0\n");
    assert!(e.contains(":7: cluster.duplicate_window_secs:"), "{e}");
    let e = config_error(
        "sip_servers = [\"127.0.0.10\"]\n[tenants.\"a.b\"]\ndomains = [\"a.example\"]\n[tenants.a_b]\ndomains = [\"b.example\"]\n\
         [cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nsensor = \"s\"\n",
    );
    assert!(e.contains(":6: cluster:") && e.contains("share a NATS subject"), "{e}");
    // a token file is read, never shown: not by check-config, not in an error
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nats.token"), "s3cr3t-nats-token\n").unwrap();
    let p = write_config(
        dir.path(),
        &format!(
            "{LAB}[cluster]\nnats = [\"nats://10.0.0.1:4222\"]\nsensor = \"a\"\ntoken_file = \"nats.token\"\nreplicas = 9\n"
        ),
    );
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && all.contains("cluster.replicas") && !all.contains("s3cr3t"), "{all}");
    // accepted: summarised, the token named but not shown, a warning for NATS beyond this host
    // without credentials
    let p = write_config(
        dir.path(),
        &format!(
            "{LAB}[cluster]\nnats = [\"nats://10.0.0.1:4222\"]\nsensor = \"a\"\ntoken_file = \"nats.token\"\nreplicas = 3\n"
        ),
    );
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success()
            && all.contains("cluster mode: sensor a, 1 NATS server(s), 3 replica(s), auth token (hidden)"),
        "{all}"
    );
    assert!(!all.contains("s3cr3t"), "{all}");
    let p = write_config(dir.path(), &format!("{LAB}[cluster]\nnats = [\"nats://10.0.0.1:4222\"]\nsensor = \"a\"\n"));
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && all.contains("warning:") && all.contains("without credentials"), "{all}");
}

#[test]
fn the_example_config_is_valid() {
    let out = siptap(&["check-config", "--config", "config.toml.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unreadable_captures_and_configs_fail_clearly() {
    let out = siptap(&["replay", "--config", "config.toml.example", "fixtures/nope.pcap"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fixtures/nope.pcap"));
    let out = siptap(&["replay", "--config", "config.toml.example", "Cargo.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng file"));
    let out = siptap(&["replay", "--config", "missing.toml", lab("register.pcap").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| format!("{} {}", e["event"].as_str().unwrap(), e["user"].as_str().unwrap())).collect()
}

#[test]
fn signup_happens_once_across_replays_with_a_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = root().join("config.toml.example");
    let st = state.to_str().unwrap();
    let first = replay(&cfg, &[&lab("register.pcap")], &["--state", st]);
    assert_eq!(kinds(&first).iter().filter(|k| k.starts_with("signup")).count(), 1);
    let second = replay(&cfg, &[&lab("register.pcap")], &["--state", st]);
    assert_eq!(
        kinds(&second),
        [
            "app_start alice@lab.example",
            "login alice@lab.example",
            "login alice@lab.example",
            "app_start alice@lab.example",
            "login alice@lab.example"
        ]
    );
    // without --state nothing is kept
    let third = replay(&cfg, &[&lab("register.pcap")], &[]);
    assert_eq!(kinds(&third).iter().filter(|k| k.starts_with("signup")).count(), 1);
}

#[test]
fn seeded_users_do_not_sign_up() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "# existing users\nsip:alice@LAB.example\ncarol@lab.example\n").unwrap();
    let out = siptap(&["seed-users", "--state", state.to_str().unwrap(), users.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 user(s) added"));
    let ev =
        replay(&root().join("config.toml.example"), &[&lab("register.pcap")], &["--state", state.to_str().unwrap()]);
    assert!(kinds(&ev).iter().all(|k| !k.starts_with("signup")), "{ev:?}");
    std::fs::write(&users, "alice\n").unwrap();
    let out = siptap(&["seed-users", "--state", state.to_str().unwrap(), users.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1:"));
}

#[test]
fn tenants_rename_disable_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("{LAB}[tenants.lab.events]\nsignup = \"sign_up\"\napp_start = false\ncallout = \"call_out\"\n"),
    );
    let ev = replay(&cfg, &[&lab("call_busy.pcap")], &[]);
    let names: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["sign_up", "login", "callin", "call_out", "callend", "callend"]);
    assert!(ev.iter().all(|e| e["tenant"] == "lab"));
    // a domain no tenant claims: dropped and counted, or sent to the default tenant
    let cfg =
        write_config(dir.path(), "sip_servers = [\"127.0.0.10\"]\n[tenants.other]\ndomains = [\"other.example\"]\n");
    let out =
        siptap(&["replay", "--stats", "--config", cfg.to_str().unwrap(), lab("call_busy.pcap").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stat_of(&err, "events_unrouted"), 7, "{err}");
    let cfg = write_config(
        dir.path(),
        "sip_servers = [\"127.0.0.10\"]\ndefault_tenant = \"other\"\n[tenants.other]\ndomains = [\"other.example\"]\n",
    );
    let ev = replay(&cfg, &[&lab("call_busy.pcap")], &[]);
    assert_eq!(ev.len(), 7);
    assert!(ev.iter().all(|e| e["tenant"] == "other"));
}

#[test]
fn traffic_between_two_servers_or_two_clients_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // every lab address a server: nothing is from or to a client
    let cfg = write_config(
        dir.path(),
        "sip_servers = [\"127.0.0.10\", \"127.0.0.2\", \"127.0.0.3\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
    );
    assert!(replay(&cfg, &[&lab("call_caller_bye.pcap")], &[]).is_empty());
    // no lab address a server: every hop is client to client
    let cfg = write_config(dir.path(), "sip_servers = [\"127.0.0.99\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n");
    assert!(replay(&cfg, &[&lab("call_caller_bye.pcap")], &[]).is_empty());
}

/// Timestamp (µs) of frame `n` (1-based) of a capture.
fn frame_time(capture: &Path, n: usize) -> i64 {
    let mut times = Vec::new();
    read_file(capture, |f| times.push(f.ts)).unwrap();
    times[n - 1]
}

#[test]
fn open_legs_end_only_when_their_timeout_passes_within_the_timeline() {
    let cut = lab("derived/answered_no_bye.pcap");
    let cfg = root().join("config.toml.example");
    // alone: the answered call has no BYE and its 4 h timeout is far away: no callend
    let ev = replay(&cfg, &[&cut], &[]);
    assert_eq!(
        kinds(&ev),
        [
            "signup bob@lab.example",
            "app_start bob@lab.example",
            "login bob@lab.example",
            "callin bob@lab.example",
            "callout alice@lab.example"
        ]
    );
    // with a 1 s limit and a later capture in the same timeline (a busy call), both legs time out
    // 1 s after their last in-dialog message (the ACKs, frames 15 and 16), before its events
    let dir = tempfile::tempdir().unwrap();
    let short = write_config(dir.path(), &format!("max_call_duration_secs = 1\n{LAB}"));
    let later = lab("call_busy.pcap");
    let ev = replay(&short, &[&cut, &later], &[]);
    let ends: Vec<&serde_json::Value> = ev.iter().filter(|e| e["params"]["reason"] == "timeout").collect();
    assert_eq!(ends.len(), 2, "{ev:?}");
    let t = |n| siptap::timefmt::rfc3339_micros(frame_time(&cut, n) + 1_000_000);
    assert_eq!(
        (ends[0]["user"].as_str().unwrap(), ends[0]["time"].as_str().unwrap()),
        ("alice@lab.example", t(15).as_str())
    );
    assert_eq!(
        (ends[1]["user"].as_str().unwrap(), ends[1]["time"].as_str().unwrap()),
        ("bob@lab.example", t(16).as_str())
    );
    for e in &ends {
        assert_eq!(e["params"]["answered"], true);
        assert_eq!(e["params"]["status"], 200);
        assert_eq!(e["params"]["ended_by"], "server");
    }
    // the later capture's bob registers with a new Call-ID: no second signup
    let names = kinds(&ev);
    assert_eq!(names.iter().filter(|k| *k == "signup bob@lab.example").count(), 1);
    assert_eq!(names.len(), 5 + 2 + 2 + 4);
    // events stay in time order
    let times: Vec<&str> = ev.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn an_invite_nobody_answers_creates_nothing() {
    let cut = lab("derived/invite_unanswered.pcap");
    let later = lab("derived/call_busy_plus1h.pcap");
    let cfg = root().join("config.toml.example");
    let out = siptap(&[
        "replay",
        "--stats",
        "--config",
        cfg.to_str().unwrap(),
        cut.to_str().unwrap(),
        later.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let ev = parse_lines(&String::from_utf8(out.stdout).unwrap());
    assert!(ev.iter().all(|e| e["params"]["call_id"] != "1-8000@127.0.0.2" && e["user"] != "nobody@lab.example"));
    let err = String::from_utf8(out.stderr).unwrap();
    // the 407'd first INVITE and the unanswered retry are one attempt, never accepted
    assert_eq!(stat_of(&err, "call_attempts_unaccepted"), 1, "{err}");
}

#[test]
fn an_answered_call_times_out_after_its_negotiated_session_expires() {
    // bob's 200 set Session-Expires: 90 and nobody refreshed: 90 s after the last in-dialog
    // message (the ACKs, frames 15 and 16) each leg ends with reason timeout, well before the
    // 4-hour default, and before the later capture's events
    let cut = lab("derived/session_timer_no_bye.pcap");
    let later = lab("derived/call_busy_plus1h.pcap");
    let ev = replay(&root().join("config.toml.example"), &[&cut, &later], &[]);
    let ends: Vec<&serde_json::Value> = ev.iter().filter(|e| e["params"]["reason"] == "timeout").collect();
    assert_eq!(ends.len(), 2, "{ev:?}");
    let t = |n| siptap::timefmt::rfc3339_micros(frame_time(&cut, n) + 90_000_000);
    assert_eq!(
        (ends[0]["user"].as_str().unwrap(), ends[0]["time"].as_str().unwrap()),
        ("alice@lab.example", t(15).as_str())
    );
    assert_eq!(
        (ends[1]["user"].as_str().unwrap(), ends[1]["time"].as_str().unwrap()),
        ("bob@lab.example", t(16).as_str())
    );
    assert!(ends.iter().all(|e| e["params"]["answered"] == true && e["params"]["ended_by"] == "server"));
}

#[test]
fn a_full_call_table_evicts_by_value_and_still_ends_what_it_evicts() {
    // room for two legs: the answered call without BYE holds both. An hour later alice's new
    // INVITE (frame 5) finds only answered legs: the longest idle (alice's) goes and gets its
    // callend (timeout) then. When the proxy's INVITE to bob arrives (frame 10), the least
    // valuable leg is alice's attempt (no event yet), not bob's answered call: it goes, silently,
    // and bob's answered call stays open (its BYE would still end it normally).
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "sip_servers = [\"127.0.0.10:5060\"]\n[limits]\nmax_call_legs = 2\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
    );
    let cut = lab("derived/answered_no_bye.pcap");
    let later = lab("derived/call_busy_plus1h.pcap");
    let out = siptap(&[
        "replay",
        "--stats",
        "--config",
        cfg.to_str().unwrap(),
        cut.to_str().unwrap(),
        later.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let ev = parse_lines(&String::from_utf8(out.stdout).unwrap());
    let ends: Vec<&serde_json::Value> = ev.iter().filter(|e| e["params"]["reason"] == "timeout").collect();
    assert_eq!(ends.len(), 1, "{ev:?}");
    let t = |n| siptap::timefmt::rfc3339_micros(frame_time(&later, n));
    assert_eq!(
        (ends[0]["user"].as_str().unwrap(), ends[0]["time"].as_str().unwrap()),
        ("alice@lab.example", t(5).as_str())
    );
    assert!(ends.iter().all(|e| e["params"]["answered"] == true && e["params"]["status"] == 200));
    // bob's new leg is complete (callin, callend 486); alice's busy attempt was evicted unreported
    let bob_busy: Vec<&serde_json::Value> =
        ev.iter().filter(|e| e["user"] == "bob@lab.example" && e["params"]["status"] == 486).collect();
    assert_eq!(bob_busy.len(), 1, "{ev:?}");
    assert_eq!(kinds(&ev).iter().filter(|k| k.starts_with("callend")).count(), 2);
    assert!(!ev.iter().any(|e| e["user"] == "alice@lab.example" && e["params"]["status"] == 486));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stat_of(&err, "call_legs_evicted"), 2, "{err}");
    assert_eq!(stat_of(&err, "call_legs_evicted_answered"), 1, "{err}");
}

#[test]
fn rust_log_filters_the_logs() {
    let cap = root().join("fixtures/lab/captures/call_caller_bye.pcap");
    let cfg = root().join("config.toml.example");
    let run = |filter: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_siptap"));
        c.args(["replay", "--config", cfg.to_str().unwrap(), cap.to_str().unwrap()]);
        match filter {
            Some(f) => c.env("RUST_LOG", f),
            None => c.env_remove("RUST_LOG"),
        };
        String::from_utf8(c.output().unwrap().stderr).unwrap()
    };
    assert!(run(Some("debug")).contains("capture read"));
    assert!(!run(None).contains("capture read"));
    // not a terminal: no colour codes
    assert!(!run(Some("debug")).contains('\u{1b}'));
}

#[test]
fn check_config_reports_every_error_in_the_file() {
    let e = config_error(
        "sip_servers = [\"127.0.0.10\"]\n[run]\nbuffer_mib = \"big\"\n[tenants.a]\ndomains = [\"a.example\"]\ncolour = \"blue\"\n[tenants.b]\ndomains = [\"a.example\"]\n",
    );
    assert!(e.contains(":3: run.buffer_mib: invalid type"), "{e}");
    assert!(e.contains(":6: tenants.a.colour: unknown field"), "{e}");
    assert!(e.contains(":8: tenants.b.domains: domain `a.example` is already claimed by tenant `a`"), "{e}");
    assert!(e.contains("3 error(s)"), "{e}");
    // without --config: the daemon's default path, named in the error
    let out = siptap(&["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !std::path::Path::new("/etc/siptap/config.toml").exists() {
        assert!(!out.status.success() && err.contains("/etc/siptap/config.toml: cannot read config"), "{err}");
    }
}

#[test]
fn addresses_accept_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        "sip_servers = [\"localhost:5060\"]\n[run]\nmetrics_listen = \"localhost:9109\"\n[hep]\nlisten = \"localhost:9060\"\n[[hep.sources]]\naddress = \"localhost\"\ncapture_id = 2001\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
    );
    let out = siptap(&["check-config", "--config", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `localhost` as a SIP server is both loopback addresses
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 server address(es)"));
    // other names are not resolved (a config must not depend on DNS at start)
    let e = config_error("sip_servers = [\"sip.example.com:5060\"]\n");
    assert!(e.contains("is not an address"), "{e}");
}

#[test]
fn a_capture_device_that_does_not_exist_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        &format!(
            "sip_servers = [\"127.0.0.10\"]\n[run]\ninterfaces = [\"nosuch9\"]\nmetrics_listen = \"\"\nstate_dir = \"{}\"\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
            dir.path().join("state").display()
        ),
    );
    let out = siptap(&["run", "--allow-root", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("there is no capture device \"nosuch9\" on this host (known: "), "{err}");
    assert!(!err.contains("CAP_NET_RAW"), "{err}");
}

/// `replay --threads 2` (decode and parse on one thread, state and output on the other) writes
/// the same bytes as `--threads 1`, events and `--stats` counters alike.
#[test]
fn two_threads_give_the_same_output_as_one() {
    use siptap::testkit::capgen::{GenSpec, generate};
    let dir = tempfile::tempdir().unwrap();
    let spec = GenSpec {
        seed: 7,
        users: 1000,
        calls: 3000,
        duration_secs: 1200,
        refresh_secs: 120,
        scanner_attempts: 500,
        ..GenSpec::default()
    };
    let mut frames = Vec::new();
    generate(&spec, |ts, f| frames.push(common::flood::Frame { ts, data: f.to_vec() }));
    let generated = dir.path().join("generated.pcap");
    common::flood::write(&generated, frames);
    let labs = lab_captures();
    let cfg = root().join("config.toml.example");
    let run = |threads: &str, caps: &[PathBuf]| {
        let mut args = vec!["replay", "--stats", "--config", cfg.to_str().unwrap()];
        // "1:pause": one thread, pausing as the live benchmark's baseline does
        match threads.split_once(':') {
            Some((t, pause)) => args.extend(["--threads", t, "--pause-every", pause]),
            None => args.extend(["--threads", threads]),
        }
        args.extend(caps.iter().map(|p| p.to_str().unwrap()));
        let out = siptap(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stats: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("peak_rss") && !l.contains("seconds"))
            .map(str::to_string)
            .collect();
        (out.stdout, stats)
    };
    for caps in [labs.clone(), vec![generated.clone()]] {
        let (one, one_stats) = run("1", &caps);
        let (two, two_stats) = run("2", &caps);
        assert!(one.len() > 1000, "too few events to compare: {} bytes", one.len());
        assert!(one == two, "events differ between 1 and 2 threads on {caps:?}");
        assert_eq!(one_stats, two_stats, "counters differ on {caps:?}");
    }
    // the live benchmark's paced baseline derives the same too (the lab captures' 696 frames:
    // 27 pauses of a millisecond)
    let (one, one_stats) = run("1", &labs);
    let (paced, paced_stats) = run("1:25:1", &labs);
    assert!(one == paced, "events differ when replay pauses");
    assert_eq!(one_stats, paced_stats, "counters differ when replay pauses");
    let out = siptap(&[
        "replay",
        "--threads",
        "2",
        "--pause-every",
        "25:1",
        "--config",
        cfg.to_str().unwrap(),
        labs[0].to_str().unwrap(),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--pause-every needs --threads 1"));
}
