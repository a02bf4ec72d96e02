//! Diagnostics: one problem in one file, at a line and column, with what
//! was expected. Both per-file validation and deployment checks report
//! through this type, so the command line prints them the same way.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A position in a YAML file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Pos {
    /// Position from a serde-saphyr location (which is 1-based; 0 means unknown).
    pub fn of(loc: serde_saphyr::Location) -> Option<Pos> {
        (loc.line() > 0).then(|| Pos {
            line: loc.line(),
            column: loc.column().max(1),
        })
    }
}

/// How bad a finding is: errors make `mqlink check` fail, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration cannot work as written.
    Error,
    /// It works, but probably not as the operator wants (e.g. no redundancy).
    Warning,
}

/// One finding, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file it is about, if any (a partition is about the whole deployment).
    pub file: Option<PathBuf>,
    /// Where in the file, when known.
    #[serde(flatten)]
    pub pos: Option<Pos>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// An error at `file:pos`.
    pub fn error(file: &Path, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: Some(file.to_owned()),
            pos,
            message: message.into(),
        }
    }

    /// A warning at `file:pos`.
    pub fn warning(file: &Path, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            file: Some(file.to_owned()),
            pos,
            message: message.into(),
        }
    }

    /// `file:line:column` (as much of it as is known).
    pub fn location(&self) -> String {
        match (&self.file, self.pos) {
            (Some(f), Some(p)) => format!("{}:{}:{}", f.display(), p.line, p.column),
            (Some(f), None) => f.display().to_string(),
            (None, _) => "deployment".to_owned(),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.location(), self.message)
    }
}

/// A config file that could not be loaded: every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct ConfigError {
    /// The problems, in file order (at least one is an error).
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Format `p` as `file:line:column` for use inside another message.
pub(crate) fn at(file: &Path, pos: Option<Pos>) -> String {
    match pos {
        Some(p) => format!("{}:{}:{}", file.display(), p.line, p.column),
        None => file.display().to_string(),
    }
}
