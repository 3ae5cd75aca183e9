//! Replays every capture made in the lab (sipp through Kamailio, see fixtures/lab/make-captures.sh)
//! and compares the events with the expected file made from the hand-written spec beside it.
mod common;
use common::*;
use std::fs;

#[test]
fn every_lab_capture_gives_its_expected_events() {
    let dir = root().join("fixtures/lab");
    let config = root().join("config.toml.example");
    let mut checked = 0;
    for entry in fs::read_dir(dir.join("expected")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let capture = dir.join("captures").join(format!("{name}.pcap"));
        assert!(capture.exists(), "{name}: capture missing");
        let want = parse_lines(&fs::read_to_string(&path).unwrap());
        let got = replay(&config, &[&capture], &[]);
        assert_events(&name, &got, &want);
        checked += 1;
    }
    assert!(checked >= 11, "only {checked} lab captures were checked");
}
