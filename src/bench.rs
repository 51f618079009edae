//! The built-in benchmark suite of `panes bench`: tumbling and hop windows over generated
//! clickstream data, in memory (batches decoded up front), per key count and backend.

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use panes_datasets::{Dataset, GenConfig};
use panes_engine::job::{Aggregate, GeneratorSpec, Job, JobFile, Sink, Source};
use panes_engine::run::BackendKind;
use panes_engine::window::WindowSpec;
use panes_engine::{Result, WindowOperator};
use panes_kernels::{AggFn, Backend, GpuBackend, GpuOptions};

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
    /// Threads (shards) that aggregated.
    pub threads: usize,
    /// Events per second relative to the same case at the sweep's first thread count.
    pub speedup: f64,
    /// Seconds the operator took (input already decoded in memory).
    pub seconds: f64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Result rows emitted.
    pub rows_out: u64,
    /// GPU only: the update kernels alone (sort and fold of a batch already on the
    /// device), in events per second.
    pub kernel_events_per_sec: Option<f64>,
    /// GPU only: how the kernels were timed ("gpu timestamps" or "wall clock").
    pub kernel_timer: Option<String>,
    /// GPU only: the adapter, its API and driver.
    pub adapter: Option<String>,
    /// With `--profile`, GPU only: seconds per stage (`host:` by the host's clock,
    /// `device:` by GPU timestamps).
    pub profile: Option<Vec<Stage>>,
}

/// One stage of a profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stage {
    /// The stage, `host: …` or `device: …`.
    pub stage: String,
    /// Seconds spent in it over the whole case.
    pub seconds: f64,
}

/// The GPU's update kernels alone, on the device: count, sum, min and max of one float
/// column over `keys` uniformly random keys, one pane, a batch of up to 1M events already
/// uploaded. Returns (events/s, timer, adapter).
pub fn gpu_kernels(keys: u64, events: u64) -> Result<(f64, String, String)> {
    use panes_kernels::{AggSpec, Backend, Column, Domain, Events, GpuBackend, GpuOptions, Values};
    let n = events.clamp(1, 1 << 20) as usize;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let key_ids: Vec<u32> = (0..n).map(|_| (next() % keys.max(1)) as u32).collect();
    let values: Vec<f64> = (0..n).map(|_| (next() % 1000) as f64 / 10.0).collect();
    let (panes, ts) = (vec![0i64; n], vec![0i64; n]);
    let f = |func| AggSpec {
        func,
        column: 0,
        domain: Domain::F64,
    };
    let aggs = [AggFn::CountRows, AggFn::Sum, AggFn::Min, AggFn::Max].map(f);
    let mut gpu = GpuBackend::new(&aggs, GpuOptions::default())?;
    let columns = [Column {
        values: Values::F64(&values),
        valid: None,
    }];
    let events = Events {
        keys: &key_ids,
        panes: &panes,
        ts: &ts,
        columns: &columns,
    };
    let (seconds, timestamps) = gpu.time_resident(&events, 5)?;
    let timer = if timestamps {
        "gpu timestamps"
    } else {
        "wall clock"
    };
    let rate = n as f64 / seconds.max(1e-12);
    debug_assert_eq!(gpu.name(), "gpu");
    Ok((rate, timer.into(), gpu.adapter().into()))
}

/// The window shapes of the suite: name and (size, slide) in ms.
pub const WINDOWS: [(&str, i64, i64); 2] = [
    ("tumble(1m)", 60_000, 60_000),
    ("hop(15m,1m)", 900_000, 60_000),
];

/// The name of the suite's cumulate case (see [`cumulate_job`]).
pub const CUMULATE: &str = "cumulate(15m,1m)";

/// The names of every case of the suite, in the order it runs them.
pub fn case_names() -> Vec<&'static str> {
    WINDOWS
        .iter()
        .map(|w| w.0)
        .chain([CUMULATE])
        .chain(WORKLOADS.iter().map(|w| w.0))
        .collect()
}

