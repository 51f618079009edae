//! Anomaly statistics: per key, a baseline of one aggregate over the key's recent windows,
//! and an alert when a window's value strays `threshold` standard deviations from it.
//!
//! Windows reach the detector in window order, once each (at their first firing). A value
//! that raises an alert does not enter the baseline, so one anomaly does not widen the
//! baseline enough to hide the next. Before `min_history` windows every value joins the
//! baseline, since a handful of values cannot tell an outlier from noise; so that an early
//! anomaly does not blind the key later, the rolling baseline leaves out values [`TRIM`]
//! standard deviations or more from the rest of it. Baselines are keyed state, like pane
//! state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, ListArray, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::datatypes::{Float64Type, UInt32Type, UInt64Type};
use arrow::error::ArrowError;

use crate::job::{Anomaly, Baseline};

/// What an alert reports besides the value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alert {
    /// Baseline mean.
    pub mean: f64,
    /// Baseline standard deviation.
    pub std: f64,
    /// (value − mean) / std; infinite when the baseline never varied.
    pub z: f64,
}

/// Rolling baselines ignore a value this many standard deviations (of the other values)
/// from the mean of the other values.
pub const TRIM: f64 = 5.0;

/// Mean and sample standard deviation of `values` without their outliers: while the value
/// farthest from the mean is at least [`TRIM`] standard deviations from the mean of the
/// others (by the others' standard deviation), it is left out.
fn trimmed_moments(values: &VecDeque<f64>) -> (f64, f64) {
    let mut kept: Vec<f64> = values.iter().copied().collect();
    let moments = |v: &[f64]| {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    };
    while kept.len() > 3 {
        let (mean, _) = moments(&kept);
        let far = (0..kept.len())
            .max_by(|&a, &b| (kept[a] - mean).abs().total_cmp(&(kept[b] - mean).abs()))
            .unwrap_or(0);
        let x = kept.swap_remove(far);
        let (m, sd) = moments(&kept);
        if (x - m).abs() < TRIM * sd || sd == 0.0 && x == m {
            kept.push(x);
            break;
        }
    }
    moments(&kept)
}

#[derive(Clone, Debug)]
enum KeyBaseline {
    Rolling(VecDeque<f64>),
    Ewma { n: usize, mean: f64, var: f64 },
}

/// The baselines of every key.
#[derive(Clone, Debug)]
pub struct Detector {
    spec: Anomaly,
    keys: HashMap<u32, KeyBaseline>,
}

impl Detector {
    /// A detector with no history.
    pub fn new(spec: Anomaly) -> Detector {
        Detector {
            spec,
            keys: HashMap::new(),
        }
    }

    /// The count aggregate (index) and least value a window needs to be checked.
    pub fn min_count(&self) -> Option<(usize, i64)> {
        self.spec.min_count
    }

    /// Checks `value`, the next window of `key`, against the key's baseline, then adds it to
    /// the baseline unless it raised an alert. NaN values are ignored.
    pub fn observe(&mut self, key: u32, value: f64) -> Option<Alert> {
        if value.is_nan() {
            return None;
        }
        let spec = &self.spec;
        let state = self.keys.entry(key).or_insert_with(|| match spec.baseline {
            Baseline::Rolling(_) => KeyBaseline::Rolling(VecDeque::new()),
            Baseline::Ewma(_) => KeyBaseline::Ewma {
                n: 0,
                mean: 0.0,
                var: 0.0,
            },
        });
        let (history, mean, std) = match state {
            KeyBaseline::Rolling(values) if values.len() >= 2 => {
                let (mean, std) = trimmed_moments(values);
                (values.len(), mean, std)
            }
            KeyBaseline::Rolling(values) => (values.len(), f64::NAN, f64::NAN),
            KeyBaseline::Ewma { n, mean, var } => (*n, *mean, var.sqrt()),
        };
        let alert = (history >= spec.min_history)
            .then(|| {
                let d = value - mean;
                let z = if d == 0.0 { 0.0 } else { d / std };
                Alert { mean, std, z }
            })
            .filter(|a| a.z.abs() >= spec.threshold);
        if alert.is_none() {
            match (state, spec.baseline) {
                (KeyBaseline::Rolling(values), Baseline::Rolling(cap)) => {
                    if values.len() == cap {
                        values.pop_front();
                    }
                    values.push_back(value);
                }
                (KeyBaseline::Ewma { n, mean, var }, Baseline::Ewma(alpha)) => {
                    if *n == 0 {
                        *mean = value;
                    } else {
                        let d = value - *mean;
                        *mean += alpha * d;
                        *var = (1.0 - alpha) * (*var + alpha * d * d);
                    }
                    *n += 1;
                }
                _ => unreachable!("bug in panes: a key's baseline changed kind"),
            }
        }
        alert
    }
}

