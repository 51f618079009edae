//! panes-kernels: the data plane of panes.
//!
//! Kernels aggregate events that the engine has already assigned to a dense key id and a
//! pane, into per-pane columnar state, and combine a window's panes per key into result
//! columns. They know arrays and pane state only: no watermarks, files or Kafka.
//!
//! Three backends implement [`Backend`]: [`ReferenceBackend`], scalar and obviously correct
//! (the oracle); [`CpuBackend`], dense columnar state and rayon across key partitions; and
//! [`GpuBackend`], pane state resident on a GPU, WGSL kernels through wgpu.

pub mod agg;
pub mod cpu;
pub mod distinct;
pub mod error;
pub mod events;
pub mod gpu;
pub mod reference;
mod state;

pub use agg::{AggFn, AggSpec, Domain, OutType};
pub use cpu::CpuBackend;
pub use error::{Error, Result};
pub use events::{Column, Events, OutColumn, Values, WindowRows};
pub use gpu::{GpuBackend, GpuOptions};
pub use reference::ReferenceBackend;

use std::ops::Range;

use arrow::record_batch::RecordBatch;

/// Which keys a window combine reports.
#[derive(Clone, Copy, Debug)]
pub enum Keys<'a> {
    /// Every key with at least one event in the window's panes.
    All,
    /// Only these keys (ascending), for re-fired windows; keys without events are skipped.
    Only(&'a [u32]),
}

/// A data-plane backend: pane state plus the kernels that update and combine it.
///
/// The engine guarantees that events reach `update` in stream order and that a pane is
/// never updated after `evict_before` passed it.
pub trait Backend: Send {
    /// The backend's name as `--backend` spells it.
    fn name(&self) -> &'static str;
    /// The backend as a run summary shows it (the GPU adds its adapter).
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Aggregates a segment of events into the state of their panes.
    fn update(&mut self, events: &Events<'_>) -> Result<()>;
    /// Combines panes `panes` per key into one row per key with data, keys ascending.
    fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<WindowRows>;
    /// Frees the state of every pane before `pane`.
    fn evict_before(&mut self, pane: i64);
    /// Empties the state of one key in panes `panes` (a session that ended).
    fn clear_key(&mut self, panes: Range<i64>, key: u32) -> Result<()>;
    /// Bytes of state currently held.
    fn state_bytes(&self) -> usize;
    /// The panes that hold state, ascending.
    fn panes(&self) -> Vec<i64>;
    /// The state of pane `pane` as an Arrow batch of partial state in this backend's own
    /// layout (for checkpoints and spill); `None` when the pane holds nothing.
    fn export_pane(&mut self, pane: i64) -> Result<Option<RecordBatch>>;
    /// Sets pane `pane` to a state that [`Backend::export_pane`] of the same backend and
    /// aggregates wrote, replacing what it held.
    fn import_pane(&mut self, pane: i64, state: &RecordBatch) -> Result<()>;
    /// Frees the state of one pane (after it was exported to a spill file).
    fn drop_pane(&mut self, pane: i64);
    /// Like [`Backend::combine`], where panes `spilled` (ascending) are not held but read
    /// back with `load` (as [`Backend::export_pane`] wrote them) and freed again. This
    /// default holds them all at once; the CPU backend reads one at a time.
    fn combine_spilled(
        &mut self,
        panes: Range<i64>,
        keys: Keys<'_>,
        spilled: &[i64],
        load: &mut dyn FnMut(i64) -> Result<RecordBatch>,
    ) -> Result<WindowRows> {
        let spilled: Vec<i64> = spilled
            .iter()
            .copied()
            .filter(|j| panes.contains(j))
            .collect();
        for &j in &spilled {
            let state = load(j)?;
            self.import_pane(j, &state)?;
        }
        let rows = self.combine(panes, keys);
        spilled.iter().for_each(|&j| self.drop_pane(j));
        rows
    }
}
