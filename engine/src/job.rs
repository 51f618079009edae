//! The job file (TOML): its sections, their defaults, and validation into a [`Job`].
//!
//! The doc comments on these structs are the reference for users; the README copies them.
//! Unknown keys are an error, so a typo never becomes a silent default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::expr::Filter;
use crate::window::WindowSpec;
use panes_kernels::AggFn;

/// A whole job file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Where events come from.
    pub source: SourceConfig,
    /// Event time and watermarks.
    pub time: TimeConfig,
    /// The windows.
    pub window: WindowConfig,
    /// The grouping key; no section (or `columns = []`) means one global group.
    #[serde(default)]
    pub key: KeyConfig,
    /// The aggregates, at least one.
    #[serde(default)]
    pub aggregate: Vec<AggregateConfig>,
    /// Where window results go.
    pub sink: SinkConfig,
    /// Where late events go. Without it late events are counted and reported, not kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<SinkConfig>,
    /// Where CSV records that do not decode go (file, line, reason, raw text). Without it
    /// they are counted, and the first ones logged with their text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SinkConfig>,
    /// Keep only the k largest rows of each window by one aggregate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<TopKConfig>,
    /// Alerts when a key's window value strays from its own recent baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<AnomalyConfig>,
    /// Periodic snapshots of the job's state, for exactly-once restore after a crash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointConfig>,
    /// Bounds on the memory the job's state takes.
    #[serde(default)]
    pub state: StateConfig,
    /// Which events are aggregated, and which window rows come out.
    #[serde(default, skip_serializing_if = "FilterConfig::is_empty")]
    pub filter: FilterConfig,
    /// The columns of window rows and their order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputConfig>,
}

/// `[output]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The columns of window rows in order, each a column name or an SQL expression over
    /// them, optionally renamed (`"name AS alias"`, `"total / payments AS mean"`), from:
    /// the key columns, `window_start`, `window_end`, `window_time` (`window_end` - 1 ms),
    /// the aggregates, `rank` (with `[top_k]`) and `revision` (with allowed lateness;
    /// added at the end when not listed, so that re-fired rows stay apart).
    pub columns: Vec<String>,
}

/// A column of window rows as `[output]` picks it: `from`, named `name`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputColumn {
    /// A key column, `window_start`, `window_end`, `window_time`, an aggregate, `rank` or
    /// `revision`; or the text of `computed`.
    pub from: String,
    /// Its name in the output.
    pub name: String,
    /// An expression over the columns above, evaluated on each batch of window rows.
    pub computed: Option<Filter>,
}

impl OutputConfig {
    /// Checks the columns against what window rows have (`have`, in their order).
    fn validate(&self, have: &[&str]) -> Result<Vec<OutputColumn>, String> {
        let mut out: Vec<OutputColumn> = Vec::new();
        for entry in &self.columns {
            let entry = entry.trim();
            // `… AS alias` where the alias is a plain name (CAST(x AS DOUBLE) has none).
            let is_name =
                |w: &str| !w.is_empty() && w.chars().all(|c| c.is_alphanumeric() || c == '_');
            let words: Vec<&str> = entry.split_whitespace().collect();
            let (from, name) = match words[..] {
                [_, .., r#as, alias] if r#as.eq_ignore_ascii_case("as") && is_name(alias) => {
                    let head = entry[..entry.len() - alias.len()].trim_end();
                    (head[..head.len() - 2].trim(), alias)
                }
                _ => (entry, entry),
            };
            let plain = have.contains(&from) || from == "window_time";
            let computed = match plain {
                true => None,
                false if is_name(from) => {
                    return Err(format!(
                        "output.columns: {from:?} is not a column of window rows; they have \
                         window_time and {}",
                        have.join(", ")
                    ));
                }
                false => Some(Filter::parse(from).map_err(|e| format!("output.columns: {e}"))?),
            };
            if name.is_empty() || (computed.is_some() && name == from) {
                return Err(format!(
                    "output.columns: give the computed column {from:?} a name: \"{from} AS name\""
                ));
            }
            if out.iter().any(|c| c.name == name) {
                return Err(format!("output.columns: {name:?} comes twice"));
            }
            out.push(OutputColumn {
                from: from.into(),
                name: name.into(),
                computed,
            });
        }
        if have.contains(&"revision") && !out.iter().any(|c| c.from == "revision") {
            out.push(OutputColumn {
                from: "revision".into(),
                name: "revision".into(),
                computed: None,
            });
        }
        Ok(out)
    }
}

/// `[filter]`: SQL boolean expressions (see [`crate::expr`]); a row is kept where the
/// expression is true, as with SQL's `WHERE` and `HAVING`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// On input events, by their columns, e.g. `"amount > 0 AND status = 'ok'"`. Events it
    /// drops still move the watermark (they are dropped after it is computed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// On window rows, by their keys, window bounds and aggregates, e.g.
    /// `"payments >= 5"` (before top-k ranks them). Anomaly alerts see every row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<String>,
}

impl FilterConfig {
    fn is_empty(&self) -> bool {
        self.events.is_none() && self.windows.is_none()
    }
}

/// `[state]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Memory for pane state and the key dictionary, e.g. `512MiB` or `2GB`. Beyond it,
    /// closed panes spill to disk (`--memory-budget` overrides it). Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    /// Where spilled panes go (default: a fresh directory in the system's temp dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<String>,
}

/// Parses a size such as `512MiB`, `2 GB`, `64k` or `1000000` (bytes).
pub fn parse_bytes(field: &str, text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{field} = {text:?}: unknown unit {unit:?}; write e.g. \"512MiB\" or \"2GB\""
            ));
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n * (scale as f64) < u64::MAX as f64 => Ok((n * scale as f64) as u64),
        _ => Err(format!(
            "{field} = {text:?} is not a positive size; write e.g. \"512MiB\""
        )),
    }
}

/// `[checkpoint]`. With it, file sinks write part files into a directory (their `path`)
/// and publish each when the checkpoint that covers it completes, so that output after a
/// crash and restore equals the output of a run that never crashed.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the checkpoints, one sub-directory `chk-NNNNNN` each.
    pub dir: String,
    /// Processing time between checkpoints, e.g. `10s` (the default, unless `every_events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A checkpoint after every N events instead (at the next batch boundary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_events: Option<u64>,
    /// Complete checkpoints kept (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
}

/// When checkpoints are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// After this much processing time.
    Interval(Duration),
    /// After this many events.
    Events(u64),
}

/// A validated `[checkpoint]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Where checkpoints go.
    pub dir: PathBuf,
    /// When.
    pub trigger: Trigger,
    /// Complete checkpoints kept.
    pub keep: usize,
}

impl CheckpointConfig {
    fn validate(&self) -> Result<Checkpoint, String> {
        let trigger = match (&self.interval, self.every_events) {
            (Some(_), Some(_)) => {
                return Err("checkpoint: give interval or every_events, not both".into());
            }
            (_, Some(n)) => Trigger::Events(n),
            (Some(i), None) => Trigger::Interval(Duration::from_millis(parse_millis(
                "checkpoint.interval",
                i,
            )? as u64)),
            (None, None) => Trigger::Interval(Duration::from_secs(10)),
        };
        let checkpoint = Checkpoint {
            dir: PathBuf::from(&self.dir),
            trigger,
            keep: self.keep.unwrap_or(3),
        };
        checkpoint.check()?;
        Ok(checkpoint)
    }
}

impl Checkpoint {
    fn check(&self) -> Result<(), String> {
        match self.trigger {
            Trigger::Events(0) => Err("checkpoint.every_events must be at least 1".into()),
            Trigger::Interval(d) if d.is_zero() => {
                Err("checkpoint.interval must be longer than 0s".into())
            }
            _ if self.keep == 0 => Err("checkpoint.keep must be at least 1".into()),
            _ if self.dir.as_os_str().to_string_lossy().trim().is_empty() => {
                Err("checkpoint.dir is empty".into())
            }
            _ => Ok(()),
        }
    }
}

