//! End to end on loopback: Kamailio (Debian's package) as registrar/proxy, sipp user agents
//! registering and calling through it (fixtures/lab/make-captures.sh), `siptap run` capturing
//! on `lo` and delivering to the local fake Measurement Protocol server. The events received equal
//! the events of the same traffic replayed from tcpdump's capture of it. A second run takes the
//! same traffic as HEP from Kamailio's `siptrace` module instead of sniffing it.
//! Needs root (capture on lo), kamailio, sipp and tcpdump: .ci/run installs them; elsewhere the
//! tests say SKIPPED and pass.
mod common;
use common::mp_server::FakeMp;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "e2e-secret-value";

/// The lab's addresses (Kamailio on 127.0.0.10:5060, the user agents) are shared: one test at a time.
static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn can_run() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let have = |b: &str| {
        Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().is_ok_and(|o| o.status.success())
    };
    let ok = root && have("kamailio") && have("sipp") && have("tcpdump");
    if !ok {
        eprintln!("SKIPPED: the live end-to-end test needs root, kamailio, sipp and tcpdump (.ci/run installs them)");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["run", "--allow-root", "--config", config.to_str().unwrap()])
        .env("SIPTAP_TEST_API_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_healthy(port: u16) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        let ok = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/health")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("siptap did not become healthy");
}

fn stop(mut child: Child) -> String {
    let t = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "siptap did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "siptap exited with {status}: {err}");
    assert!(!err.contains(SECRET));
    err
}

fn make_traffic(out: &Path, defines: Option<String>) {
    let mut c = Command::new(root().join("fixtures/lab/make-captures.sh"));
    c.args(["register", "call_caller_bye", "call_busy"]).env("OUT", out);
    if let Some(d) = defines {
        c.env("KAMAILIO_DEFINES", d);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "make-captures.sh: {}", String::from_utf8_lossy(&o.stderr));
}

