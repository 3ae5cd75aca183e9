//! A borrowed view of one SIP message: the start line and the few headers the state machines use.
//!
//! Tolerant by design (passive capture sees every dialect): header names in any case and compact
//! form, folded lines (unfolded by [`unfold`] first), several values on one line, quoted
//! parameters, IPv6 hosts, unknown methods. A message lacking what siptap needs to follow it
//! (a start line, Call-ID, CSeq) is an error the caller counts and skips.
use super::uri::Uri;
use memchr::memchr;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16 },
}

/// A From/To/Contact value: the URI inside the optional `<>` and the header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameAddr<'a> {
    pub uri: &'a str,
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    /// The `tag` parameter, as [`param`] finds it. Every dialog message has one or two: the usual
    /// shape, `;tag=VALUE` first with VALUE plain, is read directly (through `param`'s general
    /// loop, 203 instructions per From or To by callgrind; 94 now); any other goes through `param`.
    pub fn tag(&self) -> Option<&'a str> {
        let b = self.params.as_bytes();
        if b.len() > 5 && is_name(&b[..5], b";tag=") && !matches!(b[5], b' ' | b'"') {
            let end = b[5..].iter().position(|&c| c == b';').map_or(b.len(), |e| 5 + e);
            return Some(trim_str(&self.params[5..end]));
        }
        param(self.params, "tag")
    }
    pub fn parsed_uri(&self) -> Option<Uri<'a>> {
        Uri::parse(self.uri)
    }
}

/// One Contact binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact<'a> {
    pub addr: NameAddr<'a>,
}

impl<'a> Contact<'a> {
    pub fn expires(&self) -> Option<u32> {
        param(self.addr.params, "expires").and_then(|v| decimal(trim_str(v).as_bytes()))
    }
    /// The `+sip.instance` (RFC 5626) without its quotes and angle brackets.
    pub fn instance(&self) -> Option<&'a str> {
        param(self.addr.params, "+sip.instance")
            .map(|v| v.trim_matches(|c| c == '<' || c == '>'))
            .filter(|v| !v.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub cseq_method: &'a str,
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    /// The Contact header values as they came (parsed by [`Message::contacts`] when asked: most
    /// messages never need them).
    pub contact_values: ContactValues<'a>,
    /// `Contact: *` (remove every binding).
    pub contact_star: bool,
    pub expires: Option<u32>,
    pub user_agent: Option<&'a str>,
    pub session_expires: Option<u32>,
    pub content_length: Option<usize>,
    /// The `username` of the first Authorization or Proxy-Authorization header (digest credentials).
    pub auth_user: Option<&'a str>,
    /// The header section, for the rare lookup of a header not extracted above.
    pub head: &'a [u8],
    /// `head` as text, when it is valid UTF-8 (nearly always): a copy of it can cross to
    /// another thread as text, without a second check.
    pub head_text: Option<&'a str>,
}

/// Up to [`ContactValues::MAX`] Contact header values of one message; more are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContactValues<'a> {
    values: [&'a str; ContactValues::MAX],
    len: usize,
    /// Contact header lines beyond the first `MAX`.
    pub extra_lines: usize,
}

impl<'a> ContactValues<'a> {
    pub const MAX: usize = 8;
    fn push(&mut self, v: &'a str) {
        if self.len < Self::MAX {
            self.values[self.len] = v;
            self.len += 1;
        } else {
            self.extra_lines += 1;
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The raw values (each may list several contacts).
    pub fn raw(&self) -> &[&'a str] {
        &self.values[..self.len]
    }
}

impl<'a> Message<'a> {
    /// Every Contact (in order, several per line allowed), parsed now.
    pub fn contacts(&self) -> Vec<Contact<'a>> {
        let mut v = Vec::new();
        for value in self.contact_values.raw() {
            for part in split_list(value) {
                let na = name_addr(part);
                if !na.uri.is_empty() {
                    v.push(Contact { addr: na });
                }
            }
        }
        v
    }

    /// The first Contact, parsed now.
    pub fn first_contact(&self) -> Option<Contact<'a>> {
        let value = self.contact_values.raw().first()?;
        split_list(value).map(name_addr).find(|na| !na.uri.is_empty()).map(|addr| Contact { addr })
    }

    /// The first value of any header, by name (case-insensitive), scanning the header section.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.head.split(|&b| b == b'\n').skip(1).find_map(|line| {
            let colon = memchr(b':', line)?;
            if !trim_bytes(&line[..colon]).eq_ignore_ascii_case(name.as_bytes()) {
                return None;
            }
            std::str::from_utf8(&line[colon + 1..]).ok().map(str::trim)
        })
    }

    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn is_request(&self, m: &str) -> bool {
        self.method() == Some(m)
    }
    /// A REGISTER, or a response to one (by its CSeq method); case-insensitive.
    pub fn is_register(&self) -> bool {
        match self.method() {
            Some(m) => m.eq_ignore_ascii_case("REGISTER"),
            None => self.cseq_method.eq_ignore_ascii_case("REGISTER"),
        }
    }
}

/// A parsed message in a form that can cross threads: every field as a range of its head's
/// bytes (which travel beside it), so the other side gets the same [`Message`] without parsing
/// again.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageOffsets {
    start: (u8, Span, Span, u16),
    call_id: Span,
    cseq: u32,
    cseq_method: Span,
    from: (Span, Span),
    to: (Span, Span),
    contacts: [Span; ContactValues::MAX],
    contacts_len: u8,
    extra_contact_lines: u32,
    contact_star: bool,
    expires: Option<u32>,
    user_agent: Option<Span>,
    session_expires: Option<u32>,
    content_length: Option<usize>,
    auth_user: Option<Span>,
    head_len: u32,
}

/// (offset, length) of a field in the head.
type Span = (u32, u32);

impl<'a> Message<'a> {
    /// The fields as ranges of `self.head` (whose bytes the caller copies beside them).
    pub fn offsets(&self) -> MessageOffsets {
        let base = self.head.as_ptr() as usize;
        let span = |s: &str| -> Span {
            if s.is_empty() {
                return (0, 0);
            }
            ((s.as_ptr() as usize - base) as u32, s.len() as u32)
        };
        let mut contacts = [(0, 0); ContactValues::MAX];
        for (i, v) in self.contact_values.raw().iter().enumerate() {
            contacts[i] = span(v);
        }
        MessageOffsets {
            start: match self.start {
                StartLine::Request { method, uri } => (0, span(method), span(uri), 0),
                StartLine::Response { code } => (1, (0, 0), (0, 0), code),
            },
            call_id: span(self.call_id),
            cseq: self.cseq,
            cseq_method: span(self.cseq_method),
            from: (span(self.from.uri), span(self.from.params)),
            to: (span(self.to.uri), span(self.to.params)),
            contacts,
            contacts_len: self.contact_values.len as u8,
            extra_contact_lines: self.contact_values.extra_lines as u32,
            contact_star: self.contact_star,
            expires: self.expires,
            user_agent: self.user_agent.map(span),
            session_expires: self.session_expires,
            content_length: self.content_length,
            auth_user: self.auth_user.map(span),
            head_len: self.head.len() as u32,
        }
    }
}

