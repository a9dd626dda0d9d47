//! The loose scalars of stage 1 ([`crate::file`]): numbers, durations and
//! name-or-boolean settings, each read from whatever the YAML holds so that
//! stage 2 ([`crate::validate`]) can say in words what is wrong with it.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A whole number as written, any size: stage 2 checks it against the
/// field's range and reports what was written (`1e30 is outside 1-65535`,
/// `1.5 is not a whole number`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawInt {
    /// A whole number that fits an `i64` (a float with no fraction, such
    /// as `8e3`, included).
    Int(i64),
    /// A whole number too large for any field, as written (`1e30`).
    Huge(String),
    /// A number with a fraction, or not a number (`.nan`), as written.
    Fraction(String),
}

impl From<i64> for RawInt {
    fn from(v: i64) -> Self {
        RawInt::Int(v)
    }
}

/// A float as a person would write it: `1e30` rather than 31 digits.
fn show_float(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e16 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                Ok(i64::try_from(v).map_or_else(|_| RawInt::Huge(v.to_string()), RawInt::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawInt, E> {
                // i64::MIN and MAX as floats; MAX rounds up to 2^63, so the
                // upper bound is exclusive.
                const LOW: f64 = -9_223_372_036_854_775_808.0;
                if !v.is_finite() || v.fract() != 0.0 {
                    Ok(RawInt::Fraction(show_float(v)))
                } else if (LOW..-LOW).contains(&v) {
                    Ok(RawInt::Int(v as i64))
                } else {
                    Ok(RawInt::Huge(show_float(v)))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A duration as written: a string for [`crate::parse_duration`], or a bare
/// integer meaning seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawDuration {
    /// A string such as `500ms` or `1h30m`.
    Text(String),
    /// An integer: that many seconds (negative ones are refused in stage 2).
    Seconds(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 2s, 1m or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                i64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A setting written either as a name or as a YAML boolean
/// (`proxyProtocol: false`, `splice: auto`); stage 2 decides what each
/// means for its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawNameOrBool {
    /// A name, checked against the field's spellings in stage 2.
    Name(String),
    /// `true` or `false`.
    Bool(bool),
}

impl<'de> Deserialize<'de> for RawNameOrBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawNameOrBool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNameOrBool, E> {
                Ok(RawNameOrBool::Name(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNameOrBool, E> {
                Ok(RawNameOrBool::Bool(v))
            }
        }
        deserializer.deserialize_any(V)
    }
}
