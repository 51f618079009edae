//! A shard's state for checkpoints, as Arrow batches whose `key` columns hold this
//! shard's key ids (`super::super::snapshot` renumbers them), and its restore.

use super::*;

impl Shard {
    /// Keys in the dictionary.
    pub(crate) fn keys(&self) -> usize {
        self.core.interner.len()
    }

    /// The key columns of keys `ids`.
    pub(crate) fn key_columns(&mut self, ids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        self.core.interner.columns(ids)
    }

    /// The panes that hold state, in memory or spilled, ascending.
    pub(crate) fn panes(&self) -> Vec<i64> {
        let mut panes = self.core.backend.panes();
        panes.extend(self.core.spill.iter().flat_map(Spill::panes));
        panes.sort_unstable();
        panes
    }

    /// The state of pane `pane`, from memory or its spill file.
    pub(crate) fn pane_state(&mut self, pane: i64) -> Result<Option<RecordBatch>> {
        self.core.pane_state(pane)
    }

    /// Sets pane `pane` to a checkpoint's state.
    pub(crate) fn restore_pane(&mut self, pane: i64, state: &RecordBatch) -> Result<()> {
        self.core.backend.import_pane(pane, state)?;
        Ok(())
    }

    /// Anomaly baselines, with `[anomaly]`.
    pub(crate) fn baselines_batch(&self) -> Result<Option<RecordBatch>> {
        let arrow = |e| Error::Internal(format!("building checkpoint state: {e}"));
        self.core
            .anomaly
            .as_ref()
            .map(|(d, _)| d.to_batch().map_err(arrow))
            .transpose()
    }

    /// Adds baselines as [`Shard::baselines_batch`] wrote them.
    pub(crate) fn restore_baselines(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self.core.anomaly.as_mut() {
            Some((d, _)) => d.restore(batch),
            None => Ok(()),
        }
    }
}

impl Core {
    /// The state of pane `pane`, from memory or its spill file.
    pub(super) fn pane_state(&mut self, pane: i64) -> Result<Option<RecordBatch>> {
        match self.spill.as_ref().filter(|s| s.holds(pane)) {
            Some(s) => s.read(pane).map(Some),
            None => Ok(self.backend.export_pane(pane)?),
        }
    }
}

impl Shard {
    /// Interns keys of a checkpoint's dictionary into `ids`; false when one was known.
    pub(crate) fn restore_keys(
        &mut self,
        columns: &[ArrayRef],
        rows: usize,
        ids: &mut Vec<u32>,
    ) -> Result<bool> {
        let before = self.core.interner.len() as u32;
        self.core.interner.intern(columns, rows, ids)?;
        self.enforce_budget()?;
        Ok(ids.iter().copied().eq(before..before + ids.len() as u32))
    }

    /// What decides which windows fire next.
    pub(crate) fn firing(&self) -> Firing {
        self.kind.firing()
    }

    /// Restores [`Shard::firing`] and the watermark, after the keyed state.
    pub(crate) fn restore_firing(&mut self, firing: Firing, watermark: i64) -> Result<()> {
        self.kind.restore_firing(firing);
        self.core.watermark = watermark;
        self.enforce_budget()
    }

    /// Revisions of windows that re-fired: key, window, revision.
    pub(crate) fn revisions_batch(&self) -> Result<Option<RecordBatch>> {
        self.kind.revisions_batch()
    }

    /// Adds revisions as [`Shard::revisions_batch`] wrote them.
    pub(crate) fn restore_revisions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.kind.restore_revisions(batch)
    }

    /// Open sessions, spilled ones included (session windows).
    pub(crate) fn sessions_batch(&self) -> Result<Option<RecordBatch>> {
        self.kind.sessions_batch()
    }

    /// Adds open sessions as [`Shard::sessions_batch`] wrote them.
    pub(crate) fn restore_sessions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.kind.restore_sessions(batch)
    }
}
