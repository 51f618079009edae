//! The built-in benchmark suite of `panes bench`: tumbling and hop windows over generated
//! clickstream data, in memory (batches decoded up front), per key count and backend.

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use panes_datasets::{Dataset, GenConfig};
use panes_engine::job::{Aggregate, GeneratorSpec, Job, Sink, Source};
use panes_engine::run::BackendKind;
use panes_engine::window::WindowSpec;
use panes_engine::{Result, WindowOperator};
use panes_kernels::AggFn;

/// One case of the suite.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Case {
    /// `tumble(1m)` or `hop(15m,1m)`.
    pub window: String,
    /// Distinct keys (articles).
    pub keys: u64,
    /// Backend name.
    pub backend: String,
    /// Events processed.
    pub events: u64,
    /// Worker threads.
    pub threads: usize,
    /// Seconds the operator took (input already decoded in memory).
    pub seconds: f64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Result rows emitted.
    pub rows_out: u64,
}

/// The window shapes of the suite: name and (size, slide) in ms.
pub const WINDOWS: [(&str, i64, i64); 2] = [
    ("tumble(1m)", 60_000, 60_000),
    ("hop(15m,1m)", 900_000, 60_000),
];

/// A clickstream job: per article, count, sum/min/max of scroll depth.
pub fn job(size: i64, slide: i64, events: u64, keys: u64) -> Job {
    let agg = |name: &str, func, column: Option<&str>| Aggregate {
        name: name.into(),
        func,
        column: column.map(Into::into),
    };
    Job {
        source: Source::Generator(GeneratorSpec {
            dataset: Dataset::Clickstream,
            config: GenConfig {
                events,
                keys,
                ..GenConfig::default()
            },
            partitions: 1,
        }),
        time_column: "ts".into(),
        max_out_of_orderness: 5_000,
        allowed_lateness: 0,
        idle_timeout: std::time::Duration::from_secs(30),
        window: WindowSpec::new(size, slide, 0).expect("the suite's windows are valid"),
        keys: vec!["article_id".into()],
        aggregates: vec![
            agg("views", AggFn::CountRows, None),
            agg("scroll_sum", AggFn::Sum, Some("scroll_depth")),
            agg("scroll_min", AggFn::Min, Some("scroll_depth")),
            agg("scroll_max", AggFn::Max, Some("scroll_depth")),
        ],
        sink: Sink::JsonLines(None),
        late: None,
    }
}

/// Generates the input of a case, decoded, in batches of `batch_rows`.
pub fn input(job: &Job, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    let Source::Generator(g) = &job.source else {
        return Err(panes_engine::Error::Internal(
            "bench jobs read a generator".into(),
        ));
    };
    let config = GenConfig {
        batch_rows,
        ..g.config.clone()
    };
    let batches = panes_datasets::generate(g.dataset, &config)
        .map_err(|e| panes_engine::Error::input("generator", e))?;
    Ok(batches.collect())
}

/// Runs one job over in-memory batches and measures the operator alone.
pub fn run(
    job: &Job,
    batches: &[RecordBatch],
    backend: BackendKind,
    threads: usize,
) -> Result<(f64, u64)> {
    let schema = panes_datasets::schema(Dataset::Clickstream);
    let start = Instant::now();
    let mut op = WindowOperator::new(job, &schema, 1, |aggs| backend.build(aggs, threads))?;
    for (i, b) in batches.iter().enumerate() {
        op.process_batch(0, b, "bench", i as u64)?;
        op.take_output();
    }
    op.finish()?;
    op.take_output();
    Ok((start.elapsed().as_secs_f64(), op.stats().rows_out))
}

/// Runs the suite: every window × key count × backend. The reference backend, which keeps
/// every event, runs on at most `reference_events`.
pub fn suite(
    events: u64,
    reference_events: u64,
    keys: &[u64],
    backends: &[BackendKind],
    threads: usize,
    mut on_case: impl FnMut(&Case),
) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for &k in keys {
        for backend in backends {
            let n = if *backend == BackendKind::Reference {
                events.min(reference_events)
            } else {
                events
            };
            let batches = input(&job(60_000, 60_000, n, k), 64 * 1024)?;
            for (name, size, slide) in WINDOWS {
                let (seconds, rows_out) =
                    run(&job(size, slide, n, k), &batches, *backend, threads)?;
                let case = Case {
                    window: name.into(),
                    keys: k,
                    backend: backend.to_string(),
                    events: n,
                    threads,
                    seconds,
                    events_per_sec: n as f64 / seconds.max(1e-9),
                    rows_out,
                };
                on_case(&case);
                cases.push(case);
            }
        }
    }
    Ok(cases)
}
