//! IoT: sensor readings from `keys` sensors, each reporting at a fixed rate (round robin:
//! one reading every `keys` events).
//!
//! Columns: `ts` (non-null), `sensor_id`, `temperature` (a per-sensor base in `[15, 30)` plus
//! gaussian noise, sd 0.5; null with `null_share`), `pressure` (about 1013 hPa, sd 2) and
//! `vibration` (>= 0, absolute gaussian).
//!
//! Each sensor's temperature drifts slowly ([`drift_per_hour`]). Sensors go offline: in
//! [`OUTAGE_SHARE`] of the (sensor, 10-minute) blocks a sensor is cut off for 2 to 5
//! minutes, and when it reconnects it sends the readings it kept, in one burst, with their
//! original times: out of order by up to 5 minutes, most of them beyond any usual lateness
//! bound.
//!
//! Injected anomalies: in [`ANOMALY_SHARE`] of the (sensor, minute of event time) cells, every
//! temperature reading is shifted by 4 to 8 noise standard deviations, up or down. The
//! ground truth is [`anomaly`] per cell, and [`anomaly_labels`] lists the cells of a run.

use std::sync::Arc;

use arrow::{
    array::{Float64Array, Int64Array, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};

use crate::{
    Clock, GenConfig, make_batch,
    rng::{Rng, mix, to_unit},
};

/// Schema of IoT batches.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("sensor_id", DataType::Int64, false),
        Field::new("temperature", DataType::Float64, true),
        Field::new("pressure", DataType::Float64, false),
        Field::new("vibration", DataType::Float64, false),
    ]))
}

/// Share of (sensor, 10-minute) blocks in which the sensor goes offline for a while.
pub const OUTAGE_SHARE: f64 = 0.05;

const BLOCK_MS: i64 = 10 * 60_000;

/// Temperature drift of `sensor` in °C per hour of event time, in `[-0.05, 0.05)`.
pub fn drift_per_hour(seed: u64, sensor: u64) -> f64 {
    0.1 * (to_unit(mix(seed ^ 0xD71F7, sensor)) - 0.5)
}

/// When `sensor` is offline at nominal time `t`: the time it reconnects.
pub fn outage_end(seed: u64, sensor: u64, t: i64) -> Option<i64> {
    let block = t.div_euclid(BLOCK_MS);
    let h = mix(mix(seed ^ 0x00FF_114E, sensor), block as u64);
    if to_unit(h) >= OUTAGE_SHARE {
        return None;
    }
    let start = block * BLOCK_MS + (to_unit(mix(h, 1)) * 300_000.0) as i64;
    let end = start + 120_000 + (to_unit(mix(h, 2)) * 180_000.0) as i64;
    (start..end).contains(&t).then_some(end)
}

/// One reading: ts, sensor, temperature, pressure, vibration.
type Reading = (i64, i64, Option<f64>, f64, f64);

/// Share of (sensor, minute) cells with an injected anomaly.
pub const ANOMALY_SHARE: f64 = 0.02;

/// Standard deviation of the temperature noise, the unit of injected shifts.
pub const NOISE_SD: f64 = 0.5;

const MINUTE_MS: i64 = 60_000;

/// The shift injected into `sensor`'s readings during the minute of event time that starts
/// at `minute_ms` (a multiple of 60 000), in noise standard deviations: `None` for most
/// cells, otherwise ±4..8.
pub fn anomaly(seed: u64, sensor: u64, minute_ms: i64) -> Option<f64> {
    let h = mix(mix(seed ^ 0xA70_4A11, sensor), minute_ms as u64);
    if to_unit(h) >= ANOMALY_SHARE {
        return None;
    }
    let size = 4.0 + 4.0 * to_unit(mix(h, 1));
    Some(if mix(h, 2) & 1 == 0 { size } else { -size })
}

