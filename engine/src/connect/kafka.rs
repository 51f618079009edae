//! Kafka source: every partition of its topics, each a source partition with its own
//! watermark. Messages are JSON objects or CSV records (`format`), decoded column-wise into
//! batches of the declared schema; one that does not decode goes to the dead-letter output
//! with its partition, offset and reason. With `[time] column = "_kafka_timestamp"`, the
//! messages' own timestamps are that column.
//!
//! Offsets live in the job's checkpoints: the position after a batch holds each
//! partition's next offset, and a restored job assigns the partitions at those offsets (no
//! auto-commit). Once a checkpoint completes, its offsets are committed to the consumer
//! group too, for lag monitoring and for a job started afresh: without a checkpoint a
//! partition starts where the group left it, else at its first offset, its end, or the
//! first message stamped at or after a time (`start`). With `stop = "end"` the source ends
//! once every partition reached the end it had when the job started; otherwise it runs
//! until the process is stopped, and while no message arrives it hands on empty batches,
//! which let the job's processing time advance (idle partitions, windows that close when
//! the input goes quiet).

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::text::{Record, RecordDecoder, csv_record};
use super::{Decoded, Position, Source, SourceBatch};
use crate::error::{Error, Result};
use crate::job::{KAFKA_TIMESTAMP, KafkaSpec, KafkaStart, TextFormat};

/// How long a request to the brokers may take at start (metadata, offsets).
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batch waits for messages before it goes out smaller (or empty).
const LINGER: Duration = Duration::from_millis(200);

/// How long a bounded run (`stop = "end"`) waits without a message before it says which
/// partitions it still waits for (and again after each such while).
const STALL: Duration = Duration::from_secs(30);

pub(super) struct KafkaSource {
    consumer: BaseConsumer,
    spec: KafkaSpec,
    schema: SchemaRef,
    decoder: RecordDecoder,
    batch_rows: usize,
    /// The topics' partitions: source partition i is (topic, Kafka partition) parts[i].
    parts: Vec<(String, i32)>,
    /// Per partition, the offset of the next message to hand on.
    next: Vec<i64>,
    /// Per partition, the offset to stop at (`stop = "end"`).
    end: Option<Vec<i64>>,
    /// Per partition, messages polled and not yet handed on, with their timestamps
    /// (when the job reads them).
    pending: Vec<Vec<Record>>,
    stamps: Vec<Vec<Option<i64>>>,
    /// Whether the partitions are assigned to the consumer (at the first batch, after a
    /// possible seek).
    assigned: bool,
    /// When the last message arrived (or the source was assigned, or it last said it
    /// waits).
    heard: Instant,
    /// Where completed checkpoints' offsets go instead of to the group (a partition's job
    /// under scale-out: the process's group member commits them).
    commits: Option<Sender<Vec<(String, i32, i64)>>>,
}

/// Offsets that a partition's job checkpointed, for its group member to commit.
pub(crate) type Commits = Sender<Vec<(String, i32, i64)>>;

