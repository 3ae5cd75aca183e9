//! Byte-level helpers the hashing code shares (the decoder's packet hash, the state's
//! fingerprints).

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

#[cfg(test)]
mod tests {
    use super::*;

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
