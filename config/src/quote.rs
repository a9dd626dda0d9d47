//! What a caller gave, quoted for a message so that no message or log
//! line carries it unbounded or with control characters.

/// A value for a message: quoted as Rust's `Debug` quotes strings (control
/// characters escaped), cut to 64 characters with its whole length noted,
/// so no message or log line echoes unbounded input.
pub fn quoted(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    if value.chars().count() <= MAX_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_CHARS).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}
