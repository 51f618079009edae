//! panes-engine: the control plane of panes.
//!
//! It reads a [`job::Job`], pulls Arrow batches from a source, assigns event time and
//! watermarks, interns keys, splits off late events and drives a kernels
//! [`panes_kernels::Backend`] through the [`operator::WindowOperator`]; results and late
//! events go to sinks. [`run::run_job`] ties it together for the CLI.

pub mod anomaly;
pub mod checkpoint;
pub mod connect;
pub mod error;
mod ipc;
pub mod job;
pub mod key;
mod keyspill;
pub mod operator;
pub mod run;
pub mod session;
mod sessionspill;
pub mod spill;
pub mod time;
pub mod watermark;
pub mod window;

pub use error::{Error, Result};
pub use job::Job;
pub use operator::{Stats, WindowOperator};
