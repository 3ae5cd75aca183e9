//! Helpers for the live tests: a network namespace of the test's own, and children that die with
//! the test.
#![allow(dead_code)]
use std::process::{Child, Command};

/// Moves the calling test's thread into a new network namespace with only `lo` up: every thread
/// and process it starts from now on (Kamailio, sipp, tcpdump, siptap, the fake servers) sees
/// only this test's traffic, and nothing it sends leaves it. libtest runs each test on a thread
/// of its own, so other tests are not affected. Needs root (CAP_SYS_ADMIN).
pub fn private_network() -> bool {
    // SAFETY: unshare(2) only changes this thread's namespace; no memory is involved
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    one_receive_time();
    Command::new("ip").args(["link", "set", "lo", "up"]).status().is_ok_and(|s| s.success())
}

/// Makes every capture handle read the same time for a packet, for as long as the tests run.
/// The live tests compare siptap's events with those of tcpdump's capture of the same traffic,
/// time for time. Loopback clears a packet's time as it sends it, and unless some socket on the
/// host asked for receive times (SO_TIMESTAMP), the kernel then stamps each capture socket's
/// copy as it hands it over, one after the other: a microsecond apart, but once 2.8 ms apart on
/// a CI runner (most likely its vCPU descheduled between the two hand-overs). With one such
/// socket open the kernel stamps the packet once, as it is received, and both handles read that
/// (tried on this host: two tcpdumps on lo, 1 us apart without it, equal with it). The switch is
/// the kernel's, for all namespaces; the socket is kept until the test binary exits.
fn one_receive_time() {
    static STAMPING: std::sync::OnceLock<std::net::UdpSocket> = std::sync::OnceLock::new();
    STAMPING.get_or_init(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value, for the duration of the call
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMP,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_TIMESTAMP: {}", std::io::Error::last_os_error());
        s
    });
}

/// A child process killed (SIGKILL) and reaped when dropped, pass or fail.
pub struct Reaped(pub Option<Child>);

impl Reaped {
    pub fn new(c: Child) -> Self {
        Reaped(Some(c))
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
    /// Hands the child over (to wait for it); the caller then owns its end.
    pub fn take(mut self) -> Child {
        self.0.take().expect("running")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `siptap run --allow-root --config CFG`, quiet (stdout and stderr discarded), killed when
/// dropped; `api_secret`: the value of SIPTAP_TEST_API_SECRET, which the test configs name.
pub fn start_run(cfg: &std::path::Path, api_secret: Option<&str>) -> Reaped {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siptap"));
    c.args(["run", "--allow-root", "--config"]).arg(cfg);
    if let Some(s) = api_secret {
        c.env("SIPTAP_TEST_API_SECRET", s);
    }
    Reaped::new(c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
}