impl MessageOffsets {
    /// The message again, over a copy of its head's bytes (`head` must be that copy).
    pub fn view<'a>(&self, head: &'a [u8]) -> Message<'a> {
        // the spans are the `str` fields of a message parsed from identical bytes: one check of
        // the whole copy when it is valid text, span by span when it is not
        match simdutf8::basic::from_utf8(head) {
            Ok(t) => self.view_text(t),
            Err(_) => {
                self.build(head, None, |(o, l)| std::str::from_utf8(&head[o as usize..(o + l) as usize]).unwrap_or(""))
            }
        }
    }

    /// [`MessageOffsets::view`] over a copy of a head that was text (its `head_text`): nothing to
    /// check again.
    pub fn view_text<'a>(&self, head: &'a str) -> Message<'a> {
        self.build(head.as_bytes(), Some(head), |(o, l)| head.get(o as usize..(o + l) as usize).unwrap_or(""))
    }

    fn build<'a>(&self, head: &'a [u8], head_text: Option<&'a str>, text: impl Fn(Span) -> &'a str) -> Message<'a> {
        let mut cv = ContactValues::default();
        for s in &self.contacts[..usize::from(self.contacts_len)] {
            cv.push(text(*s));
        }
        cv.extra_lines = self.extra_contact_lines as usize;
        Message {
            start: match self.start {
                (0, m, u, _) => StartLine::Request { method: text(m), uri: text(u) },
                (_, _, _, code) => StartLine::Response { code },
            },
            call_id: text(self.call_id),
            cseq: self.cseq,
            cseq_method: text(self.cseq_method),
            from: NameAddr { uri: text(self.from.0), params: text(self.from.1) },
            to: NameAddr { uri: text(self.to.0), params: text(self.to.1) },
            contact_values: cv,
            contact_star: self.contact_star,
            expires: self.expires,
            user_agent: self.user_agent.map(&text),
            session_expires: self.session_expires,
            content_length: self.content_length,
            auth_user: self.auth_user.map(&text),
            head: &head[..self.head_len as usize],
            head_text: head_text.and_then(|t| t.get(..self.head_len as usize)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    NotSip,
    BadStartLine,
    MissingCallId,
    MissingCSeq,
    MissingFromTo,
}

/// Joins folded header lines (RFC 3261 7.3.1) so that [`parse`] can borrow plain lines.
/// Borrows when nothing is folded, which is almost always.
pub fn unfold(buf: &[u8]) -> Cow<'_, [u8]> {
    let (head_end, folded) = scan_head(buf);
    if !folded {
        return Cow::Borrowed(buf);
    }
    Cow::Owned(unfold_head(buf, head_end))
}

/// Parses a message that may have folded header lines (one scan of its head when it has none,
/// which is almost always).
pub fn parse_folded<'a>(buf: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<Message<'a>, ParseError> {
    parse_folded_with(buf, scratch, None)
}

/// [`parse_folded`], with what [`sip_start`] found out about the message's first line (the UDP
/// decoder asks it before handing a datagram on): the start line is not split a second time.
/// The answer is the same with or without the hint (tested, and checked by the fuzz target).
pub fn parse_folded_with<'a>(
    buf: &'a [u8],
    scratch: &'a mut Vec<u8>,
    hint: Option<StartHint>,
) -> Result<Message<'a>, ParseError> {
    match parse_head(buf, HeadEnd::Find, hint) {
        Ok(m) => Ok(m),
        Err(Stop::Bad(e)) => Err(e),
        Err(Stop::Folded) => {
            *scratch = unfold_head(buf, scan_head(buf).0);
            parse(scratch)
        }
    }
}

fn unfold_head(buf: &[u8], head_end: usize) -> Vec<u8> {
    let head = &buf[..head_end];
    let mut out = Vec::with_capacity(buf.len());
    let mut i = 0;
    while i < head_end {
        let b = head[i];
        if b == b'\r' || b == b'\n' {
            // a line break followed by whitespace is a fold: replace by one space
            let mut j = i;
            if head[j] == b'\r' && head.get(j + 1) == Some(&b'\n') {
                j += 1;
            }
            if matches!(head.get(j + 1), Some(b' ' | b'\t')) {
                out.push(b' ');
                i = j + 1;
                while matches!(head.get(i), Some(b' ' | b'\t')) {
                    i += 1;
                }
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out.extend_from_slice(&buf[head_end..]);
    out
}

/// One pass over a message's line ends: where its header section ends (the index of the blank
/// line, or the end) and whether a line is folded (continues on the next, which starts with
/// whitespace).
fn scan_head(buf: &[u8]) -> (usize, bool) {
    let mut folded = false;
    let mut from = 0;
    while let Some(i) = find_nl(&buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return (nl + 1, folded),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return (nl + 1, folded),
            Some(b' ' | b'\t') => folded = true,
            _ => {}
        }
        from = nl + 1;
    }
    (buf.len(), folded)
}

/// Where the header section ends: (index of the blank line, index of the body). One pass over
/// the line ends: the first empty line (CRLF or bare LF) ends the head.
pub fn header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = find_nl(&buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some((nl + 1, nl + 2)),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some((nl + 1, nl + 3)),
            _ => {}
        }
        from = nl + 1;
    }
    None
}

/// Parses one message. The buffer should hold one message (framing is the caller's job);
/// folded headers must have been unfolded with [`unfold`].
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    parse_head(buf, HeadEnd::At(scan_head(buf).0), None).map_err(|stop| match stop {
        Stop::Bad(e) => e,
        Stop::Folded => unreachable!("folds are only looked for by HeadEnd::Find"),
    })
}

/// Where the header section ends, for [`parse_head`].
#[derive(Clone, Copy)]
enum HeadEnd {
    /// Known (from [`scan_head`]): the lines before it are parsed as they are.
    At(usize),
    /// Found while parsing, in the same pass: at the blank line (as [`scan_head`] finds it);
    /// a folded line stops the parse with [`Stop::Folded`].
    Find,
}

