//! Tools for tests and benchmarks, not for production: a generator of large realistic captures.
pub mod capgen;

/// Every lab capture shipped in the repository (`fixtures/lab/captures/*.pcap`), in name order.
pub fn lab_captures() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab/captures");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures/lab/captures")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    v.sort();
    v
}

/// splitmix64: small, fast, deterministic (the generator's, and the tests' that compare two
/// implementations on generated inputs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform enough below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn percent(&mut self, p: u32) -> bool {
        self.below(100) < u64::from(p)
    }
}
