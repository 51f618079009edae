//! Checkpoints of the window operator. The shards' keyed state goes to one set of Arrow
//! files whose layout does not depend on the thread count: key ids in them are global,
//! shard 0's keys first, then shard 1's, and so on, and each pane is one batch. A restore
//! sends each key of the dictionary to its shard at the new thread count (by the hash of
//! its values, as live events go) and renumbers every piece of keyed state to the shard's
//! own ids. So a job checkpointed with 4 threads resumes with 1 or 3.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, UInt32Array};
use arrow::compute::{concat_batches, take, take_record_batch};
use arrow::datatypes::{Int64Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use std::time::Instant;

use super::route;
use super::shard::{Firing, Shard};
use super::{OperatorState, WindowOperator};
use crate::error::{Error, Result};
use crate::state::checkpoint::{Snapshot, StateReader, StateWriter};

/// Keys per batch of the checkpointed key dictionary.
const KEYS_PER_BATCH: u32 = 1 << 20;

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// `batch` with `base` added to its `key` column.
fn offset_keys(batch: RecordBatch, base: u32) -> Result<RecordBatch> {
    if base == 0 {
        return Ok(batch);
    }
    let (i, _) = batch
        .schema()
        .column_with_name("key")
        .ok_or_else(|| internal("checkpoint state", "a keyed batch without a key column"))?;
    let keys = batch
        .column(i)
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| internal("checkpoint state", "a key column that is not UInt32"))?;
    let mut columns = batch.columns().to_vec();
    columns[i] = Arc::new(UInt32Array::from_iter_values(
        keys.values().iter().map(|&k| k + base),
    ));
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| internal("checkpoint state", e))
}

/// Splits a batch of keyed state (global ids in its `key` column) among the shards that
/// `owner` names, with each shard's own ids.
fn by_shard(
    batch: &RecordBatch,
    owner: &[(u32, u32)],
    shards: usize,
) -> std::result::Result<Vec<(usize, RecordBatch)>, String> {
    let (i, _) = batch
        .schema()
        .column_with_name("key")
        .ok_or("no key column")?;
    let keys = batch
        .column(i)
        .as_primitive_opt::<UInt32Type>()
        .ok_or("its key column is not UInt32")?;
    let mut rows: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); shards];
    for (r, &key) in keys.values().iter().enumerate() {
        let &(s, id) = owner
            .get(key as usize)
            .ok_or_else(|| format!("key {key} is not in the key dictionary"))?;
        rows[s as usize].0.push(r as u32);
        rows[s as usize].1.push(id);
    }
    let mut parts = Vec::new();
    for (s, (at, ids)) in rows.into_iter().enumerate() {
        if at.is_empty() {
            continue;
        }
        let part = take_record_batch(batch, &UInt32Array::from(at)).map_err(|e| e.to_string())?;
        let mut columns = part.columns().to_vec();
        columns[i] = Arc::new(UInt32Array::from(ids));
        parts.push((
            s,
            RecordBatch::try_new(part.schema(), columns).map_err(|e| e.to_string())?,
        ));
    }
    Ok(parts)
}

/// Pane `pane` of every shard as one batch, with a leading `pane` column and global ids.
fn pane_batch(shards: &mut [Shard], bases: &[u32], pane: i64) -> Result<Option<RecordBatch>> {
    let mut parts = Vec::new();
    for (shard, &base) in shards.iter_mut().zip(bases) {
        if let Some(state) = shard.pane_state(pane)? {
            parts.push(offset_keys(state, base)?);
        }
    }
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let state = concat_batches(&first.schema(), &parts).map_err(|e| internal("pane state", e))?;
    let mut columns = vec![(
        "pane".to_string(),
        Arc::new(Int64Array::from(vec![pane; state.num_rows()])) as ArrayRef,
    )];
    let schema = state.schema();
    columns.extend(
        schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(state.columns().iter().cloned()),
    );
    RecordBatch::try_from_iter(columns)
        .map(Some)
        .map_err(|e| internal("building checkpoint state", e))
}