/// Whether the line starting at `pos` (just after a line feed) is the blank line that ends
/// the head (`Some(false)`), a folded continuation (`Some(true)`), or neither.
fn line_start_kind(buf: &[u8], pos: usize) -> Option<bool> {
    match buf.get(pos) {
        Some(b'\n') => Some(false),
        Some(b'\r') if buf.get(pos + 1) == Some(&b'\n') => Some(false),
        Some(b' ' | b'\t') => Some(true),
        _ => None,
    }
}

/// [`parse`] in one pass over the head's lines. (Inlined into its callers: returned through one
/// more call, the message was copied once more, 64 instructions per message by callgrind;
/// inlining [`parse_lines`] as well counted 34 M instructions more on 300,000 messages.)
#[inline(always)]
fn parse_head(buf: &[u8], head_end: HeadEnd, hint: Option<StartHint>) -> Result<Message<'_>, Stop> {
    let (head, find) = match head_end {
        HeadEnd::At(end) => (&buf[..end], false),
        HeadEnd::Find => (buf, true),
    };
    // one UTF-8 check for the whole message (so for its head); a message with bad bytes is read
    // line by line, each header keeping its valid beginning (captures do contain such bytes):
    // both ways give the same fields when the head is valid
    let text = simdutf8::basic::from_utf8(head).ok();
    let first_end = find_nl(head).unwrap_or(head.len());
    match parse_lines(head, text, first_end, find, hint) {
        // unfolding rewrites more than the folds `scan_head` finds (a bare CR before
        // whitespace): a message judged bad before its first fold was met is judged unfolded
        Err(Stop::Bad(_)) if find && scan_head(buf).1 => Err(Stop::Folded),
        parsed => parsed,
    }
}

/// Why [`parse_head`] stopped short: a bad message, or (looking for the head's end) a folded
/// line, to be unfolded before the head is parsed.
enum Stop {
    Bad(ParseError),
    Folded,
}

impl From<ParseError> for Stop {
    fn from(e: ParseError) -> Stop {
        Stop::Bad(e)
    }
}

/// The start line and the header lines of [`parse_head`]: `head` is the header section, or
/// (`find`) the whole message, whose end is found at its blank line.
fn parse_lines<'a>(
    mut head: &'a [u8],
    text: Option<&'a str>,
    first_end: usize,
    find: bool,
    hint: Option<StartHint>,
) -> Result<Message<'a>, Stop> {
    let first = match text {
        Some(t) => &t[..first_end],
        None => std::str::from_utf8(&head[..first_end]).map_err(|_| ParseError::NotSip)?,
    };
    let first = first.strip_suffix('\r').unwrap_or(first);
    let start = match hint {
        // the same line, split before: its shape holds
        Some(StartHint { nl, from: 0, len, shape }) if nl == first_end && len == first.len() => {
            from_shape(first, shape)
        }
        _ => start_line(first)?,
    };

    let mut msg = Message {
        start,
        call_id: "",
        cseq: 0,
        cseq_method: "",
        from: NameAddr::default(),
        to: NameAddr::default(),
        contact_values: ContactValues::default(),
        contact_star: false,
        expires: None,
        user_agent: None,
        session_expires: None,
        content_length: None,
        auth_user: None,
        head,
        head_text: None,
    };
    let (mut have_from, mut have_to, mut have_cseq) = (false, false, false);

    let mut pos = (first_end + 1).min(head.len());
    while pos < head.len() {
        if find {
            match line_start_kind(head, pos) {
                Some(false) => {
                    head = &head[..pos];
                    break;
                }
                Some(true) => return Err(Stop::Folded),
                None => {}
            }
        }
        let end = find_nl(&head[pos..]).map(|i| pos + i).unwrap_or(head.len());
        let line = &head[pos..end];
        let line_start = pos;
        pos = end + 1;
        // the header name is short: its colon, if any, is in the line's first 64 bytes
        let Some(colon) = find_byte(&line[..line.len().min(64)], b':') else {
            continue;
        };
        // only the headers siptap reads are looked at further
        let Some(hdr) = header_id(trim_bytes(&line[..colon])) else {
            continue;
        };
        let value = match text {
            Some(t) => &t[line_start + colon + 1..end],
            None => {
                let raw = &line[colon + 1..];
                match std::str::from_utf8(raw) {
                    Ok(v) => v,
                    Err(e) => std::str::from_utf8(&raw[..e.valid_up_to()]).expect("valid prefix"),
                }
            }
        };
        let value = trim_ascii(value);
        match hdr {
            Hdr::CallId => msg.call_id = value,
            Hdr::From => {
                msg.from = name_addr(value);
                have_from = true;
            }
            Hdr::To => {
                msg.to = name_addr(value);
                have_to = true;
            }
            Hdr::CSeq => {
                let mut it = value.split_ascii_whitespace();
                if let (Some(n), Some(m)) = (it.next(), it.next())
                    && let Some(n) = decimal(n.as_bytes())
                {
                    msg.cseq = n;
                    msg.cseq_method = m;
                    have_cseq = true;
                }
            }
            Hdr::Contact => {
                if value == "*" {
                    msg.contact_star = true;
                } else {
                    msg.contact_values.push(value);
                }
            }
            Hdr::Expires => msg.expires = decimal(value.as_bytes()),
            Hdr::UserAgent => msg.user_agent = Some(value),
            Hdr::SessionExpires => {
                msg.session_expires = value.split(';').next().and_then(|v| decimal(trim_str(v).as_bytes()))
            }
            Hdr::ContentLength => msg.content_length = decimal(value.as_bytes()),
            Hdr::Authorization if msg.auth_user.is_none() => msg.auth_user = credentials_user(value),
            Hdr::Authorization => {}
        }
    }
    msg.head = head;
    // (the whole message was checked: a body that is not text leaves the head to check alone)
    msg.head_text = match text {
        Some(t) => t.get(..head.len()),
        None => std::str::from_utf8(head).ok(),
    };
    if msg.call_id.is_empty() {
        return Err(ParseError::MissingCallId.into());
    }
    if !have_cseq {
        return Err(ParseError::MissingCSeq.into());
    }
    if !have_from || !have_to {
        return Err(ParseError::MissingFromTo.into());
    }
    Ok(msg)
}

