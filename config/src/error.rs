//! Errors of the config file parser: one [`FieldError`] per problem, all of
//! them gathered in a [`ConfigErrors`].

use std::fmt;

/// One problem in a config file, at a path such as
/// `services[2].ports[0].nodePort`.
///
/// Paths use the file's (camelCase) key names and `[i]` list indices. A
/// problem with the document as a whole (a YAML syntax error, say) has an
/// empty path and displays as its message alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", display_field_error(.path, .message))]
pub struct FieldError {
    /// Where the problem is, e.g. `services[0].vips[1]`; empty for the whole
    /// document.
    pub path: String,
    /// What is wrong, e.g. `99999 is outside 1-65535`.
    pub message: String,
}

impl FieldError {
    /// Builds an error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

fn display_field_error(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

/// Every problem found in a config file (never empty). Displays one problem a
/// line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", DisplayLines(.errors))]
pub struct ConfigErrors {
    errors: Vec<FieldError>,
}

struct DisplayLines<'a>(&'a [FieldError]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// Wraps a list of problems.
    pub fn new(errors: Vec<FieldError>) -> Self {
        ConfigErrors { errors }
    }

    /// The problems, in document order.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Takes the problems out.
    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.errors.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there are none (never, for errors from the parser).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl From<Vec<FieldError>> for ConfigErrors {
    fn from(errors: Vec<FieldError>) -> Self {
        ConfigErrors::new(errors)
    }
}

impl IntoIterator for ConfigErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_error_displays_path_and_message() {
        let e = FieldError::new("services[2].ports[0].nodePort", "99999 is outside 1-65535");
        assert_eq!(
            e.to_string(),
            "services[2].ports[0].nodePort: 99999 is outside 1-65535"
        );
        assert_eq!(FieldError::new("", "bad yaml").to_string(), "bad yaml");
    }

    #[test]
    fn config_errors_display_one_per_line_and_iterate() {
        let errors = ConfigErrors::new(vec![
            FieldError::new("a", "one"),
            FieldError::new("b[1]", "two"),
        ]);
        assert_eq!(errors.to_string(), "a: one\nb[1]: two");
        assert_eq!(errors.len(), 2);
        assert_eq!((&errors).into_iter().count(), 2);
        let paths: Vec<String> = errors.into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["a", "b[1]"]);
    }
}
