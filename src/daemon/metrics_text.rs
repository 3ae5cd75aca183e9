//! The Prometheus text exposition: every metric with its HELP and TYPE, counters ending in
//! `_total`, gauges for what goes down, base units (seconds, bytes); what each core counter is
//! comes from `crate::counters`.
use std::fmt::Write as _;

/// Writes metrics one family at a time: the HELP and TYPE lines once, then its samples.
pub struct Writer {
    pub out: String,
}

impl Writer {
    pub fn new() -> Self {
        Writer { out: String::with_capacity(16 << 10) }
    }

    /// Starts a family; `name` without the `siptap_` prefix, counters without `_total`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let full = full_name(name, kind);
        let _ = writeln!(self.out, "# HELP {full} {help}\n# TYPE {full} {kind}");
    }

    /// One sample; `labels` as `[(name, value)]`, values escaped here.
    pub fn sample(&mut self, name: &str, kind: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(&full_name(name, kind));
        self.labels(labels);
        let _ = writeln!(self.out, " {}", number(v));
    }

    /// A whole one-sample family.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, kind, &[], v);
    }

    /// A histogram's samples: cumulative counts per upper bound (the last is +Inf) and the sum.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], bounds: &[f64], cum: &[u64], sum: f64) {
        for (i, n) in cum.iter().enumerate() {
            let le = bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| number(*b));
            let mut l = labels.to_vec();
            l.push(("le", &le));
            let _ = write!(self.out, "siptap_{name}_bucket");
            self.labels(&l);
            let _ = writeln!(self.out, " {n}");
        }
        let _ = write!(self.out, "siptap_{name}_sum");
        self.labels(labels);
        let _ = writeln!(self.out, " {}", number(sum));
        let _ = write!(self.out, "siptap_{name}_count");
        self.labels(labels);
        let _ = writeln!(self.out, " {}", cum.last().copied().unwrap_or(0));
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

fn full_name(name: &str, kind: &str) -> String {
    if kind == "counter" { format!("siptap_{name}_total") } else { format!("siptap_{name}") }
}

/// Integers without a fraction, the rest as Rust prints floats (both valid in the format).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut w = Writer::new();
        w.sample("x", "gauge", &[("tenant", "a\"b\\c")], 1.5);
        assert_eq!(w.out, "siptap_x{tenant=\"a\\\"b\\\\c\"} 1.5\n");
    }
}