impl KafkaSource {
    /// Opens the source: with `commits`, completed checkpoints' offsets go there instead
    /// of to the group.
    pub(super) fn open(
        spec: &KafkaSpec,
        batch_rows: usize,
        commits: Option<Commits>,
    ) -> Result<KafkaSource> {
        let at = || format!("kafka {}", spec.bootstrap);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &spec.bootstrap)
            .set("group.id", &spec.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // An offset the broker no longer has (deleted by retention while the job read
            // or was stopped) goes on from the first one it has, not from the end.
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| Error::input(at(), format!("cannot create a consumer: {e}")))?;
        // The topics' partitions, in the order of the topics, each ascending.
        let mut parts = partitions(&consumer, spec)?;
        if let Some(only) = &spec.partition {
            parts.retain(|part| part == only);
            if parts.is_empty() {
                let (t, p) = only;
                return Err(Error::input(
                    at(),
                    format!("topic {t} has no partition {p}"),
                ));
            }
        }
        let list = |offset: Offset| -> Result<TopicPartitionList> {
            let mut list = TopicPartitionList::new();
            for (t, p) in &parts {
                list.add_partition_offset(t, *p, offset)
                    .map_err(|e| Error::input(at(), format!("partition {t}/{p}: {e}")))?;
            }
            Ok(list)
        };
        // Where the group left off, where it did (a checkpoint, when the job restores one,
        // overrides it in `seek`).
        let committed = consumer
            .committed_offsets(list(Offset::Invalid)?, TIMEOUT)
            .map_err(|e| Error::input(at(), format!("the group's offsets: {e}")))?;
        // With a start time: each partition's first offset stamped at or after it.
        let by_time = match spec.start {
            KafkaStart::Time(ms) => Some(
                consumer
                    .offsets_for_times(list(Offset::Offset(ms))?, TIMEOUT)
                    .map_err(|e| {
                        Error::input(at(), format!("the offsets of source.start's time: {e}"))
                    })?,
            ),
            _ => None,
        };
        let (mut next, mut end) = (Vec::new(), Vec::new());
        for (t, p) in &parts {
            let (t, p) = (t.as_str(), *p);
            let (low, high) = consumer
                .fetch_watermarks(t, p, TIMEOUT)
                .map_err(|e| Error::input(at(), format!("offsets of partition {t}/{p}: {e}")))?;
            let group = committed
                .find_partition(t, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let start = match spec.start {
                KafkaStart::Earliest => low,
                KafkaStart::Latest => high,
                KafkaStart::Time(_) => (by_time.as_ref())
                    .and_then(|l| l.find_partition(t, p))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o.clamp(low, high)),
                        _ => None,
                    })
                    // No message stamped that late: the end.
                    .unwrap_or(high),
            };
            next.push(group.unwrap_or(start));
            end.push(high);
            tracing::debug!("kafka {t}/{p}: offsets {low}..{high}, the group's {group:?}");
        }
        let fields: Vec<Field> = (spec.schema.iter())
            .map(|(name, t)| Field::new(name, t.clone(), true))
            .collect();
        let decoded = std::sync::Arc::new(Schema::new(fields.clone()));
        let mut schema = fields;
        if spec.timestamp {
            let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
            schema.push(Field::new(KAFKA_TIMESTAMP, ms, true));
        }
        let schema = std::sync::Arc::new(Schema::new(schema));
        Ok(KafkaSource {
            consumer,
            decoder: RecordDecoder {
                format: spec.format,
                schema: decoded,
                on_malformed: spec.on_malformed,
                position_name: "offset",
                event_time: None,
            },
            schema,
            spec: spec.clone(),
            batch_rows,
            pending: parts.iter().map(|_| Vec::new()).collect(),
            stamps: parts.iter().map(|_| Vec::new()).collect(),
            parts,
            next,
            end: spec.stop_at_end.then_some(end),
            assigned: false,
            heard: Instant::now(),
            commits,
        })
    }

    /// Makes messages without a value in column `name` (the job's event time) malformed.
    pub(super) fn with_event_time(mut self, name: &str) -> Self {
        self.decoder.set_event_time(name);
        self
    }

    fn position(&self) -> Position {
        Position::Kafka {
            offsets: (self.parts.iter().zip(&self.next))
                .map(|((t, p), &next)| (t.clone(), *p, next))
                .collect(),
        }
    }

    /// Whether partition `i` has nothing more to give in a bounded run.
    fn finished(&self, i: usize) -> bool {
        self.end.as_ref().is_some_and(|end| self.next[i] >= end[i])
    }

    fn assign(&mut self) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for ((t, p), &offset) in self.parts.iter().zip(&self.next) {
            list.add_partition_offset(t, *p, Offset::Offset(offset))
                .map_err(|e| self.error(format!("assigning partition {t}/{p}: {e}")))?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| self.error(format!("assigning the partitions: {e}")))?;
        self.assigned = true;
        self.heard = Instant::now();
        Ok(())
    }

    fn label(&self) -> String {
        label(&self.spec.topics)
    }

    fn error(&self, message: String) -> Error {
        Error::input(self.label(), message)
    }

    /// Hands on up to a batch of partition `i`'s pending messages.
    fn take(&mut self, i: usize) -> Result<SourceBatch> {
        let n = self.pending[i].len().min(self.batch_rows);
        let records: Vec<Record> = self.pending[i].drain(..n).collect();
        let origin = format!("{}/{}", self.parts[i].0, self.parts[i].1);
        let first = records.first().map_or(self.next[i], |r| r.line as i64);
        let Decoded {
            mut batch,
            malformed,
        } = self
            .decoder
            .decode_records(&origin, &records, Vec::new())
            .map_err(|e| Error::arrow(format!("decoding messages of {origin}"), e))?;
        if self.spec.timestamp {
            // The timestamps of the messages that decoded (those not among the malformed).
            let stamps: Vec<Option<i64>> = self.stamps[i].drain(..n).collect();
            let bad: std::collections::HashSet<u64> =
                malformed.iter().map(|m| m.position).collect();
            let kept = (records.iter().zip(stamps))
                .filter(|(r, _)| !bad.contains(&r.line))
                .map(|(_, t)| t);
            let column = TimestampMillisecondArray::from_iter(kept);
            let mut columns = batch.columns().to_vec();
            columns.push(std::sync::Arc::new(column));
            batch = RecordBatch::try_new(self.schema.clone(), columns)
                .map_err(|e| Error::arrow(format!("timestamps of {origin}"), e))?;
        }
        if let Some(last) = records.last() {
            self.next[i] = last.line as i64 + 1;
        }
        Ok(SourceBatch {
            partition: i,
            batch,
            origin,
            first_row: first.max(0) as u64,
            after: self.position(),
            malformed,
        })
    }
}

