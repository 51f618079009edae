//! Kafka sink: rows as JSON objects, one message each, through an idempotent producer
//! (no duplicates from the producer's own retries). Without checkpoints that is
//! at-least-once across crashes: a job that is run again writes its rows again.

use std::sync::Mutex;
use std::time::Duration;

use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::error::{Error, Result};

/// How long the end of a job waits for the brokers to acknowledge its messages.
const FLUSH: Duration = Duration::from_secs(60);

/// Keeps the first failed delivery: the sink reports it when it finishes.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.get_or_insert_with(|| e.to_string());
        }
    }
}

pub(crate) struct KafkaWriter {
    producer: BaseProducer<Deliveries>,
    topic: String,
    name: String,
}

impl KafkaWriter {
    pub(crate) fn open(bootstrap: &str, topic: &str) -> Result<KafkaWriter> {
        let name = format!("kafka topic {topic} at {bootstrap}");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create_with_context(Deliveries::default())
            .map_err(|e| Error::input(&name, format!("cannot create a producer: {e}")))?;
        Ok(KafkaWriter {
            producer,
            topic: topic.to_string(),
            name,
        })
    }

    /// Sends each row as a JSON object.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut text = Vec::new();
        let mut w = LineDelimitedWriter::new(&mut text);
        w.write(batch)
            .and_then(|()| w.finish())
            .map_err(|e| Error::arrow(format!("writing {}", self.name), e))?;
        send_lines(&self.producer, &self.topic, &text, &self.name)?;
        self.producer.poll(Duration::ZERO);
        delivery_error(&self.producer, &self.name)
    }

    /// Waits until the brokers acknowledged every message.
    pub(crate) fn close(self) -> Result<()> {
        self.producer.flush(FLUSH).map_err(|e| {
            Error::input(
                &self.name,
                format!("rows not acknowledged in {FLUSH:?}: {e}"),
            )
        })?;
        delivery_error(&self.producer, &self.name)
    }
}

/// The first delivery that failed, as an error.
fn delivery_error(producer: &BaseProducer<Deliveries>, name: &str) -> Result<()> {
    let failed = producer.context().failed.lock();
    match failed.unwrap_or_else(|e| e.into_inner()).as_deref() {
        Some(e) => Err(Error::input(name, format!("a row was not delivered: {e}"))),
        None => Ok(()),
    }
}

/// Sends each line of `text` (JSON lines) to `topic`, a message each.
fn send_lines(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    text: &[u8],
    name: &str,
) -> Result<()> {
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        send(producer, BaseRecord::to(topic).payload(line), name)?;
    }
    Ok(())
}

/// Publishes a checkpoint's staged rows to a topic exactly once: each staged part goes out
/// in one transaction, with a marker naming the part sent to the control topic
/// (`<topic>.panes-commits`) in the same transaction. A part whose marker a
/// `read_committed` reader finds was published; any other is sent again. Opening the
/// publisher fences (aborts) a transaction that a crashed run left open, under the same
/// transactional id.
pub(crate) struct Publisher {
    producer: BaseProducer<Deliveries>,
    topic: String,
    control: String,
    name: String,
    /// What names the sink wherever its job runs (the checkpoints' root and the topic):
    /// the transactional id and the markers' prefix.
    identity: String,
    /// The markers of the parts published so far.
    published: std::collections::HashSet<String>,
}

impl Publisher {
    /// Opens the publisher of the sink named `identity` (see [`parts_identity`]): the same
    /// on every machine that runs its job, so that a new run fences the old one's
    /// transaction and finds its markers.
    ///
    /// [`parts_identity`]: super::sink::parts_identity
    pub(crate) fn open(bootstrap: &str, topic: &str, identity: &str) -> Result<Publisher> {
        let name = format!("kafka topic {topic} at {bootstrap}");
        let control = format!("{topic}.panes-commits");
        let producer: BaseProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("panes:{identity}"))
            .set("transaction.timeout.ms", "10000")
            .create_with_context(Deliveries::default())
            .map_err(|e| Error::input(&name, format!("cannot create a producer: {e}")))?;
        producer
            .init_transactions(FLUSH)
            .map_err(|e| Error::input(&name, format!("starting transactions: {e}")))?;
        let published = committed_markers(bootstrap, &control)
            .map_err(|e| Error::input(&name, format!("reading {control}: {e}")))?;
        Ok(Publisher {
            producer,
            topic: topic.to_string(),
            control,
            name,
            identity: identity.to_string(),
            published,
        })
    }

    /// Sends the rows of staged part `path` (JSON lines) in one transaction with `marker`,
    /// unless a transaction with that marker committed before.
    fn send_part(&mut self, path: &std::path::Path, name: &str, marker: &str) -> Result<()> {
        if self.published.contains(marker) {
            return Ok(());
        }
        let text = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        let fail = |e: rdkafka::error::KafkaError| transaction_error(&self.name, e);
        self.producer.begin_transaction().map_err(fail)?;
        send_lines(&self.producer, &self.topic, &text, &self.name)?;
        let mark = BaseRecord::<(), [u8]>::to(&self.control).payload(marker.as_bytes());
        send(&self.producer, mark, &self.name)?;
        // Crash tests: killed with the rows and the marker sent, before the commit.
        crate::run::failpoint_named(&format!("kafka-commit:{name}"));
        self.producer.commit_transaction(FLUSH).map_err(fail)?;
        delivery_error(&self.producer, &self.name)?;
        self.published.insert(marker.to_string());
        Ok(())
    }
}