/// `str::parse` of an unsigned integer (the same answers: an optional `+`, then digits, `None`
/// when it does not fit; bytes that are not UTF-8 are no number either), without the generic
/// machinery, which showed in profiles.
pub(crate) fn decimal<T: TryFrom<u64>>(d: &[u8]) -> Option<T> {
    let d = d.strip_prefix(b"+").unwrap_or(d);
    if d.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in d {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    T::try_from(n).ok()
}

/// The first `\n` in `h`, eight bytes at a time (lines are short: a SIMD search costs more to
/// set up than this takes).
#[inline]
pub fn find_nl(h: &[u8]) -> Option<usize> {
    find_byte(h, b'\n')
}

/// The first `c` in `h`, eight bytes at a time.
#[inline(always)]
fn find_byte(h: &[u8], c: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    // sixteen bytes at a time where SSE2 is there (every x86-64): one compare and one mask
    // per 16 bytes, inlined (`memchr` is a call per search, and header lines are short)
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        // SAFETY: SSE2 is part of the x86-64 baseline; each load reads the 16 bytes from `i`,
        // inside `h` (checked by the loop condition), unaligned
        unsafe {
            let pat = _mm_set1_epi8(c as i8);
            while i + 16 <= h.len() {
                let v = _mm_loadu_si128(h.as_ptr().add(i).cast::<__m128i>());
                let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, pat));
                if m != 0 {
                    return Some(i + m.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
    }
    let pat: u64 = LO * c as u64;
    while i + 8 <= h.len() {
        let w = u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes")) ^ pat;
        let t = w.wrapping_sub(LO) & !w & HI;
        if t != 0 {
            return Some(i + (t.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    h[i..].iter().position(|&x| x == c).map(|p| i + p)
}

/// ASCII whitespace trimmed (header values are ASCII where it matters; this avoids the Unicode
/// machinery of `str::trim`).
fn trim_ascii(s: &str) -> &str {
    s.trim_ascii()
}

fn start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    Ok(from_shape(line, start_line_shape(line.as_bytes())?))
}

fn from_shape(line: &str, shape: Shape) -> StartLine<'_> {
    match shape {
        // (the ranges end at spaces or at the line's ends: `str` boundaries)
        Shape::Request { method, uri } => {
            StartLine::Request { method: &line[method.0..method.1], uri: &line[uri.0..uri.1] }
        }
        Shape::Response { code } => StartLine::Response { code },
    }
}

/// A start line's parts, as ranges of its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// (start, end) of the method and of the Request-URI
    Request {
        method: (usize, usize),
        uri: (usize, usize),
    },
    Response {
        code: u16,
    },
}

/// [`start_line`] over bytes (it reads only ASCII: whether the line is text is the caller's
/// question).
fn start_line_shape(b: &[u8]) -> Result<Shape, ParseError> {
    // (`is_name` against constants: `eq_ignore_ascii_case` lower-cased both sides byte by byte)
    if b.len() >= 8 && is_name(&b[..8], b"sip/2.0 ") {
        let rest = b[8..].trim_ascii_start();
        let code = match rest {
            [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(ParseError::BadStartLine),
        };
        return if (100..700).contains(&code) { Ok(Shape::Response { code }) } else { Err(ParseError::BadStartLine) };
    }
    // METHOD SP Request-URI SP SIP/2.0 (extra spaces tolerated): three words between runs of
    // spaces, then only spaces
    let skip_spaces = |mut i: usize| {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        i
    };
    let word_end = |i: usize| find_byte(&b[i..], b' ').map_or(b.len(), |e| i + e);
    let m = skip_spaces(0);
    let m_end = word_end(m);
    let u = skip_spaces(m_end);
    let u_end = word_end(u);
    let v = skip_spaces(u_end);
    let v_end = word_end(v);
    let ver = &b[v..v_end];
    if !is_name(ver, b"sip/2.0") || b[v_end..].iter().any(|&c| c != b' ') {
        return Err(ParseError::NotSip);
    }
    // RFC 3261 token characters; unknown methods are fine
    if !b[m..m_end].iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b)) {
        return Err(ParseError::BadStartLine);
    }
    Ok(Shape::Request { method: (m, m_end), uri: (u, u_end) })
}

/// Whether a line could start a SIP message (used to resynchronise a TCP stream).
pub fn looks_like_start_line(line: &[u8]) -> bool {
    start_shape(line).is_some()
}

/// [`looks_like_start_line`], with the shape of the trimmed line.
fn start_shape(line: &[u8]) -> Option<(&[u8], Shape)> {
    let line = trim_bytes(line);
    // the shape first (it reads bytes), then whether the line is text: a start line nearly
    // always is ASCII, a cheaper check than UTF-8's
    let shape = start_line_shape(line).ok()?;
    (line.is_ascii() || std::str::from_utf8(line).is_ok()).then_some((line, shape))
}

/// Whether bytes start with a SIP start line (looked for in their first 512 bytes).
pub fn starts_with_sip(p: &[u8]) -> bool {
    sip_start(p).is_some()
}

/// [`starts_with_sip`], keeping the start line's shape for [`parse_folded_with`]: `None` when
/// the bytes do not start like SIP.
pub fn sip_start(p: &[u8]) -> Option<StartHint> {
    let head = &p[..p.len().min(512)];
    let nl = find_nl(head).unwrap_or(head.len());
    let line = &p[..nl];
    let (trimmed, shape) = start_shape(line)?;
    let from = trimmed.as_ptr() as usize - line.as_ptr() as usize;
    Some(StartHint { nl, from, len: trimmed.len(), shape })
}

/// A first line split by [`sip_start`]: where its line feed was looked for and found (`nl`),
/// where the trimmed line starts in it and how long it is, and its shape (counted from `from`).
/// The parser takes the shape when its own first line ends at `nl` and, without its CR, is the
/// trimmed line itself (starting at 0, `len` bytes long): then both read the same bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartHint {
    nl: usize,
    from: usize,
    len: usize,
    shape: Shape,
}

#[derive(Clone, Copy)]
enum Hdr {
    CallId,
    From,
    To,
    CSeq,
    Contact,
    Expires,
    UserAgent,
    SessionExpires,
    ContentLength,
    Authorization,
}

/// Which of the headers siptap reads a header name is (any case, compact forms). Most lines
/// are none of them: the length and first letter pick the one candidate, compared once (a
/// scan over all the names, comparing case-insensitively byte by byte, showed in profiles).
fn header_id(name: &[u8]) -> Option<Hdr> {
    let first = name.first()?.to_ascii_lowercase();
    let (hdr, is) = match (name.len(), first) {
        (1, b'i') => return Some(Hdr::CallId),
        (1, b'f') => return Some(Hdr::From),
        (1, b't') => return Some(Hdr::To),
        (1, b'm') => return Some(Hdr::Contact),
        (1, b'l') => return Some(Hdr::ContentLength),
        (1, b'x') => return Some(Hdr::SessionExpires),
        (2, b't') => (Hdr::To, is_name(name, b"to")),
        (4, b'f') => (Hdr::From, is_name(name, b"from")),
        (4, b'c') => (Hdr::CSeq, is_name(name, b"cseq")),
        (7, b'c') if name[1].eq_ignore_ascii_case(&b'a') => (Hdr::CallId, is_name(name, b"call-id")),
        (7, b'c') => (Hdr::Contact, is_name(name, b"contact")),
        (7, b'e') => (Hdr::Expires, is_name(name, b"expires")),
        (10, b'u') => (Hdr::UserAgent, is_name(name, b"user-agent")),
        (13, b'a') => (Hdr::Authorization, is_name(name, b"authorization")),
        (14, b'c') => (Hdr::ContentLength, is_name(name, b"content-length")),
        (15, b's') => (Hdr::SessionExpires, is_name(name, b"session-expires")),
        (19, b'p') => (Hdr::Authorization, is_name(name, b"proxy-authorization")),
        _ => return None,
    };
    is.then_some(hdr)
}

/// `name.eq_ignore_ascii_case(lower)` for a constant `lower` of lower-case letters and other
/// ASCII that is not a letter (`-`, `/`, digits, space): a byte matches a letter in either case
/// exactly when OR-ing 0x20 into it gives the lower-case one, and anything else only itself, so
/// each byte is one OR and one compare against constants.
#[inline(always)]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name.iter().zip(lower).all(|(&c, &l)| (c | if l.is_ascii_lowercase() { 0x20 } else { 0 }) == l)
}