/// `[anomaly]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// The aggregate (by name) whose window values are watched.
    pub value: String,
    /// Baseline: mean and standard deviation of the key's last N windows (default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_windows: Option<usize>,
    /// Baseline: exponentially weighted mean and variance with this weight, instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ewma: Option<f64>,
    /// Alert when |value − mean| >= threshold · std (default 2.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Windows of history a key needs before it can alert (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_history: Option<usize>,
    /// A `count` aggregate (by name): windows with fewer than `min_count` of it are
    /// neither checked nor added to the baseline (a sensor's partial minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
    /// See `count` (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_count: Option<i64>,
    /// Where alert rows go.
    pub sink: SinkConfig,
}

/// How a key's baseline is kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Baseline {
    /// Mean and sample standard deviation of the last N window values.
    Rolling(usize),
    /// Exponentially weighted mean and variance with weight alpha.
    Ewma(f64),
}

/// A validated `[anomaly]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// Index of the watched aggregate.
    pub value: usize,
    /// The baseline.
    pub baseline: Baseline,
    /// Alert when |z| >= threshold.
    pub threshold: f64,
    /// Windows of history needed before alerting.
    pub min_history: usize,
    /// A count aggregate (index) and the least value of it a window needs to be checked.
    pub min_count: Option<(usize, i64)>,
    /// Alert rows to.
    pub sink: Sink,
}

/// `[top_k]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopKConfig {
    /// The aggregate (by name) that ranks the rows, largest first.
    pub by: String,
    /// Rows kept per window.
    pub k: usize,
}

/// The k rows of each window with the largest value of aggregate `by` (an index into
/// [`Job::aggregates`]), in rank order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopK {
    /// Index of the ranking aggregate.
    pub by: usize,
    /// Rows kept per window.
    pub k: usize,
}

/// `[source]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `parquet`, `csv`, `jsonl`, `kafka` or `generator`.
    pub kind: String,
    /// parquet/csv/jsonl: a file, a directory (its `*.parquet`/`*.csv`/`*.jsonl` files,
    /// sorted by name) or a glob. The files are read in name order as one partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// generator: `clickstream`, `iot`, `nexmark` or `transactions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// generator: number of events (default 1 000 000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// generator: number of distinct keys (articles, sensors; default 10 000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// generator: seed (default 42).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// generator: share of events delayed far beyond the jitter (default 0.001).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_share: Option<f64>,
    /// generator: number of source partitions, batches dealt round-robin (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// csv/jsonl: what a record that does not decode (too few or too many fields, a value
    /// not of its column's type, a line that is not a JSON object) does: `"dead_letter"`
    /// (default: it goes to `[dead_letter]`, the job goes on) or `"fail"` (the job stops,
    /// naming file, line and column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_malformed: Option<String>,
    /// csv/jsonl/kafka: column types by name, e.g. `{ ts = "timestamp_ms", price =
    /// "float64" }`, in the order of the columns (Kafka messages in CSV have no header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<indexmap::IndexMap<String, String>>,
    /// parquet/csv/jsonl: `"file"` makes each file a source partition of its own, read
    /// side by side with its own watermark (default: the files one after another, as one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// kafka: brokers, `host:port[,host:port...]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    /// kafka: the topic; each of its partitions is a source partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// kafka: instead of `topic`, several topics, whose partitions are all source
    /// partitions (the messages of every topic in the same format and schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// kafka: the consumer group (default `"panes"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// kafka: the messages' format: `"json"` (one object a message; the default) or
    /// `"csv"` (one record a message, the columns in `schema`'s order, no header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// kafka: where a partition starts when neither a checkpoint nor the group's committed
    /// offsets say: `"earliest"` (default), `"latest"`, or a time such as
    /// `"2026-12-06T09:00:00Z"` (the first message stamped at or after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// kafka: `"end"` stops at the offsets that ended each partition when the job started
    /// (a bounded run); by default the job runs until stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// kafka: share the topics' partitions with the other processes of the `group` (the
    /// group's assignment decides which process reads which partition), with the state,
    /// checkpoints and output of each partition its own. Needs `[checkpoint]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_out: Option<bool>,
}

/// `[time]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// The event-time column: an Arrow timestamp of any unit, or integer milliseconds.
    pub column: String,
    /// Bounded out-of-orderness: the watermark trails the largest event time seen by this
    /// much (plus 1 ms). Default `0s`.
    #[serde(default = "zero")]
    pub max_out_of_orderness: String,
    /// How long a window keeps its state after it fired; events within it re-fire the
    /// window with a higher `revision`. Default `0s`.
    #[serde(default = "zero")]
    pub allowed_lateness: String,
    /// A partition that produced nothing for this long (processing time) stops holding
    /// the watermark back, until it produces again. Default `30s`.
    #[serde(default = "thirty_seconds")]
    pub idle_timeout: String,
}

fn zero() -> String {
    "0s".into()
}

fn thirty_seconds() -> String {
    "30s".into()
}

/// `[window]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// `tumble`, `hop` or `cumulate`.
    pub kind: String,
    /// Window length, e.g. `15m` (cumulate: the longest window, a whole number of steps);
    /// not for sessions.
    #[serde(default)]
    pub size: String,
    /// hop: distance between window starts, e.g. `1m`; at most `size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slide: Option<String>,
    /// cumulate: distance between window ends, e.g. `1m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// session: the inactivity that ends a session, e.g. `30m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
    /// Shift of window starts from the epoch (default `0s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

/// `[key]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key columns: integer or string types. A null key is a group of its own.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// One `[[aggregate]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Output column name.
    pub name: String,
    /// `count`, `sum`, `min`, `max`, `avg`, `var_samp`, `var_pop`, `stddev_samp`,
    /// `stddev_pop`, `first`, `last`. `count` without `column` counts rows.
    #[serde(rename = "fn")]
    pub func: String,
    /// Input column (numeric; any type for `count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Instead of `column`: an SQL expression over the input's columns, e.g. `"price *
    /// quantity"` (evaluated a batch at a time, after `[filter] events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
}

/// `[sink]` and `[late]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `parquet`, `csv`, `jsonl` (JSON lines; to stdout when `path` is absent or `-`) or
    /// `kafka` (a JSON object a message).
    #[serde(default = "parquet")]
    pub kind: String,
    /// Output file. Written under a temporary name and renamed when complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// kafka: brokers, `host:port[,host:port...]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    /// kafka: the topic the rows go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

fn parquet() -> String {
    "parquet".into()
}

/// A validated source.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Parquet files.
    Parquet(ParquetSpec),
    /// Text files: CSV with a header row, or JSON lines.
    Text(TextSource),
    /// A Kafka topic.
    Kafka(KafkaSpec),
    /// A built-in generator.
    #[cfg(feature = "datasets")]
    Generator(GeneratorSpec),
}

impl std::fmt::Display for Source {
    /// How errors name the source: its path, or the generator's dataset.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Parquet(ParquetSpec { path: p, .. })
            | Source::Text(TextSource { path: p, .. }) => f.write_str(p),
            Source::Kafka(k) => match k.topics.as_slice() {
                [one] => write!(f, "kafka topic {one:?} at {}", k.bootstrap),
                many => write!(f, "kafka topics {many:?} at {}", k.bootstrap),
            },
            #[cfg(feature = "datasets")]
            Source::Generator(g) => write!(f, "generator {:?}", g.dataset),
        }
    }
}

/// A validated source of Parquet files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParquetSpec {
    /// A file, a directory or a glob.
    pub path: String,
    /// Each file a source partition of its own (`partition_by = "file"`).
    pub per_file: bool,
}

/// A validated source of text files.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSource {
    /// CSV or JSON lines.
    pub format: TextFormat,
    /// A file, a directory or a glob.
    pub path: String,
    /// Declared column types, by name (`[source] schema`); the others are inferred (CSV)
    /// or not read (JSON lines).
    pub schema: Vec<(String, arrow::datatypes::DataType)>,
    /// What a record that does not decode does.
    pub on_malformed: OnMalformed,
    /// Each file a source partition of its own (`partition_by = "file"`).
    pub per_file: bool,
}

