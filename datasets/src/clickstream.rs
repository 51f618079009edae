//! Clickstream: article page views by users, with Zipf article popularity whose trending
//! articles change every 10 minutes of event time.
//!
//! Columns: `ts` (non-null), `user_id` (one of `10 * keys` users), `article_id` (Zipf over
//! `keys` articles), `session_id`, `scroll_depth` (uniform in `[0, 1)`, null with
//! `null_share`), `referrer` (weighted pick from [`REFERRERS`]).
//!
//! Users come in sessions: at any time [`active_users`] users are reading. Each reads
//! 5 to 54 pages in a row (one session, one `session_id`), then leaves, and a user picked at
//! random takes the place. So a user's page views cluster into sessions separated by long
//! inactivity.

use std::sync::Arc;

use arrow::{
    array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};

use crate::{
    Clock, GenConfig, make_batch,
    rng::{Rng, Zipf, mix},
};

/// Referrer values with their weights in percent.
pub const REFERRERS: [(&str, u64); 5] = [
    ("search", 35),
    ("social", 25),
    ("direct", 20),
    ("internal", 15),
    ("newsletter", 5),
];
/// Every this much event time, the rank -> article mapping rotates by a seeded offset.
pub const TREND_PERIOD_MS: i64 = 10 * 60 * 1000;
/// Users reading at any time, for `keys` articles: one in twenty of the `10 * keys` users.
pub fn active_users(keys: u64) -> u64 {
    (keys / 2).max(1)
}

/// A reading user: who, which session, pages left.
#[derive(Debug, Clone, Copy, Default)]
struct Reader {
    user: u64,
    session: u64,
    left: u64,
}

/// Schema of clickstream batches.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("user_id", DataType::Int64, false),
        Field::new("article_id", DataType::Int64, false),
        Field::new("session_id", DataType::Int64, false),
        Field::new("scroll_depth", DataType::Float64, true),
        Field::new("referrer", DataType::Utf8, false),
    ]))
}

/// Lazy clickstream batch iterator; build with [`ClickstreamGen::new`] or [`crate::generate`].
#[derive(Debug, Clone)]
pub struct ClickstreamGen {
    cfg: GenConfig,
    schema: SchemaRef,
    clock: Clock,
    rng: Rng,
    zipf: Zipf,
    readers: Vec<Reader>,
    sessions: u64,
    done: u64,
}

impl ClickstreamGen {
    /// Validates `cfg` and builds the popularity table (8 bytes per key).
    pub fn new(cfg: &GenConfig) -> Result<Self, String> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            schema: schema(),
            clock: Clock::new(cfg),
            rng: Rng::new(cfg.seed),
            zipf: Zipf::new(cfg.keys, cfg.zipf_s)?,
            readers: vec![Reader::default(); active_users(cfg.keys) as usize],
            sessions: 0,
            done: 0,
        })
    }
}

impl Iterator for ClickstreamGen {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        let rows = self.cfg.batch_len(self.done);
        if rows == 0 {
            return None;
        }
        let (keys, users) = (self.cfg.keys, self.cfg.keys * 10);
        let mut ts = Vec::with_capacity(rows);
        let mut user_id = Vec::with_capacity(rows);
        let mut article_id = Vec::with_capacity(rows);
        let mut session_id = Vec::with_capacity(rows);
        let mut scroll = Vec::with_capacity(rows);
        let mut referrer = Vec::with_capacity(rows);
        for i in self.done..self.done + rows as u64 {
            let rng = &mut self.rng;
            ts.push(self.clock.ts(i, rng));
            let slot = rng.below(self.readers.len() as u64) as usize;
            let reader = &mut self.readers[slot];
            if reader.left == 0 {
                self.sessions += 1;
                *reader = Reader {
                    user: rng.below(users),
                    session: mix(self.cfg.seed, self.sessions) >> 1,
                    left: 5 + rng.below(50),
                };
            }
            reader.left -= 1;
            let (user, session) = (reader.user, reader.session);
            let elapsed = self.clock.elapsed(i);
            let rank = self.zipf.sample(rng);
            let trend_offset = mix(self.cfg.seed, (elapsed / TREND_PERIOD_MS) as u64) % keys;
            let is_null = rng.next_f64() < self.cfg.null_share;
            let depth = rng.next_f64();
            let pick = rng.below(100);
            user_id.push(user as i64);
            article_id.push(((rank + trend_offset) % keys) as i64);
            session_id.push(session as i64);
            scroll.push((!is_null).then_some(depth));
            referrer.push(referrer_for(pick));
        }
        self.done += rows as u64;
        Some(make_batch(
            &self.schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(ts)),
                Arc::new(Int64Array::from(user_id)),
                Arc::new(Int64Array::from(article_id)),
                Arc::new(Int64Array::from(session_id)),
                Arc::new(Float64Array::from(scroll)),
                Arc::new(StringArray::from(referrer)),
            ],
        ))
    }
}

