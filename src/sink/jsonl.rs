//! JSON lines: the `replay` output contract (one object per event, capture-time order).
//!
//! Written by hand, field by field, into the caller's buffer: the same bytes serde_json would
//! write for the same object (a test checks it), at a fraction of the cost, since every event of
//! a replay goes through here.
use crate::event::{Direction, EndReason, EndedBy, Params};
use crate::pipeline::Routed;
use crate::timefmt::rfc3339_micros;
use serde::Serialize;
use std::io::Write;

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    tenant: &'a str,
    event: &'a str,
    kind: &'static str,
    user: &'a str,
    params: &'a crate::event::Params,
}

/// The reference form (serde_json), for tests and the rare caller that wants a String.
pub fn to_json(r: &Routed) -> String {
    let line = Line {
        time: rfc3339_micros(r.event.ts),
        tenant: &r.tenant,
        event: &r.name,
        kind: r.event.kind.canonical(),
        user: &r.event.user,
        params: &r.event.params,
    };
    serde_json::to_string(&line).expect("plain data serialises")
}

/// Appends a JSON string (quotes and escapes as serde_json writes them).
fn string(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    // most strings need no escape: the clean beginning is found eight bytes at a time and
    // copied at once, with the quotes, into room reserved once; the rest goes byte by byte
    let clean = clean_prefix(b);
    out.reserve(b.len() + 2);
    out.push(b'"');
    out.extend_from_slice(&b[..clean]);
    if clean < b.len() {
        escape(out, &b[clean..]);
    }
    out.push(b'"');
}

/// The bytes of a string from its first one that may need an escape.
#[cold]
fn escape(out: &mut Vec<u8>, b: &[u8]) {
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                let hex = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex[usize::from(c >> 4)], hex[usize::from(c & 15)]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// How many leading bytes of `b` certainly need no escape in a JSON string: all of them when
/// none does (nearly always), else a multiple of eight (the words before the first holding a
/// control character, a quote or a backslash).
fn clean_prefix(b: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_in = |w: u64| w.wrapping_sub(LO) & !w & HI != 0;
    // a byte below 0x20 (bytes of 0x80 and above are not: `& !w` excludes them), a `"`, a `\`
    let clean = |w: u64| {
        w.wrapping_sub(LO * 0x20) & !w & HI == 0
            && !zero_in(w ^ (LO * u64::from(b'"')))
            && !zero_in(w ^ (LO * u64::from(b'\\')))
    };
    let mut i = 0;
    while i + 8 <= b.len() {
        if !clean(u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))) {
            return i;
        }
        i += 8;
    }
    let n = b.len() - i;
    if n == 0 {
        return i;
    }
    // the last few bytes as a word (two overlapping loads, not a copy: a `memcpy` call per
    // string showed in profiles), the bytes past them set to spaces (which need no escape)
    let pad = (LO * u64::from(b' ')) & (!0u64 << (8 * n));
    if clean(crate::bytes::le_tail(&b[i..]) | pad) { b.len() } else { i }
}