/// (event name, time) of `siptap replay` over the captures tcpdump made of the same traffic.
fn replayed(config: &Path, caps: &Path) -> Vec<(String, i64)> {
    let files: Vec<PathBuf> =
        ["register", "call_caller_bye", "call_busy"].iter().map(|n| caps.join(format!("{n}.pcap"))).collect();
    let mut args = vec!["replay".to_string(), "--config".into(), config.display().to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out =
        Command::new(env!("CARGO_BIN_EXE_siptap")).args(&args).env("SIPTAP_TEST_API_SECRET", SECRET).output().unwrap();
    assert!(out.status.success());
    parse_lines(&String::from_utf8(out.stdout).unwrap())
        .iter()
        .map(|e| {
            let t = e["time"].as_str().unwrap().to_string();
            (e["event"].as_str().unwrap().to_string(), micros(&t))
        })
        .collect()
}

/// Parses the replay's RFC 3339 time back to microseconds (same day, so compare within a day).
fn micros(t: &str) -> i64 {
    let hms = &t[11..26];
    let h: i64 = hms[0..2].parse().unwrap();
    let m: i64 = hms[3..5].parse().unwrap();
    let s: i64 = hms[6..8].parse().unwrap();
    let us: i64 = hms[9..15].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1_000_000 + us
}

fn wait_for(mp: &FakeMp, n: usize) -> Vec<(String, i64)> {
    let t = Instant::now();
    loop {
        let got = mp.accepted_events();
        if got.len() >= n || t.elapsed() > Duration::from_secs(30) {
            return got.into_iter().map(|(name, ts, _)| (name, ts.rem_euclid(86_400_000_000))).collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Same events, in any order, each time within `tolerance` of its twin.
fn assert_same(label: &str, mut got: Vec<(String, i64)>, mut want: Vec<(String, i64)>, tolerance: i64) {
    got.sort_by_key(|(n, t)| (*t, n.clone()));
    want.sort_by_key(|(n, t)| (*t, n.clone()));
    assert_eq!(got.len(), want.len(), "{label}: got {got:?}\nwant {want:?}");
    for w in &want {
        let i = got.iter().position(|g| g.0 == w.0 && (g.1 - w.1).abs() <= tolerance);
        let i = i.unwrap_or_else(|| panic!("{label}: {w:?} not received; got {got:?}"));
        got.remove(i);
    }
}

fn config(dir: &Path, mp: &FakeMp, metrics: u16, run: &str, hep: &str) -> PathBuf {
    let p = dir.join("siptap.toml");
    std::fs::write(
        &p,
        format!(
            "sip_servers = [\"127.0.0.10:5060\"]\n{hep}\n[run]\n{run}\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
             jsonl_path = \"{}\"\n[delivery]\nmax_backoff_secs = 1\n[tenants.lab]\ndomains = [\"lab.example\"]\n\
             [tenants.lab.firebase]\napp_id = \"1:1234567890:android:0a1b2c3d4e5f\"\napi_secret_env = \"SIPTAP_TEST_API_SECRET\"\nendpoint = \"{}\"\n",
            dir.join("state").display(),
            dir.join("events.jsonl").display(),
            mp.url()
        ),
    )
    .unwrap();
    p
}

/// A running `siptap run` beside the fake Measurement Protocol server, holding the lab.
struct Running {
    _lab: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    mp: FakeMp,
    metrics: u16,
    cfg: PathBuf,
    child: Child,
}

/// Starts siptap with these `[run]` and HEP settings; `None` (after saying SKIPPED) where the
/// test cannot run here.
fn launch(run: &str, hep: &str, fail: Vec<u16>) -> Option<Running> {
    if !can_run() {
        return None;
    }
    let lab = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mp = FakeMp::start();
    mp.behaviour.lock().unwrap().fail = fail;
    let metrics = free_port();
    let cfg = config(dir.path(), &mp, metrics, run, hep);
    let child = start(&cfg);
    wait_healthy(metrics);
    Some(Running { _lab: lab, dir, mp, metrics, cfg, child })
}

#[test]
fn live_capture_on_loopback_delivers_what_replay_derives() {
    let Some(Running { _lab: _held, dir, mp, metrics, cfg, child }) = launch("interfaces = [\"lo\"]", "", vec![])
    else {
        return;
    };
    let caps = dir.path().join("caps");
    make_traffic(&caps, None);
    let want = replayed(&cfg, &caps);
    assert_eq!(want.len(), 6 + 7 + 6);
    let got = wait_for(&mp, want.len());
    // status reads the metrics endpoint
    let st = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["status", "--metrics", &format!("http://127.0.0.1:{metrics}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&st.stdout).contains("kind=\"call_ended\""));
    stop(child);
    // the same kernel timestamps, read by two capture handles: within a millisecond
    assert_same("live", got, want, 1_000);
}

#[test]
fn hep_from_kamailio_siptrace_delivers_the_same_events() {
    let hep = free_port();
    // no sniffing: only what Kamailio mirrors, and only from it (capture id 2001)
    let hep_cfg =
        format!("[hep]\nlisten = \"127.0.0.1:{hep}\"\n[[hep.sources]]\naddress = \"127.0.0.10\"\ncapture_id = 2001\n");
    let Some(Running { _lab: _held, dir, mp, cfg, child, .. }) = launch("interfaces = []", &hep_cfg, vec![]) else {
        return;
    };
    let caps = dir.path().join("caps");
    make_traffic(&caps, Some(format!("-A WITH_HEP -A HEP_URI=\"sip:127.0.0.1:{hep}\"")));
    let want = replayed(&cfg, &caps);
    let got = wait_for(&mp, want.len());
    stop(child);
    // Kamailio stamps HEP with its own clock as it receives and sends: within 20 ms of the wire
    assert_same("hep", got, want, 20_000);
}

#[test]
fn sighup_reloads_names_without_losing_state() {
    let Some(Running { _lab: _held, dir, mp, cfg, child, .. }) = launch("interfaces = [\"lo\"]", "", vec![]) else {
        return;
    };
    let caps = dir.path().join("caps");
    // register first, then rename callend and reload, then the calls
    let mk = |names: &[&str]| {
        let o =
            Command::new(root().join("fixtures/lab/make-captures.sh")).args(names).env("OUT", &caps).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    mk(&["register"]);
    let text = std::fs::read_to_string(&cfg).unwrap() + "[tenants.lab.events]\ncallend = \"call_end\"\n";
    std::fs::write(&cfg, text).unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    mk(&["call_caller_bye"]);
    let got = wait_for(&mp, 6 + 7);
    stop(child);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "call_end").count(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "callend").count(), 0);
    // state survived the reload: alice signed up once, before it
    assert_eq!(names.iter().filter(|n| **n == "signup").count(), 2, "alice and bob: {names:?}");
}

#[test]
fn sigterm_while_firebase_is_down_loses_nothing() {
    // delivery fails with 503 while siptap runs
    let Some(Running { _lab: _held, dir, mp, cfg, child, .. }) =
        launch("interfaces = [\"lo\"]\nstop_timeout_secs = 2", "", vec![503; 10_000])
    else {
        return;
    };
    let caps = dir.path().join("caps");
    let o =
        Command::new(root().join("fixtures/lab/make-captures.sh")).arg("register").env("OUT", &caps).output().unwrap();
    assert!(o.status.success());
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    stop(child);
    assert!(t.elapsed() < Duration::from_secs(10), "stopped in {:?}", t.elapsed());
    assert!(mp.accepted_events().is_empty());
    // the events waited in the outbox: a flush once Firebase is back delivers them all
    mp.behaviour.lock().unwrap().fail.clear();
    let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["flush", "--config", cfg.to_str().unwrap(), "--state", dir.path().join("state").to_str().unwrap()])
        .env("SIPTAP_TEST_API_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<(String, i64)> =
        mp.accepted_events().into_iter().map(|(n, t, _)| (n, t.rem_euclid(86_400_000_000))).collect();
    let want: Vec<(String, i64)> = {
        let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
            .args(["replay", "--config", cfg.to_str().unwrap(), caps.join("register.pcap").to_str().unwrap()])
            .env("SIPTAP_TEST_API_SECRET", SECRET)
            .output()
            .unwrap();
        parse_lines(&String::from_utf8(out.stdout).unwrap())
            .iter()
            .map(|e| (e["event"].as_str().unwrap().to_string(), micros(e["time"].as_str().unwrap())))
            .collect()
    };
    assert_eq!(want.len(), 6);
    assert_same("after stop", got, want, 1_000);
}