/// Maps a uniform pick in `0..100` to a referrer by the [`REFERRERS`] weights.
fn referrer_for(pick: u64) -> &'static str {
    let mut upto = 0;
    for (name, weight) in REFERRERS {
        upto += weight;
        if pick < upto {
            return name;
        }
    }
    REFERRERS[0].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::{
        array::{Array, AsArray},
        datatypes::{Float64Type, Int64Type},
    };

    fn one_batch(events: u64, edit: impl FnOnce(&mut GenConfig)) -> RecordBatch {
        let mut cfg = GenConfig {
            events,
            ..GenConfig::default()
        };
        edit(&mut cfg);
        crate::one_batch(crate::Dataset::Clickstream, &cfg)
    }

    fn ints<'a>(b: &'a RecordBatch, name: &str) -> &'a [i64] {
        b.column_by_name(name)
            .expect("column")
            .as_primitive::<Int64Type>()
            .values()
    }

    #[test]
    fn values_are_in_range() {
        let b = one_batch(50_000, |c| (c.keys, c.null_share) = (100, 0.2));
        assert!(ints(&b, "user_id").iter().all(|u| (0..1000).contains(u)));
        assert!(ints(&b, "article_id").iter().all(|a| (0..100).contains(a)));
        let scroll = b.column(4).as_primitive::<Float64Type>();
        let null_share = scroll.null_count() as f64 / scroll.len() as f64;
        assert!((null_share - 0.2).abs() < 0.01, "null share {null_share}");
        assert!(scroll.iter().flatten().all(|d| (0.0..1.0).contains(&d)));
        let names: Vec<&str> = REFERRERS.iter().map(|r| r.0).collect();
        let mut refs = b.column(5).as_string::<i32>().iter();
        assert!(refs.all(|r| r.is_some_and(|r| names.contains(&r))));
    }

    #[test]
    fn users_read_in_sessions() {
        let b = one_batch(200_000, |c| c.keys = 1000);
        let (users, sessions) = (ints(&b, "user_id"), ints(&b, "session_id"));
        let mut owner = std::collections::HashMap::new();
        let mut pages = std::collections::HashMap::new();
        for (&u, &s) in users.iter().zip(sessions) {
            assert_eq!(*owner.entry(s).or_insert(u), u, "a session has one user");
            *pages.entry(s).or_insert(0) += 1;
        }
        // Whole sessions read 5 to 54 pages; a user comes back in several sessions.
        let lengths: Vec<u64> = pages.values().copied().collect();
        assert!(lengths.iter().all(|&n| n <= 54));
        let mean = lengths.iter().sum::<u64>() as f64 / lengths.len() as f64;
        assert!((20.0..35.0).contains(&mean), "mean session length {mean}");
        let per_user = owner.len() as f64
            / owner
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len() as f64;
        assert!(per_user > 1.0, "sessions per user {per_user}");
    }

    #[test]
    fn trending_articles_change_over_time() {
        // 100 events/s: 60k events span one 10-minute trend period.
        let b = one_batch(120_000, |c| (c.events_per_sec, c.keys) = (100.0, 1000));
        let top = |part: &[i64]| {
            let mut counts = vec![0u32; 1000];
            part.iter().for_each(|&a| counts[a as usize] += 1);
            (0..1000).max_by_key(|&a| counts[a])
        };
        let tops: Vec<_> = ints(&b, "article_id").chunks(60_000).map(top).collect();
        assert_ne!(
            tops[0], tops[1],
            "the top article should change between periods"
        );
    }
}
