//! Fixed windows (tumble, hop, cumulate) in a shard: cutting a batch where the watermark
//! crosses a firing or expiry point, revisions of windows that fired, and firing.

use super::*;

/// Fixed windows' state in a shard: which windows fire next, and the revisions of windows
/// that events reached after they fired.
#[derive(Default)]
pub(super) struct Fixed {
    /// Windows before this index have been considered for firing.
    next_fire: Option<i64>,
    /// Panes holding data that no window has expired yet.
    live_panes: BTreeSet<i64>,
    /// Revision of each (key, window) that received events after it fired.
    revisions: HashMap<(u32, i64), i64>,
    /// Windows to re-fire at the end of the batch, with the keys that changed.
    dirty: BTreeMap<i64, BTreeSet<u32>>,
}

impl WindowKind for Fixed {
    /// Late: even the last window of the event's pane has expired. The others go to the
    /// backend segment by segment (see [`Fixed::aggregate_windows`]).
    fn aggregate(
        &mut self,
        core: &mut Core,
        events: &Events<'_>,
        met: &[i64],
        late: &mut Vec<bool>,
    ) -> Result<()> {
        // Consecutive events mostly share a pane, so its expiry is computed once per run.
        let (spec, lateness) = (core.spec, core.lateness);
        let expiry = |j: i64| (spec.end(spec.last_window_of_pane(j)) - 1).saturating_add(lateness);
        let mut last = (i64::MIN, i64::MIN);
        late.clear();
        late.extend(events.panes.iter().zip(met).map(|(&j, &w)| {
            if j != last.0 {
                last = (j, expiry(j));
            }
            last.1 <= w
        }));
        self.aggregate_windows(core, events, met, late)
    }

    fn advance(&mut self, core: &mut Core, w: i64) -> Result<()> {
        self.fire(core, w)
    }

    fn refire(&mut self, core: &mut Core, before: i64) -> Result<()> {
        self.refire_dirty(core, before)
    }

    fn next_firing(&self, core: &Core) -> Option<i64> {
        let spec = core.spec;
        let next = self.live_panes.iter().find_map(|&j| {
            let windows = spec.windows_of_pane(j);
            let k = self
                .next_fire
                .map_or(*windows.start(), |n| n.max(*windows.start()));
            (k <= *windows.end()).then_some(k)
        })?;
        Some(spec.end(next).saturating_sub(1)).filter(|&w| w < i64::MAX)
    }

    fn firing(&self) -> Firing {
        Firing {
            next_fire: self.next_fire,
            first_kept: i64::MIN,
            live_panes: self.live_panes.iter().copied().collect(),
        }
    }

    fn restore_firing(&mut self, firing: Firing) {
        self.next_fire = firing.next_fire;
        self.live_panes = firing.live_panes.into_iter().collect();
    }