fn params(out: &mut Vec<u8>, p: &Params) {
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    if let Some(v) = &p.call_id {
        key(out, "call_id");
        string(out, v);
    }
    if let Some(d) = p.direction {
        key(out, "direction");
        out.extend_from_slice(match d {
            Direction::Out => b"\"out\"",
            Direction::In => b"\"in\"",
        });
    }
    if let Some(a) = p.answered {
        key(out, "answered");
        out.extend_from_slice(if a { b"true" } else { b"false" });
    }
    if let Some(s) = p.status {
        key(out, "status");
        out.extend_from_slice(crate::bytes::decimal(u64::from(s), &mut [0; 20]));
    }
    if let Some(r) = p.reason {
        key(out, "reason");
        out.extend_from_slice(match r {
            EndReason::Bye => b"\"bye\"",
            EndReason::Cancel => b"\"cancel\"",
            EndReason::Rejected => b"\"rejected\"",
            EndReason::Timeout => b"\"timeout\"",
        });
    }
    if let Some(e) = p.ended_by {
        key(out, "ended_by");
        out.extend_from_slice(match e {
            EndedBy::User => b"\"user\"",
            EndedBy::Peer => b"\"peer\"",
            EndedBy::Server => b"\"server\"",
        });
    }
    if let Some(d) = p.duration_sec {
        key(out, "duration_sec");
        if d.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(d).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    if let Some(v) = &p.device {
        key(out, "device");
        string(out, v);
    }
    if let Some(v) = &p.reg_call_id {
        key(out, "reg_call_id");
        string(out, v);
    }
    out.push(b'}');
}

/// Appends one event's line (with its newline) to `out`.
pub fn append(out: &mut Vec<u8>, r: &Routed) {
    append_line(out, r, None);
}

/// A line with the event's deterministic id after its time (cluster mode: the id by which the
/// cluster's stream keeps one copy of it, the same on every sensor).
pub fn append_with_id(out: &mut Vec<u8>, r: &Routed, id: &str) {
    append_line(out, r, Some(id));
}

fn append_line(out: &mut Vec<u8>, r: &Routed, id: Option<&str>) {
    out.extend_from_slice(b"{\"time\":\"");
    crate::timefmt::write_rfc3339_micros(out, r.event.ts);
    if let Some(id) = id {
        out.extend_from_slice(b"\",\"id\":");
        string(out, id);
        out.extend_from_slice(b",\"tenant\":");
    } else {
        out.extend_from_slice(b"\",\"tenant\":");
    }
    string(out, &r.tenant);
    out.extend_from_slice(b",\"event\":");
    string(out, &r.name);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(r.event.kind.canonical().as_bytes());
    out.extend_from_slice(b"\",\"user\":");
    string(out, &r.event.user);
    out.extend_from_slice(b",\"params\":");
    params(out, &r.event.params);
    out.extend_from_slice(b"}\n");
}

pub fn write(w: &mut impl Write, r: &Routed) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    append(&mut buf, r);
    w.write_all(&buf)
}

/// [`write()`] with the event's id (cluster mode).
pub fn write_with_id(w: &mut impl Write, r: &Routed) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(300);
    append_with_id(&mut buf, r, &r.event.id(&r.tenant));
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Kind, Origin};
    use std::sync::Arc;

    #[test]
    fn the_same_bytes_as_serde_json() {
        let mut cases = Vec::new();
        for (kind, params) in [
            (
                Kind::AccountCreated,
                Params {
                    device: Some("urn:uuid:\"x\"\\é\u{1}".into()),
                    reg_call_id: Some("a@b".into()),
                    ..Params::default()
                },
            ),
            (
                Kind::CallEnded,
                Params {
                    call_id: Some("1-2@h".into()),
                    direction: Some(Direction::In),
                    answered: Some(true),
                    status: Some(200),
                    reason: Some(EndReason::Timeout),
                    ended_by: Some(EndedBy::Server),
                    duration_sec: Some(2.004),
                    ..Params::default()
                },
            ),
            (Kind::CallEnded, Params { duration_sec: Some(0.0), answered: Some(false), ..Params::default() }),
            (Kind::OutgoingCall, Params { duration_sec: Some(12345.5), ..Params::default() }),
        ] {
            for ts in [0, 1_795_745_306_500_000, 951_827_696_000_001, -1] {
                let event = Event {
                    ts,
                    kind,
                    user: "al\tice@lab.example".into(),
                    params: params.clone(),
                    origin: Origin::default(),
                };
                cases.push(Routed { tenant: Arc::from("lab"), name: Arc::from("sign\"up"), event });
            }
        }
        for r in &cases {
            let mut fast = Vec::new();
            append(&mut fast, r);
            assert_eq!(String::from_utf8(fast).unwrap(), to_json(r) + "\n");
        }
    }

    /// Strings with something to escape at every place relative to the eight-byte words.
    #[test]
    fn strings_escape_as_serde_json_does() {
        let parts = ["a", "abcdefgh", "\"", "\\", "\n", "\u{1}", "\u{1f}", " ", "é", "\u{7f}", "~", "€uro"];
        let mut rng = crate::testkit::Rng(11);
        for _ in 0..50_000 {
            let n = rng.below(12) as usize;
            let s: String = (0..n).map(|_| parts[rng.below(parts.len() as u64) as usize]).collect();
            let mut out = vec![b'x'];
            string(&mut out, &s);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{}", serde_json::to_string(&s).unwrap()), "{s:?}");
        }
    }
}
