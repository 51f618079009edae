//! Deterministic, seeded event generators for panes tests and benchmarks.
//!
//! Each [`Dataset`] is an iterator of Arrow [`RecordBatch`]es produced lazily, one batch at a
//! time, from a [`GenConfig`]. The same config always yields the same rows, whatever
//! `batch_rows` is: events draw their random numbers in order from one [`rng::Rng`] stream.
//!
//! Event time: event `i` has nominal time `start_ms + i * 1000 / events_per_sec`. Its `ts` is
//! the nominal time minus a uniform jitter in `[0, max_jitter_ms]`, except for a `late_share`
//! of events, which are held back by `max_jitter_ms` plus a uniform 10..=120 s: late for any
//! out-of-orderness bound under 10 s.
//!
//! ```
//! use panes_datasets::{generate, Dataset, GenConfig};
//! let cfg = GenConfig { events: 1000, batch_rows: 256, ..GenConfig::default() };
//! let rows: usize = generate(Dataset::Iot, &cfg)?.map(|b| b.num_rows()).sum();
//! assert_eq!(rows, 1000);
//! # Ok::<(), String>(())
//! ```

pub mod clickstream;
pub mod iot;
pub mod nexmark;
pub mod rng;
pub mod transactions;

use std::{fmt, str::FromStr};

use arrow::{array::ArrayRef, datatypes::SchemaRef, record_batch::RecordBatch};

/// Largest accepted `keys` (ids must fit `i64` comfortably, also after `* 10` for users).
pub const MAX_KEYS: u64 = 1 << 40;
/// Shortest extra delay of a late event beyond `max_jitter_ms`.
pub const LATE_MIN_MS: i64 = 10_000;
/// Longest extra delay of a late event beyond `max_jitter_ms`.
pub const LATE_MAX_MS: i64 = 120_000;

/// Settings shared by all generators. Defaults: see [`GenConfig::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Total number of events (rows) to produce.
    pub events: u64,
    /// Key cardinality: articles for clickstream (users are `10 * keys`), sensors for IoT.
    pub keys: u64,
    /// Seed; the same seed and settings reproduce the same rows.
    pub seed: u64,
    /// Rows per batch; the last batch may be smaller. Default 65536.
    pub batch_rows: usize,
    /// Event time of the first event, ms since the Unix epoch. Default 2023-11-14.
    pub start_ms: i64,
    /// Event-time rate: nominal time advances `1000 / events_per_sec` ms per event.
    pub events_per_sec: f64,
    /// Each on-time event's `ts` is its nominal time minus a uniform `[0, max_jitter_ms]`.
    pub max_jitter_ms: i64,
    /// Share of events delayed a further 10..=120 s beyond the jitter.
    pub late_share: f64,
    /// Zipf exponent of key popularity (clickstream articles).
    pub zipf_s: f64,
    /// Share of nulls in nullable value columns.
    pub null_share: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            keys: 1_000,
            seed: 42,
            batch_rows: 65_536,
            start_ms: 1_700_000_000_000,
            events_per_sec: 10_000.0,
            max_jitter_ms: 2_000,
            late_share: 0.001,
            zipf_s: 1.1,
            null_share: 0.0,
        }
    }
}

impl GenConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_KEYS).contains(&self.keys) {
            return Err(format!("keys must be in 1..={MAX_KEYS}, got {}", self.keys));
        }
        if self.batch_rows == 0 {
            return Err("batch_rows must be at least 1".into());
        }
        if !(self.events_per_sec.is_finite() && self.events_per_sec > 0.0) {
            return Err(format!(
                "events_per_sec must be > 0, got {}",
                self.events_per_sec
            ));
        }
        if self.max_jitter_ms < 0 {
            return Err(format!(
                "max_jitter_ms must be >= 0, got {}",
                self.max_jitter_ms
            ));
        }
        for (name, v) in [
            ("late_share", self.late_share),
            ("null_share", self.null_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err(format!(
                "zipf_s must be finite and >= 0, got {}",
                self.zipf_s
            ));
        }
        Ok(())
    }

    /// Rows in the batch that starts at event `done` (0 when all events are out).
    pub(crate) fn batch_len(&self, done: u64) -> usize {
        self.events.saturating_sub(done).min(self.batch_rows as u64) as usize
    }
}

