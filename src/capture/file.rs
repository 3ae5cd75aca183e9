//! pcap and pcapng files through the pure-Rust `pcap-file` crate (replay needs no C library, and
//! unlike libpcap it reads pcapng files whose interfaces have different link types).
use super::{Frame, Micros};
use anyhow::{Context, Result, bail};
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// What reading one file met besides frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStats {
    pub frames: u64,
    /// The file ended inside a record (a capture cut short): the frames before it were read.
    pub truncated: bool,
    /// Frames captured shorter than they were on the wire (the capture's snaplen): decoded as
    /// far as they go.
    pub snapped: u64,
    /// Frames whose timestamp is not a plausible time (before 1970 or after 2200, say from a
    /// bad if_tsresol/if_tsoffset): refused, so that they cannot fire every timer at once.
    pub bad_timestamps: u64,
}

/// Timestamps from 1970 to 2200 are taken; others are refused (counted).
const MAX_TS: Micros = 7_258_118_400 * 1_000_000;

fn plausible(ts: Option<Micros>, stats: &mut FileStats) -> Option<Micros> {
    match ts {
        Some(t) if (0..MAX_TS).contains(&t) => Some(t),
        _ => {
            stats.bad_timestamps += 1;
            None
        }
    }
}

/// Reads every frame of a pcap or pcapng file, in file order, into `sink`.
/// Fails on a file that cannot be opened or is neither format; a damaged tail is reported in
/// the stats and logged, and the frames before it still count.
///
/// The file is mapped into memory (no copy into the process; the frames are slices of it), or
/// read whole where it cannot be mapped. A capture file must not shrink while it is being read
/// (tcpdump only ever appends).
pub fn read_file(path: &Path, mut sink: impl FnMut(Frame<'_>)) -> Result<FileStats> {
    let mut f = File::open(path).with_context(|| format!("cannot open capture {}", path.display()))?;
    // SAFETY: the mapping is only read, and capture files are not truncated while replayed
    let mapped = unsafe { memmap2::Mmap::map(&f) };
    let owned;
    let data: &[u8] = match &mapped {
        Ok(m) => {
            let _ = m.advise(memmap2::Advice::Sequential);
            m
        }
        Err(_) => {
            let mut v = Vec::new();
            f.read_to_end(&mut v).with_context(|| format!("cannot read capture {}", path.display()))?;
            owned = v;
            &owned
        }
    };
    if data.len() < 4 {
        bail!("{}: too short to be a capture file", path.display());
    }
    let magic = [data[0], data[1], data[2], data[3]];
    let mut stats = FileStats::default();
    // the pages read are handed back as we go: a large capture does not sit in this process's
    // resident memory (it stays in the page cache)
    let mut released = 0usize;
    let mut release = |consumed: usize| {
        if let Ok(m) = &mapped
            && consumed - released >= RELEASE_EVERY
        {
            let upto = consumed & !(4096 - 1);
            // SAFETY: the pages below `consumed` are not read again (frames handed to the sink
            // before it are done with)
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, released, upto - released) };
            released = upto;
        }
    };
    match u32::from_le_bytes(magic) {
        0x0A0D0D0A => read_pcapng(data, &mut stats, &mut sink, &mut release)
            .with_context(|| format!("{}: not a readable pcapng file", path.display()))?,
        0xA1B2C3D4 | 0xD4C3B2A1 | 0xA1B23C4D | 0x4D3CB2A1 => read_pcap(data, &mut stats, &mut sink, &mut release)
            .with_context(|| format!("{}: not a readable pcap file", path.display()))?,
        _ => bail!("{}: not a pcap or pcapng file (magic {:02x?})", path.display(), magic),
    }
    if stats.truncated {
        tracing::warn!(file = %path.display(), frames = stats.frames, "capture ends inside a record; read up to it");
    }
    if stats.bad_timestamps > 0 {
        tracing::warn!(file = %path.display(), frames = stats.bad_timestamps, "frames with impossible timestamps refused");
    }
    Ok(stats)
}