/// A validated Kafka source: every partition of its topics, each a source partition.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSpec {
    /// Brokers, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// The topics, at least one, none twice.
    pub topics: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// Column types by name, in the order CSV messages give them.
    pub schema: Vec<(String, arrow::datatypes::DataType)>,
    /// The messages' format: JSON objects, or CSV records without a header.
    pub format: TextFormat,
    /// Where a partition starts when neither a checkpoint nor the group's offsets say.
    pub start: KafkaStart,
    /// Stop at the offsets that ended each partition when the job started (a bounded
    /// run); otherwise run until stopped.
    pub stop_at_end: bool,
    /// What a message that does not decode does.
    pub on_malformed: OnMalformed,
    /// Add the messages' own timestamps as column [`KAFKA_TIMESTAMP`] (when it is the
    /// event time).
    pub timestamp: bool,
    /// Share the partitions with the group's other processes, each partition a job of its
    /// own (`scale_out`).
    pub scale_out: bool,
    /// Read this one (topic, partition) only: a partition's own job under `scale_out`.
    pub partition: Option<(String, i32)>,
}

/// Where a Kafka partition starts when neither a checkpoint nor the group's committed
/// offsets say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaStart {
    /// At its first offset.
    Earliest,
    /// At its end: only messages that arrive after the job started.
    Latest,
    /// At the first message stamped at or after this time (ms since the epoch), or at the
    /// end when none is.
    Time(i64),
}

/// The column that holds a Kafka message's timestamp, when `[time] column` names it.
pub const KAFKA_TIMESTAMP: &str = "_kafka_timestamp";

/// The format of a text source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFormat {
    /// CSV: files with a header row; Kafka messages one record each, without.
    Csv,
    /// One JSON object a line.
    JsonLines,
}

/// The column type a `[source] schema` entry names.
pub fn parse_type(column: &str, name: &str) -> Result<arrow::datatypes::DataType, String> {
    use arrow::datatypes::{DataType, TimeUnit};
    Ok(match name {
        "int64" => DataType::Int64,
        "float64" => DataType::Float64,
        "string" => DataType::Utf8,
        "bool" => DataType::Boolean,
        "timestamp_s" => DataType::Timestamp(TimeUnit::Second, None),
        "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "timestamp_us" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamp_ns" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        other => {
            return Err(format!(
                "source.schema.{column} = {other:?} is not a type; use \"int64\", \
                 \"float64\", \"string\", \"bool\" or \"timestamp_s\", \"_ms\", \"_us\", \"_ns\""
            ));
        }
    })
}

/// What a text record that does not decode does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnMalformed {
    /// It goes to the dead-letter output; the job goes on.
    #[default]
    DeadLetter,
    /// The job stops with an error naming file, line and column.
    Fail,
}

/// A validated generator source.
#[cfg(feature = "datasets")]
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSpec {
    /// Which dataset.
    pub dataset: panes_datasets::Dataset,
    /// Events, keys, seed, shares.
    pub config: panes_datasets::GenConfig,
    /// Number of partitions.
    pub partitions: u32,
}

/// A validated sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// A Parquet file.
    Parquet(PathBuf),
    /// A CSV file with a header.
    Csv(PathBuf),
    /// JSON lines to a file, or to stdout when `None`.
    JsonLines(Option<PathBuf>),
    /// JSON objects to a Kafka topic, one message a row.
    Kafka {
        /// Brokers.
        bootstrap: String,
        /// The topic.
        topic: String,
    },
}

/// A validated aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// Output column name.
    pub name: String,
    /// Function.
    pub func: AggFn,
    /// Input column, if the function reads one.
    pub column: Option<String>,
    /// An expression over the input's columns it reads instead of a column.
    pub expr: Option<crate::expr::Filter>,
}

/// A validated job: everything checked that can be checked without the data.
///
/// Made only from a job file, SQL, a [`JobFile`] filled in code (all through one
/// validation) or [`crate::Pipeline::builder`]; read through its methods, and changed with
/// `with_source`, `with_sinks` and `with_checkpoint`, which check it again. No invalid job
/// can be built in code.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Events from.
    pub(crate) source: Source,
    /// Event-time column.
    pub(crate) time_column: String,
    /// Bounded out-of-orderness in ms.
    pub(crate) max_out_of_orderness: i64,
    /// Allowed lateness in ms.
    pub(crate) allowed_lateness: i64,
    /// Idle timeout.
    pub(crate) idle_timeout: Duration,
    /// Window geometry.
    pub(crate) window: WindowSpec,
    /// Key columns.
    pub(crate) keys: Vec<String>,
    /// Aggregates.
    pub(crate) aggregates: Vec<Aggregate>,
    /// Results to.
    pub(crate) sink: Sink,
    /// Late events to.
    pub(crate) late: Option<Sink>,
    /// Malformed CSV records to.
    pub(crate) dead_letter: Option<Sink>,
    /// Top-k rows per window, if the job asks for them.
    pub(crate) top_k: Option<TopK>,
    /// Anomaly alerts, if the job asks for them.
    pub(crate) anomaly: Option<Anomaly>,
    /// Checkpoints, if the job takes them.
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Memory budget of the state in bytes; beyond it closed panes spill to disk.
    pub(crate) memory_budget: Option<u64>,
    /// Where spilled panes go.
    pub(crate) spill_dir: Option<PathBuf>,
    /// Events kept for aggregation (after the watermark saw them).
    pub(crate) filter_events: Option<Filter>,
    /// Window rows kept.
    pub(crate) filter_windows: Option<Filter>,
    /// The columns of window rows, when `[output]` picks them.
    pub(crate) output: Option<Vec<OutputColumn>>,
}