type Export = fn(&Shard) -> Result<Option<RecordBatch>>;
type Import = fn(&mut Shard, &RecordBatch) -> std::result::Result<(), String>;

/// The keyed state besides keys and panes: its file, and how a shard gives and takes it.
const KEYED: [(&str, Export, Import); 3] = [
    (
        "revisions.arrow",
        Shard::revisions_batch,
        Shard::restore_revisions,
    ),
    (
        "sessions.arrow",
        Shard::sessions_batch,
        Shard::restore_sessions,
    ),
    (
        "baselines.arrow",
        Shard::baselines_batch,
        Shard::restore_baselines,
    ),
];

impl WindowOperator {
    /// Writes the operator's keyed state to state files (a checkpoint directory, or a
    /// [`crate::pipeline::Snapshot`]) and returns its scalar state. Called between batches, after
    /// [`WindowOperator::sync`], with the output taken.
    pub fn snapshot(&mut self, to: &mut impl StateWriter) -> Result<OperatorState> {
        if self.in_flight.is_some() {
            return Err(Error::Internal(
                "a checkpoint while shards process a batch (sync and drain the output first)"
                    .into(),
            ));
        }
        // A job without keys on several shards checkpoints as if on one (its state is in
        // the history between batches: see `keyless`).
        if let Some(keyless) = self.keyless.as_mut() {
            keyless.lend(&mut self.shards[0])?;
        }
        let state = self.write_state(to);
        if let Some(keyless) = self.keyless.as_mut() {
            keyless.absorb(&mut self.shards)?;
        }
        state
    }

    fn write_state(&mut self, to: &mut impl StateWriter) -> Result<OperatorState> {
        let mut bases = Vec::with_capacity(self.shards.len());
        let mut keys = 0u32;
        for shard in &self.shards {
            bases.push(keys);
            keys += shard.keys() as u32;
        }
        let keyed = !self.plan.key_indices.is_empty();
        if !keyed {
            keys = keys.min(1);
        }
        to.write(
            "keys.arrow",
            self.shards.iter_mut().filter(|_| keyed).flat_map(|shard| {
                let n = shard.keys() as u32;
                (0..n).step_by(KEYS_PER_BATCH as usize).map(move |from| {
                    let ids: Vec<u32> = (from..n.min(from + KEYS_PER_BATCH)).collect();
                    RecordBatch::try_from_iter(shard.key_columns(&ids)?)
                        .map_err(|e| internal("building checkpoint state", e))
                })
            }),
        )?;
        let mut panes: Vec<i64> = self.shards.iter().flat_map(Shard::panes).collect();
        panes.sort_unstable();
        panes.dedup();
        let shards = &mut self.shards;
        to.write(
            "panes.arrow",
            panes
                .into_iter()
                .filter_map(|pane| pane_batch(shards, &bases, pane).transpose()),
        )?;
        for (file, export, _) in KEYED {
            let batches: Vec<Result<RecordBatch>> = self
                .shards
                .iter()
                .zip(&bases)
                .filter_map(|(shard, &base)| {
                    export(shard)
                        .transpose()
                        .map(|b| b.and_then(|b| offset_keys(b, base)))
                })
                .collect();
            to.write(file, batches)?;
        }
        let firing: Vec<_> = self.shards.iter().map(Shard::firing).collect();
        let mut live_panes: Vec<i64> = firing
            .iter()
            .flat_map(|f| f.live_panes.iter().copied())
            .collect();
        live_panes.sort_unstable();
        live_panes.dedup();
        Ok(OperatorState {
            partitions: self.tracker.state(),
            watermark: self.tracker.current(),
            // Every shard fired each closed window that it held data for; one that is behind
            // has no data before the furthest.
            next_fire: firing.iter().filter_map(|f| f.next_fire).max(),
            first_kept: firing
                .iter()
                .map(|f| f.first_kept)
                .min()
                .unwrap_or(i64::MIN),
            live_panes,
            keys: keys as usize,
            stats: self.stats(),
        })
    }