impl Detector {
    /// The baselines as a batch (checkpoints): key, n, mean and var (EWMA), and the
    /// rolling window's values.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let mut keys: Vec<u32> = self.keys.keys().copied().collect();
        keys.sort_unstable();
        let (mut n, mut mean, mut var, mut values) = (vec![], vec![], vec![], vec![]);
        for k in &keys {
            match &self.keys[k] {
                KeyBaseline::Rolling(v) => {
                    n.push(v.len() as u64);
                    mean.push(0.0);
                    var.push(0.0);
                    values.push(Some(v.iter().map(|&x| Some(x)).collect::<Vec<_>>()));
                }
                KeyBaseline::Ewma {
                    n: c,
                    mean: m,
                    var: v,
                } => {
                    n.push(*c as u64);
                    mean.push(*m);
                    var.push(*v);
                    values.push(Some(Vec::new()));
                }
            }
        }
        RecordBatch::try_from_iter([
            ("key", Arc::new(UInt32Array::from(keys)) as ArrayRef),
            ("n", Arc::new(UInt64Array::from(n))),
            ("mean", Arc::new(Float64Array::from(mean))),
            ("var", Arc::new(Float64Array::from(var))),
            (
                "values",
                Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(values)),
            ),
        ])
    }

    /// Adds the baselines of a batch that [`Detector::to_batch`] wrote.
    pub fn restore(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let bad = |name: &str| format!("baseline state column {name:?} is missing or mistyped");
        let col = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(name));
        let keys = col("key")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| bad("key"))?;
        let n = col("n")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| bad("n"))?;
        let floats = |name: &str| {
            col(name)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| bad(name))
        };
        let (mean, var) = (floats("mean")?, floats("var")?);
        let values = col("values")?
            .as_list_opt::<i32>()
            .ok_or_else(|| bad("values"))?;
        for i in 0..batch.num_rows() {
            let state = match self.spec.baseline {
                Baseline::Rolling(_) => {
                    let v = values.value(i);
                    let v = v
                        .as_primitive_opt::<Float64Type>()
                        .ok_or_else(|| bad("values"))?;
                    KeyBaseline::Rolling(v.values().iter().copied().collect())
                }
                Baseline::Ewma(_) => KeyBaseline::Ewma {
                    n: n.value(i) as usize,
                    mean: mean.value(i),
                    var: var.value(i),
                },
            };
            self.keys.insert(keys.value(i), state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Sink;

    fn detector(baseline: Baseline) -> Detector {
        Detector::new(Anomaly {
            value: 0,
            baseline,
            threshold: 3.0,
            min_history: 5,
            min_count: None,
            sink: Sink::JsonLines(None),
        })
    }

    #[test]
    fn rolling_baseline_alerts_on_outliers_only_after_enough_history() {
        let mut d = detector(Baseline::Rolling(10));
        let normal = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 10.2, 9.8];
        // Too little history: no alerts.
        for v in &normal {
            assert_eq!(d.observe(7, *v), None);
        }
        let a = d.observe(7, 30.0).expect("an outlier alerts");
        let n = normal.len() as f64;
        let mean = normal.iter().sum::<f64>() / n;
        let std = (normal.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        assert!((a.mean - mean).abs() < 1e-12 && (a.std - std).abs() < 1e-12);
        assert!((a.z - (30.0 - mean) / std).abs() < 1e-9);
        // An early outlier is trimmed from the baseline: it does not hide later ones.
        let mut early = detector(Baseline::Rolling(10));
        for v in [10.0, 11.0, 300.0, 9.0, 10.5, 9.5, 10.0, 10.2, 9.8] {
            assert_eq!(early.observe(7, v), None);
        }
        let b = early.observe(7, 30.0).expect("the baseline ignores 300");
        assert!((b.mean - a.mean).abs() < 1e-9 && (b.std - a.std).abs() < 1e-9);
        // The outlier did not enter the baseline: a second one alerts just the same.
        assert_eq!(d.observe(7, 30.0), Some(a));
        // Other keys have their own history.
        assert_eq!(d.observe(8, 30.0), None);
        assert_eq!(d.observe(7, 10.1), None);
    }

    #[test]
    fn ewma_baseline_follows_the_level() {
        let mut d = detector(Baseline::Ewma(0.5));
        for i in 0..20 {
            assert_eq!(d.observe(1, 100.0 + (i % 2) as f64), None);
        }
        assert!(d.observe(1, 100.4).is_none());
        let a = d.observe(1, 120.0).expect("a jump alerts");
        assert!(a.z > 3.0 && (a.mean - 100.5).abs() < 0.5, "{a:?}");
    }
}