impl Job {
    /// Reads and validates a job file.
    pub fn from_file(path: &Path) -> Result<Job> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("reading job file", path, e))?;
        Job::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates job-file text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Job> {
        let err = |message: String| Error::Job {
            file: file.to_string(),
            message,
        };
        let parsed: JobFile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        parsed.validate().map_err(err)
    }

    /// Compiles and validates an SQL script (see [`crate::sql`]); `file` names it in
    /// errors.
    pub fn from_sql(text: &str, file: &str) -> Result<Job> {
        Job::from_config(crate::sql::compile(text, file)?.job, file)
    }

    /// Validates a job made in code or by the SQL front end; `file` names it in errors.
    pub fn from_config(config: JobFile, file: &str) -> Result<Job> {
        config.validate().map_err(|message| Error::Job {
            file: file.to_string(),
            message,
        })
    }

    /// The job reading from another source, checked as a job file is.
    pub fn with_source(mut self, source: Source) -> Result<Job> {
        self.source = source;
        self.checked().map_err(in_code)
    }

    /// The job writing its window rows and late events elsewhere, checked as a job file
    /// is.
    pub fn with_sinks(mut self, sink: Sink, late: Option<Sink>) -> Result<Job> {
        (self.sink, self.late) = (sink, late);
        self.checked().map_err(in_code)
    }

    /// The job with other checkpoints (or none), checked as a job file is.
    pub fn with_checkpoint(mut self, checkpoint: Option<Checkpoint>) -> Result<Job> {
        self.checkpoint = checkpoint;
        self.checked().map_err(in_code)
    }

    /// The checks between sections, which every way of making a job passes through.
    fn checked(mut self) -> Result<Job, String> {
        match &mut self.source {
            Source::Kafka(k) => k.timestamp = self.time_column == KAFKA_TIMESTAMP,
            _ if self.time_column == KAFKA_TIMESTAMP => {
                return Err(format!(
                    "time.column = {KAFKA_TIMESTAMP:?} is the timestamp of a Kafka message: \
                     only for kind = \"kafka\""
                ));
            }
            _ => {}
        }
        let dead_letters = match &self.source {
            Source::Text(t) => t.on_malformed == OnMalformed::DeadLetter,
            Source::Kafka(k) => k.on_malformed == OnMalformed::DeadLetter,
            _ => false,
        };
        if self.dead_letter.is_some() && !dead_letters {
            return Err(
                "[dead_letter] receives the records of a csv, jsonl or kafka source that do \
                 not decode; this job has none (a parquet or generator source, or on_malformed = \
                 \"fail\")"
                    .into(),
            );
        }
        if let Some(c) = &self.checkpoint {
            c.check()?;
        }
        if matches!(&self.source, Source::Kafka(k) if k.scale_out) && self.checkpoint.is_none() {
            return Err(
                "source.scale_out needs [checkpoint]: a partition that moves to another \
                 process takes its state from the newest checkpoint (give every process the \
                 same dir, e.g. an s3:// URL)"
                    .into(),
            );
        }
        let sinks: Vec<(&str, &Sink)> = [
            ("sink", Some(&self.sink)),
            ("late", self.late.as_ref()),
            ("dead_letter", self.dead_letter.as_ref()),
            ("anomaly.sink", self.anomaly.as_ref().map(|a| &a.sink)),
        ]
        .into_iter()
        .filter_map(|(name, s)| Some((name, s?)))
        .collect();
        for (i, (a, x)) in sinks.iter().enumerate() {
            for (b, y) in &sinks[..i] {
                if let (Some(p), Some(q)) = (x.path(), y.path())
                    && p == q
                {
                    return Err(format!(
                        "{b} and {a} both write to {}: give each its own path",
                        p.display()
                    ));
                }
            }
        }
        let to_stdout = sinks.iter().any(|(_, s)| **s == Sink::JsonLines(None));
        if self.checkpoint.is_some() && to_stdout {
            return Err(
                "with [checkpoint], output must go to files so that it can be committed \
                 exactly once: give every sink a path"
                    .into(),
            );
        }
        Ok(self)
    }

    /// Where events come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Every sink of the job: rows, then late events, dead letters and alerts where it has
    /// them.
    pub fn all_sinks(&self) -> impl Iterator<Item = &Sink> {
        [
            Some(&self.sink),
            self.late.as_ref(),
            self.dead_letter.as_ref(),
        ]
        .into_iter()
        .chain([self.anomaly.as_ref().map(|a| &a.sink)])
        .flatten()
    }

    /// [`Job::all_sinks`], to change them (a partition's own job under scale-out).
    pub(crate) fn all_sinks_mut(&mut self) -> impl Iterator<Item = &mut Sink> {
        [
            Some(&mut self.sink),
            self.late.as_mut(),
            self.dead_letter.as_mut(),
        ]
        .into_iter()
        .chain([self.anomaly.as_mut().map(|a| &mut a.sink)])
        .flatten()
    }

    /// The event-time column.
    pub fn time_column(&self) -> &str {
        &self.time_column
    }

    /// The bound on out-of-orderness, ms.
    pub fn max_out_of_orderness(&self) -> i64 {
        self.max_out_of_orderness
    }

    /// How long after the watermark passed a window late events still update it, ms.
    pub fn allowed_lateness(&self) -> i64 {
        self.allowed_lateness
    }

    /// How long a quiet partition holds the watermark back.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The windows.
    pub fn window(&self) -> &WindowSpec {
        &self.window
    }

    /// The key columns (none: one global group).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The aggregates, in output order.
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }

    /// Where window rows go.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Where late events go, if they are kept.
    pub fn late(&self) -> Option<&Sink> {
        self.late.as_ref()
    }

    /// Where records that do not decode go, if they are kept.
    pub fn dead_letter(&self) -> Option<&Sink> {
        self.dead_letter.as_ref()
    }

    /// Top-k rows per window, if asked for.
    pub fn top_k(&self) -> Option<&TopK> {
        self.top_k.as_ref()
    }

    /// Anomaly alerts, if asked for.
    pub fn anomaly(&self) -> Option<&Anomaly> {
        self.anomaly.as_ref()
    }

    /// Checkpoints, if the job takes them.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The memory budget of the state, bytes.
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_budget
    }
}

/// An error of a job changed in code.
fn in_code(message: String) -> Error {
    Error::Job {
        file: "<job>".into(),
        message,
    }
}

/// Parses a point in time, RFC 3339 (`2026-12-06T09:00:00Z`, or with a space and without
/// the zone: UTC), into ms since the epoch.
pub fn parse_time(field: &str, text: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(text.trim()).map_err(|e| {
        format!("{field} = {text:?} is not a time ({e}); write e.g. \"2026-12-06T09:00:00Z\"")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{field} = {text:?} is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("{field} = {text:?} is too far ahead"))
}

/// Parses a duration such as `5s`, `15m`, `100ms`, `1h 30m` into milliseconds.
pub fn parse_millis(field: &str, text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{field} = {text:?} is not a duration ({e}); write e.g. \"5s\", \"15m\", \"100ms\"")
    })?;
    // A thousand years keeps every watermark and window computation far from overflow.
    const MAX_MS: u128 = 1000 * 366 * 24 * 3600 * 1000;
    match d.as_millis() {
        ms if ms <= MAX_MS => Ok(ms as i64),
        _ => Err(format!(
            "{field} = {text:?} is too long (at most 1000 years)"
        )),
    }
}