/// The workloads of the suite: the example jobs, with their own key counts, and (named
/// `… sql`) their Flink SQL twins, which must run as fast.
pub const WORKLOADS: [(&str, &str); 12] = [
    ("trending", include_str!("../examples/trending.toml")),
    ("trending sql", include_str!("../examples/trending.sql")),
    ("iot anomaly", include_str!("../examples/iot_anomaly.toml")),
    (
        "iot anomaly sql",
        include_str!("../examples/iot_anomaly.sql"),
    ),
    ("nexmark q5", include_str!("../examples/nexmark_q5.toml")),
    ("nexmark q5 sql", include_str!("../examples/nexmark_q5.sql")),
    ("nexmark q7", include_str!("../examples/nexmark_q7.toml")),
    ("nexmark q7 sql", include_str!("../examples/nexmark_q7.sql")),
    ("nexmark q11", include_str!("../examples/nexmark_q11.toml")),
    (
        "nexmark q11 sql",
        include_str!("../examples/nexmark_q11.sql"),
    ),
    (
        "fraud velocity",
        include_str!("../examples/fraud_velocity.toml"),
    ),
    (
        "fraud velocity sql",
        include_str!("../examples/fraud_velocity.sql"),
    ),
];

/// Workload `text` (an example job file, or its SQL twin when `name` ends in ` sql`) with
/// `events` events.
pub fn workload(name: &str, text: &str, events: u64) -> Result<Job> {
    let mut file: JobFile = match name.ends_with(" sql") {
        true => panes_engine::sql::compile(text, name)?.job,
        false => toml::from_str(text).map_err(|e| panes_engine::Error::Job {
            file: name.into(),
            message: e.to_string(),
        })?,
    };
    file.source.events = Some(events);
    Job::from_config(file, name)
}

/// The cumulate case: cumulate(15m, 1m) windows over the same job as [`WINDOWS`].
pub fn cumulate_job(events: u64, keys: u64) -> Job {
    Job {
        window: WindowSpec::cumulate(60_000, 900_000, 0).expect("a valid window"),
        ..job(60_000, 60_000, events, keys)
    }
}

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
        dead_letter: None,
        top_k: None,
        anomaly: None,
        checkpoint: None,
        memory_budget: None,
        spill_dir: None,
        filter_events: None,
        filter_windows: None,
        output: None,
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

/// Runs one job over in-memory batches and measures the operator alone; with `profile`,
/// the GPU backend times its stages too (and returns them).
pub fn run(
    job: &Job,
    batches: &[RecordBatch],
    backend: BackendKind,
    threads: usize,
    profile: bool,
) -> Result<(f64, u64, Vec<Stage>)> {
    let Source::Generator(g) = &job.source else {
        return Err(panes_engine::Error::Internal(
            "bench jobs read a generator".into(),
        ));
    };
    let schema = panes_datasets::schema(g.dataset);
    let start = Instant::now();
    let mut op = WindowOperator::new(job, &schema, 1, |aggs| match backend {
        BackendKind::Gpu if profile => {
            let opts = GpuOptions {
                profile: true,
                ..GpuOptions::default()
            };
            Ok(vec![
                Box::new(GpuBackend::new(aggs, opts)?) as Box<dyn Backend>
            ])
        }
        _ => backend.build_shards(aggs, threads),
    })?;
    for (i, b) in batches.iter().enumerate() {
        op.process_batch(0, b, "bench", i as u64)?;
        op.take_output();
    }
    op.finish()?;
    op.take_output();
    let seconds = start.elapsed().as_secs_f64();
    let stages = op.profile().into_iter();
    let stages = stages.map(|(stage, seconds)| Stage {
        stage: stage.into(),
        seconds,
    });
    Ok((seconds, op.stats().rows_out, stages.collect()))
}

