//! HEP v3 (the Homer/sipcapture encapsulation): SIP mirrored by Kamailio's `siptrace`, OpenSIPS,
//! FreeSWITCH, Asterisk's `res_hep` or heplify, with the original addresses, ports and timestamp
//! in chunks. The only way to see SIP that travelled over TLS or secure WebSocket.
use crate::capture::Micros;
use std::borrow::Cow;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepPacket<'a> {
    pub ts: Option<Micros>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP protocol of the original packet (17 UDP, 6 TCP, 132 SCTP).
    pub ip_proto: u8,
    /// Payload type (1 = SIP); others (RTCP, logs) are skipped.
    pub payload_type: u8,
    pub capture_id: Option<u32>,
    pub password: Option<&'a str>,
    pub payload: Cow<'a, [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HepError {
    NotHep,
    Truncated,
    NoAddresses,
    NoPayload,
    BadCompression,
}

/// Whether a datagram is HEP v3.
pub fn is_hep3(p: &[u8]) -> bool {
    p.len() >= 6 && &p[..4] == b"HEP3"
}

/// Parses one HEP v3 packet (a compressed payload is inflated, up to `max_payload` bytes).
pub fn parse(p: &[u8], max_payload: usize) -> Result<HepPacket<'_>, HepError> {
    if !is_hep3(p) {
        return Err(HepError::NotHep);
    }
    let total = usize::from(u16::from_be_bytes([p[4], p[5]]));
    if total < 6 || total > p.len() {
        return Err(HepError::Truncated);
    }
    let p = &p[..total];
    let (mut src_ip, mut dst_ip): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let (mut sport, mut dport) = (0u16, 0u16);
    let (mut secs, mut usecs): (Option<u32>, u32) = (None, 0);
    let mut ip_proto = 17;
    let mut payload_type = 1;
    let mut capture_id = None;
    let mut password = None;
    let mut payload: Option<Cow<'_, [u8]>> = None;
    let mut pos = 6;
    while pos + 6 <= p.len() {
        let vendor = u16::from_be_bytes([p[pos], p[pos + 1]]);
        let ty = u16::from_be_bytes([p[pos + 2], p[pos + 3]]);
        let len = usize::from(u16::from_be_bytes([p[pos + 4], p[pos + 5]]));
        if len < 6 || pos + len > p.len() {
            return Err(HepError::Truncated);
        }
        let v = &p[pos + 6..pos + len];
        pos += len;
        if vendor != 0 {
            continue;
        }
        let u32v = || v.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match ty {
            2 => ip_proto = v.first().copied().unwrap_or(17),
            3 if v.len() == 4 => src_ip = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
            4 if v.len() == 4 => dst_ip = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
            5 if v.len() == 16 => src_ip = Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).expect("16")))),
            6 if v.len() == 16 => dst_ip = Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).expect("16")))),
            7 if v.len() >= 2 => sport = u16::from_be_bytes([v[0], v[1]]),
            8 if v.len() >= 2 => dport = u16::from_be_bytes([v[0], v[1]]),
            9 => secs = u32v(),
            10 => usecs = u32v().unwrap_or(0),
            11 => payload_type = v.first().copied().unwrap_or(1),
            12 => capture_id = u32v(),
            14 => password = std::str::from_utf8(v).ok().map(|s| s.trim_end_matches('\0')),
            15 => payload = Some(Cow::Borrowed(v)),
            16 => {
                let mut out = Vec::new();
                let mut z = flate2::read::ZlibDecoder::new(v).take(max_payload as u64 + 1);
                z.read_to_end(&mut out).map_err(|_| HepError::BadCompression)?;
                if out.len() > max_payload {
                    return Err(HepError::BadCompression);
                }
                payload = Some(Cow::Owned(out));
            }
            _ => {}
        }
    }
    let (Some(s), Some(d)) = (src_ip, dst_ip) else { return Err(HepError::NoAddresses) };
    let payload = payload.ok_or(HepError::NoPayload)?;
    let ts = secs.map(|s| i64::from(s) * 1_000_000 + i64::from(usecs.min(999_999)));
    Ok(HepPacket {
        ts,
        src: SocketAddr::new(s, sport),
        dst: SocketAddr::new(d, dport),
        ip_proto,
        payload_type,
        capture_id,
        password,
        payload,
    })
}

/// Builds a HEP v3 packet (for tests and tools).
#[allow(clippy::too_many_arguments)]
pub fn build(
    src: SocketAddr,
    dst: SocketAddr,
    ts: Micros,
    ip_proto: u8,
    capture_id: u32,
    password: Option<&str>,
    payload: &[u8],
) -> Vec<u8> {
    let mut chunks: Vec<u8> = Vec::new();
    let mut chunk = |ty: u16, v: &[u8]| {
        chunks.extend_from_slice(&0u16.to_be_bytes());
        chunks.extend_from_slice(&ty.to_be_bytes());
        chunks.extend_from_slice(&((v.len() + 6) as u16).to_be_bytes());
        chunks.extend_from_slice(v);
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            chunk(1, &[2]);
            chunk(3, &s.octets());
            chunk(4, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(x) => x,
                IpAddr::V4(x) => x.to_ipv6_mapped(),
            };
            chunk(1, &[10]);
            chunk(5, &v6(s).octets());
            chunk(6, &v6(d).octets());
        }
    }
    chunk(2, &[ip_proto]);
    chunk(7, &src.port().to_be_bytes());
    chunk(8, &dst.port().to_be_bytes());
    chunk(9, &((ts / 1_000_000) as u32).to_be_bytes());
    chunk(10, &((ts % 1_000_000) as u32).to_be_bytes());
    chunk(11, &[1]);
    chunk(12, &capture_id.to_be_bytes());
    if let Some(pw) = password {
        chunk(14, pw.as_bytes());
    }
    chunk(15, payload);
    let mut out = b"HEP3".to_vec();
    out.extend_from_slice(&((chunks.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(&chunks);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let s: SocketAddr = "127.0.0.2:5060".parse().unwrap();
        let d: SocketAddr = "[::1]:5070".parse().unwrap();
        let b = build(s, d, 1_700_000_000_123_456, 6, 2001, Some("pw"), b"OPTIONS sip:x SIP/2.0\r\n\r\n");
        let p = parse(&b, 65536).unwrap();
        assert_eq!(p.ts, Some(1_700_000_000_123_456));
        assert_eq!(p.dst.port(), 5070);
        assert_eq!((p.ip_proto, p.capture_id, p.password), (6, Some(2001), Some("pw")));
        assert_eq!(&p.payload[..7], b"OPTIONS");
        assert_eq!(parse(&b[..20], 65536), Err(HepError::Truncated));
        assert_eq!(parse(b"HEP2xxxx", 65536), Err(HepError::NotHep));
    }
}
