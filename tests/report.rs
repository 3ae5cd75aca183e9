//! `replay --report`: the HTML page of what was derived, rendered by a real headless Chromium
//! (printed to PDF, its text read back with pdftotext), showing the same numbers as the events.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What a browser shows of the page: Chromium prints it to PDF, pdftotext reads the text.
fn rendered_text(page: &Path) -> String {
    let pdf = page.with_extension("pdf");
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer"])
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(page)
        .output()
        .unwrap();
    assert!(pdf.exists(), "chromium printed nothing: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("pdftotext").args(["-layout"]).arg(&pdf).arg("-").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_report_of_the_lab_captures_shows_what_the_events_say() {
    if !(have("chromium") && have("pdftotext")) {
        skipped("chromium and pdftotext (Debian packages chromium, poppler-utils) are needed; .ci/run installs them");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let caps = lab_captures();
    let mut args = vec!["replay", "--stats", "--config", "config.toml.example", "--report", page.to_str().unwrap()];
    args.extend(caps.iter().map(|p| p.to_str().unwrap()));
    let out = siptap(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = parse_lines(&String::from_utf8(out.stdout).unwrap());
    let stderr = String::from_utf8(out.stderr).unwrap();

    // self-contained: nothing to fetch, nothing to run
    let html = std::fs::read_to_string(&page).unwrap();
    for bad in ["<script", "src=", "href=", "url(", "@import", "<link"] {
        assert!(!html.contains(bad), "the page refers to something outside it: {bad}");
    }
    let text = rendered_text(&page);

    // the summary row: the tenant's count of each kind, as the events have them
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        *per_kind.entry(e["event"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let header = text.lines().position(|l| l.contains("signup") && l.contains("callend")).expect("the summary table");
    let names: Vec<&str> = text.lines().nth(header).unwrap().split_whitespace().skip(1).collect();
    let row: Vec<&str> =
        text.lines().skip(header + 1).find(|l| l.trim_start().starts_with("lab")).unwrap().split_whitespace().collect();
    assert_eq!(names, ["signup", "login", "app_start", "callout", "callin", "callend"], "{text}");
    for (i, name) in names.iter().enumerate() {
        let shown: usize = row[i + 1].parse().unwrap();
        assert_eq!(shown, per_kind.get(*name).copied().unwrap_or(0), "{name} in:\n{text}");
    }

    // call outcomes: each label with the number of callends the events give it
    let callends: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "callend").collect();
    let answered = callends.iter().filter(|e| e["params"]["answered"] == true).count();
    let cancelled =
        callends.iter().filter(|e| e["params"]["answered"] != true && e["params"]["reason"] == "cancel").count();
    let busy = callends
        .iter()
        .filter(|e| {
            e["params"]["answered"] != true && e["params"]["reason"] == "rejected" && e["params"]["status"] == 486
        })
        .count();
    assert!(answered > 0 && cancelled > 0 && busy > 0, "the lab has each outcome");
    let shown = |label: &str| -> usize {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in:\n{text}"))
    };
    assert_eq!(shown("answered"), answered);
    assert_eq!(shown("cancelled"), cancelled);
    assert_eq!(shown("busy (486)"), busy);

    // the charts are there, with their legends' totals
    for title in ["Events over time, by kind", "Registrations and app starts", "Call outcomes"] {
        assert!(text.contains(title), "{title} missing:\n{text}");
    }
    assert!(text.contains(&format!("callout {}", per_kind["callout"])), "{text}");
    assert_eq!(html.matches("<svg").count(), 3, "three charts for one tenant");
    assert!(html.matches("<rect").count() >= 6, "bars drawn");

    // the counters that explain what was not an event, with the --stats values
    let unauth = stat_of(&stderr, "call_attempts_unauthenticated");
    assert!(unauth > 0, "the scanner capture has unauthenticated attempts");
    let line = text.lines().find(|l| l.contains("call_attempts_unauthenticated")).expect("counter row");
    assert!(line.split_whitespace().any(|w| w == unauth.to_string()), "{line}");
}

#[test]
fn a_daemon_report_renders_from_its_state_directory() {
    // what `siptap run` keeps is the same counts: a report saved in a state directory renders
    let dir = tempfile::tempdir().unwrap();
    let out = siptap(&["report", "--state", dir.path().to_str().unwrap(), "--output", "/dev/null"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("report.json: no report yet"), "{err}");
}
