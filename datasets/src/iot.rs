//! IoT: sensor readings from `keys` sensors, each chosen uniformly per event.
//!
//! Columns: `ts` (non-null), `sensor_id`, `temperature` (a per-sensor base in `[15, 30)` plus
//! gaussian noise, sd 0.5; null with `null_share`), `pressure` (about 1013 hPa, sd 2) and
//! `vibration` (>= 0, absolute gaussian).

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
    done: u64,
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
        })
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
        for i in self.done..self.done + rows as u64 {
            let rng = &mut self.rng;
            ts.push(self.clock.ts(i, rng));
            let sensor = rng.below(self.cfg.keys);
            let temp = base_temperature(self.cfg.seed, sensor) + 0.5 * rng.normal();
            let is_null = rng.next_f64() < self.cfg.null_share;
            sensor_id.push(sensor as i64);
            temperature.push((!is_null).then_some(temp));
            pressure.push(1013.0 + 2.0 * rng.normal());
            vibration.push((0.2 * rng.normal()).abs());
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
            batch_rows: 50_000,
            ..GenConfig::default()
        };
        (cfg.keys, cfg.null_share) = (10, 0.1);
        let b = IotGen::new(&cfg).expect("valid").next().expect("one batch");
        let floats = |i: usize| b.column(i).as_primitive::<Float64Type>();
        let sensors = b.column(1).as_primitive::<Int64Type>().values();
        assert!(sensors.iter().all(|s| (0..10).contains(s)));
        let temp = floats(2);
        assert!((temp.null_count() as f64 / 50_000.0 - 0.1).abs() < 0.01);
        for (&s, t) in sensors.iter().zip(temp.iter()) {
            let base = base_temperature(cfg.seed, s as u64);
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
}
