//! Cluster mode on real `nats-server` processes (one server, or a three-node JetStream cluster),
//! with the split-platform capture of fixtures/cluster (two Kamailio nodes sharing a location
//! table, sipp user agents; hand-checked expectations in split.spec):
//! - split platform: two sensors, one per node, give between them the events of one sensor that
//!   sees both nodes (and a sensor of node B alone, without the cluster, does not);
//! - redundancy: two sensors fed the same traffic print, and deliver, each event once;
//! - faults: a NATS node killed mid-run, NATS down and back, a delivery worker killed with
//!   kill -9 mid-batch: nothing lost.
mod common;
use common::hep::{HepPacket, send, stamped};
use common::live::{Reaped, start_run};
use common::mp_server::FakeMp;
use common::nats::Nats;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NODE_A: [u8; 4] = [127, 0, 0, 10];
const NODE_B: [u8; 4] = [127, 0, 0, 11];

fn capture(name: &str) -> PathBuf {
    root().join("fixtures/cluster/captures").join(name)
}

/// The hand-checked (event, user) list of split.spec.
fn spec() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("fixtures/cluster/split.spec"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (e, u) = l.split_once(' ').unwrap();
            (e.to_string(), u.trim().to_string())
        })
        .collect()
}

fn have_nats() -> bool {
    if have("nats-server") {
        return true;
    }
    skipped("nats-server (Debian package nats-server) is not installed; .ci/run installs it");
    false
}

/// A config: the SIP servers a sensor watches, `top` settings, the lab tenant (with `tenant`
/// tables after it) and, with `nats`, a [cluster] section (with `cluster` keys in it).
fn config_with(
    dir: &Path,
    name: &str,
    servers: &str,
    nats: Option<&Nats>,
    top: &str,
    tenant: &str,
    cluster: &str,
) -> PathBuf {
    let section = match nats {
        Some(n) => format!(
            "[cluster]\nnats = [{}]\nsensor = \"{name}\"\nreplicas = {}\n{cluster}\n",
            n.toml_urls(),
            n.nodes.len()
        ),
        None => String::new(),
    };
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!("sip_servers = [{servers}]\n{top}\n[tenants.lab]\ndomains = [\"lab.example\"]\n{tenant}\n{section}"),
    )
    .unwrap();
    p
}

fn config(dir: &Path, name: &str, servers: &str, nats: Option<&Nats>, top: &str) -> PathBuf {
    config_with(dir, name, servers, nats, top, "", "")
}

const BOTH: &str = "\"127.0.0.10:5060\", \"127.0.0.11:5060\"";
const A: &str = "\"127.0.0.10:5060\"";
const B: &str = "\"127.0.0.11:5060\"";

fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events.iter().map(|e| (e["event"].as_str().unwrap().to_string(), e["user"].as_str().unwrap().to_string())).collect()
}

/// Cluster output's lines carry the event's id (32 hex digits): checked, then taken out to compare
/// with a single box's lines.
fn without_ids(v: Vec<Value>) -> Vec<Value> {
    v.into_iter()
        .map(|mut e| {
            let id = e.as_object_mut().unwrap().remove("id").expect("cluster lines carry an id");
            let id = id.as_str().unwrap();
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            e
        })
        .collect()
}

fn ids(v: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = v.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|e| e.to_string());
    v
}

#[test]
fn split_platform_two_sensors_give_the_events_of_one_that_sees_both_nodes() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let dir = tempfile::tempdir().unwrap();
    let reference = replay(&config(dir.path(), "both", BOTH, None, ""), &[&capture("split_both.pcap")], &[]);
    assert_eq!(kinds(&reference), spec(), "one sensor seeing both nodes gives split.spec");

    // without the cluster, node B's sensor takes alice's refresh (same Call-ID) for a new app
    let b_alone = replay(&config(dir.path(), "b-alone", B, None, ""), &[&capture("split_b.pcap")], &[]);
    let alice_on_b: Vec<_> = kinds(&b_alone).into_iter().filter(|(_, u)| u == "alice@lab.example").collect();
    assert_eq!(alice_on_b.len(), 3, "the island's wrong signup, app_start and login: {alice_on_b:?}");

    // with it: node A's sensor, then node B's (a node's traffic is seen as it happens: A's
    // registrations come seconds before B's refresh)
    let a = replay(&config(dir.path(), "a", A, Some(&nats), ""), &[&capture("split_a.pcap")], &[]);
    let b = replay(&config(dir.path(), "b", B, Some(&nats), ""), &[&capture("split_b.pcap")], &[]);
    assert!(
        !kinds(&b).iter().any(|(_, u)| u == "alice@lab.example"),
        "node B's sensor knows alice's boot cycle from node A's: {:?}",
        kinds(&b)
    );
    assert!(
        kinds(&b).contains(&("callin".into(), "bob@lab.example".into())),
        "node B's sensor names the callee from the contact bob registered through node A"
    );
    let union: Vec<Value> = a.into_iter().chain(b).collect();
    // the ids are deterministic: a sensor seeing both nodes, on a cluster of its own, gives the same
    let fresh = Nats::single();
    let both = replay(&config(dir.path(), "both-cluster", BOTH, Some(&fresh), ""), &[&capture("split_both.pcap")], &[]);
    assert_eq!(ids(&union), ids(&both), "the same events have the same ids on any sensor");
    let mut unique = ids(&union);
    unique.dedup();
    assert_eq!(unique.len(), union.len(), "one id per event");
    assert_events("sensor A + sensor B", &sorted(without_ids(union)), &sorted(reference));
}

