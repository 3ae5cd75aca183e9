//! GA4 Measurement Protocol requests for app streams: building the body from queued events, and
//! checking it the way `/debug/mp/collect` does, before sending (`/mp/collect` answers 2xx even
//! for a body it drops).
use super::identity::is_app_instance_id;
use crate::config::check_event_name;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MAX_EVENTS: usize = 25;
pub const MAX_PARAMS: usize = 25;
pub const MAX_PARAM_NAME: usize = 40;
pub const MAX_PARAM_VALUE: usize = 100;
pub const MAX_BODY: usize = 130 * 1024;
/// GA4 takes `timestamp_micros` at most 72 hours in the past.
pub const MAX_AGE_MICROS: i64 = 72 * 3600 * 1_000_000;

/// One event as queued in the outbox: everything the request needs, ids already applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// The event's deterministic id (`Event::id`): queued once, however often it is derived.
    #[serde(default)]
    pub id: String,
    /// The canonical kind (`app_started`...), for sessions.
    #[serde(default)]
    pub kind: String,
    pub tenant: String,
    pub app_instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<String>,
    pub timestamp_micros: i64,
    pub name: String,
    pub params: Map<String, Value>,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    app_instance_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    timestamp_micros: i64,
    events: Vec<BodyEvent<'a>>,
}

#[derive(Debug, Serialize)]
struct BodyEvent<'a> {
    name: &'a str,
    /// Per-event time, so that a batch keeps each event's own packet time.
    timestamp_micros: i64,
    params: &'a Map<String, Value>,
}

/// The JSON body for events of one app instance and user (at most 25, in time order); the
/// request's own timestamp is its first event's.
pub fn body(events: &[&QueuedEvent]) -> Vec<u8> {
    let first = events[0];
    let b = Body {
        app_instance_id: &first.app_instance_id,
        user_id: first.user_id.as_deref(),
        timestamp_micros: events.iter().map(|e| e.timestamp_micros).min().unwrap_or(first.timestamp_micros),
        events: events
            .iter()
            .map(|e| BodyEvent { name: &e.name, timestamp_micros: e.timestamp_micros, params: &e.params })
            .collect(),
    };
    serde_json::to_vec(&b).expect("plain data")
}

/// What the debug endpoint would say about a body, checked locally (empty: valid).
pub fn validate(body: &[u8], now_micros: i64) -> Vec<String> {
    let mut msgs = Vec::new();
    if body.len() >= MAX_BODY {
        msgs.push(format!("body is {} bytes, the limit is {MAX_BODY}", body.len()));
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return vec![format!("body is not JSON: {e}")],
    };
    match v["app_instance_id"].as_str() {
        Some(id) if is_app_instance_id(id) => {}
        other => msgs.push(format!("app_instance_id {other:?} is not 32 hexadecimal digits")),
    }
    let check_ts = |ts: &Value, what: &str, msgs: &mut Vec<String>| {
        if let Some(t) = ts.as_i64() {
            if now_micros - t > MAX_AGE_MICROS {
                msgs.push(format!("{what} timestamp_micros is more than 72 hours in the past"));
            }
            if t - now_micros > 15 * 60 * 1_000_000 {
                msgs.push(format!("{what} timestamp_micros is in the future"));
            }
        }
    };
    check_ts(&v["timestamp_micros"], "request", &mut msgs);
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() || events.len() > MAX_EVENTS {
        msgs.push(format!("{} events; a request carries 1 to {MAX_EVENTS}", events.len()));
    }
    for (i, e) in events.iter().enumerate() {
        let name = e["name"].as_str().unwrap_or("");
        if let Err(m) = check_event_name(name) {
            msgs.push(format!("events[{i}]: {m}"));
        }
        check_ts(&e["timestamp_micros"], &format!("events[{i}]"), &mut msgs);
        let params = e["params"].as_object().cloned().unwrap_or_default();
        if params.len() > MAX_PARAMS {
            msgs.push(format!("events[{i}]: {} params, the limit is {MAX_PARAMS}", params.len()));
        }
        for (k, val) in &params {
            if k.len() > MAX_PARAM_NAME || !k.starts_with(|c: char| c.is_ascii_alphabetic()) {
                msgs.push(format!("events[{i}].params.{k}: invalid parameter name"));
            }
            if let Some(s) = val.as_str()
                && s.chars().count() > MAX_PARAM_VALUE
            {
                msgs.push(format!("events[{i}].params.{k}: value longer than {MAX_PARAM_VALUE} characters"));
            }
        }
        for required in ["session_id", "engagement_time_msec"] {
            if !params.contains_key(required) {
                msgs.push(format!(
                    "events[{i}]: no {required} (the event would not show in realtime and session reports)"
                ));
            }
        }
    }
    msgs
}