/// Every partition of `spec`'s topics, in the order of the topics, each ascending; an
/// unknown topic is an error naming it.
pub(crate) fn partitions(consumer: &BaseConsumer, spec: &KafkaSpec) -> Result<Vec<(String, i32)>> {
    let at = || format!("kafka {}", spec.bootstrap);
    let mut parts = Vec::new();
    for name in &spec.topics {
        let metadata = consumer.fetch_metadata(Some(name), TIMEOUT).map_err(|e| {
            Error::input(
                at(),
                format!("cannot reach the brokers (in {TIMEOUT:?}): {e}"),
            )
        })?;
        let topic = metadata.topics().iter().find(|t| t.name() == name);
        let mut ids: Vec<i32> = topic
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if ids.is_empty() {
            let key = if spec.topics.len() == 1 {
                "topic"
            } else {
                "topics"
            };
            return Err(Error::input(
                at(),
                format!("source.{key}: {name:?}: no such topic (or it has no partitions)"),
            ));
        }
        ids.sort_unstable();
        parts.extend(ids.into_iter().map(|p| (name.clone(), p)));
    }
    Ok(parts)
}

/// `kafka topic clicks`, or `kafka topics clicks, views`.
fn label(topics: &[String]) -> String {
    match topics {
        [one] => format!("kafka topic {one}"),
        many => format!("kafka topics {}", many.join(", ")),
    }
}

impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn partitions(&self) -> usize {
        self.parts.len()
    }

    fn total_rows(&self) -> Option<u64> {
        let end = self.end.as_ref()?;
        Some(
            end.iter()
                .zip(&self.next)
                .map(|(e, n)| (e - n).max(0) as u64)
                .sum(),
        )
    }

    fn next_batch(&mut self) -> Result<Option<SourceBatch>> {
        if !self.assigned {
            self.assign()?;
        }
        let started = Instant::now();
        loop {
            let (bounded, n) = (self.end.is_some(), self.parts.len());
            let done = |s: &Self, i: usize| s.finished(i) && s.pending[i].is_empty();
            if bounded && (0..n).all(|i| done(self, i)) {
                return Ok(None);
            }
            // A full batch goes at once; after the linger, the fullest one; in a bounded
            // run, one whose partition reached its end.
            let full = (0..n).find(|&i| self.pending[i].len() >= self.batch_rows);
            let ended = (0..n).find(|&i| {
                let polled = self.next[i] + self.pending[i].len() as i64;
                !self.pending[i].is_empty() && self.end.as_ref().is_some_and(|e| polled >= e[i])
            });
            if let Some(i) = full.or(ended) {
                return self.take(i).map(Some);
            }
            if started.elapsed() >= LINGER {
                let fullest = (0..n).max_by_key(|&i| self.pending[i].len());
                return match fullest.filter(|&i| !self.pending[i].is_empty()) {
                    Some(i) => self.take(i).map(Some),
                    // Nothing arrived: an empty batch lets processing time advance.
                    None => Ok(Some(SourceBatch {
                        partition: 0,
                        batch: RecordBatch::new_empty(self.schema.clone()),
                        origin: self.label(),
                        first_row: 0,
                        after: self.position(),
                        malformed: Vec::new(),
                    })),
                };
            }
            if let Some(end) = self.end.as_ref().filter(|_| self.heard.elapsed() >= STALL) {
                let waiting: Vec<String> = (0..n)
                    .filter(|&i| !self.finished(i))
                    .map(|i| {
                        let at = self.next[i] + self.pending[i].len() as i64;
                        let (t, p) = &self.parts[i];
                        format!("{t}/{p} at offset {at} of {}", end[i])
                    })
                    .collect();
                tracing::warn!(
                    "{}: no message for {STALL:?}; partitions still to read to their end: {}",
                    self.label(),
                    waiting.join(", ")
                );
                self.heard = Instant::now();
            }
            let Some(first) = self.consumer.poll(LINGER / 4) else {
                continue;
            };
            // Then what is fetched already, up to a batch, without waiting or reading the
            // clock for each message.
            let multi = self.spec.topics.len() > 1;
            let (parts, next, end, spec) = (&self.parts, &self.next, &self.end, &self.spec);
            let (pending, stamps) = (&mut self.pending, &mut self.stamps);
            let (mut polled, mut taken) = (Some(first), 0);
            while let Some(result) = polled.take() {
                let message = match result {
                    Ok(m) => m,
                    Err(e) => {
                        // librdkafka retries on its own (a broker that went away comes
                        // back).
                        tracing::warn!("{}: {e}; retrying", label(&spec.topics));
                        break;
                    }
                };
                taken += 1;
                polled = (taken < self.batch_rows)
                    .then(|| self.consumer.poll(Duration::ZERO))
                    .flatten();
                let partition = message.partition();
                let Some(i) = (parts.iter())
                    .position(|(t, p)| *p == partition && (!multi || t == message.topic()))
                else {
                    continue;
                };
                let offset = message.offset();
                let polled_to = next[i] + pending[i].len() as i64;
                let beyond = end.as_ref().is_some_and(|e| offset >= e[i]);
                if offset < polled_to || beyond {
                    continue;
                }
                let payload = message.payload().unwrap_or_default();
                let record = match spec.format {
                    TextFormat::Csv => csv_record(payload, offset as u64),
                    TextFormat::JsonLines => {
                        let mut text = Vec::with_capacity(payload.len() + 1);
                        text.extend_from_slice(payload);
                        text.push(b'\n');
                        Record {
                            line: offset as u64,
                            text,
                            fields: None,
                        }
                    }
                };
                if spec.timestamp {
                    stamps[i].push(message.timestamp().to_millis());
                }
                pending[i].push(record);
            }
            self.heard = Instant::now();
        }
    }

    fn seek(&mut self, to: &Position) -> Result<()> {
        match to {
            Position::Start => Ok(()),
            Position::Kafka { offsets } => {
                // Partitions the checkpoint does not name (new ones) start as `start` says.
                for (t, p, offset) in offsets {
                    // A checkpoint from before topics were named: the one topic.
                    let t = match (t.is_empty(), self.spec.topics.as_slice()) {
                        (false, _) => t,
                        (true, [one]) => one,
                        (true, _) => {
                            return Err(self.error(
                                "the checkpoint names no topics (it predates sources of \
                                 several topics); resume it with the one topic it read, or \
                                 run with --fresh"
                                    .into(),
                            ));
                        }
                    };
                    let Some(i) = (self.parts.iter()).position(|part| (&part.0, part.1) == (t, *p))
                    else {
                        return Err(self.error(format!(
                            "the checkpoint resumes partition {t}/{p}, which the source no \
                             longer reads; run with --fresh"
                        )));
                    };
                    self.next[i] = *offset;
                }
                Ok(())
            }
            other => Err(self.error(format!(
                "the checkpoint resumes at {other}, not at Kafka offsets: the source changed; \
                 run with --fresh"
            ))),
        }
    }

    /// Commits a completed checkpoint's offsets to the group (a failure is logged: it only
    /// delays what the group shows).
    fn checkpointed(&mut self, at: &Position) {
        let Position::Kafka { offsets } = at else {
            return;
        };
        if let Some(commits) = &self.commits {
            // The member may be gone (the process stops): then nothing commits them.
            let _ = commits.send(offsets.clone());
            return;
        }
        let mut list = TopicPartitionList::new();
        for (t, p, offset) in offsets {
            if list
                .add_partition_offset(t, *p, Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(
                "{}: committing offsets to group {:?}: {e}",
                self.label(),
                self.spec.group
            );
        }
    }
}
