//! Running a job end to end: source → window operator → sinks, with a summary.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use panes_kernels::{AggSpec, Backend, CpuBackend, GpuBackend, GpuOptions, ReferenceBackend};

use crate::connect::{Sink, SourceBatch, open_sink, open_source};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::operator::{Stats, WindowOperator};

/// Batches the source may read ahead of the operator.
const READ_AHEAD: usize = 2;

/// Which data plane aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The scalar oracle.
    Reference,
    /// Columnar CPU kernels with rayon.
    Cpu,
    /// WGSL kernels on a GPU through wgpu; an error when there is no adapter.
    Gpu,
    /// The GPU when a hardware adapter exists, else `cpu` (with a log line saying why).
    Auto,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reference" => Ok(BackendKind::Reference),
            "cpu" => Ok(BackendKind::Cpu),
            "gpu" => Ok(BackendKind::Gpu),
            "auto" => Ok(BackendKind::Auto),
            other => Err(format!(
                "unknown backend {other:?}; use auto, gpu, cpu or reference"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Reference => "reference",
            BackendKind::Cpu => "cpu",
            BackendKind::Gpu => "gpu",
            BackendKind::Auto => "auto",
        })
    }
}

impl BackendKind {
    /// Builds the backend for these aggregates with `threads` worker threads (CPU).
    pub fn build(self, aggs: &[AggSpec], threads: usize) -> Result<Box<dyn Backend>> {
        Ok(match self {
            BackendKind::Reference => Box::new(ReferenceBackend::new(aggs.to_vec())),
            BackendKind::Cpu => Box::new(CpuBackend::new(aggs, threads)),
            BackendKind::Gpu => Box::new(GpuBackend::new(aggs, GpuOptions::default())?),
            BackendKind::Auto => {
                let opts = GpuOptions {
                    hardware_only: true,
                    ..GpuOptions::default()
                };
                match GpuBackend::new(aggs, opts) {
                    Ok(gpu) => {
                        tracing::info!("backend auto: using the GPU {}", gpu.adapter());
                        Box::new(gpu)
                    }
                    Err(e) => {
                        tracing::warn!("backend auto: using cpu: {e}");
                        Box::new(CpuBackend::new(aggs, threads))
                    }
                }
            }
        })
    }
}

/// How to run a job.
pub struct RunOptions {
    /// The data plane.
    pub backend: BackendKind,
    /// Rows per source micro-batch.
    pub batch_rows: usize,
    /// Worker threads for the cpu backend.
    pub threads: usize,
    /// Called after each batch with (events read, total events if known).
    pub progress: Option<Box<dyn FnMut(u64, Option<u64>)>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backend: BackendKind::Auto,
            batch_rows: 64 * 1024,
            // One core reads the source; the others share the key partitions.
            threads: rayon::current_num_threads().saturating_sub(1).max(1),
            progress: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The backend that ran (for the GPU, with its adapter).
    pub backend: String,
    /// Counters.
    pub stats: Stats,
    /// Wall time.
    pub elapsed: Duration,
    /// Late events that no `[late]` sink kept.
    pub late_not_kept: u64,
}

impl Summary {
    /// Events per second of wall time.
    pub fn events_per_sec(&self) -> f64 {
        self.stats.events_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(f, "backend          {}", self.backend)?;
        writeln!(f, "events in        {}", s.events_in)?;
        writeln!(f, "window rows out  {}", s.rows_out)?;
        writeln!(f, "late events      {}", s.late_events)?;
        if s.alerts > 0 {
            writeln!(f, "anomaly alerts   {}", s.alerts)?;
        }
        writeln!(f, "elapsed          {:.3} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "events/s         {:.0}", self.events_per_sec())?;
        write!(
            f,
            "peak state       {:.1} MiB",
            s.peak_state_bytes as f64 / (1 << 20) as f64
        )
    }
}

/// The columns a job reads: time, keys and aggregate inputs, each once.
fn needed_columns(job: &Job) -> Vec<String> {
    let mut cols = vec![job.time_column.clone()];
    cols.extend(job.keys.iter().cloned());
    cols.extend(job.aggregates.iter().filter_map(|a| a.column.clone()));
    let mut seen = std::collections::HashSet::new();
    cols.retain(|c| seen.insert(c.clone()));
    cols
}

/// Runs a job to the end of its (bounded) input.
///
/// Results and late events are written to the job's sinks; the files appear only when the
/// run succeeds. The late-event output keeps every source column, so with a `[late]` sink
/// the source reads all columns, without one only those the job needs.
pub fn run_job(job: &Job, mut opts: RunOptions) -> Result<Summary> {
    let start = Instant::now();
    let columns = needed_columns(job);
    let mut source = open_source(
        &job.source,
        job.late.is_none().then_some(&columns[..]),
        opts.batch_rows,
    )?;
    let schema = source.schema();
    let threads = opts.threads;
    let mut op = WindowOperator::new(job, &schema, source.partitions(), |aggs| {
        opts.backend.build(aggs, threads)
    })?;
    let mut sink = open_sink(&job.sink, op.output_schema())?;
    let mut late_sink = job
        .late
        .as_ref()
        .map(|l| open_sink(l, op.late_schema()))
        .transpose()?;
    let mut alert_sink = job
        .anomaly
        .as_ref()
        .map(|a| open_sink(&a.sink, op.alert_schema()))
        .transpose()?;
    let total = source.total_rows();
    let drain = |op: &mut WindowOperator,
                 sink: &mut Sink,
                 late: &mut Option<Sink>,
                 alerts: &mut Option<Sink>|
     -> Result<()> {
        for batch in op.take_output() {
            sink.write(&batch)?;
        }
        for (batches, to) in [(op.take_late(), late), (op.take_alerts(), alerts)] {
            if let Some(to) = to.as_mut() {
                for batch in batches {
                    to.write(&batch)?;
                }
            }
        }
        Ok(())
    };
    // The source reads and decodes the next batches on a thread of its own while this
    // one aggregates: a pipeline, which is what a second core is best used for.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Option<SourceBatch>>>(READ_AHEAD);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            loop {
                let next = source.next_batch();
                let more = matches!(next, Ok(Some(_)));
                // A closed channel means the job stopped early: stop reading.
                if tx.send(next).is_err() || !more {
                    break;
                }
            }
        });
        // `rx` is consumed here, so an early error return closes the channel.
        for next in rx {
            let Some(b) = next? else { break };
            op.process_batch(b.partition, &b.batch, &b.origin, b.first_row)?;
            drain(&mut op, &mut sink, &mut late_sink, &mut alert_sink)?;
            if let Some(progress) = opts.progress.as_mut() {
                progress(op.stats().events_in, total);
            }
        }
        Ok(())
    })?;
    if op.stats().events_in == 0 {
        return Err(Error::input(
            job.source.to_string(),
            "the source holds no events",
        ));
    }
    op.finish()?;
    drain(&mut op, &mut sink, &mut late_sink, &mut alert_sink)?;
    sink.finish()?;
    for s in [late_sink, alert_sink].into_iter().flatten() {
        s.finish()?;
    }
    let stats = op.stats();
    let late_not_kept = if job.late.is_none() {
        stats.late_events
    } else {
        0
    };
    if late_not_kept > 0 {
        tracing::warn!(
            "{late_not_kept} late events were counted but not kept: add a [late] section to keep them"
        );
    }
    Ok(Summary {
        backend: op.backend(),
        stats,
        elapsed: start.elapsed(),
        late_not_kept,
    })
}