/// What a suite runs: events per case, backends, key counts, thread counts, which cases.
pub struct Suite<'a> {
    /// Events per case.
    pub events: u64,
    /// Events for the reference backend, which keeps every event.
    pub reference_events: u64,
    /// Key counts.
    pub keys: &'a [u64],
    /// Backends.
    pub backends: &'a [BackendKind],
    /// Thread counts to run each case at: a sweep.
    pub threads: &'a [usize],
    /// Only the cases whose name starts with one of these, when it names any.
    pub only: &'a [String],
    /// Time the GPU backend's stages.
    pub profile: bool,
}

/// Runs the suite: every window × key count × backend, then the example workloads, each
/// at every thread count (a sweep).
pub fn suite(suite: &Suite<'_>, mut on_case: impl FnMut(&Case)) -> Result<Vec<Case>> {
    let Suite {
        events,
        reference_events,
        keys,
        backends,
        threads,
        only,
        profile,
    } = *suite;
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()));
    let events_for = |backend: BackendKind| match backend {
        BackendKind::Reference => events.min(reference_events),
        _ => events,
    };
    let mut cases = Vec::new();
    for &k in keys {
        for backend in backends {
            let n = events_for(*backend);
            let windows: Vec<(&str, Job)> = WINDOWS
                .iter()
                .map(|&(name, size, slide)| (name, job(size, slide, n, k)))
                .chain([(CUMULATE, cumulate_job(n, k))])
                .filter(|(name, _)| wanted(name))
                .collect();
            if windows.is_empty() {
                continue;
            }
            let batches = input(&job(60_000, 60_000, n, k), 64 * 1024)?;
            let kernels = match backend {
                BackendKind::Gpu => Some(gpu_kernels(k, n)?),
                _ => None,
            };
            for (name, job) in windows {
                let mut base = None;
                for &t in threads {
                    let case = measure(
                        name,
                        &job,
                        &batches,
                        (*backend, t, profile),
                        kernels.clone(),
                        &mut base,
                    )?;
                    on_case(&case);
                    cases.push(case);
                }
            }
        }
    }
    for (name, text) in WORKLOADS.into_iter().filter(|(name, _)| wanted(name)) {
        for backend in backends.iter().filter(|b| **b != BackendKind::Gpu) {
            let job = workload(name, text, events_for(*backend))?;
            let batches = input(&job, 64 * 1024)?;
            let mut base = None;
            for &t in threads {
                let case = measure(name, &job, &batches, (*backend, t, false), None, &mut base)?;
                on_case(&case);
                cases.push(case);
            }
        }
    }
    Ok(cases)
}

/// Runs one case on (backend, threads, profile) and describes it; `kernels` are the GPU's
/// kernel-only figures, `base` the events per second of the sweep's first run of this
/// case (set by that run).
fn measure(
    name: &str,
    job: &Job,
    batches: &[RecordBatch],
    (backend, threads, profile): (BackendKind, usize, bool),
    kernels: Option<(f64, String, String)>,
    base: &mut Option<f64>,
) -> Result<Case> {
    let (seconds, rows_out, stages) = run(job, batches, backend, threads, profile)?;
    let events = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    let events_per_sec = events as f64 / seconds.max(1e-9);
    let base = *base.get_or_insert(events_per_sec);
    let (kernel_events_per_sec, kernel_timer, adapter) = match kernels {
        Some((rate, timer, adapter)) => (Some(rate), Some(timer), Some(adapter)),
        None => (None, None, None),
    };
    Ok(Case {
        window: name.into(),
        keys: generator_keys(job),
        backend: backend.to_string(),
        events,
        threads,
        speedup: events_per_sec / base,
        seconds,
        events_per_sec,
        rows_out,
        kernel_events_per_sec,
        kernel_timer,
        adapter,
        profile: (!stages.is_empty()).then_some(stages),
    })
}

fn generator_keys(job: &Job) -> u64 {
    match &job.source {
        Source::Generator(g) => g.config.keys,
        _ => 0,
    }
}
