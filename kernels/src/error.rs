//! What a backend can fail with: the GPU (no adapter, a lost device, a shader or validation
//! error), and any backend given pane state that does not fit it.

/// A backend error, with the context it happened in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter could be found or opened.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The backend cannot do something the job asks for: an aggregate, checkpoints, spill.
    #[error("the {backend} backend does not support {what} yet; the cpu backend does")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// What it cannot do.
        what: String,
    },
    /// A state batch (from a checkpoint or a spill file) does not fit this backend.
    #[error("pane state does not match the job's aggregates: {0}")]
    BadState(String),
    /// Pane state spilled to disk could not be read back.
    #[error("reading spilled pane state: {0}")]
    Spill(String),
    /// The GPU reported an error: device lost, out of memory, validation, a failed map.
    #[error("GPU error while {context} on {adapter}: {message}")]
    Gpu {
        /// What panes was doing.
        context: String,
        /// The adapter's name and API.
        adapter: String,
        /// What the driver or wgpu said.
        message: String,
    },
}

/// Result with the kernels' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