    /// Revisions of windows that re-fired: key, window, revision.
    fn revisions_batch(&self) -> Result<Option<RecordBatch>> {
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

    fn as_fixed(&mut self) -> Option<&mut Fixed> {
        Some(self)
    }

    fn restore_revisions(&mut self, batch: &RecordBatch) -> Result<(), String> {
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
}

impl Fixed {
    /// Updates the backend segment by segment, cut where the watermark crosses the next
    /// firing or expiry point, and around late events (already sent to the late output;
    /// rare, so the batch is not compacted).
    fn aggregate_windows(
        &mut self,
        core: &mut Core,
        events: &Events<'_>,
        met: &[i64],
        late: &[bool],
    ) -> Result<()> {
        let (keys, panes, ts, columns) = (events.keys, events.panes, events.ts, events.columns);
        let m = keys.len();
        let mut start = 0;
        while start < m {
            if late[start] {
                start += 1;
                continue;
            }
            let w = met[start];
            self.fire(core, w)?;
            let next = next_threshold(core, w);
            let end = (start + 1..m)
                .find(|&i| met[i] >= next || late[i])
                .unwrap_or(m);
            if core.lateness > 0 {
                self.count_revisions(
                    core,
                    &keys[start..end],
                    &panes[start..end],
                    &met[start..end],
                );
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
            core.unspill(&panes[start..end])?;
            core.backend.update(&events)?;
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

    /// Marks windows that already fired, and have not expired, and receive these events.
    fn count_revisions(&mut self, core: &Core, keys: &[u32], panes: &[i64], met: &[i64]) {
        for ((&key, &j), &w) in keys.iter().zip(panes).zip(met) {
            for k in core.spec.windows_of_pane(j) {
                let end = core.spec.end(k);
                if end - 1 > w {
                    break;
                }
                if (end - 1).saturating_add(core.lateness) <= w {
                    continue; // expired: the event is late for this window
                }
                *self.revisions.entry((key, k)).or_insert(0) += 1;
                self.dirty.entry(k).or_default().insert(key);
            }
        }
    }

    /// Fires windows whose end the watermark `w` has reached, and expires those past their
    /// allowed lateness (re-firing their pending revisions first).
    fn fire(&mut self, core: &mut Core, w: i64) -> Result<()> {
        let fire = core.spec.windows_closed_by(w, 0);
        loop {
            let from = self
                .next_fire
                .map_or(i64::MIN, |k| core.spec.panes_of_window(k).start);
            let Some(&j) = self.live_panes.range(from..).next() else {
                break;
            };
            let first = *core.spec.windows_of_pane(j).start();
            let k = self.next_fire.map_or(first, |n| n.max(first));
            if i128::from(k) >= fire {
                break;
            }
            self.emit(core, k, Keys::All)?;
            self.next_fire = Some(k + 1);
        }
        let expire = core.spec.windows_closed_by(w, core.lateness);
        let clamp = |x: i128| {
            i64::try_from(x.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(0)
        };
        self.refire_dirty(core, clamp(expire))?;
        let expire = clamp(expire);
        let first_kept = core.spec.panes_of_window(expire).start;
        // Every window the watermark closed has had its first firing, or had no events
        // (here: in this shard) when it closed. Either way it does not fire for every key
        // again: an event that reaches it later (allowed lateness) re-fires it for its key,
        // with a revision, and an expired one never fires again (its events were late).
        let fired = clamp(fire);
        self.next_fire = Some(self.next_fire.map_or(fired, |n| n.max(fired)));
        if self.live_panes.first().is_some_and(|&j| j < first_kept) {
            self.live_panes = self.live_panes.split_off(&first_kept);
            core.evict_before(first_kept)?;
            self.revisions.retain(|&(_, k), _| k >= expire);
        }
        Ok(())
    }

    /// Re-fires dirty windows before window index `before`.
    fn refire_dirty(&mut self, core: &mut Core, before: i64) -> Result<()> {
        while let Some(entry) = self.dirty.first_entry() {
            if *entry.key() >= before {
                break;
            }
            let (k, keys) = entry.remove_entry();
            let keys: Vec<u32> = keys.into_iter().collect();
            self.emit(core, k, Keys::Only(&keys))?;
        }
        Ok(())
    }

    /// Combines window `k` for `keys` and appends the rows to the output: a slice of the
    /// key ids at a time where the backend asks for it (sparse panes of many keys), so that
    /// neither the window's state nor its rows are held for every key at once.
    fn emit(&self, core: &mut Core, k: i64, keys: Keys<'_>) -> Result<()> {
        if core.partials.is_some() {
            return self.emit_partial(core, k, keys);
        }
        let n_keys = core.interner.len() as u64;
        let slices: Vec<Keys<'_>> = match (keys, core.backend.key_slice()) {
            (Keys::All, Some(n)) if n_keys > u64::from(n) => (0..n_keys)
                .step_by(n as usize)
                .map(|start| Keys::Range {
                    start: start as u32,
                    end: u32::try_from(start + u64::from(n)).unwrap_or(u32::MAX),
                })
                .collect(),
            _ => vec![keys],
        };
        // With top-k, each slice's list merges into the window's.
        let mut top: Option<WindowRows> = None;
        for slice in slices {
            let rows = core.combine(core.spec.panes_of_window(k), slice)?;
            if rows.keys.is_empty() {
                continue;
            }
            if !matches!(slice, Keys::Only(_)) {
                core.detect_anomalies(k, &rows)?;
            }
            match core.top_k {
                // Every row that ties with the k-th: ranks break ties by key value below.
                Some(t) => {
                    let mut list = top.take().unwrap_or_default();
                    list.append(rows);
                    top = Some(list.top_k_ties(t.by, t.k));
                }
                None => self.push(core, k, keys, rows)?,
            }
        }
        match top {
            Some(rows) => self.push(core, k, keys, rows),
            None => Ok(()),
        }
    }

    /// Fires window `k` as the partial state of its panes (a job without keys on several
    /// shards: see `partial`).
    fn emit_partial(&self, core: &mut Core, k: i64, keys: Keys<'_>) -> Result<()> {
        let mut panes = Vec::new();
        for j in core.spec.panes_of_window(k) {
            if let Some(state) = core.pane_state(j)? {
                panes.push((j, state));
            }
        }
        let partial = Partial {
            window: k,
            all: matches!(keys, Keys::All),
            revision: self.revisions.get(&(0, k)).copied().unwrap_or(0),
            panes,
        };
        core.partials.get_or_insert_default().push(partial);
        Ok(())
    }

    /// Takes the revisions counted so far: (window, revision) of the one group.
    pub(super) fn take_revisions(&mut self) -> Vec<(i64, i64)> {
        self.revisions.drain().map(|((_, k), r)| (k, r)).collect()
    }

    /// Appends rows of window `k`, fired for `keys`, to the output.
    fn push(&self, core: &mut Core, k: i64, keys: Keys<'_>, rows: WindowRows) -> Result<()> {
        let n = rows.keys.len();
        let revisions = (core.lateness > 0).then(|| {
            rows.keys
                .iter()
                .map(|&key| self.revisions.get(&(key, k)).copied().unwrap_or(0))
                .collect()
        });
        let (start, end) = (core.spec.start(k), core.spec.end(k));
        let all = matches!(keys, Keys::All);
        core.push_rows(rows, vec![start; n], vec![end; n], revisions, (k, all))
    }
}

/// The smallest watermark at which some window fires or expires, after `w`.
fn next_threshold(core: &Core, w: i64) -> i64 {
    let spec = &core.spec;
    let at = |delay: i64| {
        let k = spec.windows_closed_by(w, delay);
        let end = k * i128::from(spec.end_step()) + i128::from(spec.end(0));
        i64::try_from(end - 1 + i128::from(delay)).unwrap_or(i64::MAX)
    };
    at(0).min(at(core.lateness))
}
