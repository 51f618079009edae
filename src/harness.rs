//! What makes `panes bench` a harness: the machine it ran on, statistics over repeats,
//! the check that every backend returned the same rows, a versioned JSON report, CSV, and
//! the comparison of two reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

use crate::bench::Case;

/// The version of the JSON report's schema; a change to its fields changes it.
pub const SCHEMA: &str = "panes-bench/1";

/// A whole `panes bench --json` report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// Where it ran.
    pub machine: Machine,
    /// The cases, in the order they ran.
    pub cases: Vec<Case>,
}

/// The machine a report comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// Logical cores the process may use.
    pub cores: usize,
    /// Physical memory in bytes (0 where unknown).
    pub memory_bytes: u64,
    /// Operating system and kernel.
    pub os: String,
    /// The GPU adapters the gpu cases ran on: name, API and driver.
    pub gpus: Vec<String>,
    /// panes' version.
    pub version: String,
    /// The git commit panes was built from (`unknown` outside a checkout).
    pub commit: String,
}

impl Machine {
    /// This machine; `gpus` are the adapters of the gpu cases that ran.
    pub fn here(gpus: Vec<String>) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':').or_else(|| l.split_once('=')))
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
        };
        let cpuinfo = read("/proc/cpuinfo");
        let memory_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        let os = field(&read("/etc/os-release"), "PRETTY_NAME")
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let kernel = read("/proc/sys/kernel/osrelease");
        Machine {
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| std::env::consts::ARCH.into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: memory_kib * 1024,
            os: match kernel.trim() {
                "" => os,
                k => format!("{os}, Linux {k}"),
            },
            gpus,
            version: env!("CARGO_PKG_VERSION").into(),
            commit: option_env!("PANES_COMMIT").unwrap_or("unknown").into(),
        }
    }

    /// One line for the top of a table.
    pub fn line(&self) -> String {
        let gib = self.memory_bytes as f64 / f64::from(1u32 << 30);
        let mut line = format!(
            "machine: {}, {} cores, {gib:.1} GiB, {}; panes {} ({})",
            self.cpu, self.cores, self.os, self.version, self.commit
        );
        for g in &self.gpus {
            let _ = write!(line, "; gpu: {g}");
        }
        line
    }
}

/// Median, extremes and quartiles of a case's repeats, in seconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    /// Every repeat, in the order they ran.
    pub samples: Vec<f64>,
    /// The median.
    pub median: f64,
    /// The fastest.
    pub min: f64,
    /// First and third quartile (linear interpolation).
    pub q1: f64,
    /// See `q1`.
    pub q3: f64,
}

impl Spread {
    /// The statistics of `samples` (at least one).
    pub fn of(samples: Vec<f64>) -> Spread {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let x = q * (sorted.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo as f64)
        };
        Spread {
            median: at(0.5),
            min: sorted[0],
            q1: at(0.25),
            q3: at(0.75),
            samples,
        }
    }

    /// The interquartile range relative to the median: the case's noise.
    pub fn noise(&self) -> f64 {
        (self.q3 - self.q1) / self.median.max(1e-12)
    }
}

/// A backend's rows in a canonical order, for the agreement check: the text of every
/// column but the float ones, and the floats apart.
#[derive(Debug, PartialEq)]
pub struct Rows(Vec<(String, Vec<f64>)>);

impl Rows {
    /// The rows of `batches`, sorted.
    pub fn of(batches: &[RecordBatch]) -> Rows {
        let mut rows = Vec::new();
        let options = FormatOptions::default();
        for b in batches {
            let text: Vec<Option<ArrayFormatter>> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Float64 => None,
                    _ => ArrayFormatter::try_new(c.as_ref(), &options).ok(),
                })
                .collect();
            for r in 0..b.num_rows() {
                let mut key = String::new();
                let mut floats = Vec::new();
                for (c, f) in text.iter().enumerate() {
                    match f {
                        Some(f) => {
                            let _ = write!(key, "{}|", f.value(r));
                        }
                        None => {
                            let col = b.column(c).as_primitive::<Float64Type>();
                            floats.push(if col.is_valid(r) {
                                col.value(r)
                            } else {
                                f64::NAN
                            });
                        }
                    }
                }
                rows.push((key, floats));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Rows(rows)
    }

