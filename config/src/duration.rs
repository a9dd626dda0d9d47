//! Durations as the config file writes them: `500ms`, `2s`, `1m`, `1h`,
//! `1h30m`, or a bare integer meaning seconds.

use crate::kube::quoted;
use std::time::Duration;

const EXAMPLES: &str = "e.g. 500ms, 2s, 1m or 1h30m";

/// The units, largest first: (suffix, milliseconds).
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a duration such as `500ms`, `2s`, `1m`, `1h` or `1h30m`.
///
/// A duration is one or more `<integer><unit>` parts with units `h`, `m`, `s`
/// and `ms`, each unit at most once and largest first. A bare integer means
/// seconds (`30` is `30s`). Surrounding whitespace is ignored; signs,
/// fractions and spaces inside are not accepted. The error is a complete
/// sentence naming the input, e.g. `"1x" is not a valid duration: unknown
/// unit "x" (use h, m, s or ms)`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    parse(input.trim()).map_err(|why| format!("{} is not a valid duration: {why}", quoted(input)))
}

fn parse(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("it is empty ({EXAMPLES})"));
    }
    if s.starts_with('-') {
        return Err("it must not be negative".to_string());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| "it is too large".to_string())?;
        return Ok(Duration::from_secs(secs));
    }

    let mut rest = s;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit seen: each next one must be smaller.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "expected a number at {} ({EXAMPLES})",
                quoted(rest)
            ));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                Some('.') => format!("fractions are not supported ({EXAMPLES})"),
                Some(c) => format!("unexpected {c:?} ({EXAMPLES})"),
                None => format!("{} has no unit ({EXAMPLES})", quoted(number)),
            });
        }
        let Some(index) = UNITS.iter().position(|(suffix, _)| *suffix == unit) else {
            return Err(format!("unknown unit {} (use h, m, s or ms)", quoted(unit)));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err("units must go from largest to smallest, each at most once".to_string());
        }
        last_unit = Some(index);
        let number: u64 = number.parse().map_err(|_| "it is too large".to_string())?;
        total_ms = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "it is too large".to_string())?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it: `1h30m`, `2s`,
/// `1s500ms`, `0s`. Durations with a sub-millisecond part fall back to
/// `Debug` formatting (`1.0005ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (suffix, unit_ms) in UNITS {
        let unit_ms = u128::from(unit_ms);
        let n = ms / unit_ms;
        if n > 0 {
            out.push_str(&format!("{n}{suffix}"));
            ms %= unit_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn bare_integer_is_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "  ",
            "s",
            "1x",
            "1.5s",
            "-1s",
            "-5",
            "1s1h",
            "1m1m",
            "1h 30m",
            "ms",
            "2 s",
            "99999999999999999999",
            "99999999999999999h",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("{bad:?} is not a valid duration: ")),
                "{err}"
            );
        }
        assert_eq!(
            parse_duration("1x"),
            Err(r#""1x" is not a valid duration: unknown unit "x" (use h, m, s or ms)"#.into())
        );
    }

    #[test]
    fn format_round_trips() {
        for text in [
            "0s",
            "500ms",
            "2s",
            "1m",
            "1h",
            "1h30m",
            "1s500ms",
            "25h1m1s1ms",
        ] {
            let d = parse_duration(text).expect(text);
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
    }
}
