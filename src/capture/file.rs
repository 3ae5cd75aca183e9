//! pcap and pcapng files through the pure-Rust `pcap-file` crate (replay needs no C library, and
//! unlike libpcap it reads pcapng files whose interfaces have different link types).
use super::{Frame, Micros};
use anyhow::{Context, Result, bail};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// What reading one file met besides frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStats {
    pub frames: u64,
    /// The file ended inside a record (a capture cut short): the frames before it were read.
    pub truncated: bool,
}

/// Reads every frame of a pcap or pcapng file, in file order, into `sink`.
/// Fails on a file that cannot be opened or is neither format; a damaged tail is reported in
/// the stats and logged, and the frames before it still count.
pub fn read_file(path: &Path, mut sink: impl FnMut(Frame<'_>)) -> Result<FileStats> {
    let mut f = File::open(path).with_context(|| format!("cannot open capture {}", path.display()))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).with_context(|| format!("{}: too short to be a capture file", path.display()))?;
    drop(f);
    let file = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut stats = FileStats::default();
    match u32::from_le_bytes(magic) {
        0x0A0D0D0A => read_pcapng(file, &mut stats, &mut sink)
            .with_context(|| format!("{}: not a readable pcapng file", path.display()))?,
        0xA1B2C3D4 | 0xD4C3B2A1 | 0xA1B23C4D | 0x4D3CB2A1 => read_pcap(file, &mut stats, &mut sink)
            .with_context(|| format!("{}: not a readable pcap file", path.display()))?,
        _ => bail!("{}: not a pcap or pcapng file (magic {:02x?})", path.display(), magic),
    }
    if stats.truncated {
        tracing::warn!(file = %path.display(), frames = stats.frames, "capture ends inside a record; read up to it");
    }
    Ok(stats)
}

fn read_pcap(r: impl Read, stats: &mut FileStats, sink: &mut impl FnMut(Frame<'_>)) -> Result<()> {
    let mut reader = PcapReader::new(r)?;
    let linktype: u32 = reader.header().datalink.into();
    while let Some(pkt) = reader.next_packet() {
        match pkt {
            Ok(p) => {
                stats.frames += 1;
                sink(Frame { ts: duration_micros(p.timestamp), linktype, data: &p.data });
            }
            Err(_) => {
                stats.truncated = true;
                break;
            }
        }
    }
    Ok(())
}

/// One pcapng interface: link type and timestamp units (if_tsresol, if_tsoffset).
struct Iface {
    linktype: u32,
    /// ticks per second
    units: u128,
    offset_s: i64,
}

fn read_pcapng(r: impl Read, stats: &mut FileStats, sink: &mut impl FnMut(Frame<'_>)) -> Result<()> {
    let mut reader = PcapNgReader::new(r)?;
    let mut ifaces: Vec<Iface> = Vec::new();
    let mut last_ts: Micros = 0;
    while let Some(block) = reader.next_block() {
        let block = match block {
            Ok(b) => b,
            Err(_) => {
                stats.truncated = true;
                break;
            }
        };
        match block {
            Block::SectionHeader(_) => ifaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut units: u128 = 1_000_000;
                let mut offset_s = 0;
                for o in &idb.options {
                    match o {
                        InterfaceDescriptionOption::IfTsResol(r) => {
                            let n = u32::from(r & 0x7f).min(30);
                            units = if r & 0x80 != 0 { 1u128 << n } else { 10u128.pow(n.min(19)) };
                        }
                        InterfaceDescriptionOption::IfTsOffset(o) => offset_s = *o as i64,
                        _ => {}
                    }
                }
                ifaces.push(Iface { linktype: idb.linktype.into(), units: units.max(1), offset_s });
            }
            Block::EnhancedPacket(epb) => {
                let Some(iface) = ifaces.get(epb.interface_id as usize) else {
                    continue;
                };
                // pcap-file hands the raw 64-bit tick count back as "nanoseconds"
                let ticks = epb.timestamp.as_nanos();
                let micros = (ticks * 1_000_000 / iface.units) as i64 + iface.offset_s * 1_000_000;
                last_ts = micros;
                stats.frames += 1;
                sink(Frame { ts: micros, linktype: iface.linktype, data: &epb.data });
            }
            Block::SimplePacket(spb) => {
                // no timestamp: keep the previous frame's time
                let Some(iface) = ifaces.first() else {
                    continue;
                };
                stats.frames += 1;
                sink(Frame { ts: last_ts, linktype: iface.linktype, data: &spb.data });
            }
            Block::Packet(pb) => {
                let Some(iface) = ifaces.get(pb.interface_id as usize) else {
                    continue;
                };
                let ticks = u128::from(pb.timestamp);
                let micros = (ticks * 1_000_000 / iface.units) as i64 + iface.offset_s * 1_000_000;
                last_ts = micros;
                stats.frames += 1;
                sink(Frame { ts: micros, linktype: iface.linktype, data: &pb.data });
            }
            _ => {}
        }
    }
    Ok(())
}

fn duration_micros(d: std::time::Duration) -> Micros {
    d.as_micros() as i64
}
