//! A picture of what siptap derived, before anyone points it at Firebase: one self-contained HTML
//! page (inline CSS and SVG, no script, no network fetch) per run. Per tenant: events over time by
//! kind, registrations and app starts over time, call outcomes; then the counters that explain
//! what was not turned into events (scanners, malformed messages, unrouted domains, evictions).
//!
//! [`Report`] only counts (per tenant, per minute, per kind; outcomes by label): it holds no user,
//! no Call-ID and no address, so it can be kept in the state directory by `siptap run` without
//! holding personal data, and rendered later by `siptap report`.
use crate::event::{EndReason, Kind};
use crate::pipeline::Routed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The file `siptap run` keeps its report in, in the state directory.
pub const FILE: &str = "report.json";
/// Minutes kept per tenant (two weeks); older ones are dropped first.
const MAX_MINUTES: usize = 14 * 24 * 60;
/// Bars in a chart at most: minutes are grouped into wider buckets to fit.
const MAX_BARS: i64 = 72;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TenantReport {
    /// Events per minute (Unix minute) and kind (in `Kind::ALL` order).
    pub minutes: BTreeMap<i64, [u64; 6]>,
    /// Call ends by outcome label ("answered", "busy (486)", "cancelled", ...).
    pub outcomes: BTreeMap<String, u64>,
    pub totals: [u64; 6],
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tenants: BTreeMap<String, TenantReport>,
    /// Counters at the end (name, value), for the "what was not an event" table.
    pub counters: Vec<(String, u64)>,
    /// What the page is about (the capture files, or "siptap run since ...").
    pub source: String,
}

fn kind_index(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// How a call ended, as an operator reads it: the label, written into `buf` (the daemon adds
/// every event to its report; a `String` per event showed in its profile).
fn outcome<'b>(r: &Routed, buf: &'b mut [u8; 48]) -> &'b str {
    use std::io::Write as _;
    let p = &r.event.params;
    let status = p.status.unwrap_or(0);
    let mut w = &mut buf[..];
    let _ = if p.answered == Some(true) {
        w.write_all(b"answered")
    } else {
        match p.reason {
            Some(EndReason::Cancel) => w.write_all(b"cancelled"),
            Some(EndReason::Timeout) => write!(w, "no answer, timeout ({status})"),
            _ => match status {
                486 | 600 => write!(w, "busy ({status})"),
                603 => w.write_all(b"declined (603)"),
                404 | 484 | 604 => write!(w, "not found ({status})"),
                480 => w.write_all(b"unavailable (480)"),
                300..=399 => write!(w, "redirected ({status})"),
                s => write!(w, "failed ({s})"),
            },
        }
    };
    let n = 48 - w.len();
    std::str::from_utf8(&buf[..n]).unwrap_or("failed")
}

impl Report {
    /// The report `siptap run` keeps in its state directory (`report.json`), if any.
    pub fn load(dir: &std::path::Path) -> anyhow::Result<Option<Report>> {
        let p = dir.join(FILE);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", p.display())),
        }
    }

    /// Writes it atomically, private like the rest of the state directory.
    pub fn save(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        crate::store::write_private(&dir.join(FILE), &serde_json::to_vec(self)?)
    }

    pub fn add(&mut self, r: &Routed) {
        // (tenant and outcome names are allocated only the first time they are met)
        let t = match self.tenants.get_mut(&*r.tenant) {
            Some(t) => t,
            None => self.tenants.entry(r.tenant.to_string()).or_default(),
        };
        let k = kind_index(r.event.kind);
        let minute = r.event.ts.div_euclid(60_000_000);
        t.minutes.entry(minute).or_default()[k] += 1;
        t.totals[k] += 1;
        if r.event.kind == Kind::CallEnded {
            let mut buf = [0; 48];
            let label = outcome(r, &mut buf);
            match t.outcomes.get_mut(label) {
                Some(n) => *n += 1,
                None => {
                    t.outcomes.insert(label.to_string(), 1);
                }
            }
        }
        if t.minutes.len() > MAX_MINUTES {
            t.minutes.pop_first();
        }
    }

    /// The page. Everything from the report is escaped; nothing is fetched.
    pub fn html(&self) -> String {
        let mut o = String::with_capacity(64 << 10);
        o.push_str(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>siptap report</title>\n<style>\
             body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}\
             h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}\
             table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
             td.n{text-align:right;font-variant-numeric:tabular-nums}.legend span{display:inline-block;margin-right:1.2em}\
             .sw{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}\
             .note{color:#555;font-size:.9em}</style></head><body>\n",
        );
        let _ = writeln!(o, "<h1>What siptap derived</h1>\n<p class=\"note\">{}</p>", esc(&self.source));
        if self.tenants.is_empty() {
            o.push_str("<p><strong>No events were derived.</strong> The counters below say what was seen.</p>\n");
        }
        // the summary: one row per tenant
        if !self.tenants.is_empty() {
            o.push_str("<table><tr><th>tenant</th>");
            for k in Kind::ALL {
                let _ = write!(o, "<th>{}</th>", k.default_name());
            }
            o.push_str("</tr>\n");
            for (name, t) in &self.tenants {
                let _ = write!(o, "<tr><td>{}</td>", esc(name));
                for n in t.totals {
                    let _ = write!(o, "<td class=\"n\">{n}</td>");
                }
                o.push_str("</tr>\n");
            }
            o.push_str("</table>\n");
        }
        for (name, t) in &self.tenants {
            let _ = writeln!(o, "<h2>Tenant {}</h2>", esc(name));
            o.push_str("<h3>Events over time, by kind</h3>\n");
            o.push_str(&stacked_bars(t, &Kind::ALL));
            o.push_str("<h3>Registrations and app starts</h3>\n");
            o.push_str(&stacked_bars(t, &[Kind::AccountCreated, Kind::AppStarted, Kind::AccountRegistered]));
            o.push_str("<h3>Call outcomes</h3>\n");
            o.push_str(&outcome_bars(&t.outcomes));
        }
        o.push_str("<h2>What was not turned into events</h2>\n<table><tr><th>counter</th><th>value</th><th>meaning</th></tr>\n");
        for k in EXPLAINS {
            let Some(v) = self.counters.iter().find(|(n, _)| n == k).map(|(_, v)| v) else { continue };
            let help = crate::counters::meta(k).map_or("", |m| m.help);
            let _ = writeln!(o, "<tr><td>{k}</td><td class=\"n\">{v}</td><td>{}</td></tr>", esc(help));
        }
        o.push_str("</table>\n<p class=\"note\">Made by siptap ");
        o.push_str(env!("CARGO_PKG_VERSION"));
        o.push_str(". The page holds counts only: no user, number or address.</p>\n</body></html>\n");
        o
    }
}

