//! A shard's state for checkpoints, as Arrow batches whose `key` columns hold this
//! shard's key ids (`super::super::snapshot` renumbers them), and its restore.

use super::*;

impl Shard {
    /// Keys in the dictionary.
    pub(crate) fn keys(&self) -> usize {
        self.interner.len()
    }

    /// The key columns of keys `ids`.
    pub(crate) fn key_columns(&mut self, ids: &[u32]) -> Result<Vec<(String, ArrayRef)>> {
        self.interner.columns(ids)
    }

    /// Interns keys of a checkpoint's dictionary into `ids`; false when one was known.
    pub(crate) fn restore_keys(
        &mut self,
        columns: &[ArrayRef],
        rows: usize,
        ids: &mut Vec<u32>,
    ) -> Result<bool> {
        let before = self.interner.len() as u32;
        self.interner.intern(columns, rows, ids)?;
        self.enforce_budget()?;
        Ok(ids.iter().copied().eq(before..before + ids.len() as u32))
    }

    /// The panes that hold state, in memory or spilled, ascending.
    pub(crate) fn panes(&self) -> Vec<i64> {
        let mut panes = self.backend.panes();
        panes.extend(self.spill.iter().flat_map(Spill::panes));
        panes.sort_unstable();
        panes
    }

    /// The state of pane `pane`, from memory or its spill file.
    pub(crate) fn pane_state(&mut self, pane: i64) -> Result<Option<RecordBatch>> {
        match self.spill.as_ref().filter(|s| s.holds(pane)) {
            Some(s) => s.read(pane).map(Some),
            None => Ok(self.backend.export_pane(pane)?),
        }
    }

    /// Sets pane `pane` to a checkpoint's state.
    pub(crate) fn restore_pane(&mut self, pane: i64, state: &RecordBatch) -> Result<()> {
        self.backend.import_pane(pane, state)?;
        Ok(())
    }

    /// Revisions of windows that re-fired: key, window, revision.
    pub(crate) fn revisions_batch(&self) -> Result<Option<RecordBatch>> {
        if !self.dirty.is_empty() {
            return Err(Error::Internal(
                "a checkpoint with windows to re-fire".into(),
            ));
        }
        if self.revisions.is_empty() {
            return Ok(None);
        }
        let mut revisions: Vec<(&(u32, i64), &i64)> = self.revisions.iter().collect();
        revisions.sort_unstable();
        RecordBatch::try_from_iter([
            (
                "key",
                Arc::new(UInt32Array::from_iter_values(
                    revisions.iter().map(|r| r.0.0),
                )) as ArrayRef,
            ),
            (
                "window",
                Arc::new(Int64Array::from_iter_values(
                    revisions.iter().map(|r| r.0.1),
                )),
            ),
            (
                "revision",
                Arc::new(Int64Array::from_iter_values(revisions.iter().map(|r| *r.1))),
            ),
        ])
        .map(Some)
        .map_err(|e| Error::Internal(format!("building checkpoint state: {e}")))
    }

    /// Adds revisions as [`Shard::revisions_batch`] wrote them.
    pub(crate) fn restore_revisions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let cols = (
            batch
                .column_by_name("key")
                .and_then(|c| c.as_primitive_opt::<UInt32Type>()),
            batch
                .column_by_name("window")
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
            batch
                .column_by_name("revision")
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        );
        let (Some(keys), Some(windows), Some(revs)) = cols else {
            return Err("revisions.arrow: missing or mistyped columns".into());
        };
        for i in 0..batch.num_rows() {
            self.revisions
                .insert((keys.value(i), windows.value(i)), revs.value(i));
        }
        Ok(())
    }

    /// Open sessions, spilled ones included (session windows).
    pub(crate) fn sessions_batch(&self) -> Result<Option<RecordBatch>> {
        self.sessions.as_ref().map(Sessions::to_batch).transpose()
    }

    /// Adds open sessions as [`Shard::sessions_batch`] wrote them.
    pub(crate) fn restore_sessions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self.sessions.as_mut() {
            Some(s) => s.restore(batch),
            None => Ok(()),
        }
    }

    /// Anomaly baselines, with `[anomaly]`.
    pub(crate) fn baselines_batch(&self) -> Result<Option<RecordBatch>> {
        let arrow = |e| Error::Internal(format!("building checkpoint state: {e}"));
        self.anomaly
            .as_ref()
            .map(|(d, _)| d.to_batch().map_err(arrow))
            .transpose()
    }

    /// Adds baselines as [`Shard::baselines_batch`] wrote them.
    pub(crate) fn restore_baselines(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self.anomaly.as_mut() {
            Some((d, _)) => d.restore(batch),
            None => Ok(()),
        }
    }

    /// What decides which windows fire next: the next window to consider, the first pane
    /// kept (sessions) and the panes with data.
    pub(crate) fn firing(&self) -> (Option<i64>, i64, &BTreeSet<i64>) {
        (self.next_fire, self.first_kept, &self.live_panes)
    }

    /// Restores [`Shard::firing`] and the watermark, after the keyed state.
    pub(crate) fn restore_firing(
        &mut self,
        next_fire: Option<i64>,
        first_kept: i64,
        live_panes: &[i64],
        watermark: i64,
    ) -> Result<()> {
        self.next_fire = next_fire;
        self.first_kept = first_kept;
        self.live_panes = live_panes.iter().copied().collect();
        self.watermark = watermark;
        self.enforce_budget()
    }
}
