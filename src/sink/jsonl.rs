//! JSON lines: the `replay` output contract (one object per event, capture-time order).
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

pub fn write(w: &mut impl Write, r: &Routed) -> std::io::Result<()> {
    let s = to_json(r);
    w.write_all(s.as_bytes())?;
    w.write_all(b"\n")
}