/// The counters that explain missing or refused events, in the order the table shows them.
const EXPLAINS: &[&str] = &[
    "sip_messages",
    "call_attempts_unauthenticated",
    "call_attempts_unaccepted",
    "register_challenged",
    "register_rejected",
    "register_unanswered",
    "register_push_proxy",
    "events_unrouted",
    "events_disabled",
    "sip_malformed",
    "sip_server_to_server",
    "sip_client_to_client",
    "frames_duplicate",
    "udp_not_sip",
    "hep_refused",
    "call_timeouts",
    "call_legs_evicted",
    "call_legs_evicted_answered",
    "devices_evicted",
    "devices_evicted_active",
    "register_contacts_dropped",
    "tcp_gaps",
    "input_dropped",
];

const COLOURS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];

fn colour(k: Kind) -> &'static str {
    COLOURS[kind_index(k)]
}

/// A stacked bar chart of `kinds` over time, as SVG, with its legend and time axis.
fn stacked_bars(t: &TenantReport, kinds: &[Kind]) -> String {
    let (Some(first), Some(last)) = (t.minutes.keys().next(), t.minutes.keys().next_back()) else {
        return "<p>none</p>\n".into();
    };
    let span = last - first + 1;
    // bucket width in minutes: 1, 5, 15, 60, 360, 1440... whatever fits MAX_BARS
    let width = [1i64, 5, 15, 60, 180, 360, 720, 1440, 10080]
        .into_iter()
        .find(|w| (span + w - 1) / w <= MAX_BARS)
        .unwrap_or(10080);
    let start = first - first.rem_euclid(width);
    let n = ((last - start) / width + 1) as usize;
    let mut buckets = vec![[0u64; 6]; n];
    for (m, c) in &t.minutes {
        let b = &mut buckets[((m - start) / width) as usize];
        for k in kinds {
            b[kind_index(*k)] += c[kind_index(*k)];
        }
    }
    let max = buckets.iter().map(|b| b.iter().sum::<u64>()).max().unwrap_or(0).max(1);
    let (w, h, left, bottom) = (900.0, 220.0, 50.0, 30.0);
    let bar = (w - left) / n as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\"><title>events per {}</title>",
        h + bottom,
        unit(width)
    );
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#888\"/><text x=\"{}\" y=\"12\" font-size=\"11\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{h}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        left - 4.0,
        left - 4.0
    );
    for (i, b) in buckets.iter().enumerate() {
        let mut y = h;
        for k in kinds {
            let v = b[kind_index(*k)];
            if v == 0 {
                continue;
            }
            let bh = v as f64 / max as f64 * (h - 16.0);
            y -= bh;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {}: {v}</title></rect>",
                left + i as f64 * bar + 1.0,
                (bar - 2.0).max(1.0),
                colour(*k),
                esc(&time_label(start + i as i64 * width)),
                k.default_name()
            );
        }
    }
    // first and last bucket times under the axis
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{} (bars of {})</text></svg>",
        h + 16.0,
        esc(&time_label(start)),
        h + 16.0,
        esc(&time_label(start + (n as i64 - 1) * width)),
        unit(width)
    );
    s.push_str("<div class=\"legend\">");
    for k in kinds {
        let total: u64 = t.minutes.values().map(|c| c[kind_index(*k)]).sum();
        let _ = write!(
            s,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{} {total}</span>",
            colour(*k),
            k.default_name()
        );
    }
    s.push_str("</div>\n");
    s
}