#[test]
fn redundant_sensors_replaying_the_same_traffic_print_each_event_once_between_them() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let dir = tempfile::tempdir().unwrap();
    let reference = replay(&config(dir.path(), "ref", BOTH, None, ""), &[&capture("split_both.pcap")], &[]);
    let spawn = |name: &str| {
        let cfg = config(dir.path(), name, BOTH, Some(&nats), "");
        Command::new(env!("CARGO_BIN_EXE_siptap"))
            .args(["replay", "--config", cfg.to_str().unwrap(), capture("split_both.pcap").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // at the same time: they race for every decision and every event
    let (r1, r2) = (spawn("r1"), spawn("r2"));
    let (o1, o2) = (r1.wait_with_output().unwrap(), r2.wait_with_output().unwrap());
    assert!(o1.status.success() && o2.status.success(), "{}", String::from_utf8_lossy(&o2.stderr));
    let got: Vec<Value> = parse_lines(&String::from_utf8_lossy(&o1.stdout))
        .into_iter()
        .chain(parse_lines(&String::from_utf8_lossy(&o2.stdout)))
        .collect();
    assert_events("sensor 1 + sensor 2", &sorted(without_ids(got)), &sorted(reference.clone()));
    // and a third replay later prints nothing: the cluster has every event already
    let again = replay(&config(dir.path(), "r3", BOTH, Some(&nats), ""), &[&capture("split_both.pcap")], &[]);
    assert!(again.is_empty(), "{again:?}");
}

/// A `siptap run` sensor fed over HEP, delivering to the fake Measurement Protocol server.
struct Sensor {
    proc: Reaped,
    hep: u16,
    metrics: u16,
}

fn run_sensor(dir: &Path, name: &str, servers: &str, nats: &Nats, mp: &FakeMp, cluster_extra: &str) -> Sensor {
    let (hep, metrics) = (free_port(), free_port());
    let state = dir.join(format!("state-{name}"));
    let extra = format!(
        "[hep]\nlisten = \"127.0.0.1:{hep}\"\n[[hep.sources]]\naddress = \"127.0.0.1\"\n\
         [run]\ninterfaces = []\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
         [delivery]\nrequest_timeout_secs = 2\nmax_backoff_secs = 2\n",
        state.display()
    );
    let firebase = format!(
        "[tenants.lab.firebase]\napp_id = \"1:1234567890:android:0a1b2c3d4e5f\"\n\
         api_secret_env = \"SIPTAP_TEST_API_SECRET\"\nendpoint = \"{}\"\nallow_insecure_endpoint = true\n",
        mp.url()
    );
    let cfg = config_with(dir, name, servers, Some(nats), &extra, &firebase, cluster_extra);
    let proc = start_run(&cfg, Some("cluster-test-secret"));
    wait_until("the sensor's /health", Duration::from_secs(40), || http_get(metrics, "/health").is_some());
    Sensor { proc, hep, metrics }
}

/// `siptap deliver` with a config, its own state directory and the test's API secret.
fn siptap_deliver(cfg: &Path, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siptap"));
    c.args(["deliver", "--config", cfg.to_str().unwrap(), "--state", state.to_str().unwrap()])
        .args(extra)
        .env("SIPTAP_TEST_API_SECRET", "cluster-test-secret");
    c
}

fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0)
}

