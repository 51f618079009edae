//! Session windows in a shard: events join, open or bridge their key's sessions one by
//! one, and sessions fire as the watermark each event met passes their end.

use super::*;

/// Session windows' state in a shard: the open sessions, and the first pane kept.
pub(super) struct SessionWindows {
    sessions: Sessions,
    /// Panes before this one have been evicted.
    first_kept: i64,
}

impl SessionWindows {
    pub(super) fn new(gap: i64, lateness: i64) -> SessionWindows {
        SessionWindows {
            sessions: Sessions::new(gap, lateness),
            first_kept: i64::MIN,
        }
    }
}

impl WindowKind for SessionWindows {
    /// Event by event, sessions that the event's watermark closes fire first (after the
    /// events before it reach the backend); then the event joins, opens or bridges its
    /// key's sessions, or is late.
    fn aggregate(
        &mut self,
        core: &mut Core,
        events: &Events<'_>,
        met: &[i64],
        late: &mut Vec<bool>,
    ) -> Result<()> {
        let m = events.len();
        late.clear();
        late.resize(m, false);
        let mut pending = 0;
        for i in 0..m {
            if self.sessions.due_by(met[i]) {
                send(core, events, pending..i, late)?;
                pending = i;
                self.fire_sessions(core, met[i])?;
            }
            late[i] = !self.sessions.add(events.keys[i], events.ts[i], met[i])?;
            // A session that changed after its end passed fires again at once, so that
            // what it emits does not depend on how the stream is cut into batches.
            let dirty = self.sessions.take_dirty();
            if !dirty.is_empty() {
                send(core, events, pending..i + 1, late)?;
                pending = i + 1;
                emit_sessions(core, &dirty)?;
            }
        }
        send(core, events, pending..m, late)
    }

    fn advance(&mut self, core: &mut Core, w: i64) -> Result<()> {
        self.fire_sessions(core, w)
    }

    fn index(&mut self) -> Option<&mut Sessions> {
        Some(&mut self.sessions)
    }

    fn index_ref(&self) -> Option<&Sessions> {
        Some(&self.sessions)
    }

    fn firing(&self) -> Firing {
        Firing {
            next_fire: None,
            first_kept: self.first_kept,
            live_panes: Vec::new(),
        }
    }

    fn restore_firing(&mut self, firing: Firing) {
        self.first_kept = firing.first_kept;
    }

    fn sessions_batch(&self) -> Result<Option<RecordBatch>> {
        self.sessions.to_batch().map(Some)
    }

    fn restore_sessions(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.sessions.restore(batch)
    }
}

/// Sends events `range` to the backend, less the late ones.
fn send(core: &mut Core, events: &Events<'_>, range: Range<usize>, late: &[bool]) -> Result<()> {
    let mut start = range.start;
    while start < range.end {
        if late[start] {
            start += 1;
            continue;
        }
        let end = (start..range.end).find(|&i| late[i]).unwrap_or(range.end);
        let columns = events.columns_in(start..end);
        core.unspill(&events.panes[start..end])?;
        core.backend.update(&events.slice(start..end, &columns))?;
        start = end;
    }
    Ok(())
}

impl SessionWindows {
    /// Fires and closes the sessions that watermark `w` ends, and frees panes no session
    /// can need any more.
    fn fire_sessions(&mut self, core: &mut Core, w: i64) -> Result<()> {
        // Spilled sessions come back a file at a time: the watermark steps through the
        // earliest end in each, so that the sessions before it fire and close first.
        loop {
            let step = self.sessions.spilled_due().min(w);
            self.fire_sessions_at(core, step)?;
            if step >= w {
                return Ok(());
            }
        }
    }

    fn fire_sessions_at(&mut self, core: &mut Core, w: i64) -> Result<()> {
        let due = self.sessions.fire(w)?;
        let expired = self.sessions.expire(w)?;
        let oldest = self.sessions.oldest();
        emit_sessions(core, &due)?;
        let spec = core.spec;
        let ranges: Vec<(u32, Range<i64>)> = expired
            .iter()
            .map(|&(key, first, last)| (key, spec.pane_of(first)..spec.pane_of(last) + 1))
            .collect();
        core.unspill_for(ranges.iter().map(|r| r.1.clone()))?;
        for (key, panes) in ranges {
            core.backend.clear_key(panes, key)?;
        }
        // A new event that is not late is after w + 1 - gap - lateness; open sessions keep
        // theirs.
        let horizon = w
            .saturating_add(2)
            .saturating_sub(spec.pane_len())
            .saturating_sub(core.lateness);
        let keep = spec.pane_of(oldest.map_or(horizon, |o| o.min(horizon)));
        if keep > self.first_kept {
            self.first_kept = keep;
            core.evict_before(keep)?;
        }
        Ok(())
    }
}

/// Emits one row per session, with its revision when lateness is allowed.
fn emit_sessions(core: &mut Core, due: &[Emit]) -> Result<()> {
    let spec = core.spec;
    let mut rows = WindowRows::default();
    let (mut starts, mut ends, mut revisions) = (Vec::new(), Vec::new(), Vec::new());
    let panes_of = |s: &Emit| spec.pane_of(s.first)..spec.pane_of(s.last) + 1;
    // Sessions combine one key each: spilled panes are read back once for all of them
    // (and spill again after the batch if the budget asks), not once a session.
    core.unspill_for(due.iter().map(panes_of))?;
    for s in due {
        let panes = panes_of(s);
        let row = core.combine(panes, Keys::Only(&[s.key]))?;
        for _ in &row.keys {
            starts.push(s.first);
            ends.push(s.last + spec.pane_len());
            revisions.push(s.revision);
        }
        rows.append(row);
    }
    let revisions = (core.lateness > 0).then_some(revisions);
    core.push_rows(rows, starts, ends, revisions, (i64::MIN, false))
}
