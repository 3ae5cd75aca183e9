//! Writes the fuzz seeds (fuzz/seeds/<target>/) from the lab captures, which this project made
//! itself (public captures from ../shared are not copied into the repo, not even as seeds).
//! Run: `cargo run --example make_fuzz_seeds`.
use siptap::capture::file::read_file;
use siptap::decode::{DecodeLimits, Decoder};
use siptap::fuzz_harness::pipeline_input;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("fuzz/seeds");
    for t in ["decode", "sip_parse", "pipeline"] {
        std::fs::create_dir_all(seeds.join(t)).unwrap();
    }
    for p in siptap::testkit::lab_captures() {
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let mut frames = Vec::new();
        read_file(&p, |f| frames.push((f.ts, f.linktype, f.data.to_vec()))).unwrap();
        let refs: Vec<(u32, &[u8])> = frames.iter().map(|(_, l, d)| (*l, &d[..])).collect();
        std::fs::write(seeds.join("pipeline").join(&stem), pipeline_input(&refs)).unwrap();
        let mut d = Decoder::new(DecodeLimits::default(), vec![5060]);
        let mut n = 0;
        for (i, (ts, linktype, data)) in frames.iter().enumerate() {
            if i % 4 == 0 {
                // selector 0 is Ethernet, the lab captures' link type
                std::fs::write(seeds.join("decode").join(format!("{stem}-{i}")), [&[0u8][..], data].concat()).unwrap();
            }
            let mut hep_frames = Vec::new();
            d.decode(siptap::capture::Frame { ts: *ts, linktype: *linktype, data }, &mut |m| {
                if n % 3 == 0 {
                    std::fs::write(seeds.join("sip_parse").join(format!("{stem}-{n}")), m.data).unwrap();
                }
                if n % 5 == 0 {
                    // the same message as HEP v3 in UDP to port 9060, on raw IP (selector 1)
                    let hep = siptap::decode::hep::build(m.src, m.dst, m.ts, 17, 2001, Some("pw"), m.data);
                    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 127, 0, 0, 10, 127, 0, 0, 1];
                    let total = (20 + 8 + hep.len()) as u16;
                    ip[2..4].copy_from_slice(&total.to_be_bytes());
                    let mut udp = vec![0x13, 0xc4, 0x23, 0x64, 0, 0, 0, 0];
                    udp[4..6].copy_from_slice(&((8 + hep.len()) as u16).to_be_bytes());
                    hep_frames.push([&[1u8][..], &ip, &udp, &hep].concat());
                }
                n += 1;
            });
            for (j, f) in hep_frames.into_iter().enumerate() {
                std::fs::write(seeds.join("decode").join(format!("{stem}-hep-{i}-{j}")), f).unwrap();
            }
        }
    }
}