/// The events the fake Firebase accepted, as (name, timestamp) pairs, sorted.
fn delivered(mp: &FakeMp) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = mp.accepted_events().into_iter().map(|(n, t, _)| (n, t)).collect();
    v.sort();
    v
}

/// Waits until the fake Firebase has `n` events and then a little longer (for any duplicate).
fn wait_delivered(mp: &FakeMp, n: usize, within: Duration) -> Vec<(String, i64)> {
    wait_until(&format!("{n} events delivered"), within, || delivered(mp).len() >= n);
    std::thread::sleep(Duration::from_secs(3));
    delivered(mp)
}

fn names_of_spec() -> Vec<String> {
    let mut v: Vec<String> = spec().into_iter().map(|(e, _)| e).collect();
    v.sort();
    v
}

fn assert_once(got: &[(String, i64)]) {
    let mut names: Vec<String> = got.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, names_of_spec(), "each event of split.spec delivered exactly once: {got:?}");
    let mut seen = std::collections::HashSet::new();
    for g in got {
        assert!(seen.insert(g), "delivered twice: {g:?}");
    }
}

fn to_node(p: &HepPacket, a: u16, b: u16) -> Vec<u16> {
    let mut v = Vec::new();
    if p.src == NODE_A || p.dst == NODE_A {
        v.push(a);
    }
    if p.src == NODE_B || p.dst == NODE_B {
        v.push(b);
    }
    v
}

#[test]
fn redundant_live_sensors_fed_the_same_hep_deliver_each_event_once() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let s1 = run_sensor(dir.path(), "s1", BOTH, &nats, &mp, "");
    let s2 = run_sensor(dir.path(), "s2", BOTH, &nats, &mp, "");
    let packets = stamped(&capture("split_both.pcap"));
    send(&packets, |_| vec![s1.hep, s2.hep]);
    let got = wait_delivered(&mp, spec().len(), Duration::from_secs(60));
    assert_once(&got);
    // both derived every call event; the stream kept one copy of each
    let dups =
        metric(s1.metrics, "siptap_cluster_duplicates_total") + metric(s2.metrics, "siptap_cluster_duplicates_total");
    assert!(dups >= 8.0, "the second copy of each call event was a duplicate for the stream: {dups}");
    // a stop (SIGTERM) drains and ends cleanly
    for s in [s1, s2] {
        let mut c = s.proc.take();
        // SAFETY: kill(2) with a plain signal number
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().unwrap();
        assert!(status.success(), "siptap run stopped with {status}");
    }
}

#[test]
fn three_node_cluster_split_sensors_deliver_everything_when_a_nats_node_dies_mid_run() {
    if !have_nats() {
        return;
    }
    let mut nats = Nats::cluster3();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let a = run_sensor(dir.path(), "a", A, &nats, &mp, "");
    let b = run_sensor(dir.path(), "b", B, &nats, &mp, "");
    let packets = stamped(&capture("split_both.pcap"));
    // the registrations, then one NATS node dies, then the calls
    let first_call = packets
        .iter()
        .position(|p| String::from_utf8_lossy(&p.data).contains("INVITE sip:"))
        .expect("a call in the capture");
    send(&packets[..first_call], |p| to_node(p, a.hep, b.hep));
    std::thread::sleep(Duration::from_millis(500));
    // the node sensor A is connected to dies: A reconnects to another, JetStream fails over
    let victim = (0..3)
        .find(|&i| http_get(nats.nodes[i].monitor, "/connz").is_some_and(|c| c.contains("siptap a")))
        .expect("sensor A is connected to a node");
    nats.kill(victim);
    send(&packets[first_call..], |p| to_node(p, a.hep, b.hep));
    let got = wait_delivered(&mp, spec().len(), Duration::from_secs(90));
    assert_once(&got);
    assert!(metric(a.metrics, "siptap_cluster_reconnects_total") >= 2.0, "sensor A connected again elsewhere");
    drop((a.proc, b.proc));
}

