//! Real `nats-server` processes for the cluster tests: one server, or a three-node JetStream
//! cluster, on loopback ports of their own, with JetStream stores in a temporary directory.
#![allow(dead_code)]
use super::free_port;
use super::live::Reaped;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub port: u16,
    pub monitor: u16,
    pub route: u16,
    pub name: String,
    proc: Option<Reaped>,
}

pub struct Nats {
    pub nodes: Vec<Node>,
    dir: tempfile::TempDir,
    clustered: bool,
}

impl Nats {
    /// One JetStream server.
    pub fn single() -> Nats {
        Self::new(1)
    }

    /// Three JetStream servers in one cluster (routes between all of them).
    pub fn cluster3() -> Nats {
        Self::new(3)
    }

    fn new(n: usize) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..n)
            .map(|i| Node {
                port: free_port(),
                monitor: free_port(),
                route: free_port(),
                name: format!("n{i}"),
                proc: None,
            })
            .collect();
        let mut nats = Nats { nodes, dir, clustered: n > 1 };
        for i in 0..n {
            nats.start(i);
        }
        for i in 0..n {
            // a port picked by `free_port` is free only until something binds it, and the
            // tests run in parallel: a server that lost one of its ports to another test's exits
            // at once, and is started again on fresh ones (its peers' routes to it then fail, but
            // its own routes to them make the cluster; the client URLs are read after this)
            for _ in 0..3 {
                if !nats.exited(i) {
                    break;
                }
                let n = &mut nats.nodes[i];
                (n.port, n.monitor, n.route) = (free_port(), free_port(), free_port());
                nats.start(i);
            }
            nats.wait_ready(i);
        }
        nats
    }

    /// Whether node `i`'s process has ended (given a moment to fail on a taken port).
    fn exited(&mut self, i: usize) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            match self.nodes[i].proc.as_mut().map(|p| p.child().try_wait()) {
                Some(Ok(Some(_))) => return true,
                None => return false,
                _ => {}
            }
            if super::http_get(self.nodes[i].monitor, "/varz").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Starts (or restarts, with its store) node `i`.
    pub fn start(&mut self, i: usize) {
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.route)).collect();
        let n = &self.nodes[i];
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &n.port.to_string(), "-m", &n.monitor.to_string(), "-n", &n.name])
            .arg("-sd")
            .arg(self.dir.path().join(&n.name));
        if self.clustered {
            // a name of its own (the store's directory): should a route port still reach
            // another test's cluster, the two refuse each other instead of merging
            let dir = self.dir.path().file_name().unwrap_or_default().to_string_lossy();
            let name = format!("siptap-test-{}", dir.replace(|c: char| !c.is_ascii_alphanumeric(), ""));
            cmd.args(["--cluster_name", &name, "--cluster", &format!("nats://127.0.0.1:{}", n.route)])
                .args(["--routes", &routes.join(",")]);
        }
        // its log goes to a file beside its store, so that a node that never gets ready can say why
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("a log file for nats-server");
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("nats-server starts");
        self.nodes[i].proc = Some(Reaped::new(child));
    }

    /// Waits until node `i` answers its health check with JetStream up (a cluster: a meta leader).
    pub fn wait_ready(&self, i: usize) {
        let t = Instant::now();
        let m = self.nodes[i].monitor;
        while t.elapsed() < Duration::from_secs(30) {
            if super::http_get(m, "/healthz").is_some_and(|b| b.contains("ok")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        // its errors (a port taken, a store it cannot open), then its last lines (the health
        // checks this loop made are logged as warnings, and would hide the cause on their own)
        let lines: Vec<&str> = log.lines().collect();
        let errors: Vec<&str> =
            lines.iter().copied().filter(|l| l.contains("[ERR]") || l.contains("[FTL]")).take(10).collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        panic!(
            "nats-server {} not ready within 30 s; its errors:\n{}\nthe end of its log:\n{tail}",
            self.nodes[i].name,
            errors.join("\n")
        );
    }

    /// Where node `i`'s stderr (its log) goes: appended to, across restarts.
    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    /// Stops node `i` the hard way (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        drop(self.nodes[i].proc.take());
    }

    /// Stops node `i` cleanly (SIGTERM) and waits for it.
    pub fn stop(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            let mut c = p.take();
            // SAFETY: kill(2) with a plain signal number
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The servers as a TOML array's contents: `"nats://127.0.0.1:P", ...`.
    pub fn toml_urls(&self) -> String {
        self.nodes.iter().map(|n| format!("\"nats://127.0.0.1:{}\"", n.port)).collect::<Vec<_>>().join(", ")
    }
}
