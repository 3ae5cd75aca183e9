//! Link layers: from a frame of a given LINKTYPE_ to the network-layer packet inside it.

/// What the bytes after the link header are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Ipv4,
    Ipv6,
    /// An Ethernet frame (GRE transparent bridging, ERSPAN, VXLAN).
    Ethernet,
}

pub const LINKTYPE_NULL: u32 = 0;
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LOOP: u32 = 108;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Strips the link header. `None`: a link type siptap does not read, or a frame too short.
pub fn strip(linktype: u32, data: &[u8]) -> Result<(Net, &[u8]), LinkError> {
    match linktype {
        LINKTYPE_ETHERNET => Ok((Net::Ethernet, data)),
        // DLT_RAW has the value 12 (or 14) on some BSDs in pcap files
        LINKTYPE_RAW | 12 | 14 => by_version(data),
        LINKTYPE_IPV4 => Ok((Net::Ipv4, data)),
        LINKTYPE_IPV6 => Ok((Net::Ipv6, data)),
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            // 4-byte address family in the capturing host's byte order (NULL) or network order (LOOP)
            let b = data.get(..4).ok_or(LinkError::Truncated)?;
            let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let be = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let family = if le < 0x100 { le } else { be };
            match family {
                2 => Ok((Net::Ipv4, &data[4..])),
                // AF_INET6 differs between systems: Linux 10, BSDs 24, 28, 30
                10 | 24 | 28 | 30 => Ok((Net::Ipv6, &data[4..])),
                _ => Err(LinkError::NotIp),
            }
        }
        LINKTYPE_LINUX_SLL => {
            let b = data.get(..16).ok_or(LinkError::Truncated)?;
            ethertype(u16::from_be_bytes([b[14], b[15]]), &data[16..])
        }
        LINKTYPE_LINUX_SLL2 => {
            let b = data.get(..20).ok_or(LinkError::Truncated)?;
            ethertype(u16::from_be_bytes([b[0], b[1]]), &data[20..])
        }
        _ => Err(LinkError::UnknownLinkType),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    UnknownLinkType,
    Truncated,
    NotIp,
}

fn by_version(data: &[u8]) -> Result<(Net, &[u8]), LinkError> {
    match data.first().map(|b| b >> 4) {
        Some(4) => Ok((Net::Ipv4, data)),
        Some(6) => Ok((Net::Ipv6, data)),
        Some(_) => Err(LinkError::NotIp),
        None => Err(LinkError::Truncated),
    }
}

/// Follows an EtherType through VLAN tags (802.1Q, 802.1ad, QinQ), PPPoE sessions and MPLS.
pub fn ethertype(mut et: u16, mut data: &[u8]) -> Result<(Net, &[u8]), LinkError> {
    for _ in 0..8 {
        match et {
            0x0800 => return Ok((Net::Ipv4, data)),
            0x86DD => return Ok((Net::Ipv6, data)),
            0x6558 => return Ok((Net::Ethernet, data)),
            0x8100 | 0x88A8 | 0x9100 => {
                let b = data.get(..4).ok_or(LinkError::Truncated)?;
                et = u16::from_be_bytes([b[2], b[3]]);
                data = &data[4..];
            }
            0x8864 => {
                // PPPoE session header (6 bytes) then the PPP protocol
                let b = data.get(..8).ok_or(LinkError::Truncated)?;
                return ppp(u16::from_be_bytes([b[6], b[7]]), &data[8..]);
            }
            0x8847 | 0x8848 => {
                // MPLS: pop labels to the bottom of the stack, then guess by IP version
                loop {
                    let b = data.get(..4).ok_or(LinkError::Truncated)?;
                    data = &data[4..];
                    if b[2] & 1 == 1 {
                        break;
                    }
                }
                return by_version(data);
            }
            _ => return Err(LinkError::NotIp),
        }
    }
    Err(LinkError::NotIp)
}

/// A PPP protocol number (RFC 1661) to the packet inside.
pub fn ppp(proto: u16, data: &[u8]) -> Result<(Net, &[u8]), LinkError> {
    match proto {
        0x0021 => Ok((Net::Ipv4, data)),
        0x0057 => Ok((Net::Ipv6, data)),
        _ => Err(LinkError::NotIp),
    }
}

/// Strips an Ethernet header (and its tags).
pub fn ethernet(data: &[u8]) -> Result<(Net, &[u8]), LinkError> {
    let b = data.get(..14).ok_or(LinkError::Truncated)?;
    ethertype(u16::from_be_bytes([b[12], b[13]]), &data[14..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sll2_and_sll() {
        let mut f = vec![0x08, 0x00, 0, 0];
        f.resize(20, 0);
        f.push(0x45);
        assert_eq!(strip(LINKTYPE_LINUX_SLL2, &f), Ok((Net::Ipv4, &[0x45u8][..])));
        let mut g = vec![0u8; 14];
        g.extend_from_slice(&[0x86, 0xDD, 0x60]);
        assert_eq!(strip(LINKTYPE_LINUX_SLL, &g), Ok((Net::Ipv6, &[0x60u8][..])));
        assert_eq!(strip(LINKTYPE_LINUX_SLL, &g[..10]), Err(LinkError::Truncated));
    }

    #[test]
    fn vlan_qinq_pppoe_loopback() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0xA8, 0, 1, 0x81, 0x00, 0, 2, 0x88, 0x64, 0x11, 0, 0, 1, 0, 10, 0x00, 0x21, 0x45]);
        assert_eq!(ethernet(&f), Ok((Net::Ipv4, &[0x45u8][..])));
        assert_eq!(strip(LINKTYPE_NULL, &[2, 0, 0, 0, 0x45]), Ok((Net::Ipv4, &[0x45u8][..])));
        assert_eq!(strip(LINKTYPE_LOOP, &[0, 0, 0, 30, 0x60]), Ok((Net::Ipv6, &[0x60u8][..])));
        assert_eq!(strip(147, &[1, 2, 3]), Err(LinkError::UnknownLinkType));
    }
}