impl JobFile {
    fn validate(self) -> Result<Job, String> {
        let source = self.source.validate()?;
        let t = &self.time;
        let max_out_of_orderness =
            parse_millis("time.max_out_of_orderness", &t.max_out_of_orderness)?;
        let allowed_lateness = parse_millis("time.allowed_lateness", &t.allowed_lateness)?;
        let idle_ms = parse_millis("time.idle_timeout", &t.idle_timeout)?;
        let w = &self.window;
        let offset = w
            .offset
            .as_deref()
            .map(|o| parse_millis("window.offset", o))
            .transpose()?
            .unwrap_or(0);
        let kind = w.kind.as_str();
        if !matches!(kind, "tumble" | "hop" | "cumulate" | "session") {
            return Err(format!(
                "window.kind = {kind:?} is unknown; use \"tumble\", \"hop\", \"cumulate\" or \
                 \"session\""
            ));
        }
        for (field, set, only) in [
            ("slide", w.slide.is_some(), "hop"),
            ("step", w.step.is_some(), "cumulate"),
            ("gap", w.gap.is_some(), "session"),
        ] {
            if set && kind != only {
                return Err(format!("window.{field} is only for kind = \"{only}\""));
            }
        }
        let size = || match (kind, w.size.is_empty()) {
            ("session", true) => Ok(0),
            ("session", false) => Err("window.size is not for sessions: give a gap".to_string()),
            (_, true) => Err(format!(
                "window kind \"{kind}\" needs a size, e.g. size = \"1m\""
            )),
            (_, false) => parse_millis("window.size", &w.size),
        };
        let needs = |field: &str, value: &Option<String>| match value {
            Some(v) => parse_millis(&format!("window.{field}"), v),
            None => Err(format!(
                "window kind \"{kind}\" needs a {field}, e.g. {field} = \"1m\""
            )),
        };
        let window = match kind {
            "tumble" => WindowSpec::new(size()?, size()?, offset),
            "hop" => WindowSpec::new(size()?, needs("slide", &w.slide)?, offset),
            "cumulate" => WindowSpec::cumulate(needs("step", &w.step)?, size()?, offset),
            _ => {
                size()?;
                WindowSpec::session(needs("gap", &w.gap)?)
            }
        }
        .map_err(|e| format!("window: {e}"))?;
        if self.aggregate.is_empty() {
            return Err(
                "the job has no [[aggregate]]; add one, e.g. name = \"events\", fn = \"count\""
                    .into(),
            );
        }
        let mut names: Vec<&str> = self.key.columns.iter().map(String::as_str).collect();
        names.extend(["window_start", "window_end", "revision"]);
        let mut aggregates = Vec::new();
        for (i, a) in self.aggregate.iter().enumerate() {
            let at = format!("aggregate #{} ({:?})", i + 1, a.name);
            if a.column.is_some() && a.expr.is_some() {
                return Err(format!("{at}: give column or expr, not both"));
            }
            let expr = (a.expr.as_deref())
                .map(crate::expr::Filter::parse)
                .transpose()
                .map_err(|e| format!("{at}: expr = {e}"))?;
            let reads = a.column.is_some() || expr.is_some();
            let func = AggFn::parse(&a.func, reads).ok_or_else(|| {
                let known: Vec<&str> = AggFn::ALL
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| *n != "count_col")
                    .collect();
                format!(
                    "{at}: fn = {:?} is unknown; known: {}",
                    a.func,
                    known.join(", ")
                )
            })?;
            if func.needs_column() && !reads {
                return Err(format!("{at}: fn = {:?} needs a column (or expr)", a.func));
            }
            if a.name.is_empty() || names.contains(&a.name.as_str()) {
                return Err(format!(
                    "{at}: the name is empty or already used by a key, window or aggregate column"
                ));
            }
            names.push(&a.name);
            aggregates.push(Aggregate {
                name: a.name.clone(),
                func,
                column: a.column.clone(),
                expr,
            });
        }
        let late = self.late.map(|l| l.validate("late")).transpose()?;
        let dead_letter = self
            .dead_letter
            .map(|l| l.validate("dead_letter"))
            .transpose()?;
        let checkpoint = self.checkpoint.map(|c| c.validate()).transpose()?;
        let anomaly = self.anomaly.map(|a| a.validate(&aggregates)).transpose()?;
        if window.session_gap().is_some() && (self.top_k.is_some() || anomaly.is_some()) {
            return Err(
                "[top_k] and [anomaly] work on windows of fixed times; session windows do not \
                 have them yet"
                    .into(),
            );
        }
        let top_k = self
            .top_k
            .map(|t| {
                let by = aggregates
                    .iter()
                    .position(|a| a.name == t.by)
                    .ok_or_else(|| {
                        format!("top_k.by = {:?} is not the name of an aggregate", t.by)
                    })?;
                if t.k == 0 {
                    return Err("top_k.k must be at least 1".to_string());
                }
                if allowed_lateness > 0 {
                    return Err(
                        "top_k needs time.allowed_lateness = \"0s\": re-fired windows \
                                would change their rankings (not supported yet)"
                            .into(),
                    );
                }
                if aggregates.iter().any(|a| a.name == "rank") {
                    return Err(
                        "with top_k, no aggregate may be named \"rank\": the output \
                                has a rank column"
                            .into(),
                    );
                }
                Ok(TopK { by, k: t.k })
            })
            .transpose()?;
        let output = self
            .output
            .map(|o| {
                let mut have: Vec<&str> = self.key.columns.iter().map(String::as_str).collect();
                have.extend(["window_start", "window_end"]);
                have.extend(aggregates.iter().map(|a| a.name.as_str()));
                if top_k.is_some() {
                    have.push("rank");
                }
                if allowed_lateness > 0 {
                    have.push("revision");
                }
                o.validate(&have)
            })
            .transpose()?;
        let sink = self.sink.validate("sink")?;
        Job {
            source,
            time_column: t.column.clone(),
            max_out_of_orderness,
            allowed_lateness,
            idle_timeout: Duration::from_millis(idle_ms as u64),
            window,
            keys: self.key.columns.clone(),
            aggregates,
            sink,
            late,
            dead_letter,
            top_k,
            anomaly,
            checkpoint,
            memory_budget: self
                .state
                .memory_budget
                .as_deref()
                .map(|b| parse_bytes("state.memory_budget", b))
                .transpose()?,
            spill_dir: self.state.spill_dir.map(PathBuf::from),
            filter_events: filter("filter.events", &self.filter.events)?,
            filter_windows: filter("filter.windows", &self.filter.windows)?,
            output,
        }
        .checked()
    }
}

