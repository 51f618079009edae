//! A shard of a job without keys on several shards. Such a job has one group, so its
//! events are split among the shards by a hash of their event time instead of a key, and
//! each shard holds partial state of the same panes. A shard then fires a window as its
//! panes' partial state ([`Partial`]) instead of rows, and after each batch hands all its
//! state over ([`HandOver`]): the operator merges both (`super::super::keyless`), so that
//! each batch starts with empty shards.

use super::*;

/// A window's partial state on one shard, as it fired.
pub(crate) struct Partial {
    pub window: i64,
    /// A first firing (not a re-firing for events that came after it).
    pub all: bool,
    /// Events that reached the window after it fired, on this shard in this batch.
    pub revision: i64,
    /// The state of the window's panes that hold some here, as the backend exports it.
    pub panes: Vec<(i64, RecordBatch)>,
}

/// Everything a shard aggregated since it last handed over: pane state, and revisions of
/// windows that fired (window, revision).
pub(crate) struct HandOver {
    pub panes: Vec<(i64, RecordBatch)>,
    pub revisions: Vec<(i64, i64)>,
}

impl Shard {
    /// Fires windows as partial state from now on.
    pub(crate) fn set_partial(&mut self) {
        self.core.partials = Some(Vec::new());
    }

    /// Takes the partial states fired so far.
    pub(crate) fn take_partials(&mut self) -> Vec<Partial> {
        self.core
            .partials
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes the shard's pane state and revisions, leaving it empty; it still knows which
    /// panes had data, so that it fires their windows (with whatever it holds then).
    pub(crate) fn hand_over(&mut self) -> Result<HandOver> {
        let mut panes = Vec::new();
        for j in self.panes() {
            if let Some(state) = self.pane_state(j)? {
                panes.push((j, state));
            }
        }
        self.core.evict_before(i64::MAX)?;
        let revisions = match self.kind.as_fixed() {
            Some(fixed) => fixed.take_revisions(),
            None => Vec::new(),
        };
        Ok(HandOver { panes, revisions })
    }
}
