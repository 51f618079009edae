//! panes-engine: the control plane of panes.
//!
//! It reads a [`job::Job`], pulls Arrow batches from a source, assigns event time and
//! watermarks, interns keys, splits off late events and drives a kernels
//! [`panes_kernels::Backend`] through its window operator; results and late events go to
//! sinks. [`run::run_job`] ties it together for the CLI, [`pipeline::Pipeline`] for a
//! service that pushes batches itself.
//!
//! The public surface is what an embedder needs: [`job`] (the job model, from a job file,
//! SQL ([`sql`]) or code) with [`expr`] (its filters and computed columns), [`pipeline`]
//! (push batches, poll results, snapshots), [`run`] (a job end to end, as `panes run`, with
//! a service's own [`sources`] and [`sinks`] where it likes), [`checkpoints`], [`Stats`] and
//! [`Error`]. Inside,
//! the modules follow the data: `connect` reads sources and writes sinks, `time` gives each
//! event its time and the watermark it met, `window` says which panes and windows it falls
//! in, `operator` splits batches among shards that aggregate and fire, and `state` holds
//! what survives a batch on disk: the key dictionary, spill files and checkpoints.

mod connect;
pub mod error;
pub mod expr;
pub mod job;
mod operator;
pub mod pipeline;
pub mod run;
#[cfg(feature = "kafka")]
mod scale_out;
pub mod sql;
mod state;
mod time;
mod window;

pub use error::{Error, Result};
pub use window::WindowSpec;

/// Where a job's rows go: the [`sinks::Sink`] trait, the job file's sinks
/// ([`sinks::open_sink`]; the CLI's `panes gen` writes through it) and a service's own
/// code ([`sinks::Callback`]).
pub mod sinks {
    pub use crate::connect::{Callback, Sink, open_sink};
}

/// Where a job's events come from: the [`sources::Source`] trait, for a service that
/// brings its own (see [`crate::run::Connectors`]).
pub mod sources {
    pub use crate::connect::{Malformed, Position, Source, SourceBatch};
}

/// A job's checkpoints, on disk or in an object store, as `panes checkpoints` lists them.
pub mod checkpoints {
    pub use crate::state::checkpoint::{Found, Manifest, list};
}
pub use job::Job;
pub use operator::Stats;
