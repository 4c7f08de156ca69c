//! Errors of the genesis crate.

use std::path::PathBuf;

use thiserror::Error;

use crate::file::GenesisProblem;

/// Failures reading or writing genesis files, key files and node configuration.
#[derive(Debug, Error)]
pub enum GenesisError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The genesis file is not valid JSON of the expected shape.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde reported, with line and column.
        source: serde_json::Error,
    },
    /// The genesis file parses but breaks the rules.
    #[error("{} is invalid:{}", path.display(), problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<GenesisProblem>,
    },
    /// A key file readable by others than its owner.
    #[error(
        "{}: key file is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that does not hold a valid key.
    #[error("{}: not a valid key file: {reason}", path.display())]
    KeyFileFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Refusing to overwrite an existing file.
    #[error("{}: already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// A node configuration file that does not parse or breaks a rule.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key and the problem.
        reason: String,
    },
}