/// Splits queued events (already in time order) into requests: per app instance and user, at
/// most 25 events and under the body limit each.
pub fn batches<'a>(events: &[&'a QueuedEvent]) -> Vec<Vec<&'a QueuedEvent>> {
    let mut groups: Vec<Vec<&QueuedEvent>> = Vec::new();
    for e in events {
        let open = groups
            .iter_mut()
            .find(|g| g[0].app_instance_id == e.app_instance_id && g[0].user_id == e.user_id && g.len() < MAX_EVENTS);
        match open {
            Some(g) => g.push(e),
            None => groups.push(vec![e]),
        }
    }
    // each request's events in time order (a timer's event may have been derived after a later one)
    for g in &mut groups {
        g.sort_by_key(|e| e.timestamp_micros);
    }
    // a body over the limit is halved until it fits
    let mut out = Vec::new();
    while let Some(g) = groups.pop() {
        if g.len() > 1 && body(&g).len() >= MAX_BODY {
            let (a, b) = g.split_at(g.len() / 2);
            groups.push(b.to_vec());
            groups.push(a.to_vec());
        } else {
            out.push(g);
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(app: &str, name: &str, ts: i64) -> QueuedEvent {
        let mut params = Map::new();
        params.insert("session_id".into(), 1.into());
        params.insert("engagement_time_msec".into(), 1.into());
        QueuedEvent {
            id: format!("{name}{ts}"),
            kind: String::new(),
            tenant: "lab".into(),
            app_instance_id: app.into(),
            user_id: None,
            timestamp_micros: ts,
            name: name.into(),
            params,
        }
    }

    #[test]
    fn valid_body_and_each_rule() {
        let now = 1_800_000_000_000_000;
        let a = "a".repeat(32);
        let e = q(&a, "callout", now - 1000);
        assert!(validate(&body(&[&e]), now).is_empty(), "{:?}", validate(&body(&[&e]), now));
        let old = q(&a, "callout", now - MAX_AGE_MICROS - 1);
        assert!(validate(&body(&[&old]), now).iter().any(|m| m.contains("72 hours")));
        let bad = q("xyz", "screen_view", now);
        let m = validate(&body(&[&bad]), now);
        assert!(m.iter().any(|m| m.contains("app_instance_id")) && m.iter().any(|m| m.contains("reserved")), "{m:?}");
        let mut long = q(&a, "callend", now);
        long.params.insert("call_id".into(), "x".repeat(101).into());
        assert!(validate(&body(&[&long]), now).iter().any(|m| m.contains("longer than 100")));
    }

    #[test]
    fn batches_group_by_instance_and_cap_at_25() {
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        let evs: Vec<QueuedEvent> = (0..60).map(|i| q(if i % 3 == 0 { &b } else { &a }, "login", i)).collect();
        let refs: Vec<&QueuedEvent> = evs.iter().collect();
        let bs = batches(&refs);
        assert!(bs.iter().all(|g| g.len() <= 25 && g.iter().all(|e| e.app_instance_id == g[0].app_instance_id)));
        assert_eq!(bs.iter().map(Vec::len).sum::<usize>(), 60);
        assert_eq!(bs.len(), 2 + 1); // 40 of a in 25+15, 20 of b
    }
}