/// The ground truth of a run: every anomalous (sensor, minute) cell whose minute lies
/// wholly inside the run's nominal time span, as columns `sensor_id`, `window_start`,
/// `window_end` (ms timestamps) and `shift_sd`.
pub fn anomaly_labels(cfg: &GenConfig) -> RecordBatch {
    let clock = Clock::new(cfg);
    let first = clock.nominal(0).div_euclid(MINUTE_MS) + 1;
    let last = clock.nominal(cfg.events).div_euclid(MINUTE_MS);
    let (mut sensor, mut start, mut end, mut shift) = (vec![], vec![], vec![], vec![]);
    for m in first..last {
        for s in 0..cfg.keys {
            if let Some(x) = anomaly(cfg.seed, s, m * MINUTE_MS) {
                sensor.push(s as i64);
                start.push(m * MINUTE_MS);
                end.push((m + 1) * MINUTE_MS);
                shift.push(x);
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Int64, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("shift_sd", DataType::Float64, false),
    ]));
    make_batch(
        &schema,
        vec![
            Arc::new(Int64Array::from(sensor)),
            Arc::new(TimestampMillisecondArray::from(start)),
            Arc::new(TimestampMillisecondArray::from(end)),
            Arc::new(Float64Array::from(shift)),
        ],
    )
}

/// Base temperature of `sensor`: a seeded constant in `[15, 30)`, computed without a table.
pub fn base_temperature(seed: u64, sensor: u64) -> f64 {
    15.0 + 15.0 * to_unit(mix(seed ^ 0x1D7E_4B5E, sensor))
}

/// Lazy IoT batch iterator; build with [`IotGen::new`] or [`crate::generate`].
#[derive(Debug, Clone)]
pub struct IotGen {
    cfg: GenConfig,
    schema: SchemaRef,
    clock: Clock,
    rng: Rng,
    /// Rows emitted so far.
    done: u64,
    /// Readings taken so far (some are held by offline sensors).
    taken: u64,
    /// Readings of offline sensors, by reconnect time (then the order they were taken).
    held: std::collections::BTreeMap<(i64, u64), Reading>,
}

impl IotGen {
    /// Validates `cfg`; needs no per-sensor memory.
    pub fn new(cfg: &GenConfig) -> Result<Self, String> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            schema: schema(),
            clock: Clock::new(cfg),
            rng: Rng::new(cfg.seed),
            done: 0,
            taken: 0,
            held: std::collections::BTreeMap::new(),
        })
    }

    /// Takes the next reading (sensor `taken % keys`, at the fixed rate).
    fn take(&mut self) -> (i64, Reading) {
        let i = self.taken;
        self.taken += 1;
        let rng = &mut self.rng;
        let t = self.clock.ts(i, rng);
        let sensor = i % self.cfg.keys;
        let shift = anomaly(self.cfg.seed, sensor, t.div_euclid(MINUTE_MS) * MINUTE_MS);
        let hours = self.clock.elapsed(i) as f64 / 3_600_000.0;
        let temp = base_temperature(self.cfg.seed, sensor)
            + drift_per_hour(self.cfg.seed, sensor) * hours
            + NOISE_SD * (rng.normal() + shift.unwrap_or(0.0));
        let is_null = rng.next_f64() < self.cfg.null_share;
        let pressure = 1013.0 + 2.0 * rng.normal();
        let vibration = (0.2 * rng.normal()).abs();
        let reading = (
            t,
            sensor as i64,
            (!is_null).then_some(temp),
            pressure,
            vibration,
        );
        (self.clock.nominal(i), reading)
    }

    /// The next row: a held reading whose sensor has reconnected, or a new reading (held
    /// instead if its sensor is offline).
    fn next_row(&mut self) -> Reading {
        loop {
            let now = self.clock.nominal(self.taken);
            if let Some(entry) = self.held.first_entry()
                && entry.key().0 <= now
            {
                return entry.remove();
            }
            let (nominal, reading) = self.take();
            match outage_end(self.cfg.seed, reading.1 as u64, nominal) {
                Some(end) => {
                    self.held.insert((end, self.taken), reading);
                }
                None => return reading,
            }
        }
    }
}

