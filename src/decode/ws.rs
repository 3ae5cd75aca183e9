//! WebSocket framing (RFC 6455) for SIP over WebSocket (RFC 7118): each text or binary message
//! carries one SIP message. Client frames are masked; fragmented messages are reassembled.
use memchr::memmem;

/// One frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum WsFrame {
    Complete {
        consumed: usize,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    },
    Incomplete,
    /// A length no SIP message has: the stream is not followed further.
    TooLong,
}

pub fn frame(buf: &[u8], max_len: usize) -> WsFrame {
    if buf.len() < 2 {
        return WsFrame::Incomplete;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return WsFrame::Incomplete,
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return WsFrame::Incomplete,
        },
        n => (u64::from(n), 2),
    };
    if len > max_len as u64 {
        return WsFrame::TooLong;
    }
    let len = len as usize;
    let mask = if masked {
        let Some(m) = buf.get(pos..pos + 4) else {
            return WsFrame::Incomplete;
        };
        pos += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    let Some(data) = buf.get(pos..pos + len) else {
        return WsFrame::Incomplete;
    };
    let payload = match mask {
        Some(m) => data.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => data.to_vec(),
    };
    WsFrame::Complete { consumed: pos + len, fin, opcode, payload }
}

/// Whether an HTTP message head (request or 101 response) upgrades the connection to WebSocket.
pub fn is_upgrade(head: &[u8]) -> bool {
    let lower: Vec<u8> = head.iter().take(4096).map(|b| b.to_ascii_lowercase()).collect();
    (lower.starts_with(b"get ") || lower.starts_with(b"http/1.1 101")) && memmem::find(&lower, b"websocket").is_some()
}

/// Whether a buffer starts with an HTTP request or response line (not SIP).
pub fn starts_with_http(buf: &[u8]) -> bool {
    let head = &buf[..buf.len().min(16)];
    head.starts_with(b"GET ") || head.starts_with(b"HTTP/1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_text_frame() {
        let msg = b"OPTIONS sip:a SIP/2.0\r\n\r\n";
        let key = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | msg.len() as u8];
        f.extend_from_slice(&key);
        f.extend(msg.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        match frame(&f, 1 << 16) {
            WsFrame::Complete { consumed, fin, opcode, payload } => {
                assert_eq!((consumed, fin, opcode), (f.len(), true, 1));
                assert_eq!(payload, msg);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(frame(&f[..5], 1 << 16), WsFrame::Incomplete);
    }

    #[test]
    fn extended_length_and_bound() {
        let mut f = vec![0x82, 126, 0x01, 0x00];
        f.extend(std::iter::repeat_n(b'x', 256));
        assert!(matches!(frame(&f, 1 << 16), WsFrame::Complete { consumed: 260, .. }));
        assert_eq!(frame(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0], 1 << 16), WsFrame::TooLong);
        assert!(is_upgrade(b"GET / HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n"));
        assert!(!is_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
}
