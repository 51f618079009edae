//! Consuming a Kafka topic: panes' source and job against a plain rdkafka consumer that
//! only counts the messages, on the same topic, in one run (`cargo bench --bench kafka`).
//!
//! Needs a broker: `KAFKA_BOOTSTRAP`, else `tests/kafka/broker.sh` starts one. Produces
//! `EVENTS` (default 500k) generated clickstream events as JSON to a 4-partition topic, then
//! reads it to its end: (1) a `BaseConsumer` polling and counting, (2) `panes run` of a
//! tumble(1m) count/sum/max job per article over the topic (`stop = "end"`); the two
//! alternate `RUNS` times (default 3), and the medians are compared.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::json::LineDelimitedWriter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

fn main() {
    let events: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(500_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        let out = Command::new("bash")
            .arg(root.join("tests/kafka/broker.sh"))
            .arg(root.join("target/kafka"))
            .output()
            .expect("tests/kafka/broker.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("an address")
            .trim()
            .to_string()
    });
    let topic = format!("bench-{}", std::process::id());
    let config = |c: &mut ClientConfig| c.set("bootstrap.servers", &bootstrap).clone();
    let admin: AdminClient<DefaultClientContext> = config(&mut ClientConfig::new())
        .create()
        .expect("an admin client");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in runtime
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .expect("creating the topic")
    {
        r.expect("the topic");
    }

    // Generated clickstream events, one JSON object a message.
    let config_gen = panes::datasets::GenConfig {
        events,
        keys: 10_000,
        ..Default::default()
    };
    let producer: BaseProducer = config(&mut ClientConfig::new())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a producer");
    let (mut bytes, mut n, started) = (0u64, 0u64, Instant::now());
    for batch in panes::datasets::generate(panes::datasets::Dataset::Clickstream, &config_gen)
        .expect("generated events")
    {
        let mut text = Vec::new();
        let mut w = LineDelimitedWriter::new(&mut text);
        w.write(&batch).expect("JSON");
        w.finish().expect("JSON");
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let record = BaseRecord::<(), [u8]>::to(&topic)
                .partition((n % PARTITIONS as u64) as i32)
                .payload(line);
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
            bytes += line.len() as u64;
            n += 1;
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flushing");
    println!(
        "produced {n} messages, {:.1} MB, in {:.2} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    // What the topic holds (a broker may refuse some of what was sent).
    let stored: i64 = (0..PARTITIONS)
        .map(|p| {
            let (low, high) = producer
                .client()
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("offsets");
            high - low
        })
        .sum();
    assert_eq!(
        stored as u64, n,
        "the topic holds {stored} of the {n} messages sent"
    );

    // (1) A plain consumer that counts: seconds and bytes.
    let plain = || {
        let consumer: BaseConsumer = config(&mut ClientConfig::new())
            .set("group.id", "bench-count")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            list.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("a partition");
        }
        consumer.assign(&list).expect("assigning");
        let (mut seen, mut seen_bytes, started) = (0u64, 0u64, Instant::now());
        while seen < n {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                use rdkafka::message::Message;
                seen += 1;
                seen_bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
        }
        (started.elapsed().as_secs_f64(), seen_bytes)
    };

    // (2) panes over the topic.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"[source]
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "{topic}"
stop = "end"
schema = {{ ts = "timestamp_ms", article_id = "int64", user_id = "int64", scroll_depth = "float64" }}
[time]
column = "ts"
max_out_of_orderness = "5s"
[window]
kind = "tumble"
size = "1m"
[key]
columns = ["article_id"]
[[aggregate]]
name = "views"
fn = "count"
[[aggregate]]
name = "depth"
fn = "sum"
column = "scroll_depth"
[[aggregate]]
name = "deepest"
fn = "max"
column = "scroll_depth"
[sink]
path = '{}'
"#,
            dir.path().join("out.parquet").display()
        ),
    )
    .expect("writing the job");
    let panes = || {
        let started = Instant::now();
        let out = Command::new(root.join("target/release/panes"))
            .args([
                "run".as_ref(),
                job.as_os_str(),
                "--backend".as_ref(),
                "cpu".as_ref(),
            ])
            .output()
            .expect("target/release/panes (cargo build --release first)");
        let took = started.elapsed().as_secs_f64();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains(&format!("events in        {n}")), "{log}");
        took
    };

    // Alternated, RUNS times each (default 3): the broker and the machine warm up alike
    // for both.
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let (mut a, mut b, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs.max(1) {
        let (took, seen) = plain();
        a.push(took);
        bytes = seen;
        b.push(panes());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let show = |what: &str, all: &[f64]| {
        let s = median(all.to_vec());
        let each: Vec<String> = all.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "{what}  median {s:.2} s ({} s)  {:.0} msg/s  {:.1} MB/s",
            each.join(", "),
            n as f64 / s,
            bytes as f64 / s / 1e6
        );
    };
    show("plain consumer, counting:", &a);
    show("panes run (whole job):   ", &b);
    println!(
        "panes / plain: {:.2}x the time (medians)",
        median(b.clone()) / median(a.clone())
    );
}
