//! A shard's memory budget: the state it holds, closed panes spilled to disk (then the key
//! dictionary, then open sessions), and spilled panes read back when events or firings
//! need them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// One memory budget shared by a job's shards: each may hold what the others leave.
#[derive(Debug)]
pub(crate) struct SharedBudget {
    total: u64,
    /// The state each shard held after its last batch.
    held: Vec<AtomicU64>,
}

impl SharedBudget {
    /// A budget of `total` bytes for `shards` shards.
    pub(crate) fn new(total: u64, shards: usize) -> Arc<SharedBudget> {
        Arc::new(SharedBudget {
            total,
            held: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// What shard `s`, which holds `held` now, may hold: the budget less what the other
    /// shards hold. It says what it holds before it looks at the others (both sequentially
    /// consistent): of two shards that grew at once, the later to look sees the other's
    /// growth and makes room for it, where reading first would let each take the whole of
    /// what was left and together go over.
    fn allowance(&self, s: usize, held: u64) -> u64 {
        self.held[s].store(held, Ordering::SeqCst);
        let others: u64 = (self.held.iter().enumerate())
            .filter(|&(t, _)| t != s)
            .map(|(_, h)| h.load(Ordering::SeqCst))
            .sum();
        self.total.saturating_sub(others)
    }
}

impl Shard {
    /// Keeps state within the memory budget, if there is one, by spilling closed panes
    /// (oldest first) to disk, then the key dictionary, then open sessions.
    pub(crate) fn enforce_budget(&mut self) -> Result<()> {
        let (core, index) = (&mut self.core, self.kind.index());
        let Some(spill) = core.spill.as_mut() else {
            return Ok(());
        };
        let Some((shared, me)) = &core.budget else {
            return Ok(());
        };
        let sessions = |s: &Option<&mut Sessions>| s.as_ref().map_or(0, |s| s.bytes()) as u64;
        let held = |b: &dyn Backend, k: &KeyInterner, s: &Option<&mut Sessions>| {
            (b.state_bytes() + k.bytes()) as u64 + sessions(s)
        };
        let mut index = index;
        let budget = shared.allowance(*me, held(core.backend.as_ref(), &core.interner, &index));
        // The index of open sessions grows by doubling (a hash map and heaps): room is left
        // for it to double before the next spill.
        if held(core.backend.as_ref(), &core.interner, &index) + sessions(&index) <= budget {
            return self.note_held();
        }
        // The watermark has passed the end of panes before this one: on-time events no
        // longer reach them.
        let closed = match core.watermark {
            i64::MIN => i64::MIN,
            w => core.spec.pane_of(w.saturating_add(1)),
        };
        for j in core.backend.panes() {
            if j >= closed || held(core.backend.as_ref(), &core.interner, &index) <= budget {
                break;
            }
            if let Some(state) = core.backend.export_pane(j)? {
                spill.write(j, &state)?;
            }
            core.backend.drop_pane(j);
        }
        // Each spill of the dictionary or the sessions writes a file, so it waits for a
        // share of the shard's part of the budget.
        let share = spill.budget / 16;
        if held(core.backend.as_ref(), &core.interner, &index) > budget
            && core.interner.spillable_bytes() as u64 >= share
        {
            core.interner.spill(|| spill.subdir("keys"))?;
        }
        while held(core.backend.as_ref(), &core.interner, &index) + sessions(&index) > budget
            && let Some(s) = index.as_mut().filter(|s| s.bytes() as u64 >= share)
            && s.spill(|| spill.subdir("sessions"))?
        {}
        let now = held(core.backend.as_ref(), &core.interner, &index);
        if now > budget && !core.over_budget_warned {
            core.over_budget_warned = true;
            tracing::warn!(
                "the state of open panes and the indexes of the key dictionary and of \
                 spilled sessions ({:.1} MiB) exceeds the memory budget ({:.1} MiB): only \
                 closed panes, the key dictionary and open sessions spill",
                now as f64 / (1 << 20) as f64,
                budget as f64 / (1 << 20) as f64
            );
        }
        self.note_held()
    }

    /// Tells the other shards what this one holds now.
    fn note_held(&self) -> Result<()> {
        if let Some((shared, me)) = &self.core.budget {
            shared.held[*me].store(self.state_bytes(), Ordering::SeqCst);
        }
        Ok(())
    }

    /// The state it holds (panes, the key dictionary, open sessions), in bytes.
    pub(crate) fn state_bytes(&self) -> u64 {
        let sessions = self.kind.index_ref().map_or(0, Sessions::bytes);
        let core = &self.core;
        (core.backend.state_bytes() + core.interner.bytes() + sessions) as u64
    }

    /// Open sessions spilled to disk so far.
    pub(crate) fn sessions_spilled(&self) -> u64 {
        self.kind.index_ref().map_or(0, |s| s.spilled)
    }

    /// Spills state to `dir` whenever it exceeds its allowance of `budget` after a batch,
    /// as shard `me` of the budget's shards.
    pub(crate) fn set_memory_budget(&mut self, budget: Arc<SharedBudget>, me: usize, dir: PathBuf) {
        let share = budget.total / budget.held.len() as u64;
        self.core.spill = Some(Spill::new(share, dir));
        self.core.budget = Some((budget, me));
    }

    /// Panes spilled so far, and their bytes on disk.
    pub(crate) fn spilled(&self) -> (u64, u64) {
        self.core
            .spill
            .as_ref()
            .map_or((0, 0), |s| (s.written, s.bytes))
    }

    /// Keys of the dictionary on disk, and all its keys.
    pub(crate) fn keys_spilled(&self) -> (usize, usize) {
        (self.core.interner.spilled(), self.core.interner.len())
    }
}

impl Core {
    /// Reads back, for good, the spilled panes among `panes` (events are about to update
    /// them).
    pub(super) fn unspill(&mut self, panes: &[i64]) -> Result<()> {
        let Some(spill) = self.spill.as_mut().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let mut last = None;
        for &j in panes {
            if last != Some(j) && spill.holds(j) {
                let state = spill.read(j)?;
                self.backend.import_pane(j, &state)?;
                spill.remove(j)?;
            }
            last = Some(j);
        }
        Ok(())
    }

    /// Reads back, for good, the spilled panes within `ranges`.
    pub(super) fn unspill_for(&mut self, ranges: impl Iterator<Item = Range<i64>>) -> Result<()> {
        let Some(spill) = self.spill.as_ref().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let mut needed: Vec<i64> = ranges.flat_map(|r| spill.within(r)).collect();
        needed.sort_unstable();
        needed.dedup();
        self.unspill(&needed)
    }

    /// Combines panes `panes` per key, reading spilled ones back while they are merged.
    pub(super) fn combine(&mut self, panes: Range<i64>, keys: Keys<'_>) -> Result<WindowRows> {
        let Some(spill) = &self.spill else {
            return Ok(self.backend.combine(panes, keys)?);
        };
        let spilled = spill.within(panes.clone());
        let mut load = |j| {
            spill
                .read(j)
                .map_err(|e| panes_kernels::Error::Spill(e.to_string()))
        };
        Ok(self
            .backend
            .combine_spilled(panes, keys, &spilled, &mut load)?)
    }

    /// Frees the panes before `j`, held or spilled.
    pub(super) fn evict_before(&mut self, j: i64) -> Result<()> {
        self.backend.evict_before(j);
        match self.spill.as_mut() {
            Some(spill) => spill.evict_before(j),
            None => Ok(()),
        }
    }
}