fn filter(field: &str, text: &Option<String>) -> Result<Option<Filter>, String> {
    text.as_deref()
        .map(|t| Filter::parse(t).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

impl SourceConfig {
    fn validate(&self) -> Result<Source, String> {
        let generator_keys = [
            ("dataset", self.dataset.is_some()),
            ("events", self.events.is_some()),
            ("keys", self.keys.is_some()),
            ("seed", self.seed.is_some()),
            ("late_share", self.late_share.is_some()),
            ("partitions", self.partitions.is_some()),
        ];
        let per_file = match self.partition_by.as_deref() {
            None => false,
            Some("file") if self.kind != "generator" => true,
            Some("file") => {
                return Err("source.partition_by is for file sources; a generator has \
                     source.partitions"
                    .into());
            }
            Some(other) => {
                return Err(format!(
                    "source.partition_by = {other:?} is unknown; use \"file\" (each file a \
                     partition) or leave it out (the files one after another)"
                ));
            }
        };
        let file_source = |make: &dyn Fn(String) -> Source| {
            if let Some((k, _)) = generator_keys.iter().find(|(_, set)| *set) {
                return Err(format!("source.{k} is only for kind = \"generator\""));
            }
            match &self.path {
                Some(p) if !p.is_empty() => Ok(make(p.clone())),
                _ => Err(format!("source kind {:?} needs a path", self.kind)),
            }
        };
        let kafka_keys = [
            ("bootstrap", self.bootstrap.is_some()),
            ("topic", self.topic.is_some()),
            ("topics", self.topics.is_some()),
            ("group", self.group.is_some()),
            ("format", self.format.is_some()),
            ("start", self.start.is_some()),
            ("stop", self.stop.is_some()),
            ("scale_out", self.scale_out.is_some()),
        ];
        if self.kind == "kafka" {
            return self.kafka(&generator_keys);
        }
        if let Some((key, _)) = kafka_keys.iter().find(|(_, set)| *set) {
            return Err(format!("source.{key} is only for kind = \"kafka\""));
        }
        let text = matches!(self.kind.as_str(), "csv" | "jsonl");
        if !text
            && let Some(key) = [
                ("on_malformed", self.on_malformed.is_some()),
                ("schema", self.schema.is_some()),
            ]
            .iter()
            .find_map(|(k, set)| set.then_some(k))
        {
            return Err(format!(
                "source.{key} is only for kind = \"csv\", \"jsonl\" or \"kafka\""
            ));
        }
        match self.kind.as_str() {
            "parquet" => file_source(&|path| Source::Parquet(ParquetSpec { path, per_file })),
            "csv" | "jsonl" => {
                let on_malformed = self.on_malformed()?;
                let schema = self.declared_schema()?;
                let format = match self.kind.as_str() {
                    "csv" => TextFormat::Csv,
                    _ => TextFormat::JsonLines,
                };
                file_source(&|path| {
                    Source::Text(TextSource {
                        format,
                        path,
                        schema: schema.clone(),
                        on_malformed,
                        per_file,
                    })
                })
            }
            "generator" => self.generator(),
            other => Err(format!(
                "source.kind = {other:?} is unknown; use \"parquet\", \"csv\", \"jsonl\", \
                 \"kafka\" or \"generator\""
            )),
        }
    }

    fn on_malformed(&self) -> Result<OnMalformed, String> {
        match self.on_malformed.as_deref() {
            None | Some("dead_letter") => Ok(OnMalformed::DeadLetter),
            Some("fail") => Ok(OnMalformed::Fail),
            Some(other) => Err(format!(
                "source.on_malformed = {other:?} is unknown; use \"dead_letter\" or \"fail\""
            )),
        }
    }

    fn declared_schema(&self) -> Result<Vec<(String, arrow::datatypes::DataType)>, String> {
        (self.schema.iter().flatten())
            .map(|(c, t)| Ok((c.clone(), parse_type(c, t)?)))
            .collect()
    }

    fn kafka(&self, generator_keys: &[(&str, bool)]) -> Result<Source, String> {
        let other_keys = [
            ("path", self.path.is_some()),
            ("partition_by", self.partition_by.is_some()),
        ];
        if let Some((k, _)) = (generator_keys.iter().chain(&other_keys)).find(|(_, set)| *set) {
            return Err(format!("source.{k} is not used by kind = \"kafka\""));
        }
        let needs = |key: &str, v: &Option<String>| match v.as_deref() {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(format!("source kind \"kafka\" needs {key}")),
        };
        let bootstrap = needs(
            "bootstrap (brokers, e.g. \"127.0.0.1:9092\")",
            &self.bootstrap,
        )?;
        let topics = match (&self.topic, &self.topics) {
            (Some(_), Some(_)) => {
                return Err("source.topic and source.topics: give one of them".into());
            }
            (_, None) => vec![needs("a topic (or topics)", &self.topic)?],
            (None, Some(list)) => {
                let list: Vec<String> = list.iter().map(|t| t.trim().to_string()).collect();
                if list.is_empty() || list.iter().any(String::is_empty) {
                    return Err("source.topics needs topic names, e.g. [\"clicks\"]".into());
                }
                if let Some(t) = (list.iter()).find(|t| list.iter().filter(|u| u == t).count() > 1)
                {
                    return Err(format!("source.topics names {t:?} twice"));
                }
                list
            }
        };
        let format = match self.format.as_deref() {
            None | Some("json") => TextFormat::JsonLines,
            Some("csv") => TextFormat::Csv,
            Some(other) => {
                return Err(format!(
                    "source.format = {other:?} is not supported; use \"json\" (one object a \
                     message) or \"csv\" (one record a message, columns in schema order)"
                ));
            }
        };
        let schema = self.declared_schema()?;
        if schema.is_empty() {
            return Err(
                "source kind \"kafka\" needs a schema, e.g. schema = { ts = \
                 \"timestamp_ms\", user = \"int64\" }: messages arrive over time, so their \
                 columns cannot be inferred up front"
                    .into(),
            );
        }
        let start = match self.start.as_deref() {
            None | Some("earliest") => KafkaStart::Earliest,
            Some("latest") => KafkaStart::Latest,
            Some(other) => KafkaStart::Time(
                parse_time("source.start", other)
                    .map_err(|e| format!("{e}; or use \"earliest\" or \"latest\""))?,
            ),
        };
        let stop_at_end = match self.stop.as_deref() {
            None => false,
            Some("end") => true,
            Some(other) => {
                return Err(format!(
                    "source.stop = {other:?} is unknown; use \"end\" (stop at the end the \
                     topic had when the job started) or leave it out (run until stopped)"
                ));
            }
        };
        if !cfg!(feature = "kafka") {
            return Err(
                "source.kind = \"kafka\" needs panes-engine's `kafka` feature, which \
                 this build leaves out"
                    .into(),
            );
        }
        Ok(Source::Kafka(KafkaSpec {
            bootstrap,
            topics,
            group: self.group.clone().unwrap_or_else(|| "panes".into()),
            schema,
            format,
            start,
            stop_at_end,
            on_malformed: self.on_malformed()?,
            timestamp: false,
            scale_out: self.scale_out.unwrap_or(false),
            partition: None,
        }))
    }

    #[cfg(feature = "datasets")]
    fn generator(&self) -> Result<Source, String> {
        if self.path.is_some() {
            return Err("source.path is not used by kind = \"generator\"".into());
        }
        let dataset = self
            .dataset
            .as_deref()
            .unwrap_or("clickstream")
            .parse()
            .map_err(|e| format!("source.dataset: {e}"))?;
        let defaults = panes_datasets::GenConfig::default();
        let config = panes_datasets::GenConfig {
            events: self.events.unwrap_or(1_000_000),
            keys: self.keys.unwrap_or(10_000),
            seed: self.seed.unwrap_or(42),
            late_share: self.late_share.unwrap_or(defaults.late_share),
            ..defaults
        };
        config.validate().map_err(|e| format!("source: {e}"))?;
        let partitions = self.partitions.unwrap_or(1);
        if partitions == 0 {
            return Err("source.partitions must be at least 1".into());
        }
        Ok(Source::Generator(GeneratorSpec {
            dataset,
            config,
            partitions,
        }))
    }

    #[cfg(not(feature = "datasets"))]
    fn generator(&self) -> Result<Source, String> {
        Err(
            "source.kind = \"generator\" needs panes-engine's `datasets` feature, which \
             this build leaves out"
                .into(),
        )
    }
}

impl AnomalyConfig {
    fn validate(&self, aggregates: &[Aggregate]) -> Result<Anomaly, String> {
        let value = aggregates
            .iter()
            .position(|a| a.name == self.value)
            .ok_or_else(|| {
                format!(
                    "anomaly.value = {:?} is not the name of an aggregate",
                    self.value
                )
            })?;
        let baseline = match (self.baseline_windows, self.ewma) {
            (Some(_), Some(_)) => {
                return Err("anomaly: give baseline_windows or ewma, not both".into());
            }
            (_, Some(a)) if !(a > 0.0 && a <= 1.0) => {
                return Err(format!("anomaly.ewma = {a} must be in (0, 1]"));
            }
            (_, Some(a)) => Baseline::Ewma(a),
            (Some(n), None) if !(2..=100_000).contains(&n) => {
                return Err(format!(
                    "anomaly.baseline_windows = {n} must be between 2 and 100000"
                ));
            }
            (n, None) => Baseline::Rolling(n.unwrap_or(30)),
        };
        let threshold = self.threshold.unwrap_or(2.0);
        if !(threshold > 0.0 && threshold.is_finite()) {
            return Err(format!(
                "anomaly.threshold = {threshold} must be a positive number"
            ));
        }
        let min_history = self.min_history.unwrap_or(5);
        if min_history < 2 {
            return Err(format!(
                "anomaly.min_history = {min_history} must be at least 2 (a standard deviation needs two values)"
            ));
        }
        if let Baseline::Rolling(n) = baseline
            && min_history > n
        {
            return Err(format!(
                "anomaly.min_history = {min_history} is more than baseline_windows = {n}"
            ));
        }
        let min_count = match (&self.count, self.min_count) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(
                    "anomaly.min_count needs anomaly.count, the name of a count \
                            aggregate"
                        .into(),
                );
            }
            (Some(name), at_least) => {
                let i = aggregates
                    .iter()
                    .position(|a| {
                        a.name == *name && matches!(a.func, AggFn::CountRows | AggFn::Count)
                    })
                    .ok_or_else(|| {
                        format!("anomaly.count = {name:?} is not the name of a count aggregate")
                    })?;
                Some((i, at_least.unwrap_or(1)))
            }
        };
        Ok(Anomaly {
            value,
            baseline,
            threshold,
            min_history,
            min_count,
            sink: self.sink.validate("anomaly.sink")?,
        })
    }
}

