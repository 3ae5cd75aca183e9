//! RFC 3339 UTC timestamps with microseconds, without a date-time dependency.
use crate::capture::Micros;

/// `2026-11-27T02:08:26.123456Z`
pub fn rfc3339_micros(ts: Micros) -> String {
    let secs = ts.div_euclid(1_000_000);
    let micros = ts.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

/// Appends `2026-11-27T02:08:26.123456Z` to `out`, without formatting machinery.
pub fn write_rfc3339_micros(out: &mut Vec<u8>, ts: Micros) {
    let secs = ts.div_euclid(1_000_000);
    let micros = ts.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        out.extend_from_slice(rfc3339_micros(ts).as_bytes());
        return;
    }
    let y = y as u32;
    // filled on the stack, then one copy (a push per character showed in replay profiles)
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut two = |at: usize, n: u32| {
        b[at] = b'0' + (n / 10) as u8;
        b[at + 1] = b'0' + (n % 10) as u8;
    };
    two(0, y / 100);
    two(2, y % 100);
    two(5, m);
    two(8, d);
    two(11, sod / 3600);
    two(14, sod / 60 % 60);
    two(17, sod % 60);
    two(20, micros / 10_000);
    two(22, micros / 100 % 100);
    two(24, micros % 100);
    out.extend_from_slice(&b);
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:34:56.000001Z = 951827696 s
        assert_eq!(rfc3339_micros(951_827_696_000_001), "2000-02-29T12:34:56.000001Z");
        // 2026-11-27T02:08:26.5Z = 1795745306 s (date -d @1795745306 -u)
        assert_eq!(rfc3339_micros(1_795_745_306_500_000), "2026-11-27T02:08:26.500000Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
        for ts in [0, 951_827_696_000_001, 1_795_745_306_500_000, -1, 253_402_300_799_999_999] {
            let mut v = Vec::new();
            write_rfc3339_micros(&mut v, ts);
            assert_eq!(String::from_utf8(v).unwrap(), rfc3339_micros(ts));
        }
        // and instants anywhere from 1970 to 9999, to the microsecond
        let mut rng = crate::testkit::Rng(7);
        for _ in 0..100_000 {
            let ts = rng.below(253_402_300_800_000_000) as Micros;
            let mut v = vec![b'x'];
            write_rfc3339_micros(&mut v, ts);
            assert_eq!(String::from_utf8(v).unwrap(), format!("x{}", rfc3339_micros(ts)));
        }
    }
}
