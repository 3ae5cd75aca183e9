//! Byte-level helpers the hashing and writing code shares (the decoder's packet hash, the
//! state's fingerprints and contact keys, JSON lines), and a cache hint for bytes another
//! thread wrote.

/// Asks for the cache lines of `b` to be brought into this core's caches, ahead of their use:
/// for bytes filled on another thread (the decoding thread's batches), which are in that
/// core's cache and whose first touch here is otherwise a miss. A hint only: it changes no
/// result. (The daemon's core tried it on the capture threads' frames too: 3.90-4.00 us of CPU
/// per packet at 50,000 packets/s against 3.70 without, so it does not.)
#[inline(always)]
pub fn prefetch(b: &[u8]) {
    prefetch_raw(b.as_ptr(), b.len());
}

/// [`prefetch`] of any value's memory (padding included, which a `&[u8]` may not cover).
#[inline(always)]
pub fn prefetch_value<T>(v: &T) {
    prefetch_raw((v as *const T).cast::<u8>(), std::mem::size_of::<T>());
}

#[inline(always)]
fn prefetch_raw(p: *const u8, len: usize) {
    for o in (0..len).step_by(64) {
        prefetch_line(p.wrapping_add(o));
    }
    if len > 64 {
        // (the last line, when the start was not on a line's boundary)
        prefetch_line(p.wrapping_add(len - 1));
    }
}

/// Asks for the cache line that holds `p` (the capture file's read-ahead uses it too).
#[inline(always)]
pub fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, part of the x86-64 baseline) is a hint: it reads nothing into
    // the program and never faults, whatever the address
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Up to seven bytes as a little-endian integer, as if zero-padded to eight: two overlapping
/// loads instead of a copy into a buffer (which compiles to a `memcpy` call per hashed string).
#[inline(always)]
pub fn le_tail(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n < 8);
    if n >= 4 {
        let lo = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let hi = u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]));
        // (the bytes both loads read land on the same places: or-ing them changes nothing)
        lo | hi << (8 * (n - 4))
    } else if n > 0 {
        u64::from(b[0]) | u64::from(b[n / 2]) << (8 * (n / 2)) | u64::from(b[n - 1]) << (8 * (n - 1))
    } else {
        0
    }
}

/// The decimal digits of `n`, as `n.to_string()` writes them, in `buf` (no allocation).
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let (mut n, mut i) = (n, buf.len());
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `s` in ASCII lower case, borrowed when it has no capitals (nearly always, for the domains
/// the configuration's tables are keyed by).
pub fn ascii_lowercase(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) { s.to_ascii_lowercase().into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_borrowed_unless_it_has_capitals() {
        assert!(matches!(ascii_lowercase("lab.example"), std::borrow::Cow::Borrowed("lab.example")));
        assert!(matches!(ascii_lowercase("Lab.EXAMPLE"), std::borrow::Cow::Owned(s) if s == "lab.example"));
        assert_eq!(ascii_lowercase("Élan.Example"), "Élan.example", "only ASCII letters change");
    }

    #[test]
    fn decimals_as_to_string_writes_them() {
        let mut rng = crate::testkit::Rng(5);
        let mut cases = vec![0, 1, 9, 10, 99, 100, 180, 486, 699, 1000, 5060, 65535, u64::MAX, u64::MAX / 10];
        cases.extend((0..10_000).map(|_| rng.next_u64() >> rng.below(64)));
        for n in cases {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn tail_is_the_zero_padded_little_endian_word() {
        let src: Vec<u8> = (1..=7).map(|i| 0x11 * i + 0x80).collect();
        for n in 0..8 {
            for start in 0..(8 - n) {
                let b = &[&src[..], &src[..]].concat()[start..start + n];
                let mut padded = [0u8; 8];
                padded[..n].copy_from_slice(b);
                assert_eq!(le_tail(b), u64::from_le_bytes(padded), "{b:02x?}");
            }
        }
        assert_eq!(le_tail(&[0xff; 7]), 0x00ff_ffff_ffff_ffff);
    }
}
