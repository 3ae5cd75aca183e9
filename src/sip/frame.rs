//! Message framing on a byte stream (TCP, WebSocket text): RFC 3261 18.3, by Content-Length.
use super::parse::header_end;

#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// A whole message occupies `buf[..len]`.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
}

/// Frames the message at the start of `buf` (leading CRLF keep-alives must be skipped first).
/// A missing Content-Length on a stream means an empty body.
pub fn frame(buf: &[u8]) -> Framed {
    let Some((head, body)) = header_end(buf) else {
        return Framed::Incomplete;
    };
    let cl = content_length(&buf[..head]).unwrap_or(0);
    match body.checked_add(cl) {
        Some(total) if total <= buf.len() => Framed::Complete(total),
        _ => Framed::Incomplete,
    }
}

/// Content-Length (or its compact form `l`) from a header section.
pub fn content_length(head: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while pos < head.len() {
        let end = super::parse::find_nl(&head[pos..]).map(|i| pos + i).unwrap_or(head.len());
        let line = &head[pos..end];
        pos = end + 1;
        // only `l` or `Content-Length` (names are short: the colon is near)
        if !matches!(line.first(), Some(b'l' | b'L' | b'c' | b'C')) {
            continue;
        }
        let Some(colon) = line.iter().take(32).position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            return crate::sip::parse::decimal(line[colon + 1..].trim_ascii());
        }
    }
    None
}

/// Number of keep-alive CRLFs (RFC 5626 3.5.1) at the start of `buf`.
pub fn leading_crlf(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_pipelined_messages_split_by_content_length() {
        let a = b"MESSAGE sip:x SIP/2.0\r\nl: 5\r\n\r\nhelloOPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        let Framed::Complete(n) = frame(a) else { panic!() };
        assert_eq!(&a[n - 5..n], b"hello");
        assert_eq!(frame(&a[n..]), Framed::Complete(a.len() - n));
    }

    #[test]
    fn incomplete_body_and_head() {
        assert_eq!(frame(b"INVITE sip:x SIP/2.0\r\nContent-Length: 10\r\n\r\nabc"), Framed::Incomplete);
        assert_eq!(frame(b"INVITE sip:x SIP/2.0\r\nContent-Len"), Framed::Incomplete);
        assert_eq!(
            frame(b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Framed::Complete(65)
        );
        assert_eq!(leading_crlf(b"\r\n\r\nINVITE"), 4);
    }
}