/// A failed transaction call as an error: [`Error::Fenced`] when a newer producer of the
/// same transactional id took over.
fn transaction_error(name: &str, e: rdkafka::error::KafkaError) -> Error {
    use rdkafka::types::RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
    match e.rdkafka_error_code() {
        Some(Fenced | ProducerFenced | InvalidProducerEpoch) => Error::Fenced {
            sink: name.to_string(),
        },
        _ => Error::input(name, format!("{e}")),
    }
}

/// Takes over the transactions of the sink named `identity` (see [`Publisher::open`]):
/// a run elsewhere that still sends its rows can commit no more of them, and its open
/// transaction is aborted.
pub(crate) fn fence(bootstrap: &str, topic: &str, identity: &str) -> Result<()> {
    let name = format!("kafka topic {topic} at {bootstrap}");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("panes:{identity}"))
        .create()
        .map_err(|e| Error::input(&name, format!("cannot create a producer: {e}")))?;
    producer
        .init_transactions(FLUSH)
        .map_err(|e| Error::input(&name, format!("taking over transactions: {e}")))
}

/// Sends a record, waiting while the producer's queue is full.
fn send(
    producer: &BaseProducer<Deliveries>,
    mut record: BaseRecord<'_, (), [u8]>,
    name: &str,
) -> Result<()> {
    while let Err((e, r)) = producer.send(record) {
        if !matches!(
            e.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
        ) {
            return Err(match transaction_error(name, e.clone()) {
                Error::Fenced { sink } => Error::Fenced { sink },
                _ => Error::input(name, format!("sending a row: {e}")),
            });
        }
        producer.poll(Duration::from_millis(10));
        record = r;
    }
    Ok(())
}

impl super::sink::Publish for Publisher {
    /// Sends each staged part still on disk (a part whose file is gone was sent and its
    /// transaction committed), then removes it.
    fn publish(&mut self, dir: &std::path::Path, parts: &[String]) -> Result<()> {
        for name in parts {
            let staged = dir.join(format!("{}{name}", super::sink::STAGED));
            if staged.exists() {
                let marker = format!("{}/{name}", self.identity);
                self.send_part(&staged, name, &marker)?;
                // Crash tests: killed with the transaction committed, the part still here.
                crate::run::failpoint_named(&format!("kafka-committed:{name}"));
                std::fs::remove_file(&staged).map_err(|e| Error::io("removing", &staged, e))?;
            }
        }
        Ok(())
    }
}

/// The markers that committed transactions wrote to `control` (none when it does not
/// exist yet), read with `read_committed`.
fn committed_markers(
    bootstrap: &str,
    control: &str,
) -> std::result::Result<std::collections::HashSet<String>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "panes-commits")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(control), FLUSH)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == control && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut markers = std::collections::HashSet::new();
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in &partitions {
        // The last stable offset: committed transactions end before it.
        let (_, high) = consumer.fetch_watermarks(control, p, FLUSH)?;
        ends.push((p, high));
        list.add_partition_offset(control, p, rdkafka::Offset::Beginning)?;
    }
    if ends.iter().all(|&(_, h)| h == 0) {
        return Ok(markers);
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + FLUSH;
    let mut done: std::collections::HashSet<i32> = ends
        .iter()
        .filter(|&&(_, h)| h == 0)
        .map(|&(p, _)| p)
        .collect();
    while done.len() < ends.len() && std::time::Instant::now() < deadline {
        // Where each partition's reader got to: past the end once the markers are read.
        if let Ok(positions) = consumer.position() {
            for &(p, high) in &ends {
                if let Some(rdkafka::Offset::Offset(o)) =
                    positions.find_partition(control, p).map(|e| e.offset())
                    && o >= high
                {
                    done.insert(p);
                }
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            markers.insert(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    Ok(markers)
}
