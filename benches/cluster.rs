//! Cluster mode against the embedded default, in one run (read the ratios: machines are noisy).
//!
//! 1. Throughput: `siptap replay` of a generated capture (2,000 users, 4,000 calls), embedded and
//!    through one local nats-server (every registration decided in the shared buckets, every event
//!    published with its id and acknowledged), and two redundant sensors replaying it at once.
//! 2. Latency from packet to Firebase request: `siptap run` fed the split-platform capture over
//!    HEP in real time, delivering to a local fake Measurement Protocol server; for each event,
//!    the time from its packet's timestamp to the request that carried it. Embedded (outbox ->
//!    sender) against cluster (outbox -> stream -> durable consumer -> sender).
//!
//! cargo bench --bench cluster   (needs nats-server; builds the release binary first)
#[path = "../tests/common/mod.rs"]
mod common;
use common::hep::{HepPacket, stamped};
use common::live::start_run;
use common::mp_server::FakeMp;
use common::nats::Nats;
use common::{free_port, http_get, root, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_siptap")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn replay(cfg: &Path, cap: &Path) -> (f64, usize) {
    let t = Instant::now();
    let out = Command::new(bin()).args(["replay", "--threads", "1", "--config"]).arg(cfg).arg(cap).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (t.elapsed().as_secs_f64(), out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count())
}

