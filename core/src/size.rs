//! Parsing of sizes (`256K`, `1M`) and durations (`5`, `2.5`, `10us`, `5ms`) from the command
//! line, with errors that say what is valid.

use std::time::Duration;

/// Largest buffer the tools accept (ring: total; perf: per CPU).
const MAX_BUFFER: u64 = 1 << 30;

/// Parses `N`, `NK`, `NM` or `NG` (binary units; `KB`, `KiB` and lowercase too) into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    if text.starts_with(['+', '-']) {
        // The shared parser says why (a sign, a negative number).
        crate::values::parse_unsigned(text, "a size")?;
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size: use bytes or a K/M/G suffix, e.g. 262144, 256K, 1M")),
    };
    let n = crate::values::parse_unsigned(digits, "a size (bytes or a K/M/G suffix, e.g. 256K)")?;
    n.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

/// `--buffer-size`: a power of two from one page to 1 GiB (ring: total bytes, a power-of-two
/// multiple of the page size; perf: bytes per CPU, a power-of-two number of pages: both come to
/// the same rule).
pub fn parse_buffer_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    let page = crate::host::page_size() as u64;
    if !bytes.is_power_of_two() || bytes < page || bytes > MAX_BUFFER {
        return Err(format!(
            "{text} ({bytes} bytes) is not a valid buffer size: it must be a power of two from {} to {} \
             (e.g. 64K, 256K, 4M; for perf it is per CPU)",
            human_bytes(page),
            human_bytes(MAX_BUFFER)
        ));
    }
    Ok(bytes)
}

/// A duration: plain seconds (`5`, `0.5`) or with a unit (`ns`, `us`, `ms`, `s`, `m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration: use e.g. 5, 2.5s, 10ms, 100us"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ns, us, ms, s or m")),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--duration SECS`: positive.
pub fn parse_run_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

/// `262144` -> `256 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale && bytes % scale == 0 {
            return format!("{} {unit}", bytes / scale);
        }
    }
    for (scale, unit) in UNITS {
        if bytes >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256K"), Ok(256 << 10));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("12X").is_err());
        for junk in ["4kbibi", "4KBB", "+4K", "-4K", " 4K", "4K ", "K", "4.5K"] {
            assert!(parse_bytes(junk).is_err(), "{junk}");
        }
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn buffer_sizes_must_be_powers_of_two_pages() {
        assert_eq!(parse_buffer_size("256K"), Ok(256 << 10));
        assert_eq!(parse_buffer_size("4K"), Ok(4096));
        for bad in ["1000", "3M", "2K", "0", "2G", "-1"] {
            let err = parse_buffer_size(bad).unwrap_err();
            assert!(err.contains("power of two") || err.contains("not a size"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_run_duration("0").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(262144), "256 KiB");
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(100), "100 B");
    }
}
