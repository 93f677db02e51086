//! The one error type of this crate. Every variant names the file it concerns; parse errors also
//! carry the 1-based line and the field, so that `Display` reads `file:line: field: reason`.

use std::path::PathBuf;

/// Everything that can go wrong while parsing MIND files, writing or reading shards.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (in the message once: not also chained as a `source`).
        error: std::io::Error,
    },
    /// A line of a MIND text file (`news.tsv`, `behaviors.tsv`, `*.vec`) is malformed.
    #[error("{}:{line}: {field}: {reason}", path.display())]
    Parse {
        /// The text file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column or JSON field that is wrong (`time`, `impressions`, `title_entities`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Parquet file could not be read or written.
    #[error("{}: parquet: {error}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        error: parquet::errors::ParquetError,
    },
    /// An Arrow array could not be built or converted.
    #[error("{}: arrow: {error}", path.display())]
    Arrow {
        /// The Parquet file the batch belongs to.
        path: PathBuf,
        /// The underlying error.
        error: arrow::error::ArrowError,
    },
    /// A Parquet file lacks a column, or a column has the wrong type.
    #[error("{}: column `{field}`: {reason}", path.display())]
    Schema {
        /// The Parquet file.
        path: PathBuf,
        /// The column.
        field: String,
        /// Expected versus found.
        reason: String,
    },
    /// A value in a shard breaks the data contract (non-dense nid, out-of-range id, ...).
    #[error("{}: row {row}: `{field}`: {reason}", path.display())]
    Invalid {
        /// The Parquet file.
        path: PathBuf,
        /// 0-based row in the file.
        row: usize,
        /// The column.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `manifest.json` is unreadable, of another format version, or inconsistent.
    #[error("{}: {field}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The manifest field concerned.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A file listed in the manifest does not have the recorded sha256.
    #[error("{}: sha256 is {actual}, manifest.json says {expected}", path.display())]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// The sha256 the manifest records.
        expected: String,
        /// The sha256 of the file on disk.
        actual: String,
    },
}

impl DataError {
    /// Shorthand for [`DataError::Io`].
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error }
    }

    /// Shorthand for [`DataError::Parse`].
    pub fn parse(
        path: impl Into<PathBuf>,
        line: u64,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DataError::Parse { path: path.into(), line, field: field.into(), reason: reason.into() }
    }
}
