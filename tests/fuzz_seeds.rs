//! A short deterministic run of the fuzz targets' bodies over the kept seeds and every
//! regression input (fuzz/seeds, fuzz/regressions), plus seeds made here from the lab captures.
mod common;
use common::*;
use siptap::fuzz_harness;

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let d = root().join("fuzz").join(dir);
    let Ok(rd) = std::fs::read_dir(&d) else { return Vec::new() };
    rd.map(|e| {
        let p = e.unwrap().path();
        (p.display().to_string(), std::fs::read(&p).unwrap())
    })
    .collect()
}

#[test]
fn kept_seeds_and_regressions_run_clean() {
    let mut n = 0;
    for target in ["decode", "sip_parse", "pipeline"] {
        for sub in ["seeds", "regressions"] {
            for (name, data) in inputs(&format!("{sub}/{target}")) {
                eprintln!("{name}");
                match target {
                    "decode" => drop(fuzz_harness::decode(&data)),
                    "sip_parse" => drop(fuzz_harness::sip_parse(&data)),
                    _ => drop(fuzz_harness::pipeline(&data)),
                }
                n += 1;
            }
        }
    }
    assert!(n >= 30, "only {n} seeds");
}

#[test]
fn lab_captures_as_pipeline_inputs_and_their_mutations() {
    // every lab capture as one pipeline input, then truncated and bit-flipped at many points
    for entry in std::fs::read_dir(root().join("fixtures/lab/captures")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "pcap") {
            continue;
        }
        let mut frames = Vec::new();
        siptap::capture::file::read_file(&p, |f| frames.push((f.linktype, f.data.to_vec()))).unwrap();
        let refs: Vec<(u32, &[u8])> = frames.iter().map(|(l, d)| (*l, &d[..])).collect();
        let input = fuzz_harness::pipeline_input(&refs);
        assert!(fuzz_harness::pipeline(&input) > 0, "{}", p.display());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = input.clone();
            let at = (x as usize) % m.len();
            m[at] ^= (x >> 32) as u8 | 1;
            fuzz_harness::pipeline(&m[..m.len() - (x as usize >> 40) % 64.min(m.len())]);
        }
    }
}
