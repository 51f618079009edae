//! Session windows in a shard: events join, open or bridge their key's sessions one by
//! one, and sessions fire as the watermark each event met passes their end.

use super::*;

impl Shard {
    /// Session windows: event by event, sessions that the event's watermark closes fire
    /// first (after the events before it reach the backend); then the event joins, opens
    /// or bridges its key's sessions, or is late.
    pub(super) fn aggregate_sessions(
        &mut self,
        events: &Events<'_>,
        met: &[i64],
        late: &mut Vec<bool>,
    ) -> Result<()> {
        let m = events.len();
        late.clear();
        late.resize(m, false);
        let mut pending = 0;
        for i in 0..m {
            let Some(sessions) = self.sessions.as_mut() else {
                break;
            };
            if sessions.next_due() <= met[i] {
                self.send(events, pending..i, late)?;
                pending = i;
                self.fire_sessions(met[i])?;
            }
            let sessions = self.sessions.as_mut().ok_or_else(no_sessions)?;
            late[i] = !sessions.add(events.keys[i], events.ts[i], met[i])?;
            // A session that changed after its end passed fires again at once, so that
            // what it emits does not depend on how the stream is cut into batches.
            let dirty = sessions.take_dirty();
            if !dirty.is_empty() {
                self.send(events, pending..i + 1, late)?;
                pending = i + 1;
                self.emit_sessions(&dirty)?;
            }
        }
        self.send(events, pending..m, late)
    }

    /// Sends events `range` to the backend, less the late ones.
    pub(super) fn send(
        &mut self,
        events: &Events<'_>,
        range: Range<usize>,
        late: &[bool],
    ) -> Result<()> {
        let mut start = range.start;
        while start < range.end {
            if late[start] {
                start += 1;
                continue;
            }
            let end = (start..range.end).find(|&i| late[i]).unwrap_or(range.end);
            let columns = events.columns_in(start..end);
            self.unspill(&events.panes[start..end])?;
            self.backend.update(&events.slice(start..end, &columns))?;
            start = end;
        }
        Ok(())
    }

    /// Fires and closes the sessions that watermark `w` ends, and frees panes no session
    /// can need any more.
    pub(super) fn fire_sessions(&mut self, w: i64) -> Result<()> {
        // Spilled sessions come back a file at a time: the watermark steps through the
        // earliest end in each, so that the sessions before it fire and close first.
        loop {
            let sessions = self.sessions.as_ref().ok_or_else(no_sessions)?;
            let step = sessions.spilled_due().min(w);
            self.fire_sessions_at(step)?;
            if step >= w {
                return Ok(());
            }
        }
    }

    pub(super) fn fire_sessions_at(&mut self, w: i64) -> Result<()> {
        let sessions = self.sessions.as_mut().ok_or_else(no_sessions)?;
        let due = sessions.fire(w)?;
        let expired = sessions.expire(w)?;
        let oldest = sessions.oldest();
        self.emit_sessions(&due)?;
        let spec = self.spec;
        let ranges: Vec<(u32, Range<i64>)> = expired
            .iter()
            .map(|&(key, first, last)| (key, spec.pane_of(first)..spec.pane_of(last) + 1))
            .collect();
        self.unspill_for(ranges.iter().map(|r| r.1.clone()))?;
        for (key, panes) in ranges {
            self.backend.clear_key(panes, key)?;
        }
        // A new event that is not late is after w + 1 - gap - lateness; open sessions keep
        // theirs.
        let horizon = w
            .saturating_add(2)
            .saturating_sub(spec.pane_len())
            .saturating_sub(self.lateness);
        let keep = spec.pane_of(oldest.map_or(horizon, |o| o.min(horizon)));
        if keep > self.first_kept {
            self.first_kept = keep;
            self.evict_before(keep)?;
        }
        Ok(())
    }

    /// Emits one row per session, with its revision when lateness is allowed.
    pub(super) fn emit_sessions(&mut self, due: &[Emit]) -> Result<()> {
        let spec = self.spec;
        let mut rows = WindowRows::default();
        let (mut starts, mut ends, mut revisions) = (Vec::new(), Vec::new(), Vec::new());
        let panes_of = |s: &Emit| spec.pane_of(s.first)..spec.pane_of(s.last) + 1;
        // Sessions combine one key each: spilled panes are read back once for all of them
        // (and spill again after the batch if the budget asks), not once a session.
        self.unspill_for(due.iter().map(panes_of))?;
        for s in due {
            let panes = panes_of(s);
            let row = self.combine(panes, Keys::Only(&[s.key]))?;
            for _ in &row.keys {
                starts.push(s.first);
                ends.push(s.last + spec.pane_len());
                revisions.push(s.revision);
            }
            rows.append(row);
        }
        let revisions = (self.lateness > 0).then_some(revisions);
        self.push_rows(rows, starts, ends, revisions, (i64::MIN, false))
    }
}