    /// The operator's whole state in memory (see [`WindowOperator::snapshot`]).
    pub fn snapshot_in_memory(&mut self) -> Result<Snapshot> {
        self.sync()?;
        let mut snapshot = Snapshot::default();
        snapshot.operator = self.snapshot(&mut snapshot)?;
        Ok(snapshot)
    }

    /// Restores a fresh operator to a checkpoint's or a [`crate::pipeline::Snapshot`]'s state, at any
    /// number of shards.
    pub fn restore(&mut self, from: &impl StateReader) -> Result<()> {
        let bad = |message: String| Error::Checkpoint {
            path: from.origin(),
            message,
        };
        let st = from.operator();
        let n = self.shards.len();
        // The shard of each global key id, and its id there.
        let mut owner: Vec<(u32, u32)> = Vec::with_capacity(st.keys);
        let (mut owners, mut ids) = (Vec::new(), Vec::new());
        for batch in from.read("keys.arrow")? {
            let first = owner.len();
            owner.resize(first + batch.num_rows(), (0, 0));
            owners.resize(batch.num_rows(), 0);
            route::shards_of(batch.columns(), n, &mut Default::default(), &mut owners)?;
            for (s, shard) in self.shards.iter_mut().enumerate() {
                let rows: Vec<u32> = (0..owners.len() as u32)
                    .filter(|&r| usize::from(owners[r as usize]) == s)
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let at = UInt32Array::from(rows.clone());
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| take(c, &at, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("keys.arrow: {e}")))?;
                if !shard.restore_keys(&columns, rows.len(), &mut ids)? {
                    return Err(bad("its key dictionary holds a key twice".into()));
                }
                for (&r, &id) in rows.iter().zip(&ids) {
                    owner[first + r as usize] = (s as u32, id);
                }
            }
        }
        if self.plan.key_indices.is_empty() && st.keys > 0 {
            self.shards[0].restore_keys(&[], 1, &mut ids)?;
            owner.push((0, 0));
        }
        if owner.len() != st.keys {
            return Err(bad(format!(
                "its key dictionary has {} keys, the manifest says {}",
                owner.len(),
                st.keys
            )));
        }
        for batch in from.read("panes.arrow")? {
            let pane = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .filter(|p| !p.is_empty())
                .map(|p| p.value(0))
                .ok_or_else(|| bad("panes.arrow: a batch without its pane".into()))?;
            let state = batch
                .project(&(1..batch.num_columns()).collect::<Vec<_>>())
                .map_err(|e| bad(format!("panes.arrow: {e}")))?;
            let parts =
                by_shard(&state, &owner, n).map_err(|e| bad(format!("panes.arrow: {e}")))?;
            for (s, part) in parts {
                self.shards[s].restore_pane(pane, &part)?;
            }
        }
        for (file, _, import) in KEYED {
            for batch in from.read(file)? {
                let parts = by_shard(&batch, &owner, n).map_err(|e| bad(format!("{file}: {e}")))?;
                for (s, part) in parts {
                    import(&mut self.shards[s], &part).map_err(|e| bad(format!("{file}: {e}")))?;
                }
            }
        }
        self.tracker
            .restore(&st.partitions, st.watermark, Instant::now())
            .map_err(bad)?;
        for shard in &mut self.shards {
            let firing = Firing {
                next_fire: st.next_fire,
                first_kept: st.first_kept,
                live_panes: st.live_panes.clone(),
            };
            shard.restore_firing(firing, st.watermark)?;
        }
        self.base = st.stats;
        match self.keyless.as_mut() {
            Some(keyless) => keyless.absorb(&mut self.shards),
            None => Ok(()),
        }
    }
}