fn main() {
    if !common::have("nats-server") {
        println!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = std::fs::read_to_string(root().join("config.toml.example")).unwrap();

    // 1. throughput
    let cap = dir.path().join("gen.pcap");
    let spec = siptap::testkit::capgen::GenSpec { users: 2000, calls: 4000, duration_secs: 3600, ..Default::default() };
    let st = siptap::testkit::capgen::write_pcap(&spec, &cap).unwrap();
    let nats = Nats::single();
    let embedded = write(dir.path(), "embedded.toml", &lab);
    let cluster = |prefix: &str, sensor: &str| {
        write(
            dir.path(),
            &format!("{prefix}-{sensor}.toml"),
            &format!("{lab}\n[cluster]\nnats = [{}]\nsensor = \"{sensor}\"\nprefix = \"{prefix}\"\n", nats.toml_urls()),
        )
    };
    let mut best_e = f64::MAX;
    let mut best_c = f64::MAX;
    let mut events = 0;
    for i in 0..3 {
        let (t, n) = replay(&embedded, &cap);
        best_e = best_e.min(t);
        events = n;
        // a fresh prefix each time: an empty cluster, as the embedded run starts empty
        let (t, m) = replay(&cluster(&format!("b{i}"), "s"), &cap);
        assert_eq!(m, n, "the cluster replay printed every event (nothing was there before)");
        best_c = best_c.min(t);
    }
    let pair = {
        let t = Instant::now();
        let spawn = |s: &str| {
            Command::new(bin())
                .args(["replay", "--threads", "1", "--config"])
                .arg(cluster("pair", s))
                .arg(&cap)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn("a"), spawn("b"));
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
        t.elapsed().as_secs_f64()
    };
    println!(
        "capture: {} SIP messages, {} events (generated: {} users, {} calls)",
        st.sip_messages, events, spec.users, spec.calls
    );
    println!("replay, best of 3            seconds   events/s   SIP msgs/s   ratio");
    let row = |name: &str, t: f64| {
        println!(
            "  {name:26} {t:8.3} {:10.0} {:12.0} {:7.2}",
            events as f64 / t,
            st.sip_messages as f64 / t,
            t / best_e
        )
    };
    row("embedded", best_e);
    row("cluster (1 nats-server)", best_c);
    row("cluster, 2 sensors at once", pair);
    // what the cluster holds for it (the last single-sensor run's prefix, b2): bytes per record
    let jsz = http_get(nats.nodes[0].monitor, "/jsz?streams=true").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&jsz).unwrap_or_default();
    println!("stored by one sensor's replay (JetStream, one replica)   messages      bytes   bytes each");
    for d in v["account_details"].as_array().into_iter().flatten() {
        for s in d["stream_detail"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("");
            if !name.contains("b2_") {
                continue;
            }
            let (m, b) = (s["state"]["messages"].as_u64().unwrap_or(0), s["state"]["bytes"].as_u64().unwrap_or(0));
            println!("  {name:40} {m:10} {b:10} {:10.0}", b as f64 / m.max(1) as f64);
        }
    }

    // 2. latency, packet to Firebase request
    for (name, with_cluster) in [("embedded", false), ("cluster", true)] {
        let mp = FakeMp::start();
        let (hep, metrics) = (free_port(), free_port());
        let cluster_section = if with_cluster {
            format!("[cluster]\nnats = [{}]\nsensor = \"lat\"\nprefix = \"lat\"\n", nats.toml_urls())
        } else {
            String::new()
        };
        let cfg = write(
            dir.path(),
            &format!("lat-{name}.toml"),
            &format!(
                "sip_servers = [\"127.0.0.10:5060\", \"127.0.0.11:5060\"]\n[hep]\nlisten = \"127.0.0.1:{hep}\"\n\
                 [[hep.sources]]\naddress = \"127.0.0.1\"\n[run]\ninterfaces = []\nstate_dir = \"{}\"\n\
                 metrics_listen = \"127.0.0.1:{metrics}\"\n[tenants.lab]\ndomains = [\"lab.example\"]\n\
                 [tenants.lab.firebase]\napp_id = \"1:1234567890:android:0a1b2c3d4e5f\"\n\
                 api_secret_env = \"SIPTAP_TEST_API_SECRET\"\nendpoint = \"{}\"\nallow_insecure_endpoint = true\n{cluster_section}",
                dir.path().join(format!("state-{name}")).display(),
                mp.url()
            ),
        );
        let _run = start_run(&cfg, Some("bench"));
        wait_until("/health", Duration::from_secs(30), || http_get(metrics, "/health").is_some());
        // fresh stamps for this run, sent in real time (each packet at its stamp)
        let packets = stamped(&root().join("fixtures/cluster/captures/split_both.pcap"));
        paced(&packets, hep);
        wait_until("17 events", Duration::from_secs(30), || mp.accepted_events().len() >= 17);
        let mut lat: Vec<f64> = Vec::new();
        let wall = now_micros();
        for r in mp.requests().iter().filter(|r| r.path == "/mp/collect" && r.answered / 100 == 2) {
            let arrived = wall - r.at.elapsed().as_micros() as i64;
            for e in r.body["events"].as_array().unwrap() {
                lat.push((arrived - e["timestamp_micros"].as_i64().unwrap()) as f64 / 1000.0);
            }
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        println!(
            "latency {name:9} packet -> Firebase request, {} events: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
            lat.len(),
            q(0.5),
            q(0.9),
            q(1.0)
        );
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Sends each HEP packet when the wall clock reaches its timestamp (`stamped` starts them now).
fn paced(packets: &[HepPacket], port: u16) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ts = |p: &HepPacket| hep_ts(&p.data);
    for p in packets {
        let wait = ts(p) - now_micros();
        if wait > 0 {
            std::thread::sleep(Duration::from_micros(wait as u64));
        }
        sock.send_to(&p.data, ("127.0.0.1", port)).unwrap();
    }
}

/// The timestamp (µs) of a HEP v3 packet: chunks 9 (seconds) and 10 (microseconds).
fn hep_ts(d: &[u8]) -> i64 {
    let (mut secs, mut usecs) = (0i64, 0i64);
    let mut i = 6;
    while i + 6 <= d.len() {
        let ty = u16::from_be_bytes([d[i + 2], d[i + 3]]);
        let len = usize::from(u16::from_be_bytes([d[i + 4], d[i + 5]]));
        if len < 6 || i + len > d.len() {
            break;
        }
        let v = &d[i + 6..i + len];
        if v.len() == 4 {
            let x = i64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            match ty {
                9 => secs = x,
                10 => usecs = x,
                _ => {}
            }
        }
        i += len;
    }
    secs * 1_000_000 + usecs
}