/// Asks the processor to load the capture's next few KiB while the current frame is worked on.
/// The first touch of a mapped frame otherwise stalls on memory: the hardware prefetchers stop at
/// every 4 KiB page, and a page holds only a few SIP packets.
#[derive(Default)]
struct Prefetch {
    /// where the next prefetch starts (an offset into the capture)
    next: usize,
}

/// How far ahead of the frame being handed on the capture is prefetched.
const PREFETCH_AHEAD: usize = 4096;

impl Prefetch {
    /// `consumed`: the end of the frame about to be handed on.
    #[inline]
    fn upto(&mut self, data: &[u8], consumed: usize) {
        let end = (consumed + PREFETCH_AHEAD).min(data.len());
        self.next = self.next.max(consumed & !63);
        while self.next < end {
            crate::bytes::prefetch_line(data[self.next..].as_ptr());
            self.next += 64;
        }
    }
}

/// How many bytes of a mapped capture are read before their pages are handed back.
const RELEASE_EVERY: usize = 32 << 20;

fn read_pcap(
    data: &[u8],
    stats: &mut FileStats,
    sink: &mut impl FnMut(Frame<'_>),
    release: &mut impl FnMut(usize),
) -> Result<()> {
    let (mut rest, parser) = PcapParser::new(data)?;
    let header = parser.header();
    let linktype: u32 = header.datalink.into();
    let nanos = header.ts_resolution == pcap_file::TsResolution::NanoSecond;
    // raw records: pcap-file's checked ones refuse a record longer on the wire than the file's
    // snaplen, which is every record of a capture taken with a short snaplen
    let mut ahead = Prefetch::default();
    while !rest.is_empty() {
        match parser.next_raw_packet(rest) {
            Ok((tail, p)) => {
                rest = tail;
                ahead.upto(data, data.len() - rest.len());
                release(data.len() - rest.len() - p.data.len());
                stats.frames += 1;
                if p.orig_len > p.incl_len {
                    stats.snapped += 1;
                }
                let frac = if nanos { i64::from(p.ts_frac) / 1000 } else { i64::from(p.ts_frac) };
                let ts = (frac < 1_000_000).then(|| i64::from(p.ts_sec) * 1_000_000 + frac);
                if let Some(ts) = plausible(ts, stats) {
                    sink(Frame { ts, linktype, data: &p.data });
                }
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

impl Iface {
    /// A tick count in microseconds since the epoch, if it fits.
    fn micros(&self, ticks: u128) -> Option<Micros> {
        let us = i64::try_from(ticks.checked_mul(1_000_000)? / self.units).ok()?;
        us.checked_add(self.offset_s.checked_mul(1_000_000)?)
    }
}

fn read_pcapng(
    data: &[u8],
    stats: &mut FileStats,
    sink: &mut impl FnMut(Frame<'_>),
    release: &mut impl FnMut(usize),
) -> Result<()> {
    let (mut rest, mut parser) = PcapNgParser::new(data)?;
    let mut ifaces: Vec<Iface> = Vec::new();
    let mut last_ts: Micros = 0;
    // (the parser has read the first section header: no interface yet)
    while !rest.is_empty() {
        let block = match parser.next_block(rest) {
            Ok((tail, b)) => {
                // (the block is borrowed from the bytes before `tail`: release up to its start)
                release(data.len() - rest.len());
                rest = tail;
                b
            }
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
                stats.frames += 1;
                if (epb.original_len as usize) > epb.data.len() {
                    stats.snapped += 1;
                }
                if let Some(micros) = plausible(iface.micros(ticks), stats) {
                    last_ts = micros;
                    sink(Frame { ts: micros, linktype: iface.linktype, data: &epb.data });
                }
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
                stats.frames += 1;
                if let Some(micros) = plausible(iface.micros(u128::from(pb.timestamp)), stats) {
                    last_ts = micros;
                    sink(Frame { ts: micros, linktype: iface.linktype, data: &pb.data });
                }
            }
            _ => {}
        }
    }
    Ok(())
}
