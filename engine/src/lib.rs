//! panes-engine: the control plane of panes.
//!
//! It reads a [`job::Job`], pulls Arrow batches from a source, assigns event time and
//! watermarks, interns keys, splits off late events and drives a kernels
//! [`panes_kernels::Backend`] through the [`operator::WindowOperator`]; results and late
//! events go to sinks. [`run::run_job`] ties it together for the CLI.

//!
//! The modules follow the data: [`connect`] reads sources, [`time`] gives each event its
//! time and the watermark it met, [`window`] says which panes and windows it falls in, the
//! [`operator`] splits batches among shards that aggregate and fire, and [`connect`] writes
//! results to sinks. Beside the flow, [`state`] holds what survives a batch on disk: the key
//! dictionary, spill files and checkpoints. [`job`] is the job model; [`run`] drives a job
//! end to end; [`pipeline`] is the same engine for a service that pushes its own batches.

pub mod connect;
pub mod error;
pub mod expr;
pub mod job;
pub mod operator;
pub mod pipeline;
pub mod run;
pub mod sql;
pub mod state;
pub mod time;
pub mod window;

pub use error::{Error, Result};
pub use job::Job;
pub use operator::{Stats, WindowOperator};