/// The event-time model of the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    start_ms: i64,
    ms_per_event: f64,
    max_jitter_ms: i64,
    late_share: f64,
}

impl Clock {
    pub(crate) fn new(cfg: &GenConfig) -> Self {
        Self {
            start_ms: cfg.start_ms,
            ms_per_event: 1000.0 / cfg.events_per_sec,
            max_jitter_ms: cfg.max_jitter_ms,
            late_share: cfg.late_share,
        }
    }

    /// Nominal (undisturbed) time of event `i`.
    pub(crate) fn nominal(&self, i: u64) -> i64 {
        self.start_ms.saturating_add(self.elapsed(i))
    }

    /// Milliseconds of event time since the first event's nominal time.
    pub(crate) fn elapsed(&self, i: u64) -> i64 {
        (i as f64 * self.ms_per_event) as i64
    }

    /// Observed `ts` of event `i`; always draws exactly two numbers from `rng`.
    pub(crate) fn ts(&self, i: u64, rng: &mut rng::Rng) -> i64 {
        let late = rng.next_f64() < self.late_share;
        let delay = if late {
            let extra = rng.below((LATE_MAX_MS - LATE_MIN_MS + 1) as u64) as i64;
            self.max_jitter_ms.saturating_add(LATE_MIN_MS + extra)
        } else {
            rng.below(self.max_jitter_ms as u64 + 1) as i64
        };
        self.nominal(i).saturating_sub(delay)
    }
}

/// Assembles a batch whose columns the generator built to match `schema`.
pub(crate) fn make_batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.clone(), columns)
        .expect("generated columns do not match their schema: this is a bug in panes-datasets")
}

/// The available datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Article page views with Zipf popularity that drifts over time; see [`clickstream`].
    Clickstream,
    /// Sensor readings; see [`iot`].
    Iot,
    /// An auction's persons, auctions and bids; see [`nexmark`].
    Nexmark,
    /// Card payments with velocity bursts; see [`transactions`].
    Transactions,
}

impl Dataset {
    /// All datasets, in the order their names are listed.
    pub const ALL: [Dataset; 4] = [
        Dataset::Clickstream,
        Dataset::Iot,
        Dataset::Nexmark,
        Dataset::Transactions,
    ];

    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Clickstream => "clickstream",
            Dataset::Iot => "iot",
            Dataset::Nexmark => "nexmark",
            Dataset::Transactions => "transactions",
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
                format!("unknown dataset {s:?}; valid names: {}", names.join(", "))
            })
    }
}

/// Arrow schema of a dataset's batches.
pub fn schema(dataset: Dataset) -> SchemaRef {
    match dataset {
        Dataset::Clickstream => clickstream::schema(),
        Dataset::Iot => iot::schema(),
        Dataset::Nexmark => nexmark::schema(),
        Dataset::Transactions => transactions::schema(),
    }
}

/// Lazily generates `cfg.events` rows of `dataset`; fails if `cfg` is invalid.
pub fn generate(
    dataset: Dataset,
    cfg: &GenConfig,
) -> Result<Box<dyn Iterator<Item = RecordBatch> + Send>, String> {
    Ok(match dataset {
        Dataset::Clickstream => Box::new(clickstream::ClickstreamGen::new(cfg)?),
        Dataset::Iot => Box::new(iot::IotGen::new(cfg)?),
        Dataset::Nexmark => Box::new(nexmark::NexmarkGen::new(cfg)?),
        Dataset::Transactions => Box::new(transactions::TransactionsGen::new(cfg)?),
    })
}

