//! panes: event-time windowing over streams, columnar and SIMD/GPU accelerated.
//!
//! This crate is the CLI and a thin facade over the workspace crates:
//! - [`engine`]: jobs, time, watermarks, windows, late data, connectors, the runtime;
//! - [`kernels`]: pane state and the aggregation backends;
//! - [`datasets`]: seeded generators of realistic event streams.
//!
//! Running a job from Rust:
//! ```no_run
//! use panes::engine::{Job, run::{run_job, RunOptions}};
//! let job = Job::from_file("examples/trending.toml".as_ref())?;
//! let summary = run_job(&job, RunOptions::default())?;
//! println!("{summary}");
//! # Ok::<(), panes::engine::Error>(())
//! ```

pub mod bench;

pub use panes_datasets as datasets;
pub use panes_engine as engine;
pub use panes_kernels as kernels;