impl Iterator for IotGen {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        let rows = self.cfg.batch_len(self.done);
        if rows == 0 {
            return None;
        }
        let mut ts = Vec::with_capacity(rows);
        let mut sensor_id = Vec::with_capacity(rows);
        let mut temperature = Vec::with_capacity(rows);
        let mut pressure = Vec::with_capacity(rows);
        let mut vibration = Vec::with_capacity(rows);
        for _ in 0..rows {
            let (t, sensor, temp, p, v) = self.next_row();
            ts.push(t);
            sensor_id.push(sensor);
            temperature.push(temp);
            pressure.push(p);
            vibration.push(v);
        }
        self.done += rows as u64;
        Some(make_batch(
            &self.schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(Int64Array::from(sensor_id)),
                Arc::new(Float64Array::from(temperature)),
                Arc::new(Float64Array::from(pressure)),
                Arc::new(Float64Array::from(vibration)),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::{
        array::{Array, AsArray},
        datatypes::{Float64Type, Int64Type},
    };

    #[test]
    fn values_are_plausible() {
        let mut cfg = GenConfig {
            events: 50_000,
            ..GenConfig::default()
        };
        (cfg.keys, cfg.null_share) = (10, 0.1);
        let b = crate::one_batch(crate::Dataset::Iot, &cfg);
        let floats = |i: usize| b.column(i).as_primitive::<Float64Type>();
        let ts = b
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let sensors = b.column(1).as_primitive::<Int64Type>().values();
        assert!(sensors.iter().all(|s| (0..10).contains(s)));
        let temp = floats(2);
        assert!((temp.null_count() as f64 / 50_000.0 - 0.1).abs() < 0.01);
        for ((&s, t), &at) in sensors.iter().zip(temp.iter()).zip(ts.values()) {
            let shift = anomaly(cfg.seed, s as u64, at.div_euclid(MINUTE_MS) * MINUTE_MS);
            let base = base_temperature(cfg.seed, s as u64) + NOISE_SD * shift.unwrap_or(0.0);
            assert!((15.0..30.0).contains(&base));
            assert!(
                t.is_none_or(|t| (t - base).abs() < 5.0),
                "sensor {s}: {t:?}, base {base}"
            );
        }
        let mean = floats(3).values().iter().sum::<f64>() / 50_000.0;
        assert!((mean - 1013.0).abs() < 0.1, "mean pressure {mean}");
        assert!(floats(4).values().iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn sensors_report_at_fixed_rates_and_reconnect_in_bursts() {
        let cfg = GenConfig {
            events: 3_000_000,
            keys: 100,
            ..GenConfig::default()
        };
        let b = crate::one_batch(crate::Dataset::Iot, &cfg);
        let ts = b
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let sensors = b.column(1).as_primitive::<Int64Type>().values();
        let mut per_sensor = vec![0u64; 100];
        sensors.iter().for_each(|&s| per_sensor[s as usize] += 1);
        // 5 minutes of data: every sensor reports about as often as the others, less the
        // readings still held by a sensor that is offline at the end.
        assert!(
            per_sensor.iter().all(|&n| n > 20_000 && n <= 30_000),
            "{per_sensor:?}"
        );
        // Reconnect bursts: runs of readings more than a minute older than the stream.
        let (mut max, mut old) = (i64::MIN, 0);
        for &t in ts.values() {
            old += usize::from(t < max - 60_000);
            max = max.max(t);
        }
        assert!(
            old > 1_000,
            "{old} readings arrived more than a minute late"
        );
        for (&s, &t) in sensors.iter().zip(ts.values()) {
            // A sensor never reports while it is offline: held readings keep their times.
            let held = outage_end(cfg.seed, s as u64, t).is_some();
            assert!(held || t <= max);
        }
    }

    #[test]
    fn anomalies_are_rare_large_and_labelled() {
        let cfg = GenConfig {
            events: 6_000_000,
            keys: 500,
            ..GenConfig::default()
        };
        let labels = anomaly_labels(&cfg);
        // 6M events at 10 000/s: 10 minutes, 9 of them whole, 500 sensors each.
        let cells = 9 * 500;
        let share = labels.num_rows() as f64 / cells as f64;
        assert!((share - ANOMALY_SHARE).abs() < 0.01, "share {share}");
        let shifts = labels.column(3).as_primitive::<Float64Type>();
        assert!(
            shifts
                .values()
                .iter()
                .all(|s| (4.0..=8.0).contains(&s.abs()))
        );
        assert!(shifts.values().iter().any(|&s| s < 0.0));
        let starts = labels
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert!(starts.values().iter().all(|s| s % MINUTE_MS == 0));
    }
}
