//! A config file's bytes as the text the parser reads, and what makes a
//! file unusable before its YAML is even read: more than [`MAX_FILE_BYTES`],
//! not UTF-8, empty, or ending in the middle of a line.
//!
//! The last one is how a file cut short while being written shows: a
//! writer stopped (or caught) part-way leaves half a line at the end, and
//! half a config file is often valid YAML with fewer Services. A complete
//! file ends with a line break, as every editor writes it.

use crate::error::{ConfigErrors, FieldError};
use crate::file::EMPTY_DOCUMENT;
use crate::model::EdgeConfig;

/// The largest config file read, in bytes (64 MiB); a config of 1,000
/// Services with 3 ports each is about 0.3 MiB.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The error for a file of `size` bytes, over [`MAX_FILE_BYTES`].
pub fn too_large(size: u64) -> FieldError {
    FieldError::new(
        "",
        format!(
            "the file is {} ({size} bytes); a config file may be at most {}",
            mib(size),
            mib(MAX_FILE_BYTES)
        ),
    )
}

fn mib(bytes: u64) -> String {
    let whole = bytes / (1024 * 1024);
    let tenths = (bytes % (1024 * 1024)) * 10 / (1024 * 1024);
    if tenths == 0 {
        format!("{whole} MiB")
    } else {
        format!("{whole}.{tenths} MiB")
    }
}

/// The file's bytes as text: UTF-8, not empty, ending with a line break.
pub fn file_text(bytes: &[u8]) -> Result<&str, FieldError> {
    if u64::try_from(bytes.len()).is_ok_and(|n| n > MAX_FILE_BYTES) {
        return Err(too_large(bytes.len() as u64));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        // Both from the valid UTF-8 before the bad byte.
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        FieldError::new(
            "",
            format!(
                "the file is not UTF-8 text: byte 0x{:02x} at line {line}, column {column} is not valid UTF-8 (save the file as UTF-8)",
                bytes[e.valid_up_to()]
            ),
        )
    })?;
    if text.is_empty() {
        return Err(FieldError::new("", EMPTY_DOCUMENT));
    }
    if !text.ends_with('\n') {
        let line = text.lines().count();
        return Err(FieldError::new(
            "",
            format!(
                "the file ends in the middle of line {line}: it looks cut short while being written, so it is refused (a complete file ends with a line break)"
            ),
        ));
    }
    Ok(text)
}

/// Parses and validates a config file's bytes: [`file_text`], then
/// [`crate::parse_edge_config`].
pub fn parse_edge_config_file(bytes: &[u8]) -> Result<EdgeConfig, ConfigErrors> {
    read_edge_config_file(bytes).map(|c| c.config)
}

/// A config file read whole ([`read_edge_config_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileContents {
    /// The configuration.
    pub config: EdgeConfig,
    /// Whether the file lists its Services (`services: []` included)
    /// rather than leaving `services` out or empty. A reload that would
    /// remove every Service of the running configuration needs the list:
    /// a file cut short just before its `services` is otherwise valid.
    pub lists_services: bool,
}

impl ConfigFileContents {
    /// The error for a reload of this file over a running configuration
    /// with `running` Services from the file: removing them all needs a
    /// file that lists none.
    pub fn removes_unlisted(&self, running: usize) -> Option<FieldError> {
        (running > 0 && self.config.services.is_empty() && !self.lists_services).then(|| {
            FieldError::new(
                "services",
                format!(
                    "missing, which would remove every Service the running configuration has from this file ({running}); a file cut short can look like this, so to remove them all, write `services: []`"
                ),
            )
        })
    }
}

