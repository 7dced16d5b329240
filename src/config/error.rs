//! Why a config could not be loaded, and where in the file.

use super::*; // a part of `config`: its types, helpers and imports

/// Why a config could not be loaded. `Display` is one line, led by `FILE:LINE:`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable or not UTF-8).
    // The OS error is part of the message rather than a `source()`, so that the
    // one-line `Display` is complete wherever it is printed.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The TOML parser's message, on one line.
        message: String,
    },
    /// A key that is not part of the schema (usually a typo or a misplaced key).
    #[error("{at}: unknown field {field}{expected}", expected = expected_suffix(expected))]
    UnknownField {
        /// Where.
        at: Location,
        /// The full dotted key, e.g. `fs.bogus`.
        field: String,
        /// The keys its table accepts.
        expected: Vec<String>,
    },
    /// A value of the wrong TOML type, e.g. a string where a number belongs.
    #[error("{at}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    WrongType {
        /// Where.
        at: Location,
        /// The full dotted key, when it can be told.
        field: Option<String>,
        /// What was found and what was expected.
        message: String,
    },
    /// A value of the right type that is not allowed (out of range, malformed).
    #[error("{at}: {field}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// The full dotted key, e.g. `fs.threads`.
        field: String,
        /// The rule and the offending value.
        message: String,
    },
}

/// A place in a config file: the file and, when known, the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file.
    pub path: PathBuf,
    /// The 1-based line, when the error can be pinned to one.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

pub(super) fn expected_suffix(expected: &[String]) -> String {
    match expected {
        [] => ", this table has no fields".to_owned(),
        [one] => format!(", expected {one}"),
        many => format!(", expected one of {}", many.join(", ")),
    }
}
