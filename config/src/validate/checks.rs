//! The value checks the parts of the file share: one raw value in, the
//! typed value or the message to report at its path out.

use std::str::FromStr;
use std::time::Duration;

use crate::duration::{format_duration, parse_duration};
use crate::file::{RawDuration, RawInt};
use crate::kube::quoted;
use crate::model::ParseEnumError;

/// `raw` as a `u32`, if a whole number within `lo..=hi`; any other number
/// is reported as written (`1e30 is outside 1-65535`).
pub(super) fn u32_in(raw: &RawInt, lo: u32, hi: u32) -> Result<u32, String> {
    match raw {
        RawInt::Int(v) => u32::try_from(*v)
            .ok()
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(|| format!("{v} is outside {lo}-{hi}")),
        RawInt::Huge(shown) => Err(format!("{shown} is outside {lo}-{hi}")),
        RawInt::Fraction(shown) => Err(format!(
            "{shown} is not a whole number (expected one from {lo} to {hi})"
        )),
    }
}

/// A port number, 1-65535.
pub(super) fn port(raw: &RawInt) -> Result<u16, String> {
    u32_in(raw, 1, 65535).map(|v| u16::try_from(v).unwrap_or(u16::MAX))
}

/// A duration within `range` (both ends included), reported with the range
/// when outside it (`1ms is outside 100ms-1h`).
pub(super) fn duration_in(
    raw: &RawDuration,
    (min, max): (Duration, Duration),
) -> Result<Duration, String> {
    let d = duration(raw)?;
    if (min..=max).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "{} is outside {}-{}",
            format_duration(d),
            format_duration(min),
            format_duration(max)
        ))
    }
}

/// Any duration, zero included.
fn duration(raw: &RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Text(text) => parse_duration(text),
        RawDuration::Seconds(secs) => u64::try_from(*secs)
            .map(Duration::from_secs)
            .map_err(|_| format!("{secs} is not a valid duration: it must not be negative")),
    }
}

/// One of an enum's spellings (its `FromStr`).
pub(super) fn spelled<T: FromStr<Err = ParseEnumError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: ParseEnumError| e.to_string())
}

/// An RFC 1123 DNS label: 1-63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit.
pub(super) fn dns_label(s: &str) -> Result<(), String> {
    const WHAT: &str = "is not a valid RFC 1123 label";
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    if s.len() > 63 {
        return Err(format!(
            "{} {WHAT}: it is longer than 63 characters",
            quoted(s)
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{} {WHAT}: only lowercase letters, digits and '-' are allowed",
            quoted(s)
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{} {WHAT}: it must start and end with a letter or digit",
            quoted(s)
        ));
    }
    Ok(())
}