/// [`parse_edge_config_file`], with whether the file lists its Services.
pub fn read_edge_config_file(bytes: &[u8]) -> Result<ConfigFileContents, ConfigErrors> {
    let text = file_text(bytes).map_err(|e| ConfigErrors::new(vec![e]))?;
    let (config, lists_services) = crate::parse_listing(text)?;
    Ok(ConfigFileContents {
        config,
        lists_services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_error(bytes: &[u8]) -> String {
        let errors = parse_edge_config_file(bytes).expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors}");
        errors.to_string()
    }

    const GOOD: &str = "services: []\n";

    #[test]
    fn a_complete_utf8_file_parses() {
        assert!(parse_edge_config_file(GOOD.as_bytes()).is_ok());
        assert!(parse_edge_config_file(b"services: []\r\n").is_ok());
        assert!(parse_edge_config_file("# caf\u{e9}\nservices: []\n".as_bytes()).is_ok());
    }

    #[test]
    fn an_empty_file_says_how_to_remove_every_service() {
        for empty in ["", "\n", "  \n\n", "# nothing\n", "---\n"] {
            let e = only_error(empty.as_bytes());
            assert!(e.starts_with("the file is empty"), "{empty:?}: {e}");
            assert!(e.contains("write `services: []`"), "{e}");
        }
    }

    #[test]
    fn a_file_cut_in_the_middle_of_a_line_is_refused() {
        let full = "services:\n  - name: web\n    vips: [10.0.0.1]\n    ports:\n      - port: 8080\n        nodePort: 30080\n";
        assert!(parse_edge_config_file(full.as_bytes()).is_ok());
        // Every cut that is not at a line end: most of them would be valid
        // YAML (a shorter port, a Service without ports).
        for cut in (1..full.len()).filter(|&n| !full[..n].ends_with('\n')) {
            let e = only_error(&full.as_bytes()[..cut]);
            assert!(e.contains("cut short while being written"), "{cut}: {e}");
        }
        assert_eq!(
            only_error(b"services: []\nnodes: [{name: a"),
            "the file ends in the middle of line 2: it looks cut short while being written, so it is refused (a complete file ends with a line break)"
        );
    }

    #[test]
    fn non_utf8_is_refused_with_its_place() {
        assert_eq!(
            only_error(b"services: []\nnodes: [{name: \"caf\xc3\xa9\xff\"}]\n"),
            "the file is not UTF-8 text: byte 0xff at line 2, column 21 is not valid UTF-8 (save the file as UTF-8)"
        );
        // UTF-16, as some editors save: the BOM is not UTF-8.
        assert!(only_error(b"\xff\xfes\x00\n\x00").contains("line 1, column 1"));
    }

    #[test]
    fn removing_every_service_needs_a_list() {
        let read = |text: &str| read_edge_config_file(text.as_bytes()).expect("valid");
        let services =
            "services:\n  - {name: a, vips: [10.0.0.1], ports: [{port: 80, nodePort: 30080}]}\n";
        let nodes = "nodes: [{name: n, addresses: [10.0.0.9]}]\n";
        // Cut before its Services, or right after `services:`.
        for unlisted in [nodes.to_string(), format!("{nodes}services:\n")] {
            let cut = read(&unlisted);
            assert!(!cut.lists_services, "{unlisted:?}");
            assert_eq!(cut.removes_unlisted(0), None, "nothing to remove");
            assert_eq!(
                cut.removes_unlisted(2).map(|e| e.to_string()).as_deref(),
                Some("services: missing, which would remove every Service the running configuration has from this file (2); a file cut short can look like this, so to remove them all, write `services: []`")
            );
        }
        for listed in [
            format!("{nodes}services: []\n"),
            format!("{nodes}{services}"),
        ] {
            let whole = read(&listed);
            assert!(whole.lists_services, "{listed:?}");
            assert_eq!(whole.removes_unlisted(2), None, "{listed:?}");
        }
    }

    #[test]
    fn too_large_names_the_size_and_the_limit() {
        assert_eq!(
            too_large(70 * 1024 * 1024 + 1).to_string(),
            "the file is 70 MiB (73400321 bytes); a config file may be at most 64 MiB"
        );
        assert!(too_large(100 * 1024 * 1024 + 512 * 1024)
            .message
            .starts_with("the file is 100.5 MiB"));
    }
}
