//! Units in settings: durations and sizes, parsed by one grammar wherever a
//! flag, a config file or a storage option takes them. Durations are
//! humantime's (`30s`, `5m`, `1h 30m`, `500ms`, `2days`), the grammar
//! object_store uses for Delta's own storage options, so one config never
//! means two things; a bare number is seconds. Every value is bounded and a
//! bad one is an error that says what is expected, never a panic or a
//! silent 0. Owns parsing; must not know where a value comes from.

use std::time::Duration;

/// The longest duration any setting takes (a year): deadlines computed as
/// "now + timeout" stay far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration: `30s`, `5m`, `1h 30m`, `250ms`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration like 30s, 5m, 1h 30m or 500ms");
    let d = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = t.parse().map_err(|_| bad())?;
        Duration::try_from_secs_f64(secs).map_err(|_| too_long(s))?
    } else {
        match humantime::parse_duration(t) {
            Ok(d) => d,
            Err(humantime::DurationError::NumberOverflow) => return Err(too_long(s)),
            Err(_) => return Err(bad()),
        }
    };
    if d > MAX_DURATION {
        return Err(too_long(s));
    }
    Ok(d)
}

fn too_long(s: &str) -> String {
    format!("`{s}` is longer than the longest duration a setting takes (365 days)")
}

/// A size in bytes: `2G`, `512M`, `64KiB`, `1.5GB`, or a number of bytes.
/// Units are powers of 1024. Negative, fractional-byte, `NaN` and
/// overflowing values are errors.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a size like 2G, 512M, 64K or 1048576");
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = n * multiplier as f64;
    // Exactly representable up to 2^53; beyond that no one means it.
    if !bytes.is_finite() || bytes > (1u64 << 53) as f64 {
        return Err(format!("`{s}` is larger than any size a setting takes"));
    }
    usize::try_from(bytes.round() as u64).map_err(|_| bad())
}

/// A size that must be more than zero (memory limits).
pub fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err(format!("`{s}` is zero; give a size like 2G or 512M")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        for (text, ms) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h 30m", 5_400_000),
            ("500ms", 500),
            ("2days", 172_800_000),
            ("30", 30_000),
            ("0.5", 500),
            (" 15s ", 15_000),
        ] {
            assert_eq!(parse_duration(text).unwrap().as_millis(), ms, "{text}");
        }
        for text in [
            "99999999999999999999s",
            "18446744073709551615s",
            "18446744073709551616",
            "400days",
            "1e30",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(
                e.contains("longer") || e.contains("not a duration"),
                "{text}: {e}"
            );
        }
        for text in ["", "-5s", "NaN", "inf", "5 parsecs", "s"] {
            assert!(
                parse_duration(text).unwrap_err().contains("not a duration"),
                "{text}"
            );
        }
    }

    #[test]
    fn sizes_parse_or_say_why() {
        for (text, bytes) in [
            ("2G", 2usize << 30),
            ("512M", 512 << 20),
            ("64KiB", 64 << 10),
            ("1.5GB", 3 << 29),
            ("1048576", 1 << 20),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
        for text in [
            "-1G",
            "NaN",
            "inf",
            "1e3",
            "G",
            "",
            "1.2.3M",
            "12X",
            "99999999999999999999T",
        ] {
            assert!(parse_size(text).is_err(), "{text} was accepted");
        }
        assert!(parse_positive_size("0").unwrap_err().contains("zero"));
    }
}
