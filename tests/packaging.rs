//! Operations: the systemd unit (verified by systemd-analyze where available, least privilege),
//! the man page, the root refusal, and the capture filter that keeps IP fragments.
mod common;
use common::*;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(root().join("systemd/siptap.service")).unwrap()
}

#[test]
fn the_unit_file_verifies() {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        skipped("systemd-analyze is not installed here (.ci/run installs systemd)");
        return;
    };
    assert!(o.status.success());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("siptap.service");
    std::fs::write(&p, unit().replace("/usr/bin/siptap", env!("CARGO_BIN_EXE_siptap"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&p).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("siptap.service:"), "{text}");
}

#[test]
fn the_unit_grants_only_cap_net_raw_and_confines_the_rest() {
    let u = unit();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "User=siptap",
        "AmbientCapabilities=CAP_NET_RAW\n",
        "CapabilityBoundingSet=CAP_NET_RAW\n",
        "NoNewPrivileges=yes",
        "StateDirectory=siptap",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        "ExecReload=/usr/bin/siptap reload --config /etc/siptap/config.toml --pid $MAINPID",
    ] {
        assert!(u.contains(line), "unit lacks {line}");
    }
    assert!(!u.contains("CAP_NET_ADMIN"), "CAP_NET_ADMIN is not needed");
}

#[test]
fn the_man_pages_and_completions_in_the_repo_are_generated_from_the_cli() {
    // `siptap man` and `siptap completions` write them from the clap definition; the copies
    // the package ships (doc/) must be what they write today
    let dir = tempfile::tempdir().unwrap();
    let out = siptap(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    let mut shipped: Vec<String> = std::fs::read_dir(root().join("doc/man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    shipped.sort();
    assert_eq!(pages, shipped, "regenerate with: siptap man --dir doc/man");
    for p in &pages {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(p)).unwrap(),
            std::fs::read_to_string(root().join("doc/man").join(p)).unwrap(),
            "doc/man/{p} is stale: regenerate with `siptap man --dir doc/man`"
        );
    }
    // one page per command, and the main page lists them and says what --help cannot
    let help = String::from_utf8(siptap(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    let main = std::fs::read_to_string(dir.path().join("siptap.1")).unwrap();
    for c in &commands {
        assert!(pages.contains(&format!("siptap-{c}.1")), "no page for {c}");
        assert!(main.contains(&format!("siptap\\-{}(1)", c.replace('-', "\\-"))), "siptap.1 does not list {c}");
    }
    for section in [".SH FILES", ".SH SIGNALS", ".SH EXIT STATUS"] {
        assert!(main.contains(section), "siptap.1 lacks {section}");
    }
    for (shell, file) in [("bash", "siptap.bash"), ("zsh", "_siptap"), ("fish", "siptap.fish")] {
        let out = siptap(&["completions", shell]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            std::fs::read_to_string(root().join("doc/completions").join(file)).unwrap(),
            "doc/completions/{file} is stale: regenerate with `siptap completions {shell}`"
        );
    }
}

#[test]
fn run_refuses_root_without_the_flag() {
    let uid0 = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !uid0 {
        skipped("not running as root, nothing to refuse");
        return;
    }
    let out = siptap(&["run", "--config", "config.toml.example"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("refusing to run as root") && err.contains("CAP_NET_RAW"), "{err}");
}

fn ipv4_frame(proto: u8, frag_offset: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 48, 0, 1]);
    f.extend_from_slice(&frag_offset.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0u8; 24]);
    f
}

#[test]
fn the_capture_filter_keeps_sip_hep_and_every_ip_fragment() {
    let cfg = siptap::config::Config::load(&root().join("config.toml.example")).unwrap();
    let filter = siptap::daemon::live::bpf_filter(&cfg);
    let cap = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
    let prog = cap.compile(&filter, true).expect("the filter compiles");
    assert!(prog.filter(&ipv4_frame(17, 0, 5060)), "UDP 5060");
    assert!(prog.filter(&ipv4_frame(6, 0, 5061)), "TCP 5061");
    assert!(prog.filter(&ipv4_frame(17, 0, 9060)), "HEP");
    // a non-first fragment has no UDP header: `port 5060` alone would lose it
    assert!(prog.filter(&ipv4_frame(17, 185, 1234)), "a non-first IPv4 fragment");
    assert!(!prog.filter(&ipv4_frame(6, 0, 443)), "HTTPS is not wanted");
    assert!(!prog.filter(&ipv4_frame(17, 0, 53)), "DNS is not wanted");
}

#[test]
fn sd_notify_readiness_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("siptap.toml");
    // no capture (nothing to sniff, no privilege needed): HEP input only
    std::fs::write(
        &cfg,
        format!(
            "sip_servers = [\"127.0.0.10\"]\n[hep]\nlisten = \"127.0.0.1:{}\"\nallow_any_source = true\n[run]\ninterfaces = []\nmetrics_listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
            free(),
            free(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["run", "--allow-root", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    // the watchdog is fed from the core loop at half of WatchdogSec
    assert_eq!(recv(), "WATCHDOG=1");
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let mut got = recv();
    while got == "WATCHDOG=1" {
        got = recv();
    }
    assert_eq!(got, "STOPPING=1");
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success() && t.elapsed() < Duration::from_secs(15));
}
