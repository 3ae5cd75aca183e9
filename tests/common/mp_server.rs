//! A local fake of the GA4 Measurement Protocol endpoint, on 127.0.0.1, for the delivery tests.
//! It checks every request the way /debug/mp/collect does (its own checks, written from the
//! Measurement Protocol reference, not siptap's), records what it accepted, and can be told to
//! fail with a status, refuse connections, or hang.
#![allow(dead_code)]
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub app_id: String,
    pub api_secret: String,
    pub body: Value,
    pub problems: Vec<String>,
    pub answered: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
pub struct Behaviour {
    /// Answer the next N collect requests with this status (503, 429, 400...).
    pub fail: Vec<u16>,
    /// Hold requests without answering while set.
    pub hang: bool,
    /// A `Retry-After` (seconds) on the failures above.
    pub retry_after: Option<u32>,
    /// The debug endpoint answers this status with an HTML page instead of its JSON.
    pub debug_fails: Option<u16>,
    /// Answer failures with this body (the server's explanation).
    pub answer: String,
    /// Answer 503 to every collect request until then (an outage of a given length).
    pub down_until: Option<std::time::Instant>,
}

pub struct FakeMp {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

const RESERVED: &[&str] = &[
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "adunit_exposure",
    "app_clear_data",
    "app_install",
    "app_update",
    "app_remove",
    "error",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "screen_view",
    "session_start",
    "user_engagement",
];

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The debug endpoint's checks.
pub fn check(body: &[u8]) -> Vec<String> {
    let mut p = Vec::new();
    if body.len() >= 130 * 1024 {
        p.push("body too large".into());
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return vec!["not JSON".into()] };
    let id = v["app_instance_id"].as_str().unwrap_or("");
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        p.push(format!("app_instance_id {id:?}"));
    }
    let now = now_micros();
    let ts_ok = |t: &Value| t.as_i64().is_none_or(|t| now - t <= 72 * 3600 * 1_000_000 && t <= now + 60_000_000);
    if !ts_ok(&v["timestamp_micros"]) {
        p.push("timestamp_micros out of range".into());
    }
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() || events.len() > 25 {
        p.push(format!("{} events", events.len()));
    }
    for e in &events {
        let name = e["name"].as_str().unwrap_or("");
        let good = !name.is_empty()
            && name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !RESERVED.contains(&name)
            && !["firebase_", "ga_", "google_"].iter().any(|x| name.starts_with(x));
        if !good {
            p.push(format!("event name {name:?}"));
        }
        if !ts_ok(&e["timestamp_micros"]) {
            p.push(format!("{name}: timestamp_micros out of range"));
        }
        let params = e["params"].as_object().cloned().unwrap_or_default();
        if params.len() > 25 {
            p.push(format!("{name}: {} params", params.len()));
        }
        for (k, val) in &params {
            if k.len() > 40 {
                p.push(format!("{name}: param name {k}"));
            }
            if val.as_str().is_some_and(|s| s.chars().count() > 100) {
                p.push(format!("{name}: param {k} too long"));
            }
            if val.is_object() || val.is_array() {
                p.push(format!("{name}: param {k} not a scalar"));
            }
        }
        if !params.contains_key("session_id") {
            p.push(format!("{name}: no session_id"));
        }
        if params.get("engagement_time_msec").and_then(Value::as_u64).is_none_or(|m| m < 1) {
            p.push(format!("{name}: engagement_time_msec missing or < 1"));
        }
    }
    p
}

impl FakeMp {
    pub fn start() -> FakeMp {
        Self::on(0)
    }

    pub fn on(port: u16) -> FakeMp {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let port = l.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let (r, b) = (received.clone(), behaviour.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, b) = (r.clone(), b.clone());
                std::thread::spawn(move || serve(conn, r, b));
            }
        });
        FakeMp { port, received, behaviour }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The accepted (2xx) collect requests' events: (name, timestamp_micros, app_instance_id).
    pub fn accepted_events(&self) -> Vec<(String, i64, String)> {
        let r = self.received.lock().unwrap();
        r.iter()
            .filter(|x| x.path == "/mp/collect" && x.answered / 100 == 2)
            .flat_map(|x| {
                let id = x.body["app_instance_id"].as_str().unwrap_or("").to_string();
                x.body["events"].as_array().cloned().unwrap_or_default().into_iter().map(move |e| {
                    (e["name"].as_str().unwrap().to_string(), e["timestamp_micros"].as_i64().unwrap(), id.clone())
                })
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, received: Arc<Mutex<Vec<Received>>>, behaviour: Arc<Mutex<Behaviour>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    conn.set_nodelay(true).ok();
    let mut w = conn.try_clone().unwrap();
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q = |k: &str| decode(query.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or(""));
        let problems = check(&body);
        let mut rec = Received {
            path: path.to_string(),
            app_id: q("firebase_app_id"),
            api_secret: q("api_secret"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            problems: problems.clone(),
            answered: 0,
            at: std::time::Instant::now(),
        };
        if path == "/debug/mp/collect"
            && let Some(st) = behaviour.lock().unwrap().debug_fails
        {
            rec.answered = st;
            received.lock().unwrap().push(rec);
            let page = "<html>oops</html>";
            let _ =
                write!(w, "HTTP/1.1 {st} X\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}", page.len());
            continue;
        }
        if path == "/debug/mp/collect" {
            let msgs: Vec<Value> = problems.iter().map(|m| serde_json::json!({"description": m})).collect();
            let out = serde_json::json!({ "validationMessages": msgs }).to_string();
            rec.answered = 200;
            received.lock().unwrap().push(rec);
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{out}",
                out.len()
            );
            continue;
        }
        if behaviour.lock().unwrap().hang {
            received.lock().unwrap().push(rec);
            while behaviour.lock().unwrap().hang {
                std::thread::sleep(Duration::from_millis(20));
            }
            return; // the client is gone by now
        }
        let (status, extra, answer) = {
            let mut b = behaviour.lock().unwrap();
            if b.down_until.is_some_and(|t| std::time::Instant::now() < t) {
                (503, String::new(), String::new())
            } else if b.fail.is_empty() {
                (204, String::new(), String::new())
            } else {
                let ra = b.retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
                (b.fail.remove(0), ra, b.answer.clone())
            }
        };
        rec.answered = status;
        received.lock().unwrap().push(rec);
        let _ = w.write_all(
            format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\n\r\n{answer}", answer.len()).as_bytes(),
        );
    }
}

/// Percent-decoding of a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
