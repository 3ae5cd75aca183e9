//! 100,000 scanner attempts mixed with real calls: the real calls' events are exact, the flood
//! creates no event, the known-users store does not grow, and no flood state outlives its
//! transaction timeout. (Peak memory is measured by `cargo bench --bench flood`.)
mod common;
use common::*;

#[test]
fn a_flood_of_scanner_attempts_creates_nothing_and_real_calls_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let lab = root().join("fixtures/lab");
    // real traffic: alice's registrations, an answered call, and a busy call one hour later
    // (derived/call_busy_plus1h.pcap: call_busy shifted by editcap -t 3600)
    let captures = [
        ("register", "register", 0),
        ("call_caller_bye", "call_caller_bye", 0),
        ("derived/call_busy_plus1h", "call_busy", 1),
    ];
    let mut frames = Vec::new();
    let mut want = Vec::new();
    let mut signed_up = std::collections::HashSet::new();
    for (capture, expected, hours_later) in captures {
        frames.extend(flood::read(&lab.join(format!("captures/{capture}.pcap"))));
        for mut e in parse_lines(&std::fs::read_to_string(lab.join(format!("expected/{expected}.jsonl"))).unwrap()) {
            if hours_later == 1 {
                let t = e["time"].as_str().unwrap().to_string();
                assert!(t.contains("T02:"), "the lab captures were made between 02:00 and 03:00 UTC");
                e["time"] = t.replace("T02:", "T03:").into();
            }
            // one timeline: bob signs up in the first capture he registers in, not again
            if e["kind"] == "account_created" && !signed_up.insert(e["user"].as_str().unwrap().to_string()) {
                continue;
            }
            want.push(e);
        }
    }
    // the flood runs from the first real packet for 60 s, among alice's and bob's traffic; the
    // busy call an hour later lets every flood timer pass within the capture's time
    let start = frames.iter().map(|f| f.ts).min().unwrap();
    let attempts = 100_000;
    frames.extend(flood::flood(attempts, start, 60_000_000, 7));
    let path = dir.path().join("flood.pcap");
    flood::write(&path, frames);

    let config = root().join("config.toml.example");
    let state = dir.path().join("state");
    let out = siptap(&[
        "replay",
        "--stats",
        "--state",
        state.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    want.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    assert_events("flood", &parse_lines(&String::from_utf8(out.stdout).unwrap()), &want);
    let err = String::from_utf8(out.stderr).unwrap();
    let stat = |k: &str| stat_of(&err, k);
    let q = attempts as u64 / 4;
    assert_eq!(stat("known_users"), 2, "alice and bob only");
    // the flood's 401s, plus the real ones: alice 5 and dave 1 (register), bob 1 per call capture
    assert_eq!(stat("register_challenged"), q + 8);
    assert_eq!(stat("register_rejected"), q);
    assert_eq!(stat("call_attempts_unauthenticated"), q);
    assert_eq!(stat("call_attempts_unaccepted"), q);
    assert_eq!(stat("open_call_legs"), 0);
    assert_eq!(stat("sip_malformed"), 0);
}

#[test]
fn a_million_unanswered_invites_around_an_answered_call_leave_its_events_exact() {
    // the lab's answered call (bob registers; alice calls; bob answers at frame 13; alice hangs up
    // at frame 17, 2 s later). Between the answer and the BYE, a million INVITEs from random
    // users and sources that nothing ever answers fill the call table (200,000 legs by default)
    // five times over. Eviction takes the least valuable legs first (attempts with no event yet),
    // so the answered call keeps both legs and its callends are exactly the lab's.
    let dir = tempfile::tempdir().unwrap();
    let lab = root().join("fixtures/lab");
    let real = flood::read(&lab.join("captures/call_caller_bye.pcap"));
    let want = parse_lines(&std::fs::read_to_string(lab.join("expected/call_caller_bye.jsonl")).unwrap());
    let (answer, bye) = (real[12].ts, real[16].ts);
    let n = 1_000_000;
    let path = dir.path().join("invites.pcap");
    flood::write_merged(&path, real, flood::unanswered_invites(n, answer + 1, bye - answer - 2, 11));
    let config = root().join("config.toml.example");
    let out = siptap(&["replay", "--stats", "--config", config.to_str().unwrap(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_events("invite flood", &parse_lines(&String::from_utf8(out.stdout).unwrap()), &want);
    let err = String::from_utf8(out.stderr).unwrap();
    let stat = |k: &str| stat_of(&err, k);
    // and alice's two INVITEs (before and after the 407) and the proxy's to bob
    assert_eq!(stat("invites_initial"), n as u64 + 3);
    assert!(stat("call_legs_evicted") >= n as u64 - 200_000, "{err}");
    assert_eq!(stat("call_legs_evicted_answered"), 0, "{err}");
    assert_eq!(stat("sip_malformed"), 0);
}