    /// A hash of the rows, floats to 9 significant digits (for the report; agreement
    /// itself allows the float bound).
    pub fn hash(&self) -> String {
        let mut text = String::new();
        for (key, floats) in &self.0 {
            text.push_str(key);
            for f in floats {
                let _ = write!(text, "{f:.8e}|");
            }
            text.push('\n');
        }
        format!("{:08x}", crc32fast::hash(text.as_bytes()))
    }

    /// `None` when `other` has the same rows, integers exact and floats within a relative
    /// 1e-9 (sums added in another order); else the first difference.
    pub fn differs(&self, other: &Rows) -> Option<String> {
        if self.0.len() != other.0.len() {
            return Some(format!("{} rows against {}", other.0.len(), self.0.len()));
        }
        let close = |a: f64, b: f64| {
            a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
        };
        for ((ka, fa), (kb, fb)) in self.0.iter().zip(&other.0) {
            if ka != kb {
                return Some(format!("row {kb:?} where {ka:?} was expected"));
            }
            if let Some((a, b)) = fa.iter().zip(fb).find(|(a, b)| !close(**a, **b)) {
                return Some(format!("row {ka:?}: {b} where {a} was expected"));
            }
        }
        None
    }
}

/// The CSV of a report: one line per case.
pub fn csv(report: &Report) -> String {
    let mut out = String::from(
        "case,keys,backend,events,threads,median_seconds,min_seconds,q1_seconds,q3_seconds,\
         repeats,events_per_sec,bytes_per_sec,speedup,rows_out,agrees\n",
    );
    for c in &report.cases {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{:.0},{:.0},{:.3},{},{}",
            c.window,
            c.keys,
            c.backend,
            c.events,
            c.threads,
            c.seconds.median,
            c.seconds.min,
            c.seconds.q1,
            c.seconds.q3,
            c.seconds.samples.len(),
            c.events_per_sec,
            c.bytes_per_sec,
            c.speedup,
            c.rows_out,
            c.agrees.map_or("-".into(), |a| a.to_string()),
        );
    }
    out
}

/// One case of a comparison.
#[derive(Debug, PartialEq)]
pub struct Change {
    /// Case, keys, backend and threads.
    pub case: String,
    /// Events per second, old and new.
    pub old: f64,
    /// See `old`.
    pub new: f64,
    /// The larger relative spread of the two runs.
    pub noise: f64,
    /// Slower beyond the noise.
    pub regression: bool,
    /// Faster beyond the noise.
    pub improvement: bool,
}

/// The cases two reports share, new against old. A change counts when it is beyond twice
/// the larger interquartile spread of the two and beyond 5%.
pub fn compare(old: &Report, new: &Report) -> Vec<Change> {
    let id = |c: &Case| {
        format!(
            "{} keys={} {} threads={}",
            c.window, c.keys, c.backend, c.threads
        )
    };
    let before: BTreeMap<String, &Case> = old.cases.iter().map(|c| (id(c), c)).collect();
    new.cases
        .iter()
        .filter_map(|n| {
            let o = before.get(&id(n))?;
            let noise = o.seconds.noise().max(n.seconds.noise());
            let margin = (2.0 * noise).max(0.05);
            let ratio = n.events_per_sec / o.events_per_sec.max(1e-12);
            Some(Change {
                case: id(n),
                old: o.events_per_sec,
                new: n.events_per_sec,
                noise,
                regression: ratio < 1.0 - margin,
                improvement: ratio > 1.0 + margin,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate_and_noise_is_relative() {
        let s = Spread::of(vec![4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((s.median, s.min, s.q1, s.q3), (3.0, 1.0, 2.0, 4.0));
        assert!((s.noise() - 2.0 / 3.0).abs() < 1e-12);
        let one = Spread::of(vec![2.5]);
        assert_eq!(
            (one.median, one.q1, one.q3, one.noise()),
            (2.5, 2.5, 2.5, 0.0)
        );
    }
}
