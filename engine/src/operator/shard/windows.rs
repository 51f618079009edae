//! Fixed windows (tumble, hop, cumulate) in a shard: cutting a batch where the watermark
//! crosses a firing or expiry point, revisions of windows that fired, and firing.

use super::*;

impl Shard {
    /// Hop and cumulate windows: updates the backend segment by segment, cut where the
    /// watermark crosses the next firing or expiry point, and around late events (already
    /// sent to the late output; rare, so the batch is not compacted).
    pub(super) fn aggregate_windows(
        &mut self,
        keys: &[u32],
        panes: &[i64],
        ts: &[i64],
        met: &[i64],
        late: &[bool],
        columns: &[Column<'_>],
    ) -> Result<()> {
        let m = keys.len();
        let mut start = 0;
        while start < m {
            if late[start] {
                start += 1;
                continue;
            }
            let w = met[start];
            self.advance(w)?;
            let next = self.next_threshold(w);
            let end = (start + 1..m)
                .find(|&i| met[i] >= next || late[i])
                .unwrap_or(m);
            if self.lateness > 0 {
                self.count_revisions(&keys[start..end], &panes[start..end], &met[start..end]);
            }
            let events = Events {
                keys: &keys[start..end],
                panes: &panes[start..end],
                ts: &ts[start..end],
                columns: &columns
                    .iter()
                    .map(|c| c.slice(start..end))
                    .collect::<Vec<_>>(),
            };
            self.unspill(&panes[start..end])?;
            self.backend.update(&events)?;
            let mut last = None;
            for &j in &panes[start..end] {
                if last != Some(j) {
                    self.live_panes.insert(j);
                    last = Some(j);
                }
            }
            start = end;
        }
        Ok(())
    }

    /// The smallest watermark at which some window fires or expires, after `w`.
    pub(super) fn next_threshold(&self, w: i64) -> i64 {
        let spec = &self.spec;
        let at = |delay: i64| {
            let k = spec.windows_closed_by(w, delay);
            let end = k * i128::from(spec.end_step()) + i128::from(spec.end(0));
            i64::try_from(end - 1 + i128::from(delay)).unwrap_or(i64::MAX)
        };
        at(0).min(at(self.lateness))
    }

    /// Marks windows that already fired, and have not expired, and receive these events.
    pub(super) fn count_revisions(&mut self, keys: &[u32], panes: &[i64], met: &[i64]) {
        for ((&key, &j), &w) in keys.iter().zip(panes).zip(met) {
            for k in self.spec.windows_of_pane(j) {
                let end = self.spec.end(k);
                if end - 1 > w {
                    break;
                }
                if (end - 1).saturating_add(self.lateness) <= w {
                    continue; // expired: the event is late for this window
                }
                *self.revisions.entry((key, k)).or_insert(0) += 1;
                self.dirty.entry(k).or_default().insert(key);
            }
        }
    }

    /// Fires windows whose end the watermark `w` has reached, and expires those past their
    /// allowed lateness (re-firing their pending revisions first).
    pub(super) fn advance(&mut self, w: i64) -> Result<()> {
        if self.sessions.is_some() {
            return self.fire_sessions(w);
        }
        let fire = self.spec.windows_closed_by(w, 0);
        loop {
            let from = self
                .next_fire
                .map_or(i64::MIN, |k| self.spec.panes_of_window(k).start);
            let Some(&j) = self.live_panes.range(from..).next() else {
                break;
            };
            let first = *self.spec.windows_of_pane(j).start();
            let k = self.next_fire.map_or(first, |n| n.max(first));
            if i128::from(k) >= fire {
                break;
            }
            self.emit(k, Keys::All)?;
            self.next_fire = Some(k + 1);
        }
        let expire = self.spec.windows_closed_by(w, self.lateness);
        let clamp = |x: i128| {
            i64::try_from(x.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(0)
        };
        self.refire_dirty(clamp(expire))?;
        let expire = clamp(expire);
        let first_kept = self.spec.panes_of_window(expire).start;
        // Every window the watermark closed has had its first firing, or had no events
        // (here: in this shard) when it closed. Either way it does not fire for every key
        // again: an event that reaches it later (allowed lateness) re-fires it for its key,
        // with a revision, and an expired one never fires again (its events were late).
        let fired = clamp(fire);
        self.next_fire = Some(self.next_fire.map_or(fired, |n| n.max(fired)));
        if self.live_panes.first().is_some_and(|&j| j < first_kept) {
            self.live_panes = self.live_panes.split_off(&first_kept);
            self.evict_before(first_kept)?;
            self.revisions.retain(|&(_, k), _| k >= expire);
        }
        Ok(())
    }

    /// Re-fires dirty windows before window index `before`.
    pub(super) fn refire_dirty(&mut self, before: i64) -> Result<()> {
        if self.sessions.is_some() {
            return Ok(()); // sessions re-fire as they change
        }
        while let Some(entry) = self.dirty.first_entry() {
            if *entry.key() >= before {
                break;
            }
            let (k, keys) = entry.remove_entry();
            let keys: Vec<u32> = keys.into_iter().collect();
            self.emit(k, Keys::Only(&keys))?;
        }
        Ok(())
    }

    /// Combines window `k` for `keys` and appends the rows to the output.
    pub(super) fn emit(&mut self, k: i64, keys: Keys<'_>) -> Result<()> {
        let mut rows = self.combine(self.spec.panes_of_window(k), keys)?;
        if rows.keys.is_empty() {
            return Ok(());
        }
        if matches!(keys, Keys::All) {
            self.detect_anomalies(k, &rows)?;
        }
        if let Some(t) = self.top_k {
            // Every row that ties with the k-th: ranks break ties by key value below.
            rows = rows.top_k_ties(t.by, t.k);
        }
        let n = rows.keys.len();
        let revisions = (self.lateness > 0).then(|| {
            rows.keys
                .iter()
                .map(|&key| self.revisions.get(&(key, k)).copied().unwrap_or(0))
                .collect()
        });
        let (start, end) = (self.spec.start(k), self.spec.end(k));
        let all = matches!(keys, Keys::All);
        self.push_rows(rows, vec![start; n], vec![end; n], revisions, (k, all))
    }

    /// The watermark at which the earliest window that has not fired yet fires (fixed
    /// windows); `None` when no window is left or for sessions.
    pub(crate) fn next_firing(&self) -> Option<i64> {
        if self.sessions.is_some() {
            return None;
        }
        let spec = self.spec;
        let next = self.live_panes.iter().find_map(|&j| {
            let windows = spec.windows_of_pane(j);
            let k = self
                .next_fire
                .map_or(*windows.start(), |n| n.max(*windows.start()));
            (k <= *windows.end()).then_some(k)
        })?;
        Some(spec.end(next).saturating_sub(1)).filter(|&w| w < i64::MAX)
    }
}