#[test]
fn nats_down_for_a_while_then_back_loses_nothing() {
    if !have_nats() {
        return;
    }
    let mut nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let a = run_sensor(dir.path(), "a", A, &nats, &mp, "");
    let b = run_sensor(dir.path(), "b", B, &nats, &mp, "");
    let packets = stamped(&capture("split_both.pcap"));
    let half = packets.len() / 2;
    send(&packets[..half], |p| to_node(p, a.hep, b.hep));
    std::thread::sleep(Duration::from_secs(1));
    nats.stop(0);
    // NATS is down: the rest is derived (decisions made locally, counted) and waits in the outboxes
    send(&packets[half..], |p| to_node(p, a.hep, b.hep));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(metric(a.metrics, "siptap_cluster_connected"), 0.0, "sensor A saw NATS go");
    let during = delivered(&mp).len();
    assert!(during < spec().len(), "nothing can be delivered while NATS is down: {during}");
    nats.start(0);
    nats.wait_ready(0);
    let got = wait_delivered(&mp, spec().len(), Duration::from_secs(60));
    assert_once(&got);
    drop((a.proc, b.proc));
}

#[test]
fn a_delivery_worker_killed_mid_batch_loses_nothing() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    // the sensor only publishes; separate `siptap deliver` workers deliver
    let s = run_sensor(dir.path(), "s", BOTH, &nats, &mp, "deliver = false");
    let cfg = dir.path().join("s.toml");
    let worker = |name: &str, extra: &[&str]| {
        siptap_deliver(&cfg, &dir.path().join(format!("worker-{name}")), extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // the endpoint hangs: the first worker's requests are in flight when it is killed
    mp.behaviour.lock().unwrap().hang = true;
    let w1 = Reaped::new(worker("w1", &[]));
    send(&stamped(&capture("split_both.pcap")), |_| vec![s.hep]);
    let mut w1 = Some(w1);
    // generous: under a loaded CI machine the sensor, NATS and the worker all start in this wait
    wait_or_explain(
        "the first worker's requests",
        Duration::from_secs(60),
        || !mp.requests().is_empty(),
        || {
            let mut w = w1.take().unwrap().take();
            let _ = w.kill();
            let err = w.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            let counters: String = http_get(s.metrics, "/metrics")
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with('#') && (l.contains("hep") || l.contains("cluster") || l.contains("events")))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("the worker's stderr:\n{}\nthe sensor's counters:\n{counters}", err.unwrap_or_default())
        },
    );
    let in_flight = mp.requests().len();
    drop(w1); // SIGKILL
    mp.behaviour.lock().unwrap().hang = false;
    assert!(delivered(&mp).is_empty(), "nothing was acknowledged by Firebase before the kill");
    // a second worker gets what the first held, once its ack wait has passed
    let w2 = worker("w2", &["--until-idle", "12", "--stats"]);
    let out = w2.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = delivered(&mp);
    assert_once(&got);
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stat_of(&stats, "cluster_consumer_redelivered") > 0, "the killed worker's events came again: {stats}");
    assert!(in_flight >= 1);
    drop(s.proc);
}

#[test]
fn redundant_sensors_racing_on_every_decision_print_each_event_once_between_them() {
    if !have_nats() {
        return;
    }
    // a longer capture (from the deterministic generator: 600 users registering, refreshing and
    // rebooting, 1,200 calls through a record-routing proxy), so that the two replays overlap and
    // race for each registration decision and each event
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("gen.pcap");
    let spec = siptap::testkit::capgen::GenSpec { users: 600, calls: 1200, duration_secs: 1800, ..Default::default() };
    siptap::testkit::capgen::write_pcap(&spec, &cap).unwrap();
    let lab = root().join("config.toml.example");
    let reference = replay(&lab, &[&cap], &[]);
    assert!(reference.len() > 3000, "{}", reference.len());
    let nats = Nats::single();
    let cfg = |name: &str| {
        let p = dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&lab).unwrap();
        std::fs::write(&p, format!("{text}\n[cluster]\nnats = [{}]\nsensor = \"{name}\"\n", nats.toml_urls())).unwrap();
        p
    };
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_siptap"))
            .args(["replay", "--stats", "--config", cfg(name).to_str().unwrap(), cap.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // the cluster's keys, buckets and stream made first (by a replay of a capture with no
    // events), so that neither replay starts ahead of the other
    let empty = dir.path().join("empty.pcap");
    common::flood::write(&empty, Vec::new());
    assert!(replay(&cfg("r0"), &[&empty], &[]).is_empty());
    let (r1, r2) = (spawn("r1"), spawn("r2"));
    let (o1, o2) = (r1.wait_with_output().unwrap(), r2.wait_with_output().unwrap());
    assert!(o1.status.success() && o2.status.success(), "{}", String::from_utf8_lossy(&o2.stderr));
    let (e1, e2) =
        (parse_lines(&String::from_utf8_lossy(&o1.stdout)), parse_lines(&String::from_utf8_lossy(&o2.stdout)));
    let (s1, s2) = (String::from_utf8_lossy(&o1.stderr), String::from_utf8_lossy(&o2.stderr));
    eprintln!(
        "sensor 1 printed {}, sensor 2 printed {}; signups won {} / {}, device decisions won {} / {}, conflicts {} / {}, late {} / {}",
        e1.len(),
        e2.len(),
        stat_of(&s1, "cluster_signups_won"),
        stat_of(&s2, "cluster_signups_won"),
        stat_of(&s1, "register_shared_decisions"),
        stat_of(&s2, "register_shared_decisions"),
        stat_of(&s1, "cluster_kv_conflicts"),
        stat_of(&s2, "cluster_kv_conflicts"),
        stat_of(&s1, "register_shared_late"),
        stat_of(&s2, "register_shared_late"),
    );
    // (how the work split between them depends on the machine's timing: printed above; the
    // assertion is that together they print each event once, whoever won each decision)
    assert_eq!(stat_of(&s1, "cluster_decisions_local") + stat_of(&s2, "cluster_decisions_local"), 0);
    let got: Vec<Value> = e1.into_iter().chain(e2).collect();
    assert_events("sensor 1 + sensor 2", &sorted(without_ids(got)), &sorted(reference));
}

/// Messages in a stream, from the NATS server's monitoring endpoint.
fn stream_messages(nats: &Nats, stream: &str) -> u64 {
    let jsz = http_get(nats.nodes[0].monitor, "/jsz?streams=true").unwrap_or_default();
    let v: Value = serde_json::from_str(&jsz).unwrap_or_default();
    v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == stream)
        .and_then(|s| s["state"]["messages"].as_u64())
        .unwrap_or(0)
}