impl SinkConfig {
    fn validate(&self, section: &str) -> Result<Sink, String> {
        let path = self
            .path
            .as_ref()
            .filter(|p| !p.is_empty() && *p != "-")
            .map(PathBuf::from);
        if self.kind == "kafka" {
            let needs = |key: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(format!("{section}.kind = \"kafka\" needs {key}")),
            };
            if self.path.is_some() {
                return Err(format!("{section}.path is not used by kind = \"kafka\""));
            }
            return Ok(Sink::Kafka {
                bootstrap: needs("bootstrap", &self.bootstrap)?,
                topic: needs("a topic", &self.topic)?,
            });
        }
        if let Some(key) = [("bootstrap", &self.bootstrap), ("topic", &self.topic)]
            .iter()
            .find_map(|(k, v)| v.is_some().then_some(k))
        {
            return Err(format!("{section}.{key} is only for kind = \"kafka\""));
        }
        match (self.kind.as_str(), path) {
            ("parquet", Some(p)) => Ok(Sink::Parquet(p)),
            ("csv", Some(p)) => Ok(Sink::Csv(p)),
            ("jsonl", p) => Ok(Sink::JsonLines(p)),
            ("parquet" | "csv", None) => {
                Err(format!("{section}.kind = {:?} needs a path", self.kind))
            }
            (other, _) => Err(format!(
                "{section}.kind = {other:?} is unknown; use \"parquet\", \"csv\", \"jsonl\" or \
                 \"kafka\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
        [source]
        kind = "parquet"
        path = "data/clicks.parquet"
        [time]
        column = "ts"
        max_out_of_orderness = "5s"
        allowed_lateness = "0s"
        idle_timeout = "30s"
        [window]
        kind = "hop"
        size = "15m"
        slide = "1m"
        [key]
        columns = ["article_id"]
        [[aggregate]]
        name = "views"
        fn = "count"
        [[aggregate]]
        name = "avg_scroll"
        fn = "avg"
        column = "scroll_depth"
        [sink]
        kind = "parquet"
        path = "out/trending.parquet"
        [late]
        path = "out/late.parquet"
    "#;

    fn error_of(text: &str) -> String {
        Job::from_toml(text, "job.toml").unwrap_err().to_string()
    }

    /// A job changed in code passes the checks a job file does.
    #[test]
    fn a_job_changed_in_code_is_checked_as_a_job_file_is() {
        let job = Job::from_toml(JOB, "job.toml").expect("a job");
        let checkpoint = |keep| Checkpoint {
            dir: PathBuf::from("chk"),
            trigger: Trigger::Events(10),
            keep,
        };
        let e = (job.clone().with_checkpoint(Some(checkpoint(0)))).unwrap_err();
        assert!(
            e.to_string().contains("checkpoint.keep must be at least 1"),
            "{e}"
        );
        let job = (job.with_checkpoint(Some(checkpoint(2)))).expect("checkpoints");
        assert_eq!(job.checkpoint().map(|c| c.keep), Some(2));
        let e = (job.clone().with_sinks(Sink::JsonLines(None), None)).unwrap_err();
        assert!(e.to_string().contains("output must go to files"), "{e}");
        let same = Sink::Csv(PathBuf::from("out.csv"));
        let e = (job.clone().with_sinks(same.clone(), Some(same))).unwrap_err();
        assert!(
            e.to_string()
                .contains("sink and late both write to out.csv"),
            "{e}"
        );
        let job = (job.with_checkpoint(None))
            .and_then(|j| j.with_sinks(Sink::JsonLines(None), None))
            .expect("stdout without checkpoints");
        assert_eq!(job.sink(), &Sink::JsonLines(None));
    }

    #[test]
    fn an_aggregate_reads_a_column_or_an_expression() {
        let with = |input: &str| {
            JOB.replace(
                "fn = \"avg\"\n        column = \"scroll_depth\"",
                &format!("fn = \"avg\"\n{input}"),
            )
        };
        let job = Job::from_toml(&with("expr = \"scroll_depth * 100\""), "job.toml").unwrap();
        let expr = job.aggregates.iter().find_map(|a| a.expr.as_ref());
        assert_eq!(expr.map(|e| e.text()), Some("scroll_depth * 100"));
        let e = error_of(&with("column = \"a\"\nexpr = \"b + 1\""));
        assert!(e.contains("give column or expr, not both"), "{e}");
        let e = error_of(&with("expr = \"scroll_depth *\""));
        assert!(
            e.contains("expr = \"scroll_depth *\" is not an SQL expression"),
            "{e}"
        );
        let e = error_of(&with(""));
        assert!(e.contains("needs a column (or expr)"), "{e}");
    }

    #[test]
    fn two_sinks_on_one_path_and_checkpoints_to_stdout_are_refused() {
        let e = error_of(&JOB.replace("out/late.parquet", "out/trending.parquet"));
        assert!(
            e.contains("sink and late both write to out/trending.parquet"),
            "{e}"
        );
        let stdout = JOB
            .replace(
                "[sink]\n        kind = \"parquet\"",
                "[sink]\nkind = \"jsonl\"",
            )
            .replace("path = \"out/trending.parquet\"", "");
        assert!(Job::from_toml(&stdout, "job.toml").is_ok());
        let e = error_of(&format!("{stdout}\n[checkpoint]\ndir = \"chk\""));
        assert!(
            e.contains("with [checkpoint], output must go to files"),
            "{e}"
        );
        let e = error_of(&format!(
            "{JOB}\n[checkpoint]\ndir = \"chk\"\nevery_events = 0"
        ));
        assert!(e.contains("every_events must be at least 1"), "{e}");
        let e = error_of(&format!("{JOB}\n[state]\nmemory_budget = \"12 parsecs\""));
        assert!(e.contains("unknown unit"), "{e}");
        let job = Job::from_toml(
            &format!("{JOB}\n[state]\nmemory_budget = \"1.5GiB\"\n[checkpoint]\ndir = \"c\""),
            "job.toml",
        )
        .unwrap();
        assert_eq!(job.memory_budget, Some(3 << 29));
        assert_eq!(
            job.checkpoint.map(|c| (c.trigger, c.keep)),
            Some((Trigger::Interval(Duration::from_secs(10)), 3))
        );
    }

    #[test]
    fn output_columns_and_filters_are_checked_when_the_job_is_read() {
        let with = |section: &str| format!("{JOB}{section}");
        let job = Job::from_toml(
            &with("[output]\ncolumns = [\"window_time\", \"article_id AS article\", \"views\"]\n"),
            "job.toml",
        )
        .unwrap();
        let names: Vec<(&str, &str)> = (job.output.iter().flatten())
            .map(|c| (c.from.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("window_time", "window_time"),
                ("article_id", "article"),
                ("views", "views")
            ]
        );
        let e = error_of(&with("[output]\ncolumns = [\"rank\"]\n"));
        assert!(e.contains("\"rank\" is not a column of window rows"), "{e}");
        let e = error_of(&with(
            "[output]\ncolumns = [\"views AS x\", \"avg_scroll AS x\"]\n",
        ));
        assert!(e.contains("\"x\" comes twice"), "{e}");
        let e = error_of(&with("[output]\ncolumns = [\"views +\"]\n"));
        assert!(e.contains("output.columns") && e.contains("views +"), "{e}");
        let e = error_of(&with("[output]\ncolumns = [\"views * 2\"]\n"));
        assert!(e.contains("give the computed column"), "{e}");
        let job = Job::from_toml(
            &with("[output]\ncolumns = [\"CAST(views AS DOUBLE) / 2 AS half\"]\n"),
            "job.toml",
        )
        .unwrap();
        let c = &job.output.unwrap()[0];
        assert_eq!(
            (c.from.as_str(), c.name.as_str()),
            ("CAST(views AS DOUBLE) / 2", "half")
        );
        assert!(c.computed.is_some());
        let e = error_of(&with("[filter]\nevents = \"amount >\"\n"));
        assert!(e.contains("filter.events") && e.contains("amount >"), "{e}");
        // With allowed lateness, the revision comes along.
        let late = JOB.replace("allowed_lateness = \"0s\"", "allowed_lateness = \"1m\"");
        let job = Job::from_toml(&format!("{late}[output]\ncolumns = [\"views\"]\n"), "j").unwrap();
        let names: Vec<&str> = job
            .output
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["views", "revision"]);
    }

    #[test]
    fn the_documented_job_parses() {
        let job = Job::from_toml(JOB, "job.toml").unwrap();
        assert_eq!(job.max_out_of_orderness, 5_000);
        assert_eq!(job.window, WindowSpec::new(900_000, 60_000, 0).unwrap());
        assert_eq!(job.aggregates[1].func, AggFn::Avg);
        assert_eq!(job.late, Some(Sink::Parquet("out/late.parquet".into())));
    }

    #[test]
    fn mistakes_are_named() {
        let e = error_of(&JOB.replace("idle_timeout", "idle_timout"));
        assert!(e.contains("idle_timout") && e.contains("job.toml"), "{e}");
        let e = error_of(&JOB.replace("\"5s\"", "\"5 parsecs\""));
        assert!(
            e.contains("time.max_out_of_orderness") && e.contains("5 parsecs"),
            "{e}"
        );
        let e = error_of(&JOB.replace("\"avg\"", "\"median\""));
        assert!(e.contains("median") && e.contains("aggregate #2"), "{e}");
        let e = error_of(&JOB.replace("slide = \"1m\"", "slide = \"20m\""));
        assert!(e.contains("slide"), "{e}");
        let e = error_of(&JOB.replace("name = \"avg_scroll\"", "name = \"views\""));
        assert!(e.contains("already used"), "{e}");
        let e = error_of(&JOB.replace("kind = \"hop\"", "kind = \"sliding\""));
        assert!(e.contains("sliding"), "{e}");
        let e = error_of(&JOB.replace("kind = \"hop\"", "kind = \"cumulate\""));
        assert!(e.contains("slide is only for kind = \"hop\""), "{e}");
        let e = error_of(&cumulate("step = \"7m\""));
        assert!(e.contains("whole number of steps"), "{e}");
        let e = error_of(&JOB.replace("slide = \"1m\"", "step = \"1m\""));
        assert!(e.contains("step is only for kind = \"cumulate\""), "{e}");
    }

    /// The documented job with cumulate windows of `step` up to 15 minutes.
    fn cumulate(step: &str) -> String {
        JOB.replace("kind = \"hop\"", "kind = \"cumulate\"")
            .replace("slide = \"1m\"", step)
    }

    #[test]
    fn top_k_is_checked() {
        let top = |body: &str| format!("{JOB}\n[top_k]\n{body}\n");
        let job = Job::from_toml(&top("by = \"views\"\nk = 10"), "job.toml").unwrap();
        assert_eq!(job.top_k, Some(TopK { by: 0, k: 10 }));
        let e = error_of(&top("by = \"views\"\nk = 0"));
        assert!(e.contains("at least 1"), "{e}");
        let e = error_of(&top("by = \"viewers\"\nk = 3"));
        assert!(e.contains("viewers"), "{e}");
        let late = top("by = \"views\"\nk = 3")
            .replace("allowed_lateness = \"0s\"", "allowed_lateness = \"1m\"");
        let e = error_of(&late);
        assert!(e.contains("allowed_lateness"), "{e}");
    }

    #[test]
    fn anomaly_min_count_needs_a_count_aggregate() {
        let anomaly = |extra: &str| {
            format!(
                "{JOB}\n[anomaly]\nvalue = \"avg_scroll\"\n{extra}\n[anomaly.sink]\nkind = \"jsonl\"\n"
            )
        };
        let job = Job::from_toml(&anomaly("count = \"views\"\nmin_count = 50"), "job.toml");
        assert_eq!(job.unwrap().anomaly.unwrap().min_count, Some((0, 50)));
        let e = error_of(&anomaly("count = \"avg_scroll\""));
        assert!(e.contains("not the name of a count aggregate"), "{e}");
        let e = error_of(&anomaly("min_count = 5"));
        assert!(e.contains("needs anomaly.count"), "{e}");
    }

    #[test]
    fn cumulate_windows_parse() {
        let job = Job::from_toml(&cumulate("step = \"5m\""), "job.toml").unwrap();
        assert_eq!(
            job.window,
            WindowSpec::cumulate(300_000, 900_000, 0).unwrap()
        );
        let e = error_of(&cumulate(""));
        assert!(e.contains("needs a step"), "{e}");
    }

    #[test]
    fn kafka_sources_and_sinks_name_what_is_wrong() {
        let kafka = |keys: &str| {
            JOB.replace(
                "kind = \"parquet\"\n        path = \"data/clicks.parquet\"",
                &format!("kind = \"kafka\"\n{keys}"),
            )
        };
        let ok = "bootstrap = \"h:9092\"\ntopic = \"clicks\"\nschema = { ts = \"timestamp_ms\" }";
        let job = Job::from_toml(&kafka(ok), "job.toml").expect("a kafka job");
        let Source::Kafka(k) = &job.source else {
            panic!("a kafka source: {:?}", job.source)
        };
        assert_eq!(
            (k.group.as_str(), k.stop_at_end, k.start),
            ("panes", false, KafkaStart::Earliest)
        );
        for (start, want) in [
            ("latest", KafkaStart::Latest),
            ("2023-11-14T22:13:20Z", KafkaStart::Time(1_700_000_000_000)),
            ("2023-11-14 22:13:20.5", KafkaStart::Time(1_700_000_000_500)),
        ] {
            let text = kafka(&format!("{ok}\nstart = \"{start}\""));
            let job = Job::from_toml(&text, "job.toml").expect("a kafka job");
            let Source::Kafka(k) = &job.source else {
                panic!("a kafka source: {:?}", job.source)
            };
            assert_eq!(k.start, want, "{start}");
        }
        let scaled = Job::from_toml(&kafka(&format!("{ok}\nscale_out = true")), "job.toml");
        let e = scaled.expect_err("scale-out without checkpoints");
        assert!(
            e.to_string()
                .contains("source.scale_out needs [checkpoint]"),
            "{e}"
        );
        let with_checkpoints = format!("{}\n[checkpoint]\ndir = \"c\"\n", kafka(ok))
            .replace("topic = \"clicks\"", "topic = \"clicks\"\nscale_out = true");
        let job = Job::from_toml(&with_checkpoints, "job.toml").expect("a scale-out job");
        assert!(matches!(&job.source, Source::Kafka(k) if k.scale_out && k.partition.is_none()));
        let many = ok.replace("topic = \"clicks\"", "topics = [\"clicks\", \"views\"]");
        let job = Job::from_toml(&kafka(&many), "job.toml").expect("a kafka job");
        let Source::Kafka(k) = &job.source else {
            panic!("a kafka source: {:?}", job.source)
        };
        assert_eq!(k.topics, ["clicks", "views"]);
        let (one, none, twice) = (
            format!("{ok}\ntopics = [\"views\"]"),
            ok.replace("topic = \"clicks\"", "topics = []"),
            ok.replace("topic = \"clicks\"", "topics = [\"a\", \"a\"]"),
        );
        for (keys, want) in [
            (
                "topic = \"t\"\nschema = { ts = \"int64\" }",
                "needs bootstrap",
            ),
            (
                "bootstrap = \"h:1\"\nschema = { ts = \"int64\" }",
                "needs a topic",
            ),
            ("bootstrap = \"h:1\"\ntopic = \"t\"", "needs a schema"),
            (
                &format!("{ok}\nformat = \"avro\""),
                "source.format = \"avro\"",
            ),
            (&one, "give one of them"),
            (&none, "source.topics needs topic names"),
            (&twice, "names \"a\" twice"),
            (
                &format!("{ok}\nstart = \"middle\""),
                "source.start = \"middle\"",
            ),
            (
                &format!("{ok}\nstop = \"never\""),
                "source.stop = \"never\"",
            ),
            (&format!("{ok}\npath = \"x\""), "source.path is not used"),
            (
                &format!("{ok}\npartition_by = \"file\""),
                "source.partition_by is not used",
            ),
        ] {
            let e = error_of(&kafka(keys));
            assert!(e.contains(want), "{keys:?}: {e}");
        }
        let e = error_of(&JOB.replace(
            "path = \"data/clicks.parquet\"",
            "path = \"data/clicks.parquet\"\ntopic = \"t\"",
        ));
        assert!(
            e.contains("source.topic is only for kind = \"kafka\""),
            "{e}"
        );
        let e = error_of(&JOB.replace("column = \"ts\"", "column = \"_kafka_timestamp\""));
        assert!(e.contains("only for kind = \"kafka\""), "{e}");
        let sink = |keys: &str| {
            JOB.replace(
                "kind = \"parquet\"\n        path = \"out/trending.parquet\"",
                &format!("kind = \"kafka\"\n{keys}"),
            )
        };
        let e = error_of(&sink("topic = \"out\""));
        assert!(e.contains("sink.kind = \"kafka\" needs bootstrap"), "{e}");
        let e = error_of(&sink("bootstrap = \"h:1\"\ntopic = \"out\"\npath = \"x\""));
        assert!(e.contains("sink.path is not used"), "{e}");
        let job = Job::from_toml(&sink("bootstrap = \"h:1\"\ntopic = \"out\""), "job.toml");
        assert!(matches!(
            job.expect("a kafka sink").sink,
            Sink::Kafka { .. }
        ));
    }
}
