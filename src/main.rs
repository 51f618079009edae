//! The `panes` command line: run a job, generate a dataset, run the benchmark suite.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use panes::bench;
use panes::datasets::{Dataset, GenConfig};
use panes::engine::Job;
use panes::engine::checkpoints as checkpoint;
use panes::engine::job::{Sink, parse_bytes};
use panes::engine::run::{BackendKind, Progress, RunOptions, StartFrom, run_job};
use panes::engine::sinks::open_sink;
use panes::harness::{Machine, Report};

mod metrics;

/// Event-time windowing over streams: tumbling and hop windows, columnar CPU kernels.
#[derive(Parser)]
#[command(name = "panes", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `panes run` and `panes sql` run a job.
#[derive(clap::Args)]
struct RunArgs {
    /// Data plane: `auto` (`cpu` for now, with one line saying why: the `gpu` backend is
    /// not faster than `cpu` yet), `gpu`, `cpu`, or `reference` (the scalar oracle).
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// Rows per source micro-batch.
    #[arg(long, default_value_t = 64 * 1024)]
    batch_rows: usize,
    /// Threads that aggregate, each owning a shard of the keys (default: every core).
    /// `1` is a plain serial path; the gpu backend runs one shard.
    #[arg(long)]
    threads: Option<usize>,
    /// Resume from this checkpoint directory (`DIR/chk-NNNNNN`) instead of the newest
    /// complete one.
    #[arg(long, value_name = "PATH", conflicts_with = "fresh")]
    from_checkpoint: Option<PathBuf>,
    /// Start from the beginning: remove the job's checkpoints and output parts first.
    #[arg(long)]
    fresh: bool,
    /// Memory for pane state and the key dictionary, e.g. `512MiB`; beyond it closed
    /// panes spill to disk (overrides the job's `[state] memory_budget`).
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| parse_bytes("--memory-budget", s))]
    memory_budget: Option<u64>,
    /// Serve the run's counters (events read, rows out, late events, alerts,
    /// checkpoints, watermark and its lag) in Prometheus' text format at
    /// `http://ADDR/metrics`, e.g. `127.0.0.1:9100` (port 0: any free port; the address
    /// is printed).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Kafka scale-out (`scale_out = true`): this process's name in the consumer group,
    /// unique among its processes (e.g. the host's or pod's name). Restarted under the
    /// same name, a process takes its partitions back at once, without a rebalance.
    #[arg(long, value_name = "NAME")]
    member: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job file to the end of its input and print a summary.
    Run {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run a Flink SQL script (CREATE TABLE … WATERMARK FOR …, SET, INSERT INTO … SELECT
    /// over TUMBLE, HOP, CUMULATE or SESSION) like a job file; `EXPLAIN` or `--explain`
    /// prints the job file it became instead.
    Sql {
        /// The script; `-e` gives it inline instead.
        #[arg(required_unless_present = "execute", conflicts_with = "execute")]
        file: Option<PathBuf>,
        /// The script's text.
        #[arg(short = 'e', long, value_name = "SQL")]
        execute: Option<String>,
        /// Print the job (TOML) the script compiles to, and run nothing.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// List the checkpoints in a directory (or an object store URL, `s3://bucket/prefix`):
    /// id, time, watermark, source position, size, and whether each is complete (or what is
    /// wrong with it).
    Checkpoints {
        /// The job's `[checkpoint] dir`.
        dir: PathBuf,
    },
    /// Write a generated dataset to a Parquet file.
    Gen {
        /// `clickstream`, `iot`, `nexmark` or `transactions`.
        dataset: Dataset,
        /// Number of events.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Number of distinct keys (articles or sensors).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Seed: the same seed gives the same file.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of events delayed far beyond the usual jitter (late for a 5s bound).
        #[arg(long, default_value_t = 0.001)]
        late_share: f64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the built-in benchmark suite: tumble, hop and cumulate windows over generated
    /// clickstream data, then the example jobs (trending, IoT anomaly, Nexmark q5, q7 and q11).
    Bench {
        /// Events per case (cpu). The default, 20M at 10 000 events per second of event time,
        /// is 33 minutes: longer than two hop windows, as a real stream is.
        #[arg(long, default_value_t = 20_000_000)]
        events: u64,
        /// Events per case for the reference backend, which is slow and keeps every event.
        #[arg(long, default_value_t = 200_000)]
        reference_events: u64,
        /// Key counts to run, comma separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,100000,1000000,10000000"
        )]
        keys: Vec<u64>,
        /// Backends to run, comma separated (`gpu` adds the kernels alone, timed on the
        /// device). Default: `reference` and `cpu`, and `gpu` when the machine has a
        /// hardware GPU.
        #[arg(long, value_delimiter = ',')]
        backend: Vec<BackendKind>,
        /// Thread counts to run each case at, comma separated: a sweep, with a speed-up
        /// column against the first (default: every core).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Run only the cases whose name starts with one of these, comma separated
        /// (`hop`, `tumble`, `nexmark`, ...; default: every case).
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// GPU cases: time each stage (host preparation and upload, recording, submits,
        /// device sort and fold, combine with its waits and readback, evaluation; device
        /// stages by GPU timestamps where the adapter has them, which waits for each
        /// submission) and print them under the case (and in `--json`).
        #[arg(long)]
        profile: bool,
        /// Which part of the suite: `windows` (the window shapes at every key count and
        /// batch size), `nexmark`, `iot`, or `all`.
        #[arg(long, value_enum, default_value = "all")]
        suite: bench::Part,
        /// Rows per input batch, comma separated: each case runs at each (a sweep).
        #[arg(long, value_delimiter = ',', default_value = "65536")]
        batch_rows: Vec<usize>,
        /// Timed runs per case, after one warm-up run (none when 1): the table gives the
        /// median and the interquartile spread.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Seconds per case after which no further repeat starts (it runs at least once).
        #[arg(long, default_value_t = 60.0)]
        max_time: f64,
        /// Time each case as `panes run` runs it (its input written once to a Parquet
        /// file, then read, windowed and written to Parquet in every repeat) instead of
        /// the window operator alone on input already in memory.
        #[arg(long)]
        end_to_end: bool,
        /// Print the results as CSV (one line per case) instead of a table.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Also write an HTML report to this directory (`index.html`: the machine, the
        /// cases and plots of throughput against keys, panes per window and batch size,
        /// and thread scaling; no network needed to view it) and the JSON report beside it.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// With `--report`: the `peers.json` of `benches/peers/run.sh`, shown in the report
        /// beside panes' own cases.
        #[arg(long, value_name = "FILE", requires = "report")]
        peers: Option<PathBuf>,
        #[command(subcommand)]
        compare: Option<BenchCommand>,
    },
}

/// What `panes bench` does besides running the suite.
#[derive(Subcommand)]
enum BenchCommand {
    /// Compare two `panes bench --json` reports: per case, events/s old and new, their
    /// ratio and noise (the larger interquartile spread), and whether it is a regression or
    /// an improvement beyond the noise (twice the spread, and at least 5%).
    Compare {
        /// The earlier report.
        old: PathBuf,
        /// The later report (another commit, or another machine).
        new: PathBuf,
    },
}

/// A flag that SIGINT and SIGTERM set, so that a job stops between two batches (see
/// `RunOptions::stop`); a second signal while it stops ends the process at once.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The first signal sets the flag; one more, with the flag set, exits.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}

/// A `--threads` count that was asked for, checked.
fn thread_count(t: usize) -> Result<usize> {
    use panes::engine::run::{MAX_THREADS, default_threads};
    match t {
        0 => bail!("--threads: a thread count must be at least 1"),
        t if t > MAX_THREADS => bail!(
            "--threads {t}: at most {MAX_THREADS} (this machine has {} cores)",
            default_threads()
        ),
        t => Ok(t),
    }
}

fn main() -> ExitCode {
    panes::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command.execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A job whose source runs on: events and their rate, then [`event_time`].
fn unbounded_style() -> ProgressStyle {
    let template = "{spinner} {elapsed_precise} {human_pos} events ({per_sec}) {msg}";
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A progress line on stderr every [`ProgressLines::EVERY`], where there is no terminal
/// for the bar: events read and their rate, rows out, checkpoints, the watermark and how
/// far it trails the clock, and the late events.
struct ProgressLines {
    last: (std::time::Instant, u64),
}

impl ProgressLines {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new() -> ProgressLines {
        ProgressLines {
            last: (std::time::Instant::now(), 0),
        }
    }

    fn observe(&mut self, p: &Progress) {
        let elapsed = self.last.0.elapsed();
        if elapsed < Self::EVERY {
            return;
        }
        let rate = p.events.saturating_sub(self.last.1) as f64 / elapsed.as_secs_f64();
        eprintln!(
            "progress: {} events ({rate:.0}/s), {} rows out, {} checkpoints, {}",
            p.events,
            p.rows_out,
            p.checkpoints,
            event_time(p)
        );
        self.last = (std::time::Instant::now(), p.events);
    }
}

/// The watermark, how far it trails the clock, and the late events.
fn event_time(p: &Progress) -> String {
    if p.watermark == i64::MIN {
        return format!("no watermark yet, {} late", p.late);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.watermark.max(0) as u64);
    format!(
        "watermark {} ({:.1} s behind the clock), {} late",
        humantime::format_rfc3339_millis(at),
        (now - p.watermark) as f64 / 1e3,
        p.late
    )
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::new(total.unwrap_or(0));
    let template = "{spinner} {elapsed_precise} [{bar:30}] {human_pos}/{human_len} events ({per_sec}, eta {eta})";
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

impl RunArgs {
    /// Runs `job` to the end of its input (or until stopped) and prints its summary.
    fn run(self, job: &Job) -> Result<()> {
        let RunArgs {
            backend,
            batch_rows,
            threads,
            from_checkpoint,
            fresh,
            memory_budget,
            metrics,
            member,
        } = self;
        if batch_rows == 0 {
            bail!("--batch-rows must be at least 1");
        }
        let metrics = match metrics {
            Some(addr) => {
                let (metrics, at) = metrics::serve(&addr)?;
                eprintln!("metrics at http://{at}/metrics");
                Some(metrics)
            }
            None => None,
        };
        let bar = progress_bar(None);
        let progress_bar = bar.clone();
        // Without a terminal (a service, a log file) there is no bar: a line every
        // few seconds instead.
        let mut lines = (!std::io::stderr().is_terminal()).then(ProgressLines::new);
        let opts = RunOptions {
            backend,
            batch_rows,
            threads: match threads {
                Some(t) => thread_count(t)?,
                None => RunOptions::default().threads,
            },
            start: match (from_checkpoint, fresh) {
                (Some(path), _) => StartFrom::Checkpoint(path),
                (None, true) => StartFrom::Fresh,
                (None, false) => StartFrom::Newest,
            },
            memory_budget,
            progress: Some(Box::new(move |p: &Progress| {
                if let Some(m) = &metrics {
                    m.observe(p);
                }
                if let Some(lines) = lines.as_mut() {
                    lines.observe(p);
                }
                match p.total {
                    Some(t) => progress_bar.set_length(t),
                    // A source that runs on (a topic): where event time is instead.
                    None => {
                        if progress_bar.length() != Some(u64::MAX) {
                            progress_bar.set_length(u64::MAX);
                            progress_bar.set_style(unbounded_style());
                        }
                        progress_bar.set_message(event_time(p));
                    }
                }
                progress_bar.set_position(p.events);
            })),
            stop: Some(stop_on_signals()?),
            connectors: Default::default(),
            member,
        };
        let summary = run_job(job, opts);
        bar.finish_and_clear();
        eprintln!("{}", summary?);
        Ok(())
    }
}

impl Command {
    fn execute(self) -> Result<()> {
        match self {
            Command::Run { job, run } => run.run(&Job::from_file(&job)?),
            Command::Sql {
                file,
                execute,
                explain,
                run,
            } => {
                let (text, name) = match (file, execute) {
                    (Some(f), _) => (
                        std::fs::read_to_string(&f)
                            .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?,
                        f.display().to_string(),
                    ),
                    (None, Some(text)) => (text, "<sql>".to_string()),
                    (None, None) => bail!("give a script file or -e 'SQL'"),
                };
                let compiled = panes::engine::sql::compile(&text, &name)?;
                let toml = toml::to_string_pretty(&compiled.job)?;
                // The job file is validated either way: EXPLAIN of a job that cannot run
                // says why.
                let job = Job::from_toml(&toml, &name)?;
                if explain || compiled.explain {
                    print!("{toml}");
                    return Ok(());
                }
                run.run(&job)
            }
            Command::Checkpoints { dir } => {
                // A URL names checkpoints in an object store.
                if !dir.is_dir() && !dir.to_string_lossy().contains("://") {
                    bail!("{}: no such directory", dir.display());
                }
                let found = checkpoint::list(&dir)?;
                if found.is_empty() {
                    println!("no checkpoints in {}", dir.display());
                    return Ok(());
                }
                println!(
                    "{:>8}  {:<24} {:<24} {:>10}  {:<40} status",
                    "id", "taken (UTC)", "watermark", "size", "source position"
                );
                for f in found {
                    let size = format!("{:.1} MiB", f.bytes as f64 / (1 << 20) as f64);
                    match f.status {
                        Ok(m) => println!(
                            "{:>8}  {:<24} {:<24} {:>10}  {:<40} {}",
                            f.id,
                            time_of(m.created_ms as i64),
                            time_of(m.watermark),
                            size,
                            m.position.to_string(),
                            if m.finished {
                                "complete, job finished"
                            } else {
                                "complete"
                            }
                        ),
                        Err(why) => println!(
                            "{:>8}  {:<24} {:<24} {:>10}  {:<40} NOT USABLE: {why}",
                            f.id, "-", "-", size, "-"
                        ),
                    }
                }
                Ok(())
            }
            Command::Gen {
                dataset,
                events,
                keys,
                seed,
                late_share,
                out,
            } => {
                let config = GenConfig {
                    events,
                    keys,
                    seed,
                    late_share,
                    ..GenConfig::default()
                };
                let batches =
                    panes::datasets::generate(dataset, &config).map_err(anyhow::Error::msg)?;
                write_parquet(&out, dataset, batches, events)?;
                eprintln!(
                    "wrote {events} {dataset} events over {keys} keys to {}",
                    out.display()
                );
                if dataset == Dataset::Iot {
                    let labels = panes::datasets::iot::anomaly_labels(&config);
                    let path = out.with_extension("labels.parquet");
                    let mut sink = open_sink(&Sink::Parquet(path.clone()), &labels.schema())?;
                    sink.write(&labels)?;
                    sink.finish()?;
                    eprintln!(
                        "wrote {} injected anomalies (ground truth) to {}",
                        labels.num_rows(),
                        path.display()
                    );
                }
                Ok(())
            }
            Command::Bench {
                compare: Some(BenchCommand::Compare { old, new }),
                ..
            } => compare_reports(&old, &new),
            Command::Bench {
                events,
                reference_events,
                keys,
                backend,
                threads,
                cases: only,
                json,
                profile,
                repeats,
                max_time,
                end_to_end,
                csv,
                suite: part,
                batch_rows,
                report: report_dir,
                peers,
                compare: None,
            } => {
                let peers = match peers {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                        let value: serde_json::Value =
                            serde_json::from_str(&text).map_err(|e| {
                                anyhow::anyhow!("{} is not a peers.json: {e}", path.display())
                            })?;
                        Some(value)
                    }
                    None => None,
                };
                if batch_rows.contains(&0) {
                    bail!("--batch-rows: a batch has at least 1 row");
                }
                let backend = match backend {
                    b if b.is_empty() => {
                        let gpu = panes::kernels::gpu::hardware_adapter().is_ok();
                        let all = [BackendKind::Reference, BackendKind::Cpu, BackendKind::Gpu];
                        all[..if gpu { 3 } else { 2 }].to_vec()
                    }
                    b => b,
                };
                let threads = match threads {
                    t if t.is_empty() => vec![panes::engine::run::default_threads()],
                    t => t.into_iter().map(thread_count).collect::<Result<_>>()?,
                };
                if repeats == 0 {
                    bail!("--repeats must be at least 1");
                }
                let names = bench::case_names();
                if let Some(bad) = only
                    .iter()
                    .find(|o| !names.iter().any(|n| n.starts_with(o.as_str())))
                {
                    bail!(
                        "--cases: no case of the suite starts with {bad:?}; the cases are {}",
                        names.join(", ")
                    );
                }
                let table = !json && !csv;
                if table {
                    println!("{}", Machine::here(Vec::new()).line());
                    println!(
                        "{:<18} {:>8} {:<9} {:>9} {:>7} {:>13} {:>7} {:>8} {:>7} {:>13}",
                        "case",
                        "keys",
                        "backend",
                        "events",
                        "threads",
                        "events/s",
                        "spread",
                        "speed-up",
                        "rows",
                        "kernel ev/s"
                    );
                }
                let mut adapters = std::collections::BTreeSet::new();
                let suite = bench::Suite {
                    events,
                    reference_events,
                    keys: &keys,
                    backends: &backend,
                    threads: &threads,
                    only: &only,
                    part,
                    batch_rows: &batch_rows,
                    profile,
                    repeats,
                    max_time,
                    end_to_end,
                };
                // A progress line per case on stderr, where a table does not show it.
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} cases: {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let red = std::io::stdout().is_terminal();
                let cases = bench::suite(&suite, |c| {
                    bar.set_message(format!(
                        "{} {} keys on {} done",
                        c.window, c.keys, c.backend
                    ));
                    bar.inc(1);
                    if let Some(a) = &c.adapter {
                        adapters.insert(a.clone());
                    }
                    if !table {
                        return;
                    }
                    bar.suspend(|| print_case(c, red));
                })?;
                bar.finish_and_clear();
                let report = Report {
                    schema: panes::harness::SCHEMA.into(),
                    machine: Machine::here(adapters.into_iter().collect()),
                    cases,
                };
                if let Some(dir) = report_dir {
                    let page =
                        panes::report::write(&report, peers.as_ref(), &dir).map_err(|e| {
                            anyhow::anyhow!("writing the report to {}: {e}", dir.display())
                        })?;
                    eprintln!("report: {}", page.display());
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else if csv {
                    print!("{}", panes::harness::csv(&report));
                }
                let failed: Vec<&str> = (report.cases.iter())
                    .filter_map(|c| c.disagreement.as_deref())
                    .collect();
                if !failed.is_empty() {
                    bail!(
                        "{} case(s) returned other rows than the first backend or thread count: {}",
                        failed.len(),
                        failed.join("; ")
                    );
                }
                Ok(())
            }
        }
    }
}

/// One line of the `panes bench` table (and the GPU's profile under it); a case whose
/// rows disagree with the first backend's is marked, in red on a terminal.
fn print_case(c: &bench::Case, red: bool) {
    let kernel = (c.kernel_events_per_sec).map_or("-".into(), |k| format!("{k:.0}"));
    let agrees = match (c.agrees, red) {
        (Some(false), true) => "  \x1b[31mDISAGREES\x1b[0m",
        (Some(false), false) => "  DISAGREES",
        _ => "",
    };
    println!(
        "{:<18} {:>8} {:<9} {:>9} {:>7} {:>13.0} {:>6.1}% {:>7.2}x {:>7} {:>13}{agrees}",
        c.window,
        c.keys,
        c.backend,
        c.events,
        c.threads,
        c.events_per_sec,
        c.seconds.noise() * 100.0,
        c.speedup,
        c.rows_out,
        kernel
    );
    if let (Some(a), Some(t)) = (&c.adapter, &c.kernel_timer) {
        println!("  gpu: {a}; kernels timed by {t}");
    }
    if let Some(d) = &c.disagreement {
        println!("  {d}");
    }
    for s in c.profile.iter().flatten() {
        let share = s.seconds / c.seconds.median.max(1e-9) * 100.0;
        println!("    {:<44} {:>9.3} s {:>6.1}%", s.stage, s.seconds, share);
    }
}

/// `panes bench compare OLD NEW`.
fn compare_reports(old: &Path, new: &Path) -> Result<()> {
    let read = |path: &Path| -> Result<Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a `panes bench --json` report ({}): {e}",
                path.display(),
                panes::harness::SCHEMA
            )
        })?;
        if report.schema != panes::harness::SCHEMA {
            bail!(
                "{} has schema {:?}; this panes reads {:?}",
                path.display(),
                report.schema,
                panes::harness::SCHEMA
            );
        }
        Ok(report)
    };
    let (old, new) = (read(old)?, read(new)?);
    println!("old: {}", old.machine.line());
    println!("new: {}", new.machine.line());
    let changes = panes::harness::compare(&old, &new);
    if changes.is_empty() {
        bail!("the two reports have no case in common (case, keys, backend and threads)");
    }
    println!(
        "{:<52} {:>13} {:>13} {:>7} {:>7}",
        "case", "old ev/s", "new ev/s", "ratio", "noise"
    );
    for c in &changes {
        let verdict = match (c.regression, c.improvement) {
            (true, _) => "  regression",
            (_, true) => "  improvement",
            _ => "",
        };
        println!(
            "{:<52} {:>13.0} {:>13.0} {:>6.2}x {:>6.1}%{verdict}",
            c.case,
            c.old,
            c.new,
            c.new / c.old.max(1e-12),
            c.noise * 100.0
        );
    }
    let regressions = changes.iter().filter(|c| c.regression).count();
    println!(
        "{} cases compared, {regressions} regression(s), {} improvement(s)",
        changes.len(),
        changes.iter().filter(|c| c.improvement).count()
    );
    Ok(())
}

/// An event time (ms since the epoch) as a UTC date and time; `-` before any.
fn time_of(ms: i64) -> String {
    if ms == i64::MIN {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_millis(
        time + std::time::Duration::from_millis(ms.rem_euclid(1000) as u64),
    )
    .to_string()
}

/// Writes generated batches to a Parquet file through the engine's sink (temporary name,
/// renamed into place when complete).
fn write_parquet(
    out: &Path,
    dataset: Dataset,
    batches: Box<dyn Iterator<Item = arrow::record_batch::RecordBatch> + Send>,
    events: u64,
) -> Result<()> {
    let mut sink = open_sink(
        &Sink::Parquet(out.to_path_buf()),
        &panes::datasets::schema(dataset),
    )?;
    let bar = progress_bar(Some(events));
    for batch in batches {
        sink.write(&batch)?;
        bar.inc(batch.num_rows() as u64);
    }
    bar.finish_and_clear();
    sink.finish()?;
    Ok(())
}
