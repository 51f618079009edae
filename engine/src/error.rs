//! The engine's error type: one enum, split by cause, each message saying what was wrong,
//! where, and what to do.

use std::path::PathBuf;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job file is wrong: an unknown key, a bad value, a missing section.
    #[error("job file {file}: {message}")]
    Job {
        /// The job file (or `<job>` for an in-memory job).
        file: String,
        /// What is wrong and where in the file.
        message: String,
    },
    /// An SQL script is wrong or outside the subset panes runs.
    #[error("SQL {file}:{line}:{column}: {message}")]
    Sql {
        /// The script (or `<sql>` for text given inline).
        file: String,
        /// Line of the construct, from 1.
        line: u64,
        /// Column of the construct, from 1.
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// The input data does not fit the job: a missing column, a wrong type, a bad value.
    #[error("input {origin}: {message}")]
    Input {
        /// Where: file, row group, row or partition.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not repeated as `source()`).
        cause: std::io::Error,
    },
    /// A Parquet file could not be read or written (corrupt, truncated, not Parquet).
    #[error("Parquet file {path}: {cause}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not repeated as `source()`).
        cause: parquet::errors::ParquetError,
    },
    /// An Arrow operation failed on input data (a CSV that does not parse, a cast).
    #[error("{context}: {cause}")]
    Arrow {
        /// What was being done, and where.
        context: String,
        /// The cause (in the message, not repeated as `source()`).
        cause: arrow::error::ArrowError,
    },
    /// A checkpoint is missing, incomplete, corrupt or from another job.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint's directory.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
    /// A sink refused a batch (a service's own sink, through [`crate::sinks::Callback`]).
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink, as [`crate::sinks::Sink::id`] names it.
        sink: String,
        /// What it said.
        message: String,
    },
    /// A newer run of the same job took over a Kafka sink's transactions (another
    /// process was given the partition, see `scale_out`): this run must stop writing.
    #[error("sink {sink}: fenced: another run of the job took over its transactions")]
    Fenced {
        /// The sink.
        sink: String,
    },
    /// The data plane failed: no GPU adapter, a lost device, a GPU validation error.
    #[error(transparent)]
    Backend(#[from] panes_kernels::Error),
    /// A broken invariant: a bug in panes, never the user's fault.
    #[error("internal error (this is a bug in panes, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// An input error at `origin`.
    pub fn input(origin: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Input {
            origin: origin.into(),
            message: message.into(),
        }
    }

    /// An I/O error while doing `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, cause: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            cause,
        }
    }

    /// A Parquet error on file `path`.
    pub fn parquet(path: impl Into<PathBuf>, cause: parquet::errors::ParquetError) -> Error {
        Error::Parquet {
            path: path.into(),
            cause,
        }
    }

    /// An Arrow error while doing `context`.
    pub fn arrow(context: impl Into<String>, cause: arrow::error::ArrowError) -> Error {
        Error::Arrow {
            context: context.into(),
            cause,
        }
    }
}