/// The `username` of digest credentials (`Digest username="alice", realm=...`).
fn credentials_user(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(|c: char| c.is_ascii_whitespace())?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    for part in split_list(rest) {
        let Some((k, val)) = part.split_once('=') else { continue };
        if k.trim().eq_ignore_ascii_case("username") {
            let u = val.trim().trim_matches('"');
            return (!u.is_empty()).then_some(u);
        }
    }
    None
}

/// Splits a header value on commas that are outside quotes and angle brackets.
pub fn split_list(v: &str) -> impl Iterator<Item = &str> {
    let bytes = v.as_bytes();
    let mut start = 0;
    // a value without a comma (nearly every Contact) is one part: the byte loop, which follows
    // quotes and brackets only to judge commas, is skipped (one search, sixteen bytes at a time)
    let mut i = if find_byte(bytes, b',').is_none() { bytes.len() } else { 0 };
    let (mut quoted, mut angle) = (false, false);
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    let part = &v[start..i - 1];
                    start = i;
                    return Some(part.trim());
                }
                _ => {}
            }
        }
        if start <= bytes.len() && start != usize::MAX {
            let part = &v[start.min(v.len())..];
            start = usize::MAX;
            let part = part.trim();
            return (!part.is_empty()).then_some(part);
        }
        None
    })
    .filter(|p| !p.is_empty())
}

/// `"Name" <uri>;params` or `uri;params`.
fn name_addr(v: &str) -> NameAddr<'_> {
    let v = v.trim_ascii();
    let b = v.as_bytes();
    // skip a quoted display name so that '<' inside it does not confuse us
    let mut scan_from = 0;
    if b.first() == Some(&b'"') {
        let mut i = 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 1,
                b'"' => break,
                _ => {}
            }
            i += 1;
        }
        scan_from = (i + 1).min(v.len());
    }
    // (searched inline: as a closure, each search was a call, 40-58 instructions by callgrind)
    if let Some(lt) = find_byte(&b[scan_from..], b'<').map(|i| i + scan_from) {
        if let Some(gt) = find_byte(&b[lt..], b'>').map(|i| i + lt) {
            return NameAddr { uri: v[lt + 1..gt].trim_ascii(), params: &v[gt + 1..] };
        }
        return NameAddr { uri: v[lt + 1..].trim_ascii(), params: "" };
    }
    match find_byte(b, b';') {
        Some(semi) => NameAddr { uri: v[..semi].trim_ascii(), params: &v[semi..] },
        None => NameAddr { uri: v, params: "" },
    }
}

/// The value of `;name=value` in a parameter list (quotes removed), case-insensitive name.
/// A parameter without a value gives `Some("")`.
pub fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    let b = params.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b';' {
            i += 1;
            continue;
        }
        i += 1;
        let ns = i;
        while i < b.len() && !matches!(b[i], b'=' | b';' | b',') {
            i += 1;
        }
        let pname = trim_str(&params[ns..i]);
        let mut value = "";
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i < b.len() && b[i] == b'"' {
                let vs = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                value = &params[vs..i.min(b.len())];
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && b[i] != b';' {
                    i += 1;
                }
                value = trim_str(&params[vs..i]);
            }
        }
        if pname.eq_ignore_ascii_case(name) {
            return Some(value);
        }
    }
    None
}

