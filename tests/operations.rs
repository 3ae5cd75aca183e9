//! What an operator's monitoring sees: `/metrics` as `promtool check metrics` wants it, `/health`
//! naming the instance, reload results as metrics, the alert rules under `promtool test rules`,
//! and every panel of the Grafana dashboard returning data from a real Prometheus that scrapes a
//! running siptap (capturing on its own `lo`, fed SIP from a lab capture over HEP, delivering to
//! a fake Measurement Protocol server).
mod common;
use common::hep::send_as_hep;
use common::live::{Reaped, private_network, start_run};
use common::mp_server::FakeMp;
use common::*;
use siptap::sink::firebase::sender::percent_encode;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, metrics: u16, hep: u16, mp: &FakeMp, interfaces: &str) -> std::path::PathBuf {
    let p = dir.join("siptap.toml");
    std::fs::write(
        &p,
        format!(
            "sip_servers = [\"127.0.0.10:5060\"]\n[hep]\nlisten = \"127.0.0.1:{hep}\"\n[[hep.sources]]\naddress = \"127.0.0.1\"\n\
             [run]\ninterfaces = {interfaces}\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
             [tenants.lab]\ndomains = [\"lab.example\"]\n[tenants.lab.firebase]\napp_id = \"1:1234567890:android:0a1b2c3d4e5f\"\n\
             api_secret_env = \"SIPTAP_TEST_API_SECRET\"\nendpoint = \"{}\"\nallow_insecure_endpoint = true\n",
            dir.join("state").display(),
            mp.url()
        ),
    )
    .unwrap();
    p
}

fn start(cfg: &Path) -> Reaped {
    start_run(cfg, Some("ops-test-secret"))
}

#[test]
fn metrics_pass_promtool_health_names_the_instance_reloads_are_visible_and_a_report_is_kept() {
    if !have("promtool") {
        skipped("promtool (Debian package prometheus) is not installed; .ci/run installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp = FakeMp::start();
    let (metrics, hep) = (free_port(), free_port());
    let cfg = config(dir.path(), metrics, hep, &mp, "[]");
    let _siptap = start(&cfg);
    wait_until("/health", Duration::from_secs(20), || http_get(metrics, "/health").is_some());

    // right after start every family is there (not only after the first tick)
    let text = http_get(metrics, "/metrics").unwrap();
    for m in ["siptap_sip_messages_total 0", "siptap_active_devices 0", "siptap_build_info{", "process_open_fds "] {
        assert!(text.contains(m), "{m} missing:\n{text}");
    }
    assert!(text.contains("siptap_events_total{tenant=\"lab\",kind=\"outgoing_call\"} 0"), "{text}");
    assert!(text.contains("siptap_delivery_requests_total{tenant=\"lab\",result=\"ok\"} 0"), "{text}");

    send_as_hep(&root().join("fixtures/lab/captures/register.pcap"), hep);
    wait_until("events delivered", Duration::from_secs(20), || !mp.accepted_events().is_empty());
    wait_until("a tick", Duration::from_secs(5), || {
        http_get(metrics, "/metrics").is_some_and(|t| !t.contains("siptap_sip_messages_total 0\n"))
    });
    let text = http_get(metrics, "/metrics").unwrap();
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n---\n{text}");
    // what Prometheus asks for: OpenMetrics, the same samples
    let om =
        http_get_accepting(metrics, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5").unwrap();
    assert!(om.ends_with("# EOF\n"), "not OpenMetrics: {}", &om[om.len().saturating_sub(200)..]);
    assert!(om.contains("# TYPE siptap_sip_messages counter\nsiptap_sip_messages_total "), "{om}");
    // a counter that goes up, a histogram with observations
    assert!(text.contains("siptap_delivery_latency_seconds_bucket{le=\"+Inf\"} "), "{text}");
    assert!(!text.contains("siptap_delivery_latency_seconds_count 0\n"), "{text}");

    // /health says which instance answered
    let health = http_get(metrics, "/health").unwrap();
    let pid = _siptap.id().to_string();
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(health.contains(&format!("pid {pid}\n")), "{health}");
    assert!(health.contains(&format!("config {}\n", cfg.display())), "{health}");
    assert!(health.contains(&format!("version {}\n", env!("CARGO_PKG_VERSION"))), "{health}");

    // a refused reload is visible; a good one clears it
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("[tenants.lab]", "[tenants.lab]\nnot_a_key = 1")).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    wait_until("the refused reload", Duration::from_secs(10), || {
        http_get(metrics, "/metrics").is_some_and(|t| t.contains("siptap_config_reloads_total{result=\"refused\"} 1"))
    });
    let t = http_get(metrics, "/metrics").unwrap();
    assert!(t.contains("siptap_config_last_reload_successful 0\n"), "{t}");
    let st = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["status", "--metrics", &format!("http://127.0.0.1:{metrics}")])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("last reload REFUSED") && st.contains(&format!("pid {pid}")), "{st}");
    std::fs::write(&cfg, good).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    wait_until("the applied reload", Duration::from_secs(10), || {
        http_get(metrics, "/metrics").is_some_and(|t| {
            t.contains("siptap_config_reloads_total{result=\"ok\"} 1")
                && t.contains("siptap_config_last_reload_successful 1\n")
        })
    });

    // stopped, it leaves its report in the state directory: `siptap report` renders what it derived
    let mut child = _siptap.take();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let state = dir.path().join("state");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("report.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let page = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["report", "--state", state.to_str().unwrap(), "--output", page.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    let row = html.split("<tr><td>lab</td>").nth(1).expect("the lab tenant's row").split("</tr>").next().unwrap();
    let shown: u64 =
        row.split("<td class=\"n\">").skip(1).map(|c| c.split('<').next().unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(shown as usize, mp.accepted_events().len(), "{row}");
}

#[test]
fn alert_rules_pass_promtool_test_rules() {
    if !have("promtool") {
        skipped("promtool (Debian package prometheus) is not installed; .ci/run installs it");
        return;
    }
    let dir = root().join("ops/prometheus");
    for args in [vec!["check", "rules", "siptap.rules.yml"], vec!["test", "rules", "siptap.rules.test.yml"]] {
        let out = Command::new("promtool").args(&args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every expression of the dashboard, with Grafana's variables as an operator's "All" sets them.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("ops/grafana/siptap-dashboard.json")).unwrap())
            .unwrap();
    let mut v = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap();
            let e = e.replace("$__rate_interval", "30s").replace("$instance", ".*").replace("$tenant", ".*");
            v.push((p["title"].as_str().unwrap().to_string(), e));
        }
    }
    v
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    if !(is_root() && have("prometheus") && have("ip")) {
        skipped("needs root (capture on a private lo), prometheus and ip; .ci/run installs them");
        return;
    }
    assert!(private_network(), "cannot make a network namespace for the test (unshare -n)");
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");

    let dir = tempfile::tempdir().unwrap();
    let mp = FakeMp::start();
    let (metrics, hep, prom) = (free_port(), free_port(), free_port());
    let cfg = config(dir.path(), metrics, hep, &mp, "[\"lo\"]");
    let _siptap = start(&cfg);
    wait_until("/health", Duration::from_secs(20), || http_get(metrics, "/health").is_some());
    let pcfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &pcfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: siptap\n    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Reaped::new(
        Command::new("prometheus")
            .arg(format!("--config.file={}", pcfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> serde_json::Value {
        http_get(prom, &format!("/api/v1/query?query={}", percent_encode(q)))
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    wait_until("prometheus scraping siptap", Duration::from_secs(60), || {
        query("up{job=\"siptap\"}")["data"]["result"][0]["value"][1] == "1"
    });
    // traffic while Prometheus watches: a registration and a call, delivered
    send_as_hep(&root().join("fixtures/lab/captures/register.pcap"), hep);
    send_as_hep(&root().join("fixtures/lab/captures/call_caller_bye.pcap"), hep);
    // the registration's events and the call's (with bob's registration), as fixtures/lab/expected
    // has them (checked by hand against the SIP flows)
    let lines =
        |n: &str| std::fs::read_to_string(root().join("fixtures/lab/expected").join(n)).unwrap().lines().count();
    let want = (lines("register.jsonl") + lines("call_caller_bye.jsonl")) as f64;
    wait_until("events delivered", Duration::from_secs(20), || mp.accepted_events().len() as f64 >= want);
    // a few more scrapes, so that rates over 30 s see the delivery
    std::thread::sleep(Duration::from_secs(5));
    let mut empty = Vec::new();
    for (title, q) in &queries {
        let r = query(q);
        assert_eq!(r["status"], "success", "{title}: {q}: {r}");
        let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
        if result.is_empty() {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    // and the numbers are the traffic's: SIP was seen, events derived and delivered
    let v = |q: &str| query(q)["data"]["result"][0]["value"][1].as_str().unwrap_or("0").parse::<f64>().unwrap();
    assert!(v("sum(siptap_sip_messages_total)") > 0.0);
    let q = "sum(siptap_delivery_events_total{tenant=\"lab\"})";
    let t = Instant::now();
    while v(q) < want && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(v(q), want, "{q}: {:?}", mp.accepted_events().iter().map(|e| e.0.clone()).collect::<Vec<_>>());
    assert!(v("sum(siptap_capture_packets_total{interface=\"lo\"})") >= 0.0);
}

#[test]
fn the_events_file_is_reopened_on_sighup_after_logrotate_moved_it() {
    let dir = tempfile::tempdir().unwrap();
    let mp = FakeMp::start();
    let (metrics, hep) = (free_port(), free_port());
    let cfg = config(dir.path(), metrics, hep, &mp, "[]");
    let events = dir.path().join("events.jsonl");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // a tenant without Firebase: its events go to the JSON-lines file
    let text = text.split("[tenants.lab.firebase]").next().unwrap();
    std::fs::write(&cfg, text.replace("[run]\n", &format!("[run]\njsonl_path = \"{}\"\n", events.display()))).unwrap();
    let siptap = start(&cfg);
    wait_until("/health", Duration::from_secs(20), || http_get(metrics, "/health").is_some());
    let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    send_as_hep(&root().join("fixtures/lab/captures/register.pcap"), hep);
    // the lab registration's events (fixtures/lab/expected, checked by hand against the flow)
    let want = lines(&root().join("fixtures/lab/expected/register.jsonl"));
    wait_until("the registration's events", Duration::from_secs(10), || lines(&events) >= want);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&events).unwrap().permissions().mode() & 0o777, 0o600, "events name users");
    // logrotate: move, then SIGHUP
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::rename(&events, &rotated).unwrap();
    Command::new("kill").args(["-HUP", &siptap.id().to_string()]).status().unwrap();
    wait_until("the reopened file", Duration::from_secs(10), || events.exists());
    send_as_hep(&root().join("fixtures/lab/captures/call_caller_bye.pcap"), hep);
    let want_call = lines(&root().join("fixtures/lab/expected/call_caller_bye.jsonl"));
    let t = Instant::now();
    while lines(&events) < want_call && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let new = std::fs::read_to_string(&events).unwrap();
    assert_eq!(
        lines(&events),
        want_call,
        "{new}\n{}",
        http_get(metrics, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(lines(&rotated), want, "nothing more written to the moved file");
    assert!(new.contains("\"callout\"") && new.contains("\"callend\""), "{new}");
}
