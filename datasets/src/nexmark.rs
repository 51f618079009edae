//! Nexmark: an online auction's Person, Auction and Bid events in one stream, after the
//! Nexmark benchmark's generator, with the shared clock's jitter and late events (the
//! original generator emits in order).
//!
//! Of every 50 events, 1 is a new person, 3 are new auctions and 46 are bids (1:3:46). Bids go
//! to one of the `keys` most recent auctions; half of them to a hot auction (one in
//! [`HOT_RATIO`]), and half of bidders and sellers are hot people in the same way. Prices are
//! log-uniform between $1 and $1,000,000, in cents.
//!
//! Columns: `ts`, `event_type` (`person`, `auction` or `bid`), `person_id` (persons), `auction_id`
//! (the new auction, or the auction a bid is for), `seller` and `category` (auctions),
//! `bidder` and `price` (bids). Columns that do not apply to an event are null, so
//! `count(price)` counts bids.

use std::sync::Arc;

use arrow::{
    array::{Int64Array, StringArray, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};

use crate::{Clock, GenConfig, make_batch, rng::Rng};

/// Out of every 50 events: persons, then auctions; the rest are bids.
pub const PERSONS_PER_50: u64 = 1;
/// Auctions among every 50 events.
pub const AUCTIONS_PER_50: u64 = 3;
/// One auction (or person) in this many is hot.
pub const HOT_RATIO: u64 = 100;
/// Auction categories.
pub const CATEGORIES: u64 = 5;

/// Schema of Nexmark batches.
pub fn schema() -> SchemaRef {
    let id = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("event_type", DataType::Utf8, false),
        id("person_id"),
        id("auction_id"),
        id("seller"),
        id("category"),
        id("bidder"),
        id("price"),
    ]))
}

/// Lazy Nexmark batch iterator; build with [`NexmarkGen::new`] or [`crate::generate`].
#[derive(Debug, Clone)]
pub struct NexmarkGen {
    cfg: GenConfig,
    schema: SchemaRef,
    clock: Clock,
    rng: Rng,
    done: u64,
}

impl NexmarkGen {
    /// Validates `cfg`.
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

/// People and auctions created before event `i`.
fn created(i: u64) -> (u64, u64) {
    let (rounds, rest) = (i / 50, i % 50);
    let persons = rounds * PERSONS_PER_50 + rest.min(PERSONS_PER_50);
    let auctions =
        rounds * AUCTIONS_PER_50 + rest.saturating_sub(PERSONS_PER_50).min(AUCTIONS_PER_50);
    (persons, auctions)
}

impl NexmarkGen {
    /// One of the `window` most recent of `n` ids; half the time a hot one.
    fn pick(&mut self, n: u64, window: u64) -> i64 {
        let n = n.max(1);
        let recent = window.min(n);
        let id = if self.rng.next_f64() < 0.5 {
            // Hot: a multiple of HOT_RATIO among the recent ones.
            let hot = (recent / HOT_RATIO).max(1);
            let newest_hot = (n - 1) / HOT_RATIO * HOT_RATIO;
            newest_hot.saturating_sub(self.rng.below(hot) * HOT_RATIO)
        } else {
            n - 1 - self.rng.below(recent)
        };
        id as i64
    }
}

impl Iterator for NexmarkGen {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        let rows = self.cfg.batch_len(self.done);
        if rows == 0 {
            return None;
        }
        let mut ts = Vec::with_capacity(rows);
        let mut kind = Vec::with_capacity(rows);
        let (mut person, mut auction, mut seller, mut category, mut bidder, mut price) = (
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
        );
        for i in self.done..self.done + rows as u64 {
            ts.push(self.clock.ts(i, &mut self.rng));
            let (persons, auctions) = created(i);
            let slot = i % 50;
            let (mut p, mut a, mut s, mut c, mut b, mut x) = (None, None, None, None, None, None);
            if slot < PERSONS_PER_50 {
                kind.push("person");
                p = Some(persons as i64);
            } else if slot < PERSONS_PER_50 + AUCTIONS_PER_50 {
                kind.push("auction");
                a = Some(auctions as i64);
                s = Some(self.pick(persons, self.cfg.keys));
                c = Some(self.rng.below(CATEGORIES) as i64);
            } else {
                kind.push("bid");
                a = Some(self.pick(auctions, self.cfg.keys));
                b = Some(self.pick(persons, self.cfg.keys));
                // Log-uniform from $1 to $1,000,000, in cents.
                x = Some((10f64.powf(self.rng.next_f64() * 6.0) * 100.0).round() as i64);
            }
            person.push(p);
            auction.push(a);
            seller.push(s);
            category.push(c);
            bidder.push(b);
            price.push(x);
        }
        self.done += rows as u64;
        Some(make_batch(
            &self.schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(StringArray::from(kind)),
                Arc::new(Int64Array::from(person)),
                Arc::new(Int64Array::from(auction)),
                Arc::new(Int64Array::from(seller)),
                Arc::new(Int64Array::from(category)),
                Arc::new(Int64Array::from(bidder)),
                Arc::new(Int64Array::from(price)),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    #[test]
    fn proportions_hot_auctions_and_prices() {
        let cfg = GenConfig {
            events: 100_000,
            keys: 1_000,
            ..GenConfig::default()
        };
        let b = crate::one_batch(crate::Dataset::Nexmark, &cfg);
        let kinds = b.column(1).as_string::<i32>();
        let count = |k: &str| kinds.iter().filter(|x| *x == Some(k)).count();
        assert_eq!(
            (count("person"), count("auction"), count("bid")),
            (2_000, 6_000, 92_000)
        );
        let auction = b.column(3).as_primitive::<Int64Type>();
        let price = b.column(7).as_primitive::<Int64Type>();
        assert_eq!(price.len() - price.null_count(), 92_000, "bids have prices");
        // Every bid is for an auction that exists already.
        let (mut created_so_far, mut hot) = (0i64, 0);
        for i in 0..b.num_rows() {
            match kinds.value(i) {
                "auction" => created_so_far = auction.value(i) + 1,
                "bid" => {
                    assert!(auction.value(i) < created_so_far.max(1));
                    hot += (auction.value(i) % HOT_RATIO as i64 == 0) as usize;
                    let p = price.value(i);
                    assert!((100..=100_000_000).contains(&p), "price {p}");
                }
                _ => {}
            }
        }
        assert!(
            hot > 92_000 / 2,
            "half the bids or more go to hot auctions: {hot}"
        );
        let cheap = price.iter().flatten().filter(|&p| p < 100_000).count();
        // Log-uniform over 6 decades: half of the prices below $1,000.
        assert!((cheap as f64 / 92_000.0 - 0.5).abs() < 0.02, "{cheap}");
    }
}
