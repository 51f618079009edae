//! A shard's result rows as Arrow batches (key columns, window bounds, aggregates, rank,
//! revision) and the anomaly alerts of a window's first firing.

use super::*;

use arrow::compute::concat_batches;

/// Rows of result batches held before they are passed on together (see [`Core::pass_on`]).
const PASS_ON_ROWS: usize = 8192;

/// Result rows as a batch of the plan's output schema: the key columns `keys`, window
/// bounds, aggregates, then the rank (with top-k, ranked here) and the revision (with
/// allowed lateness).
pub(crate) fn result_batch(
    plan: &Plan,
    mut columns: Vec<ArrayRef>,
    rows: WindowRows,
    starts: Vec<i64>,
    ends: Vec<i64>,
    revisions: Option<Vec<i64>>,
    top_k: Option<TopK>,
) -> Result<RecordBatch> {
    let n = rows.keys.len();
    columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
    columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
    // No validity buffer where every row is valid (counts, mostly).
    let nulls = |valid: Vec<bool>| valid.contains(&false).then(|| valid.into());
    for col in rows.columns {
        columns.push(match col {
            OutColumn::I64 { values, valid } => {
                Arc::new(Int64Array::new(values.into(), nulls(valid))) as ArrayRef
            }
            OutColumn::F64 { values, valid } => {
                Arc::new(Float64Array::new(values.into(), nulls(valid)))
            }
        });
    }
    if top_k.is_some() {
        columns.push(Arc::new(Int64Array::from_iter_values(1..=n as i64)));
    }
    if let Some(revisions) = revisions {
        columns.push(Arc::new(Int64Array::from(revisions)));
    }
    let mut batch = RecordBatch::try_new(plan.out_schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("building a result batch: {e}")))?;
    if let Some(having) = &plan.windows {
        batch = having.apply(&batch)?;
    }
    match top_k {
        Some(t) => topk::rank(&batch, plan, t),
        None => Ok(batch),
    }
}

impl Core {
    /// Appends result rows to the output: key columns, window bounds, aggregates, then the
    /// rank (with top-k) and the revision (with allowed lateness). `fired` is the window
    /// and whether it fired for every key.
    pub(super) fn push_rows(
        &mut self,
        rows: WindowRows,
        starts: Vec<i64>,
        ends: Vec<i64>,
        revisions: Option<Vec<i64>>,
        fired: (i64, bool),
    ) -> Result<()> {
        if rows.keys.is_empty() {
            return Ok(());
        }
        let keys = (self.interner.columns(&rows.keys)?.into_iter())
            .map(|(_, a)| a)
            .collect();
        let batch = result_batch(&self.plan, keys, rows, starts, ends, revisions, self.top_k)?;
        if self.stream.is_none() {
            self.output.push(Fired {
                window: fired.0,
                all: fired.1,
                rows: batch,
            });
            return Ok(());
        }
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        if self.held_rows >= PASS_ON_ROWS {
            self.pass_on()?;
        }
        Ok(())
    }

    /// Passes the result rows held on to the stream, as one batch. Rows are held until
    /// there are [`PASS_ON_ROWS`] or the shard's step ends: sessions close one or a few at
    /// a time, as the watermark each event met passes them, and a batch (and a wake-up of
    /// the thread that takes it) per firing cost more than the rows themselves.
    pub(super) fn pass_on(&mut self) -> Result<()> {
        let batch = match self.held.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            held => concat_batches(&held[0].schema(), held)
                .map_err(|e| Error::arrow("gathering result rows", e))?,
        };
        self.held.clear();
        self.held_rows = 0;
        match &mut self.stream {
            Some(Stream::Direct(out)) => out(batch),
            Some(Stream::Channel(tx)) => tx
                .send(Some(batch))
                .map_err(|_| Error::Internal("the operator stopped taking result rows".into())),
            None => Err(Error::Internal("result rows held without a stream".into())),
        }
    }

    /// Checks the watched aggregate of a window's first firing against each key's
    /// baseline, and queues an alert row per anomalous key.
    pub(super) fn detect_anomalies(&mut self, k: i64, rows: &WindowRows) -> Result<()> {
        let Some((detector, value)) = self.anomaly.as_mut() else {
            return Ok(());
        };
        let counts: Option<(&[i64], i64)> = match detector.min_count() {
            Some((c, at_least)) => match &rows.columns[c] {
                OutColumn::I64 { values, .. } => Some((values, at_least)),
                OutColumn::F64 { .. } => None,
            },
            None => None,
        };
        let values: Vec<Option<f64>> = match &rows.columns[*value] {
            OutColumn::I64 { values, valid } => values
                .iter()
                .zip(valid)
                .map(|(&v, &ok)| ok.then_some(v as f64))
                .collect(),
            OutColumn::F64 { values, valid } => values
                .iter()
                .zip(valid)
                .map(|(&v, &ok)| ok.then_some(v))
                .collect(),
        };
        let (mut keys, mut found) = (Vec::new(), Vec::new());
        for (i, (&key, v)) in rows.keys.iter().zip(values).enumerate() {
            if counts.is_some_and(|(c, at_least)| c[i] < at_least) {
                continue;
            }
            if let Some(alert) = v.and_then(|v| detector.observe(key, v)) {
                keys.push(key);
                found.push((v.unwrap_or(f64::NAN), alert));
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let n = keys.len();
        let mut columns: Vec<ArrayRef> = self
            .interner
            .columns(&keys)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        columns.push(Arc::new(TimestampMillisecondArray::from(vec![
            self.spec
                .start(k);
            n
        ])));
        columns.push(Arc::new(TimestampMillisecondArray::from(vec![
            self.spec
                .end(k);
            n
        ])));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.0),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.mean),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.std),
        )));
        columns.push(Arc::new(Float64Array::from_iter_values(
            found.iter().map(|f| f.1.z),
        )));
        let batch = RecordBatch::try_new(self.plan.alert_schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("building an alert batch: {e}")))?;
        self.stats.alerts += n as u64;
        self.alerts.push(batch);
        Ok(())
    }
}
