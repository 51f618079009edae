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
pub mod harness;
pub mod report;

pub use panes_datasets as datasets;
pub use panes_engine as engine;
pub use panes_kernels as kernels;

/// Has glibc's allocator keep up to 64 MiB of the memory the process frees for its own
/// reuse, instead of handing it back to the kernel at once. `panes` and its benchmarks call
/// it first thing. A service embedding the engine may do the same, or use an allocator that
/// keeps memory.
///
/// Without it, the result columns of every window, and the panes of a new job, land on
/// fresh pages. Each page costs a fault and a page of zeros to write. In a hop(15m, 1m) run
/// at 100k keys, the kernel's share of the time fell from 1.48 to 0.97 update kernels'
/// worth (BENCHMARKS.md, section 2). Blocks of 16 MiB and more are still mapped and
/// unmapped on their own, so the memory budget bounds resident memory as before. Off Linux
/// with glibc, this does nothing.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator thresholds, and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
