//! The bodies of the fuzz targets (fuzz/fuzz_targets), shared with `tests/fuzz_seeds.rs`, which
//! runs every kept seed and regression input through them in the normal test suite.
use crate::capture::Frame;
use crate::config::Config;
use crate::decode::{DecodeLimits, Decoder};
use crate::pipeline::Pipeline;
use crate::sip::{frame, parse, uri::Uri};
use std::path::Path;

const DECODE_LINKTYPES: [u32; 9] = [1, 101, 0, 108, 113, 276, 228, 229, 12];

/// One frame: the first byte picks the link type, the rest is the frame.
pub fn decode(data: &[u8]) -> usize {
    let Some((&sel, frame)) = data.split_first() else { return 0 };
    let mut d = Decoder::new(DecodeLimits::default(), vec![5060]);
    let linktype = DECODE_LINKTYPES[usize::from(sel) % DECODE_LINKTYPES.len()];
    let mut n = 0;
    d.decode(Frame { ts: 0, linktype, data: frame }, &mut |m| n += m.data.len());
    n
}

/// The SIP view, stream framing and URI parsing on arbitrary bytes.
pub fn sip_parse(data: &[u8]) -> bool {
    let _ = frame::frame(data);
    let unfolded = parse::unfold(data);
    let two_passes = parse::parse(&unfolded);
    // the one-pass parse the pipeline uses must answer as unfolding first, then parsing, does
    let mut scratch = Vec::new();
    assert_eq!(parse::parse_folded(data, &mut scratch), two_passes, "one-pass and two-pass parses differ");
    // and so must the parse given the start line the UDP decoder split
    if let Some(hint) = parse::sip_start(data) {
        let mut scratch = Vec::new();
        assert_eq!(parse::parse_folded_with(data, &mut scratch, Some(hint)), two_passes, "the hinted parse differs");
    }
    let Ok(m) = two_passes else { return false };
    // and the message seen again over a copy of its head (as the state half sees it) is the same
    let copy = m.head.to_vec();
    assert_eq!(m.offsets().view(&copy), m, "the copied head's view differs");
    assert_eq!(m.head_text, std::str::from_utf8(m.head).ok(), "head_text is not the head as text");
    if let Some(t) = m.head_text {
        let copy = t.to_owned();
        assert_eq!(m.offsets().view_text(&copy), m, "the copied text head's view differs");
    }
    for c in &m.contacts() {
        let _ = (c.expires(), c.instance(), c.addr.parsed_uri().map(|u| (u.aor(), u.contact_key())));
    }
    // a tag read directly in its usual shape (`;tag=` first) is the one `param` finds
    for na in [&m.from, &m.to] {
        assert_eq!(na.tag(), parse::param(na.params, "tag"), "the tag differs from param's");
    }
    let _ = m.from.parsed_uri().map(|u| u.aor());
    if let parse::StartLine::Request { uri, .. } = m.start {
        let _ = Uri::parse(uri).map(|u| u.contact_key());
    }
    true
}

const LINKTYPES: [u32; 4] = [1, 101, 113, 276];
const CONFIG: &str = "sip_servers = [\"127.0.0.10:5060\", \"10.0.0.1\"]\nmax_call_duration_secs = 60\n\
[limits]\nmax_call_legs = 64\nmax_devices = 64\nmax_fragments = 16\nmax_tcp_streams = 16\nmax_pending_transactions = 16\n\
[tenants.lab]\ndomains = [\"lab.example\"]\n";

/// The whole pipeline on records `[len: u16 LE][link type selector][time step][frame]`;
/// returns the number of events.
pub fn pipeline(data: &[u8]) -> usize {
    let cfg = Config::parse(CONFIG, Path::new("fuzz.toml")).expect("valid");
    let mut p = Pipeline::new(&cfg, Box::<crate::state::users::MemoryUsers>::default(), [1, 2]);
    let mut rest = data;
    let mut ts: i64 = 1_700_000_000_000_000;
    let mut events = 0usize;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let linktype = LINKTYPES[usize::from(rest[2]) % LINKTYPES.len()];
        // steps from 1 ms to about 65 s, so that timers fire
        ts += 1_000 * (1i64 << (rest[3] % 17));
        rest = &rest[4..];
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        p.frame(Frame { ts, linktype, data: frame }, &mut |_| events += 1);
    }
    p.finish(&mut |_| events += 1);
    let _ = p.counters();
    events
}

/// Encodes frames as a `pipeline` input (for seeds), with time steps of about 1 s.
pub fn pipeline_input(frames: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (linktype, f) in frames {
        let sel = LINKTYPES.iter().position(|l| l == linktype).unwrap_or(0) as u8;
        out.extend_from_slice(&(f.len().min(65_535) as u16).to_le_bytes());
        out.extend_from_slice(&[sel, 10]);
        out.extend_from_slice(&f[..f.len().min(65_535)]);
    }
    out
}