/// Call outcomes as horizontal bars, largest first.
fn outcome_bars(outcomes: &BTreeMap<String, u64>) -> String {
    if outcomes.is_empty() {
        return "<p>no call ended</p>\n".into();
    }
    let mut v: Vec<(&String, &u64)> = outcomes.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let max = *v[0].1 as f64;
    let row = 22.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{}\" role=\"img\"><title>call outcomes</title>",
        v.len() as f64 * row + 4.0
    );
    for (i, (label, n)) in v.iter().enumerate() {
        let y = i as f64 * row;
        let wbar = (**n as f64 / max * 560.0).max(1.0);
        let fill = if label.as_str() == "answered" { "#59a14f" } else { "#e15759" };
        let _ = write!(
            s,
            "<text x=\"230\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\">{}</text><rect x=\"240\" y=\"{:.1}\" width=\"{wbar:.1}\" height=\"{:.1}\" fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\">{n}</text>",
            y + 15.0,
            esc(label),
            y + 3.0,
            row - 6.0,
            246.0 + wbar,
            y + 15.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn unit(minutes: i64) -> String {
    match minutes {
        1 => "1 minute".into(),
        m if m < 60 => format!("{m} minutes"),
        60 => "1 hour".into(),
        m if m < 1440 => format!("{} hours", m / 60),
        1440 => "1 day".into(),
        m => format!("{} days", m / 1440),
    }
}

/// `2026-11-27 02:20` (UTC) for a Unix minute.
fn time_label(minute: i64) -> String {
    let t = crate::timefmt::rfc3339_micros(minute * 60_000_000);
    format!("{} {} UTC", &t[..10], &t[11..16])
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let mut r = Report { source: "<script>".into(), ..Default::default() };
        r.tenants.insert("t<b>".into(), TenantReport::default());
        let h = r.html();
        assert!(!h.contains("<script>") && !h.contains("t<b>"), "{h}");
    }

    /// Call ends are counted by label, each label once per tenant (and the labels are the ones
    /// the page has always shown).
    #[test]
    fn call_ends_are_counted_by_outcome() {
        let end = |tenant: &str, answered: Option<bool>, status: Option<u16>, reason: Option<EndReason>| Routed {
            tenant: tenant.into(),
            name: "callend".into(),
            event: crate::event::Event {
                ts: 0,
                kind: Kind::CallEnded,
                user: "u@d".into(),
                params: crate::event::Params { answered, status, reason, ..Default::default() },
                origin: Default::default(),
            },
        };
        let mut r = Report::default();
        let cases = [
            (Some(true), Some(200), None, "answered"),
            (Some(false), Some(487), Some(EndReason::Cancel), "cancelled"),
            (None, Some(408), Some(EndReason::Timeout), "no answer, timeout (408)"),
            (None, None, Some(EndReason::Timeout), "no answer, timeout (0)"),
            (Some(false), Some(486), None, "busy (486)"),
            (Some(false), Some(600), None, "busy (600)"),
            (Some(false), Some(603), None, "declined (603)"),
            (Some(false), Some(404), None, "not found (404)"),
            (Some(false), Some(604), None, "not found (604)"),
            (Some(false), Some(480), None, "unavailable (480)"),
            (Some(false), Some(302), None, "redirected (302)"),
            (Some(false), Some(65535), None, "failed (65535)"),
        ];
        for (i, (answered, status, reason, _)) in cases.iter().enumerate() {
            for _ in 0..=i {
                r.add(&end("a", *answered, *status, *reason));
            }
        }
        r.add(&end("b", Some(false), Some(486), None));
        let a = &r.tenants["a"];
        for (i, (.., label)) in cases.iter().enumerate() {
            assert_eq!(a.outcomes.get(*label), Some(&(i as u64 + 1)), "{label}");
        }
        assert_eq!(a.outcomes.len(), cases.len());
        assert_eq!(a.totals[kind_index(Kind::CallEnded)], (1..=cases.len() as u64).sum::<u64>());
        assert_eq!(r.tenants["b"].outcomes.iter().collect::<Vec<_>>(), [(&"busy (486)".to_string(), &1)]);
    }

    #[test]
    fn minutes_are_bounded() {
        let mut t = TenantReport::default();
        for m in 0..(MAX_MINUTES as i64 + 100) {
            t.minutes.insert(m, [1; 6]);
            if t.minutes.len() > MAX_MINUTES {
                t.minutes.pop_first();
            }
        }
        assert_eq!(t.minutes.len(), MAX_MINUTES);
        // a two-week span still fits the bar limit
        assert!(stacked_bars(&t, &Kind::ALL).matches("<rect").count() as i64 <= MAX_BARS * 6);
    }
}
