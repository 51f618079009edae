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
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let mut record = BaseRecord::<(), [u8]>::to(&self.topic).payload(line);
            // A full queue waits for the brokers to take some.
            while let Err((e, r)) = self.producer.send(record) {
                if !matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) {
                    return Err(Error::input(&self.name, format!("sending a row: {e}")));
                }
                self.producer.poll(Duration::from_millis(10));
                record = r;
            }
        }
        self.producer.poll(Duration::ZERO);
        self.failed()
    }

    /// Waits until the brokers acknowledged every message.
    pub(crate) fn close(self) -> Result<()> {
        self.producer.flush(FLUSH).map_err(|e| {
            Error::input(
                &self.name,
                format!("rows not acknowledged in {FLUSH:?}: {e}"),
            )
        })?;
        self.failed()
    }

    fn failed(&self) -> Result<()> {
        let failed = self.producer.context().failed.lock();
        match failed.unwrap_or_else(|e| e.into_inner()).as_deref() {
            Some(e) => Err(Error::input(
                &self.name,
                format!("a row was not delivered: {e}"),
            )),
            None => Ok(()),
        }
    }
}