#[test]
fn refused_and_too_old_events_are_kept_in_the_rejected_stream_not_retried() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    // the endpoint refuses the first request (400): its events are kept, the rest delivered
    mp.behaviour.lock().unwrap().fail = vec![400];
    let s = run_sensor(dir.path(), "s", BOTH, &nats, &mp, "");
    send(&stamped(&capture("split_both.pcap")), |_| vec![s.hep]);
    wait_until("every event delivered or refused", Duration::from_secs(60), || {
        let refused: usize = mp
            .requests()
            .iter()
            .filter(|r| r.answered == 400)
            .map(|r| r.body["events"].as_array().map_or(0, |a| a.len()))
            .sum();
        refused > 0 && delivered(&mp).len() + refused == spec().len()
    });
    std::thread::sleep(Duration::from_secs(2));
    let refused: u64 = mp
        .requests()
        .iter()
        .filter(|r| r.answered == 400)
        .map(|r| r.body["events"].as_array().map_or(0, |a| a.len() as u64))
        .sum();
    assert_eq!(mp.requests().iter().filter(|r| r.answered == 400).count(), 1, "a refused request is not retried");
    assert_eq!(stream_messages(&nats, "siptap_rejected"), refused, "each refused event kept once");
    assert_eq!(stream_messages(&nats, "siptap_events"), 0, "nothing left waiting");
    assert_eq!(delivered(&mp).len() as u64 + refused, spec().len() as u64);
    // after a fix, `siptap deliver --requeue-rejected` sends them again: then all are delivered
    let cfg = dir.path().join("s.toml");
    let out = siptap_deliver(&cfg, &dir.path().join("rq"), &["--requeue-rejected"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{refused} event(s) put back")));
    let got = wait_delivered(&mp, spec().len(), Duration::from_secs(30));
    assert_once(&got);
    assert_eq!(stream_messages(&nats, "siptap_rejected"), 0);
    drop(s.proc);

    // a replay of old traffic (the generator's capture is from 2026-11-18, beyond GA4's 72 hours):
    // published, then kept as too old by a delivery worker, never sent
    let cap = dir.path().join("old.pcap");
    let spec = siptap::testkit::capgen::GenSpec { users: 20, calls: 20, duration_secs: 600, ..Default::default() };
    siptap::testkit::capgen::write_pcap(&spec, &cap).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["replay", "--config", cfg.to_str().unwrap(), cap.to_str().unwrap()])
        .env("SIPTAP_TEST_API_SECRET", "cluster-test-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = parse_lines(&String::from_utf8_lossy(&out.stdout)).len() as u64;
    assert!(printed > 50, "{printed}");
    let before = mp.requests().len();
    let w = siptap_deliver(&cfg, &dir.path().join("w"), &["--until-idle", "3"]).output().unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(mp.requests().len(), before, "nothing older than 72 hours is sent");
    assert_eq!(stream_messages(&nats, "siptap_rejected"), printed);
    assert_eq!(stream_messages(&nats, "siptap_events"), 0);
}

#[test]
fn a_delivery_worker_takes_only_the_tenants_it_delivers() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    let s = run_sensor(dir.path(), "s", BOTH, &nats, &mp, "deliver = false");
    send(&stamped(&capture("split_both.pcap")), |_| vec![s.hep]);
    wait_until("the events in the stream", Duration::from_secs(30), || {
        stream_messages(&nats, "siptap_events") == spec().len() as u64
    });
    // a worker whose configuration delivers another tenant only: it must leave lab's events alone
    let other = config_with(
        dir.path(),
        "other",
        BOTH,
        Some(&nats),
        "",
        &format!(
            "[tenants.other]\ndomains = [\"other.example\"]\n[tenants.other.firebase]\n\
             app_id = \"1:1234567890:android:0a1b2c3d4e5f\"\napi_secret_env = \"SIPTAP_TEST_API_SECRET\"\n\
             endpoint = \"{}\"\nallow_insecure_endpoint = true\n",
            mp.url()
        ),
        "",
    );
    let deliver = |cfg: &Path, name: &str| {
        let out = siptap_deliver(cfg, &dir.path().join(name), &["--until-idle", "3"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    deliver(&other, "w-other");
    assert!(mp.requests().is_empty(), "nothing of lab's was sent by the other tenant's worker");
    assert_eq!(stream_messages(&nats, "siptap_events"), spec().len() as u64, "lab's events still wait");
    // lab's worker delivers them
    deliver(&dir.path().join("s.toml"), "w-lab");
    assert_once(&delivered(&mp));
    assert_eq!(stream_messages(&nats, "siptap_events"), 0);
    drop(s.proc);
}

#[test]
fn a_sensor_whose_cached_keys_are_not_the_clusters_is_refused_with_the_fix() {
    if !have_nats() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let run = |nats: &Nats, name: &str, state: &Path| {
        let cfg = config(dir.path(), name, BOTH, Some(nats), "");
        Command::new(env!("CARGO_BIN_EXE_siptap"))
            .args(["replay", "--stats", "--state", state.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
            .arg(capture("split_a.pcap"))
            .output()
            .unwrap()
    };
    // this sensor joined a first cluster (and keeps its keys)...
    let first = Nats::single();
    assert!(run(&first, "s1", &state).status.success());
    // ...then is pointed at a second one, whose keys another sensor made
    let second = Nats::single();
    assert!(run(&second, "other", &dir.path().join("other-state")).status.success());
    let out = run(&second, "s2", &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    assert!(err.contains("cluster.key") && err.contains("not the keys of the cluster"), "{err}");
    assert!(out.stdout.is_empty(), "nothing derived with the wrong keys");
    // deleting the cached keys lets it join
    std::fs::remove_file(state.join("cluster.key")).unwrap();
    let out = run(&second, "s2", &state);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_firebase_outage_and_a_sensor_restart_mid_traffic_change_no_event() {
    if !have_nats() {
        return;
    }
    let nats = Nats::single();
    let mp = FakeMp::start();
    let dir = tempfile::tempdir().unwrap();
    // Firebase answers 503 for the first 4 seconds
    mp.behaviour.lock().unwrap().down_until = Some(std::time::Instant::now() + Duration::from_secs(4));
    let s = run_sensor(dir.path(), "s", BOTH, &nats, &mp, "");
    let packets = stamped(&capture("split_both.pcap"));
    // the registrations and the first call's INVITE, then the sensor restarts (SIGTERM: it saves
    // its state), then the rest
    let cut = packets
        .iter()
        .position(|p| String::from_utf8_lossy(&p.data).contains("SIP/2.0 180"))
        .expect("a 180 in the capture");
    send(&packets[..cut], |_| vec![s.hep]);
    let mut c = s.proc.take();
    // SAFETY: kill(2) with a plain signal number
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    assert!(c.wait().unwrap().success());
    let s = run_sensor(dir.path(), "s", BOTH, &nats, &mp, "");
    send(&packets[cut..], |_| vec![s.hep]);
    let got = wait_delivered(&mp, spec().len(), Duration::from_secs(60));
    assert_once(&got);
    assert!(mp.requests().iter().any(|r| r.answered == 503), "the outage was met (and its events delivered after it)");
    drop(s.proc);
}