/// All `cfg.events` rows of `dataset` as one batch, for tests.
#[cfg(test)]
pub(crate) fn one_batch(dataset: Dataset, cfg: &GenConfig) -> RecordBatch {
    let cfg = GenConfig {
        batch_rows: cfg.events as usize,
        ..cfg.clone()
    };
    generate(dataset, &cfg)
        .expect("a valid test config")
        .next()
        .expect("one batch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::{array::AsArray, datatypes::TimestampMillisecondType};

    type Edit = fn(&mut GenConfig);

    /// The default config with `events` events, then `edit` applied.
    fn config(events: u64, edit: impl FnOnce(&mut GenConfig)) -> GenConfig {
        let mut cfg = GenConfig {
            events,
            ..GenConfig::default()
        };
        edit(&mut cfg);
        cfg
    }

    fn run(d: Dataset, cfg: &GenConfig) -> Vec<RecordBatch> {
        generate(d, cfg).expect("valid config").collect()
    }

    fn concat(d: Dataset, cfg: &GenConfig) -> RecordBatch {
        arrow::compute::concat_batches(&schema(d), &run(d, cfg)).expect("same schema")
    }

    #[test]
    fn exact_row_counts_and_batch_sizes() {
        let cfg = config(10_001, |c| c.batch_rows = 1000);
        for d in Dataset::ALL {
            let batches = run(d, &cfg);
            assert_eq!(batches.len(), 11, "{d}");
            assert!(batches[..10].iter().all(|b| b.num_rows() == 1000));
            assert_eq!(batches[10].num_rows(), 1);
            assert!(batches.iter().all(|b| b.schema() == schema(d)));
            assert!(run(d, &config(0, |_| ())).is_empty());
        }
    }

    #[test]
    fn deterministic_by_seed_and_independent_of_batching() {
        let cfg = config(5_000, |c| (c.batch_rows, c.null_share) = (1024, 0.1));
        for d in Dataset::ALL {
            let a = concat(d, &cfg);
            assert_eq!(a, concat(d, &cfg), "{d}");
            assert_eq!(
                a,
                concat(
                    d,
                    &GenConfig {
                        batch_rows: 77,
                        ..cfg.clone()
                    }
                ),
                "{d}"
            );
            assert_ne!(
                a,
                concat(
                    d,
                    &GenConfig {
                        seed: 43,
                        ..cfg.clone()
                    }
                ),
                "{d}"
            );
        }
    }

    #[test]
    fn timestamps_are_jittered_and_a_few_late() {
        let cfg = config(200_000, |_| ());
        let clock = Clock::new(&cfg);
        // iot adds the bursts of reconnecting sensors: see its own tests.
        for d in Dataset::ALL.into_iter().filter(|&d| d != Dataset::Iot) {
            let batch = concat(d, &cfg);
            let ts = batch
                .column(0)
                .as_primitive::<TimestampMillisecondType>()
                .values();
            assert_eq!(ts.len(), 200_000);
            for (i, &t) in ts.iter().enumerate() {
                let nominal = clock.nominal(i as u64);
                assert!(
                    t <= nominal && t >= nominal - cfg.max_jitter_ms - LATE_MAX_MS,
                    "{d} row {i}"
                );
            }
            let (mut max, mut late) = (i64::MIN, 0);
            for &t in ts {
                late += usize::from(t < max.saturating_sub(cfg.max_jitter_ms));
                max = max.max(t);
            }
            let share = late as f64 / ts.len() as f64;
            assert!(
                (share - cfg.late_share).abs() < 0.0003,
                "{d}: late share {share}"
            );
        }
    }

    #[test]
    fn bad_config_and_names_are_rejected() {
        assert_eq!(GenConfig::default().validate(), Ok(()));
        let edits: [(&str, Edit); 7] = [
            ("keys", |c| c.keys = 0),
            ("batch_rows", |c| c.batch_rows = 0),
            ("events_per_sec", |c| c.events_per_sec = 0.0),
            ("max_jitter_ms", |c| c.max_jitter_ms = -1),
            ("late_share", |c| c.late_share = 1.5),
            ("null_share", |c| c.null_share = f64::NAN),
            ("zipf_s", |c| c.zipf_s = -1.0),
        ];
        for (field, edit) in edits {
            let cfg = config(10, edit);
            let err = cfg.validate().expect_err(field);
            assert!(err.contains(field), "{err}");
            assert!(Dataset::ALL.iter().all(|&d| generate(d, &cfg).is_err()));
        }
        assert_eq!("IoT".parse(), Ok(Dataset::Iot));
        assert_eq!("clickstream".parse(), Ok(Dataset::Clickstream));
        let err = "nope".parse::<Dataset>().expect_err("unknown name");
        assert!(err.contains("clickstream, iot"), "{err}");
    }
}
