//! Card payments, with velocity bursts for fraud-style rules.
//!
//! Most payments come from `keys` cards (Zipf 0.2: some cards are used a few times more
//! often than most; with a million cards the busiest pays about 4 times a minute)
//! at merchants across a few countries, with log-normal amounts (median about $30). Now and
//! then a card is taken over: it makes a burst of 10 to 40 small payments within seconds, at
//! many merchants, mostly abroad. The `burst` column is the ground truth.
//!
//! Columns: `ts`, `card_id`, `merchant_id` (`10 * keys` merchants), `amount` (Float64,
//! dollars), `country`, `burst` (Boolean).

use std::sync::Arc;

use arrow::{
    array::{BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};

use crate::{
    Clock, GenConfig, make_batch,
    rng::{Rng, Zipf},
};

/// Countries of merchants; a card's home is the first.
pub const COUNTRIES: [&str; 6] = ["US", "GB", "DE", "FR", "BR", "NG"];
/// Chance per payment that a new burst starts.
pub const BURST_START: f64 = 1.0 / 5_000.0;
/// Share of payments that belong to a running burst, while one runs.
pub const BURST_SHARE: f64 = 0.02;

/// Schema of transaction batches.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("card_id", DataType::Int64, false),
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("burst", DataType::Boolean, false),
    ]))
}

/// A running burst: the card and the payments it has left.
#[derive(Debug, Clone, Copy)]
struct Burst {
    card: u64,
    left: u64,
}

/// Lazy transaction batch iterator; build with [`TransactionsGen::new`] or
/// [`crate::generate`].
#[derive(Debug, Clone)]
pub struct TransactionsGen {
    cfg: GenConfig,
    schema: SchemaRef,
    clock: Clock,
    rng: Rng,
    cards: Zipf,
    bursts: Vec<Burst>,
    done: u64,
}

impl TransactionsGen {
    /// Validates `cfg` and builds the card popularity table (8 bytes per card).
    pub fn new(cfg: &GenConfig) -> Result<Self, String> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            schema: schema(),
            clock: Clock::new(cfg),
            rng: Rng::new(cfg.seed),
            cards: Zipf::new(cfg.keys, 0.2)?,
            bursts: Vec::new(),
            done: 0,
        })
    }
}

impl Iterator for TransactionsGen {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        let rows = self.cfg.batch_len(self.done);
        if rows == 0 {
            return None;
        }
        let mut ts = Vec::with_capacity(rows);
        let (mut card, mut merchant, mut amount) = (
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
        );
        let (mut country, mut burst) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for i in self.done..self.done + rows as u64 {
            let rng = &mut self.rng;
            ts.push(self.clock.ts(i, rng));
            if rng.next_f64() < BURST_START {
                self.bursts.push(Burst {
                    card: self.cards.sample(rng),
                    left: 10 + rng.below(31),
                });
            }
            let in_burst = !self.bursts.is_empty() && rng.next_f64() < BURST_SHARE;
            if in_burst {
                let b = rng.below(self.bursts.len() as u64) as usize;
                card.push(self.bursts[b].card as i64);
                amount.push(((5.0 + 45.0 * rng.next_f64()) * 100.0).round() / 100.0);
                let abroad = rng.next_f64() < 0.8;
                country.push(COUNTRIES[if abroad { 1 + rng.below(5) as usize } else { 0 }]);
                self.bursts[b].left -= 1;
                if self.bursts[b].left == 0 {
                    self.bursts.swap_remove(b);
                }
            } else {
                card.push(self.cards.sample(rng) as i64);
                // Log-normal: median $30, sd of the log 1.
                amount.push((30.0 * rng.normal().exp() * 100.0).round() / 100.0);
                let abroad = rng.next_f64() < 0.05;
                country.push(COUNTRIES[if abroad { 1 + rng.below(5) as usize } else { 0 }]);
            }
            merchant.push(rng.below(10 * self.cfg.keys) as i64);
            burst.push(in_burst);
        }
        self.done += rows as u64;
        Some(make_batch(
            &self.schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(Int64Array::from(card)),
                Arc::new(Int64Array::from(merchant)),
                Arc::new(Float64Array::from(amount)),
                Arc::new(StringArray::from(country)),
                Arc::new(BooleanArray::from(burst)),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};
    use std::collections::HashMap;

    #[test]
    fn bursts_are_fast_small_and_labelled() {
        let cfg = GenConfig {
            events: 500_000,
            keys: 100_000,
            ..GenConfig::default()
        };
        let b = crate::one_batch(crate::Dataset::Transactions, &cfg);
        let ts = b
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let cards = b.column(1).as_primitive::<Int64Type>().values();
        let amounts = b.column(3).as_primitive::<Float64Type>().values();
        let burst = b.column(5).as_boolean();
        let share = burst.true_count() as f64 / b.num_rows() as f64;
        assert!(share > 0.005 && share < 0.05, "burst share {share}");
        // Per card: payments in burst and their time span.
        let mut spans: HashMap<i64, (i64, i64, u32)> = HashMap::new();
        for i in 0..b.num_rows() {
            if burst.value(i) {
                assert!((5.0..=50.0).contains(&amounts[i]), "{}", amounts[i]);
                let t = ts.value(i);
                let e = spans.entry(cards[i]).or_insert((t, t, 0));
                *e = (e.0.min(t), e.1.max(t), e.2 + 1);
            }
        }
        // A burst is many payments of one card within seconds (plus jitter and lateness).
        let fast = spans
            .values()
            .filter(|&&(from, to, n)| n >= 10 && to - from < 130_000)
            .count();
        assert!(
            fast * 2 > spans.len(),
            "{fast} of {} burst cards are fast",
            spans.len()
        );
        let normal: Vec<f64> = (0..b.num_rows())
            .filter(|&i| !burst.value(i))
            .map(|i| amounts[i])
            .collect();
        let below_30 = normal.iter().filter(|&&a| a < 30.0).count() as f64;
        assert!(
            (below_30 / normal.len() as f64 - 0.5).abs() < 0.02,
            "median about $30"
        );
    }
}