/// `str::trim`, without its Unicode machinery when the ends are plain ASCII (nearly always).
pub(crate) fn trim_str(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(f), Some(l)) if f.is_ascii_graphic() && l.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let s = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let e = b.iter().rposition(|c| !c.is_ascii_whitespace()).map(|i| i + 1).unwrap_or(s);
    &b[s..e.max(s)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    /// `param` as it was before it searched with memchr and trimmed ASCII ends without `trim`.
    fn reference_param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
        let b = params.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b';' {
                i += 1;
                continue;
            }
            i += 1;
            let ns = i;
            while i < b.len() && !matches!(b[i], b'=' | b';' | b',') {
                i += 1;
            }
            let pname = params[ns..i].trim();
            let mut value = "";
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'"' {
                    let vs = i + 1;
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        if b[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    value = &params[vs..i.min(b.len())];
                    i += 1;
                } else {
                    let vs = i;
                    while i < b.len() && b[i] != b';' {
                        i += 1;
                    }
                    value = params[vs..i].trim();
                }
            }
            if pname.eq_ignore_ascii_case(name) {
                return Some(value);
            }
        }
        None
    }

    #[test]
    fn param_agrees_with_the_byte_loop_it_replaced() {
        let parts =
            [";", "tag", "TAG", "=", "\"", "\\", " ", "\u{a0}", "abc", ",", "expires", "60", "é", "lr", "=\"x;y\""];
        let seed = 0xdead_beef_cafe_f00du64;
        let mut rng = crate::testkit::Rng(seed);
        let mut next = || rng.next_u64();
        let mut found = 0;
        for _ in 0..300_000 {
            let n = (next() % 10) as usize;
            let s: String = (0..n).map(|_| parts[(next() % parts.len() as u64) as usize]).collect();
            for name in ["tag", "expires", "lr", ""] {
                assert_eq!(param(&s, name), reference_param(&s, name), "{s:?} {name}");
                found += usize::from(param(&s, name).is_some());
            }
        }
        assert!(found > 1000, "{found}");
    }

    /// `split_list` as it was before it skipped values without a comma.
    fn reference_split_list(v: &str) -> Vec<&str> {
        let bytes = v.as_bytes();
        let (mut parts, mut start) = (Vec::new(), 0);
        let (mut quoted, mut angle) = (false, false);
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    parts.push(v[start..i - 1].trim());
                    start = i;
                }
                _ => {}
            }
        }
        parts.push(v[start.min(v.len())..].trim());
        parts.retain(|p| !p.is_empty());
        parts
    }

    #[test]
    fn split_list_agrees_with_the_byte_loop() {
        let parts = [",", "\"", "\\", "<", ">", " ", "sip:a@b", ";x=1", "é", "\t"];
        let mut rng = crate::testkit::Rng(0x5917_1157);
        let mut next = || rng.next_u64();
        let (mut several, mut one) = (0, 0);
        for _ in 0..200_000 {
            let n = (next() % 8) as usize;
            let v: String = (0..n).map(|_| parts[(next() % parts.len() as u64) as usize]).collect();
            let got: Vec<&str> = split_list(&v).collect();
            assert_eq!(got, reference_split_list(&v), "{v:?}");
            several += usize::from(got.len() > 1);
            one += usize::from(got.len() == 1 && !v.contains(','));
        }
        assert!(several > 10_000 && one > 10_000, "{several} {one}");
    }

    #[test]
    fn tag_agrees_with_param() {
        // pieces that make the usual shape (`;tag=` first) and every way out of it: a space or
        // a quote after the `=`, an empty value, other case, other parameters, commas, escapes
        let parts = [";tag=", ";TaG=", ";tag", "=", "\"", "\\", " ", "abc", ",", ";", "lr", "é", "x;tag=y"];
        let mut rng = crate::testkit::Rng(0x7a9_5eed);
        let mut next = || rng.next_u64();
        let (mut fast, mut found) = (0, 0);
        for _ in 0..300_000 {
            let n = (next() % 6) as usize;
            let params: String = (0..n).map(|_| parts[(next() % parts.len() as u64) as usize]).collect();
            let na = NameAddr { uri: "sip:a@b", params: &params };
            assert_eq!(na.tag(), param(&params, "tag"), "{params:?}");
            found += usize::from(na.tag().is_some());
            fast += usize::from(params.len() > 5 && params.as_bytes()[..5].eq_ignore_ascii_case(b";tag="));
        }
        assert!(found > 10_000 && fast > 10_000, "{found} {fast}");
    }

    /// The request line's word loop as it was, byte by byte, before `find_byte`.
    fn reference_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
        let b = line.as_bytes();
        if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
            return start_line(line);
        }
        let mut words = [""; 3];
        let mut n = 0;
        let mut i = 0;
        while i < b.len() && n < 3 {
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            if i > start {
                words[n] = &line[start..i];
                n += 1;
            }
        }
        let [method, uri, ver] = words;
        if n < 3 || !ver.eq_ignore_ascii_case("SIP/2.0") || line[i..].bytes().any(|c| c != b' ') {
            return Err(ParseError::NotSip);
        }
        if !method.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)) {
            return Err(ParseError::BadStartLine);
        }
        Ok(StartLine::Request { method, uri })
    }

    #[test]
    fn request_lines_read_as_by_the_byte_loop() {
        let parts = [
            " ",
            "  ",
            "INVITE",
            "REGISTER",
            "sip:alice@lab.example:5060;transport=tcp",
            "SIP/2.0",
            "sip/2.0",
            "\t",
            "é",
            "x",
            "<",
            "SIP/2.0x",
            "OPTIONS",
            "sip:[2001:db8::1]",
            "SIP/2.0 ",
        ];
        let mut rng = crate::testkit::Rng(0x005e_ed0f_1e57);
        let mut ok = 0;
        for _ in 0..300_000 {
            let shaped = rng.below(2) == 0;
            let n = rng.below(8) as usize;
            let mut pick = |from: &[&'static str]| from[rng.below(from.len() as u64) as usize];
            let s: String = if !shaped {
                (0..n).map(|_| pick(&parts)).collect()
            } else {
                // shaped like a request line, each piece sometimes odd
                let sp = [" ", " ", "  ", "", "\t"];
                let method = ["INVITE", "BYE", "x-Y.z", "é", "IN<VITE", ""];
                let uri = ["sip:b@x", "sip:b@x;lr", "<sip:é>", ""];
                let ver = ["SIP/2.0", "sip/2.0", "SIP/2.0", "SIP/2.1", ""];
                [pick(&sp), pick(&method), pick(&sp), pick(&uri), pick(&sp), pick(&ver), pick(&sp)].concat()
            };
            let got = start_line(&s);
            assert_eq!(got, reference_start_line(&s), "{s:?}");
            ok += usize::from(got.is_ok());
            // and the check of a stream's or datagram's first line, also over bytes that are
            // not text, against the way it was (trim, then UTF-8, then the start line)
            let mut bytes = s.clone().into_bytes();
            if !bytes.is_empty() && rng.below(4) == 0 {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = 0xff;
            }
            let reference = std::str::from_utf8(trim_bytes(&bytes)).is_ok_and(|t| reference_start_line(t).is_ok());
            assert_eq!(looks_like_start_line(&bytes), reference, "{bytes:?}");
        }
        assert!(ok > 1000, "{ok}");
    }

    #[test]
    fn decimal_answers_as_str_parse_does() {
        for s in [
            "0",
            "7",
            "+7",
            "+",
            "",
            "-0",
            "-1",
            " 1",
            "1 ",
            "4294967295",
            "4294967296",
            "0004294967295",
            "00000000000000000000000000001",
            "18446744073709551615",
            "18446744073709551616",
            "1a",
            "٣",
            "++1",
        ] {
            assert_eq!(decimal::<u32>(s.as_bytes()), s.parse::<u32>().ok(), "{s:?}");
            assert_eq!(decimal::<usize>(s.as_bytes()), s.parse::<usize>().ok(), "{s:?}");
        }
        for b in [&b"\xff1"[..], b"1\xff", b"\xc3\xa9"] {
            assert_eq!(decimal::<u32>(b), None, "{b:?}");
        }
    }

    /// The one-pass parse (head end and folds found while parsing) against two passes: the
    /// head's end and folds found first by `scan_head`, then the lines parsed up to it.
    #[test]
    fn one_pass_agrees_with_scanning_first() {
        let parts: [&[u8]; 24] = [
            b"INVITE sip:bob@x SIP/2.0",
            b"SIP/2.0 200 OK",
            b"REGISTER sip:x",
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            b"\t",
            b"Call-ID: c1",
            b"i: c2",
            b"From: <sip:a@x>;tag=1",
            b"t: sip:b@x",
            b"CSeq: 1 INVITE",
            b"CSeq:",
            b" 2 BYE",
            b"Contact: <sip:a@1.2.3.4>",
            b"Via: SIP/2.0/UDP h",
            b"\xff\xfe",
            b"\xc3\xa9",
            b"v=0",
            b"Expires: 60",
            b"User-Agent: x",
            b"Content-Length: 3",
            b":",
        ];
        let seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rng = crate::testkit::Rng(seed);
        let mut next = || rng.next_u64();
        let long_start = [b"INVITE sip:".as_slice(), &[b'a'; 600], b" SIP/2.0"].concat();
        let starts: [&[u8]; 6] = [
            b" INVITE sip:bob@x SIP/2.0",
            b"\tSIP/2.0 180 Ringing",
            b"BYE  sip:x  SIP/2.0 ",
            b"sip/2.0 486 Busy",
            &long_start,
            b"INVITE sip:\xc3\xa9 SIP/2.0",
        ];
        let (mut agreed_ok, mut hinted_ok) = (0, 0);
        for _ in 0..400_000 {
            // mostly whole lines (start line first, line ends between), sometimes any fragment
            let n = (next() % 12) as usize;
            let r = next();
            let mut buf: Vec<u8> =
                if r % 4 == 0 { starts[((r >> 8) % 6) as usize] } else { parts[((r >> 8) % 3) as usize] }.to_vec();
            for _ in 0..n {
                let r = next();
                if r % 5 != 0 {
                    buf.extend_from_slice(if r % 7 == 0 { b"\n" } else { b"\r\n" });
                }
                buf.extend_from_slice(parts[((r >> 8) % parts.len() as u64) as usize]);
            }
            let (head_end, folded) = scan_head(&buf);
            let unfolded;
            let two_passes = if folded {
                unfolded = unfold_head(&buf, head_end);
                parse(&unfolded)
            } else {
                parse(&buf)
            };
            let mut scratch = Vec::new();
            let one_pass = parse_folded(&buf, &mut scratch);
            assert_eq!(one_pass, two_passes, "{:?}", String::from_utf8_lossy(&buf));
            agreed_ok += usize::from(one_pass.is_ok());
            // with the start line the UDP decoder split (when it took the bytes for SIP)
            if let Some(hint) = sip_start(&buf) {
                let mut scratch = Vec::new();
                let hinted = parse_folded_with(&buf, &mut scratch, Some(hint));
                assert_eq!(hinted, two_passes, "hinted: {:?}", String::from_utf8_lossy(&buf));
                hinted_ok += usize::from(hint.from == 0 && hinted.is_ok());
            }
        }
        assert!(agreed_ok > 100, "the generator must make some valid messages ({agreed_ok})");
        assert!(hinted_ok > 100, "the generator must make some hinted valid messages ({hinted_ok})");
    }

    #[test]
    fn find_byte_finds_the_first() {
        let mut rng = crate::testkit::Rng(7);
        for _ in 0..20_000 {
            let n = (rng.next_u64() % 100) as usize;
            // few distinct bytes, so that matches are frequent, at every position and alignment
            let b: Vec<u8> = (0..n).map(|_| b":\n a\xff"[(rng.next_u64() % 5) as usize]).collect();
            let from = (rng.next_u64() % (n as u64 + 1)) as usize;
            for c in [b':', b'\n', b' ', 0xff, b'z'] {
                assert_eq!(find_byte(&b[from..], c), b[from..].iter().position(|&x| x == c), "{c} in {b:?}");
            }
        }
    }

    /// The scan over every name that [`header_id`] replaced.
    fn reference_header_id(name: &[u8]) -> Option<Hdr> {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'i' => Some(Hdr::CallId),
                b'f' => Some(Hdr::From),
                b't' => Some(Hdr::To),
                b'm' => Some(Hdr::Contact),
                b'l' => Some(Hdr::ContentLength),
                b'x' => Some(Hdr::SessionExpires),
                _ => None,
            };
        }
        const NAMES: [(&[u8], Hdr); 11] = [
            (b"call-id", Hdr::CallId),
            (b"from", Hdr::From),
            (b"to", Hdr::To),
            (b"cseq", Hdr::CSeq),
            (b"contact", Hdr::Contact),
            (b"expires", Hdr::Expires),
            (b"user-agent", Hdr::UserAgent),
            (b"session-expires", Hdr::SessionExpires),
            (b"content-length", Hdr::ContentLength),
            (b"authorization", Hdr::Authorization),
            (b"proxy-authorization", Hdr::Authorization),
        ];
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, h)| *h)
    }

    #[test]
    fn header_id_answers_as_the_scan_it_replaced() {
        let mut names: Vec<Vec<u8>> = "call-id from to cseq contact expires user-agent session-expires \
             content-length authorization proxy-authorization via accept max-forwards record-route contacts \
             content-type www-authenticate proxy-authenticate supported allow route event"
            .split_ascii_whitespace()
            .map(|n| n.as_bytes().to_vec())
            .collect();
        names.extend((0..=255u8).map(|c| vec![c]));
        let mut cases = Vec::new();
        for n in &names {
            cases.push(n.clone());
            cases.push(n.to_ascii_uppercase());
            cases.push(
                n.iter().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { *c }).collect(),
            );
            // every byte changed to one that case-folding or a mask could confuse with it
            for i in 0..n.len() {
                for c in [b'-', b'_', b'\r', b'\0', n[i] ^ 0x20, n[i] ^ 0x40, n[i].wrapping_add(1), 0xc3] {
                    let mut m = n.clone();
                    m[i] = c;
                    cases.push(m);
                }
            }
        }
        for c in &cases {
            assert_eq!(
                header_id(c).map(|h| h as u8),
                reference_header_id(c).map(|h| h as u8),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        assert!(cases.len() > 1000);
    }

    #[test]
    fn compact_forms_and_case() {
        let b = msg(
            "INVITE sip:bob@lab.example SIP/2.0\nv: SIP/2.0/UDP 127.0.0.2\nf: <sip:alice@lab.example>;tag=abc\nt: sip:bob@lab.example\ni: x1@h\ncseq: 7 INVITE\nM: <sip:alice@127.0.0.2:5060>\nL: 0\nx: 1800;refresher=uac\n\n",
        );
        let m = parse(&b).unwrap();
        assert_eq!(m.start, StartLine::Request { method: "INVITE", uri: "sip:bob@lab.example" });
        assert_eq!(m.call_id, "x1@h");
        assert_eq!((m.cseq, m.cseq_method), (7, "INVITE"));
        assert_eq!(m.from.tag(), Some("abc"));
        assert_eq!(m.to.uri, "sip:bob@lab.example");
        assert_eq!(m.to.tag(), None);
        assert_eq!(m.contacts()[0].addr.uri, "sip:alice@127.0.0.2:5060");
        assert_eq!(m.content_length, Some(0));
        assert_eq!(m.session_expires, Some(1800));
    }

    #[test]
    fn folding_is_unfolded() {
        let b = msg(
            "REGISTER sip:lab.example SIP/2.0\nFrom: <sip:alice@lab.example>\n ;tag=1\nTo: <sip:alice@lab.example>\nCall-ID: abc\nCSeq: 1\n\tREGISTER\nContact: <sip:a@1.2.3.4>\n  ;expires=60\n\n",
        );
        let u = unfold(&b);
        assert!(matches!(u, Cow::Owned(_)));
        let m = parse(&u).unwrap();
        assert_eq!(m.from.tag(), Some("1"));
        assert_eq!(m.cseq_method, "REGISTER");
        assert_eq!(m.contacts()[0].expires(), Some(60));
        let plain = msg("OPTIONS sip:x SIP/2.0\nCall-ID: a\n\n");
        assert!(matches!(unfold(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn several_contacts_quoted_instance_and_star() {
        let b = msg(
            "SIP/2.0 200 OK\nFrom: <sip:alice@lab.example>;tag=1\nTo: <sip:alice@lab.example>;tag=2\nCall-ID: c\nCSeq: 2 REGISTER\nContact: \"A, B\" <sip:alice@127.0.0.2:5060>;expires=3600;+sip.instance=\"<urn:uuid:0f6c>\";reg-id=1, <sip:alice@[2001:db8::9]:5070;transport=tcp>;expires=20\nContact: sip:alice@10.0.0.1;expires=5\n\n",
        );
        let m = parse(&b).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.contacts().len(), 3);
        assert_eq!(m.contacts()[0].instance(), Some("urn:uuid:0f6c"));
        assert_eq!(m.contacts()[0].expires(), Some(3600));
        assert_eq!(m.contacts()[1].addr.uri, "sip:alice@[2001:db8::9]:5070;transport=tcp");
        assert_eq!(m.contacts()[1].expires(), Some(20));
        assert_eq!(m.contacts()[2].addr.uri, "sip:alice@10.0.0.1");
        assert_eq!(m.contacts()[2].expires(), Some(5));
        let s = msg(
            "REGISTER sip:x SIP/2.0\nf: <sip:a@x>;tag=1\nt: <sip:a@x>\ni: q\nCSeq: 3 REGISTER\nContact: *\nExpires: 0\n\n",
        );
        let m = parse(&s).unwrap();
        assert!(m.contact_star);
        assert_eq!(m.expires, Some(0));
    }

    #[test]
    fn ipv6_request_uri_and_unknown_method() {
        let b = msg(
            "FROBNICATE sip:[2001:db8::1]:5060 SIP/2.0\nf: <sip:a@x>;tag=1\nt: <sip:b@x>\ni: q\nCSeq: 1 FROBNICATE\n\n",
        );
        let m = parse(&b).unwrap();
        assert_eq!(m.method(), Some("FROBNICATE"));
        assert_eq!(m.start, StartLine::Request { method: "FROBNICATE", uri: "sip:[2001:db8::1]:5060" });
    }

    #[test]
    fn display_name_with_angle_bracket_and_bare_uri_params() {
        let b =
            msg("BYE sip:x SIP/2.0\nFrom: \"a <b>\" <sip:a@x>;tag=9\nTo: sip:b@x;tag=8\nCall-ID: q\nCSeq: 2 BYE\n\n");
        let m = parse(&b).unwrap();
        assert_eq!(m.from.uri, "sip:a@x");
        assert_eq!(m.from.tag(), Some("9"));
        assert_eq!(m.to.uri, "sip:b@x");
        assert_eq!(m.to.tag(), Some("8"));
    }

    #[test]
    fn errors_for_what_cannot_be_followed() {
        assert_eq!(parse(b"hello world"), Err(ParseError::NotSip));
        assert_eq!(parse(b"SIP/2.0 abc OK\r\n\r\n"), Err(ParseError::BadStartLine));
        assert_eq!(parse(b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n"), Err(ParseError::MissingCallId));
        assert_eq!(parse(b"INVITE sip:x SIP/2.0\r\ni: a\r\n\r\n"), Err(ParseError::MissingCSeq));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::NotSip));
        assert_eq!(parse(b""), Err(ParseError::NotSip));
    }

    #[test]
    fn offsets_give_the_same_message_over_a_copy() {
        let b = msg(
            "SIP/2.0 200 OK\nFrom: <sip:alice@lab.example>;tag=1\nTo: <sip:alice@lab.example>;tag=2\nCall-ID: c\nCSeq: 2 REGISTER\nContact: <sip:a@1.2.3.4>;expires=60, <sip:b@5.6.7.8>\nContact: <sip:c@9.9.9.9>\nUser-Agent: x\nProxy-Authorization: Digest username=\"alice\", realm=\"r\"\n\nbody",
        );
        let m = parse(&b).unwrap();
        let copy = m.head.to_vec();
        assert_eq!(m.offsets().view(&copy), m);
        let r = msg("INVITE sip:bob@lab.example SIP/2.0\nf: <sip:a@x>;tag=1\nt: <sip:b@x>\ni: q\nCSeq: 1 INVITE\n\n");
        let m = parse(&r).unwrap();
        let copy = m.head.to_vec();
        assert_eq!(m.offsets().view(&copy), m);
        // a head that is text crosses as text; one that is not, as bytes (a body that is not
        // text changes neither)
        let mut bad_body = r.clone();
        bad_body.extend_from_slice(b"\xff\xfe");
        let mut scratch = Vec::new();
        let m = parse_folded(&bad_body, &mut scratch).unwrap();
        assert_eq!(m.head_text, std::str::from_utf8(m.head).ok());
        assert!(m.head_text.is_some());
        let copy = m.head_text.unwrap().to_owned();
        assert_eq!(m.offsets().view_text(&copy), m);
        let bad_head = msg(
            "INVITE sip:bob@lab.example SIP/2.0\nf: <sip:a@x>;tag=1\nt: <sip:b@x>\ni: q\nCSeq: 1 INVITE\nSubject: \u{0}\n\n",
        );
        let mut bad_head = bad_head.clone();
        let at = bad_head.iter().position(|&c| c == 0).unwrap();
        bad_head[at] = 0xff;
        let m = parse_folded(&bad_head, &mut scratch).unwrap();
        assert_eq!(m.head_text, None);
        let copy = m.head.to_vec();
        assert_eq!(m.offsets().view(&copy), m);
    }

    #[test]
    fn lf_only_line_ends() {
        let m =
            parse(b"SIP/2.0 180 Ringing\nf: <sip:a@x>;tag=1\nt: <sip:b@x>;tag=2\ni: q\nCSeq: 2 INVITE\n\n").unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.to.tag(), Some("2"));
    }
}
