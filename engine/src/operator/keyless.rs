//! A job without keys on several shards: one group, whose events the shards split in runs
//! of consecutive rows of each batch, the first shard the first run. Each shard starts a
//! batch empty, fires windows as the partial state of their panes (`shard::Partial`), and
//! hands all its state over after the batch (`shard::HandOver`). Here, the state of the
//! batches before lives in a backend of its own (`history`); a window's row is its history
//! merged with the shards' partial states of that firing, shard by shard: in arrival
//! order, so first and last break ties by arrival as one shard would. Float sums and
//! moments are added in another order than on one shard: within rounding of the inputs'
//! magnitude (integers, min, max, first, last and distinct counts are exact).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, UInt32Array};
use arrow::record_batch::RecordBatch;
use panes_kernels::{Backend, Keys, WindowRows};

use super::plan::Plan;
use super::shard::{Partial, Shard, result_batch};
use crate::error::{Error, Result};
use crate::window::WindowSpec;

pub(super) struct Keyless {
    /// Pane state of every batch but the one being gathered.
    history: Box<dyn Backend>,
    /// Revisions of windows that fired, in `history`.
    revisions: BTreeMap<i64, i64>,
    spec: WindowSpec,
    lateness: i64,
}

impl Keyless {
    /// Keeps the history in `history`, an empty backend like the shards' (with their fold
    /// block).
    pub(super) fn new(history: Box<dyn Backend>, spec: WindowSpec, lateness: i64) -> Keyless {
        Keyless {
            history,
            revisions: BTreeMap::new(),
            spec,
            lateness,
        }
    }

    /// The rows of the windows that the shards fired in the last batch, window by window
    /// (a first firing before a re-firing); then takes the shards' state into the history,
    /// and frees the panes of windows that the watermark `w` expired.
    pub(super) fn gather(
        &mut self,
        shards: &mut [Shard],
        plan: &Plan,
        w: i64,
    ) -> Result<Vec<RecordBatch>> {
        // Each firing's partial states, shard by shard.
        let mut firings: BTreeMap<(i64, bool), Vec<(usize, Partial)>> = BTreeMap::new();
        for (s, shard) in shards.iter_mut().enumerate() {
            for p in shard.take_partials() {
                firings.entry((p.window, !p.all)).or_default().push((s, p));
            }
        }
        // The first firings of this batch: a shard that fired a window first and did not
        // re-fire it holds the same state at the re-firing.
        let mut firsts: BTreeMap<i64, Vec<(usize, Partial)>> = BTreeMap::new();
        let mut rows = Vec::new();
        for ((k, refire), mut parts) in firings {
            if refire {
                for (s, p) in firsts.remove(&k).unwrap_or_default() {
                    if !parts.iter().any(|(t, _)| *t == s) {
                        parts.push((s, p));
                    }
                }
                parts.sort_by_key(|(s, _)| *s);
            }
            let merged = self.combine_with(k, &parts)?;
            let revisions_here: i64 = parts.iter().map(|(_, p)| p.revision).sum();
            if !refire {
                firsts.insert(k, parts);
            }
            if merged.keys.is_empty() {
                continue;
            }
            // Every event that reached the window after it fired counts once: on the shard
            // it went to, then in the history.
            let revision = match refire {
                true => {
                    let before = self.revisions.get(&k).copied().unwrap_or(0);
                    before + revisions_here
                }
                false => 0,
            };
            let (start, end) = (self.spec.start(k), self.spec.end(k));
            let revisions = (self.lateness > 0).then(|| vec![revision]);
            let batch = result_batch(
                plan,
                Vec::new(),
                merged,
                vec![start],
                vec![end],
                revisions,
                None,
            )?;
            rows.push(batch);
        }
        self.absorb(shards)?;
        let expire = self.spec.windows_closed_by(w, self.lateness);
        let expire = i64::try_from(expire.clamp(i128::from(i64::MIN), i128::from(i64::MAX)))
            .unwrap_or(i64::MAX);
        self.history
            .evict_before(self.spec.panes_of_window(expire).start);
        self.revisions = self.revisions.split_off(&expire);
        Ok(rows)
    }

    /// Window `k` of the history merged with the shards' partial states `parts`: they are
    /// merged into the history's panes for the window's combine, and those panes set back
    /// after it (a shard's partial state holds the few panes of its batch, so a window of
    /// many panes costs a few merges, and combines with the history's folded blocks).
    fn combine_with(&mut self, k: i64, parts: &[(usize, Partial)]) -> Result<WindowRows> {
        let mut touched: Vec<i64> = (parts.iter().flat_map(|(_, p)| &p.panes))
            .map(|(j, _)| *j)
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut saved = Vec::with_capacity(touched.len());
        for j in touched {
            saved.push((j, self.history.export_pane(j)?));
        }
        let mut merged = Ok(());
        for (j, state) in parts.iter().flat_map(|(_, p)| &p.panes) {
            merged = merged.and_then(|_| self.history.merge_pane(*j, state));
        }
        let rows = merged.and_then(|_| {
            self.history
                .combine(self.spec.panes_of_window(k), Keys::All)
        });
        for (j, state) in saved {
            match state {
                Some(state) => self.history.import_pane(j, &state)?,
                None => self.history.drop_pane(j),
            }
        }
        Ok(rows?)
    }

    /// Takes every shard's state into the history.
    pub(super) fn absorb(&mut self, shards: &mut [Shard]) -> Result<()> {
        for shard in shards.iter_mut() {
            let taken = shard.hand_over()?;
            for (j, state) in &taken.panes {
                self.history.merge_pane(*j, state)?;
            }
            for (k, r) in taken.revisions {
                *self.revisions.entry(k).or_insert(0) += r;
            }
        }
        Ok(())
    }

    /// Moves the history into `shard`, as the state of one shard (for a checkpoint, whose
    /// layout is then that of a job on one shard; [`Keyless::absorb`] takes it back).
    pub(super) fn lend(&mut self, shard: &mut Shard) -> Result<()> {
        for j in self.history.panes() {
            if let Some(state) = self.history.export_pane(j)? {
                shard.restore_pane(j, &state)?;
            }
        }
        self.history.evict_before(i64::MAX);
        let revisions = std::mem::take(&mut self.revisions);
        if revisions.is_empty() {
            return Ok(());
        }
        let n = revisions.len();
        let batch = RecordBatch::try_from_iter([
            ("key", Arc::new(UInt32Array::from(vec![0; n])) as ArrayRef),
            (
                "window",
                Arc::new(Int64Array::from_iter_values(revisions.keys().copied())),
            ),
            (
                "revision",
                Arc::new(Int64Array::from_iter_values(revisions.into_values())),
            ),
        ])
        .map_err(|e| Error::Internal(format!("building checkpoint state: {e}")))?;
        shard
            .restore_revisions(&batch)
            .map_err(|e| Error::Internal(format!("lending revisions to a shard: {e}")))
    }

    /// Bytes of state the history holds.
    pub(super) fn state_bytes(&self) -> usize {
        self.history.state_bytes()
    }
}
