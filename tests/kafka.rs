//! The Kafka source against a real Kafka-protocol broker on loopback (noida-db from PyPI,
//! started by `tests/kafka/broker.sh`, or the one `KAFKA_BOOTSTRAP` names).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

mod support;

/// The broker's address: `KAFKA_BOOTSTRAP`, or one started for this test binary.
fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
            return b;
        }
        start_broker(&[])
    })
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(broker(), topic, partitions)
}

fn create_topic_at(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let results = runtime
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .expect("creating the topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Sends each (partition, payload) to `topic`.
fn produce(topic: &str, messages: &[(i32, String)]) {
    produce_at(broker(), topic, messages)
}

fn produce_at(bootstrap: &str, topic: &str, messages: &[(i32, String)]) {
    let before = end_offsets(bootstrap, topic);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a producer");
    for (p, payload) in messages {
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(*p)
                    .payload(payload),
            )
            .unwrap_or_else(|(e, _)| panic!("sending to {topic}/{p}: {e}"));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushing");
    visible(bootstrap, topic, before + messages.len() as i64);
}

/// The sum of `topic`'s partitions' end offsets.
fn end_offsets(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Waits until `topic`'s end offsets add up to `at_least`: the test broker acknowledges a
/// produce before a busy machine lets it show in the offsets that a job with `stop =
/// "end"` reads when it starts.
fn visible(bootstrap: &str, topic: &str, at_least: i64) {
    let start = std::time::Instant::now();
    while end_offsets(bootstrap, topic) < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{topic}: {at_least} messages not visible after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(job: &Path) -> Output {
    run_with(job, &[], None)
}

/// `panes run job args`, killed at `failpoint` (a checkpoint's named point) when given. A
/// run that takes more than 5 minutes is killed and fails the test (a job waits for a
/// broker that went away: the test should not wait with it).
fn run_with(job: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
    cmd.arg("run").arg(job).args(args);
    cmd.env("RUST_LOG", "warn,panes_engine::connect::kafka=debug");
    if let Some(f) = failpoint {
        cmd.env("PANES_FAILPOINT", f);
    }
    let child = (cmd.stdout(std::process::Stdio::piped()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running panes");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(out) => out.expect("running panes"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            let log = rx
                .recv()
                .ok()
                .and_then(|out| out.ok())
                .map(|out| out.stderr);
            panic!(
                "panes run {} did not end within 5 minutes; its log:\n{}",
                job.display(),
                String::from_utf8_lossy(&log.unwrap_or_default())
            );
        }
    }
}

/// The rows of the job over `lines` (JSON lines) in a file: the rows a topic of the same
/// readings must give.
fn rows_of_file(dir: &Path, lines: &str) -> Vec<String> {
    let file = dir.join("readings.jsonl");
    std::fs::write(&file, lines).expect("writing the file");
    let from_file = job(
        dir,
        "file",
        &format!("kind = \"jsonl\"\npath = '{}'", file.display()),
    );
    let out = run(&from_file);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    rows(&dir.join("file.parquet"))
}

/// Every row of a Parquet file, or of the published parts in a directory, as text, sorted.
fn rows(path: &Path) -> Vec<String> {
    if path.is_dir() {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(path).expect("listing the parts") {
            let p = entry.expect("a part").path();
            // Published parts only: staged ones (`.staged-…`) are still being written.
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden && p.extension().is_some_and(|x| x == "parquet") {
                all.extend(rows(&p));
            }
        }
        all.sort();
        return all;
    }
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
        .expect("a Parquet file");
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.expect("a batch");
        for r in 0..batch.num_rows() {
            let cells: Vec<String> = (batch.columns().iter())
                .map(|c| array_value_to_string(c, r).expect("a value"))
                .collect();
            rows.push(cells.join(","));
        }
    }
    rows.sort();
    rows
}

const JOB: &str = r#"
[source]
SOURCE
schema = { ts = "timestamp_ms", sensor = "int64", value = "float64" }

[time]
column = "ts"
max_out_of_orderness = "5s"

[window]
kind = "tumble"
size = "1m"

[key]
columns = ["sensor"]

[[aggregate]]
name = "n"
fn = "count"

[[aggregate]]
name = "total"
fn = "sum"
column = "value"

[[aggregate]]
name = "top"
fn = "max"
column = "value"

[sink]
kind = "parquet"
path = 'OUT'

[dead_letter]
kind = "jsonl"
path = 'BAD'
"#;

fn job(dir: &Path, name: &str, source: &str) -> PathBuf {
    let text = JOB
        .replace("SOURCE", source)
        .replace(
            "OUT",
            &dir.join(format!("{name}.parquet")).display().to_string(),
        )
        .replace(
            "BAD",
            &dir.join(format!("{name}-bad.jsonl")).display().to_string(),
        );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("writing a job");
    path
}

/// 4 partitions of JSON sensor readings over 5 minutes, three malformed messages among
/// them (not JSON, a bad value, no event time): `stop = "end"` reads the topic to the end
/// it had at start, each partition with its own watermark, and gives the rows the same job
/// gives over the same readings as a JSON-lines file; the malformed messages are dead
/// letters naming partition and offset.
#[test]
fn a_topic_gives_the_rows_of_the_same_events_in_a_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("readings-{}", std::process::id());
    create_topic(&topic, 4);
    let (mut messages, mut lines) = (Vec::new(), String::new());
    for i in 0..4_000i64 {
        let ts = 1_700_000_000_000 + i * 75;
        let line = format!(
            "{{\"ts\": {ts}, \"sensor\": {}, \"value\": {}.25}}",
            i % 7,
            i % 100
        );
        lines.push_str(&line);
        lines.push('\n');
        messages.push(((i % 4) as i32, line));
        if i == 1_000 {
            messages.push((1, "not json".into()));
        }
        if i == 2_000 {
            messages.push((2, "{\"ts\": 5, \"sensor\": \"seven\", \"value\": 1}".into()));
        }
        if i == 3_000 {
            messages.push((3, "{\"sensor\": 3, \"value\": 1.5}".into()));
        }
    }
    produce(&topic, &messages);
    let want = rows_of_file(dir.path(), &lines);
    let from_topic = job(
        dir.path(),
        "topic",
        &format!(
            "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{topic}\"\nstop = \"end\"",
            broker()
        ),
    );
    let out = run(&from_topic);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("events in        4000"), "{log}");
    assert!(log.contains("malformed input  3"), "{log}");
    assert!(log.contains("late events      0"), "{log}");
    assert!(want.len() > 30, "{want:?}");
    assert_eq!(rows(&dir.path().join("topic.parquet")), want);
    let bad = std::fs::read_to_string(dir.path().join("topic-bad.jsonl")).expect("dead letters");
    let bad: Vec<serde_json::Value> = bad
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(bad.len(), 3, "{bad:?}");
    let origins: Vec<&str> = bad.iter().filter_map(|b| b["origin"].as_str()).collect();
    assert!(origins.contains(&format!("{topic}/1").as_str()), "{bad:?}");
    assert!(origins.contains(&format!("{topic}/2").as_str()), "{bad:?}");
    let raws: Vec<&str> = bad.iter().filter_map(|b| b["raw"].as_str()).collect();
    assert!(raws.contains(&"not json"), "{bad:?}");
    let reasons: Vec<&str> = bad.iter().filter_map(|b| b["reason"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("no event time")),
        "{bad:?}"
    );
    // Partition 1 got readings 1, 5, ..., 997 (offsets 0 to 249), then the bad one.
    assert!(
        bad.iter()
            .any(|b| b["origin"] == format!("{topic}/1") && b["position"] == 250),
        "{bad:?}"
    );
}

/// `topics = [...]`: readings spread over two topics give the rows of the same readings in
/// one file, and each topic's partitions are source partitions of their own.
#[test]
fn two_topics_give_the_rows_of_the_same_events_in_a_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topics = [
        format!("left-{}", std::process::id()),
        format!("right-{}", std::process::id()),
    ];
    let mut lines = String::new();
    let mut messages = [Vec::new(), Vec::new()];
    for i in 0..3_000i64 {
        let line = format!(
            "{{\"ts\": {}, \"sensor\": {}, \"value\": {}.5}}",
            1_700_000_000_000 + i * 60,
            i % 6,
            i % 30
        );
        lines.push_str(&line);
        lines.push('\n');
        messages[(i % 3 == 0) as usize].push(((i % 2) as i32, line));
    }
    for (topic, messages) in topics.iter().zip(&messages) {
        create_topic(topic, 2);
        produce(topic, messages);
    }
    let want = rows_of_file(dir.path(), &lines);
    let from_topics = job(
        dir.path(),
        "topics",
        &format!(
            "kind = \"kafka\"\nbootstrap = \"{}\"\ntopics = {topics:?}\nstop = \"end\"",
            broker()
        ),
    );
    let out = run(&from_topics);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("events in        3000"), "{log}");
    // Each of the four partitions starts on its own (the source's debug lines).
    for t in &topics {
        for p in 0..2 {
            assert!(
                log.contains(&format!("kafka {t}/{p}: offsets 0..")),
                "{log}"
            );
        }
    }
    assert!(want.len() > 20, "{want:?}");
    assert_eq!(rows(&dir.path().join("topics.parquet")), want);
}

/// The same readings as CSV messages (`format = "csv"`, fields in the order of `schema`,
/// which is not the alphabetical one) give the rows of the JSON-lines file; a short record
/// and a bad value are dead letters whose reasons say what is wrong.
#[test]
fn csv_messages_give_the_rows_of_the_same_events_in_a_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A broker of its own: with the shared one, the other topic tests running beside it
    // were seen to find their topics empty (the test broker's, not the job's, doing).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = own_broker(port, false);
    let topic = "csv-readings";
    create_topic_at(&addr, topic, 2);
    let (mut messages, mut lines) = (Vec::new(), String::new());
    for i in 0..2_000i64 {
        let (ts, sensor, value) = (1_700_000_000_000 + i * 75, i % 5, i % 100);
        lines.push_str(&format!(
            "{{\"ts\": {ts}, \"sensor\": {sensor}, \"value\": {value}.5}}\n"
        ));
        messages.push(((i % 2) as i32, format!("{ts},{sensor},{value}.5")));
        if i == 500 {
            messages.push((0, format!("{ts},{sensor}")));
            messages.push((1, format!("{ts},seven,{value}")));
        }
    }
    produce_at(&addr, topic, &messages);
    let want = rows_of_file(dir.path(), &lines);
    let from_topic = job(
        dir.path(),
        "topic",
        &format!(
            "kind = \"kafka\"\nbootstrap = \"{addr}\"\ntopic = \"{topic}\"\nformat = \"csv\"\n\
             stop = \"end\""
        ),
    );
    // CSV has no timestamp type: epoch milliseconds are declared int64 (event time
    // takes them as milliseconds).
    let text = std::fs::read_to_string(&from_topic).expect("the job");
    let text = text.replace("ts = \"timestamp_ms\"", "ts = \"int64\"");
    std::fs::write(&from_topic, text).expect("the job");
    let out = run(&from_topic);
    stop_own_broker(port);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("events in        2000"), "{log}");
    assert!(log.contains("malformed input  2"), "{log}");
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(rows(&dir.path().join("topic.parquet")), want);
    let bad = std::fs::read_to_string(dir.path().join("topic-bad.jsonl")).expect("dead letters");
    assert!(bad.contains("2 fields where the schema has 3"), "{bad}");
    assert!(
        bad.contains("column \\\"sensor\\\": \\\"seven\\\" is not a valid Int64"),
        "{bad}"
    );
}

/// A job over two topics with checkpoints, killed in the middle of its third checkpoint,
/// resumes from the second at the offsets of every topic's partitions and publishes
/// exactly the rows of an uninterrupted run over the same readings.
#[test]
fn a_topic_job_killed_mid_checkpoint_resumes_at_its_offsets_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("crash-{}", std::process::id());
    let other = format!("crash-other-{}", std::process::id());
    create_topic(&topic, 3);
    create_topic(&other, 2);
    let (mut messages, mut lines, mut others) = (Vec::new(), String::new(), Vec::new());
    for i in 0..3_000i64 {
        let line = format!(
            "{{\"ts\": {}, \"sensor\": {}, \"value\": {}.5}}",
            1_700_000_000_000 + i * 100,
            i % 5,
            i % 40
        );
        lines.push_str(&line);
        lines.push('\n');
        match i % 4 {
            3 => others.push(((i % 2) as i32, line)),
            _ => messages.push(((i % 3) as i32, line)),
        }
    }
    produce(&topic, &messages);
    produce(&other, &others);
    let file = dir.path().join("readings.jsonl");
    std::fs::write(&file, lines).expect("writing the file");
    let out = run(&job(
        dir.path(),
        "file",
        &format!("kind = \"jsonl\"\npath = '{}'", file.display()),
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let source = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\ntopics = [\"{topic}\", \"{other}\"]\n\
         stop = \"end\"",
        broker()
    );
    let afresh = job(dir.path(), "afresh", &source);
    let job = job(dir.path(), "topic", &source);
    let text = std::fs::read_to_string(&job).expect("the job");
    let checkpoints = dir.path().join("checkpoints");
    let text = text.replace("topic.parquet", "topic-parts")
        + &format!(
            "\n[checkpoint]\ndir = '{}'\nevery_events = 400\n",
            checkpoints.display()
        );
    std::fs::write(&job, text).expect("writing the job");
    use std::os::unix::process::ExitStatusExt;
    let killed = run_with(&job, &["--batch-rows", "150"], Some("state:3"));
    assert_eq!(
        killed.status.signal(),
        Some(9),
        "killed at the failpoint: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let resumed = run_with(&job, &["--batch-rows", "150"], None);
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("restored from    checkpoint 2"), "{log}");
    assert_eq!(
        rows(&dir.path().join("topic-parts")),
        rows(&dir.path().join("file.parquet"))
    );

    // The checkpoints committed their offsets to the group: a job without checkpoints in
    // the same group starts where it left off, and reads only what came since.
    let more: Vec<(i32, String)> = (0..30i64)
        .map(|i| {
            let ts = 1_700_000_400_000 + i * 100;
            (
                (i % 3) as i32,
                format!("{{\"ts\": {ts}, \"sensor\": 1, \"value\": 2.0}}"),
            )
        })
        .collect();
    produce(&topic, &more);
    produce(&other, &more[..2]);
    let out = run(&afresh);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("events in        32\n"), "{log}");
}

/// A job that runs until stopped: one of three partitions never gets a message, yet after
/// `idle_timeout` of processing time it stops holding the watermark back, and the window the
/// others completed is published by a checkpoint while the job runs; SIGINT then stops it
/// with a last checkpoint and exit status 0.
#[test]
fn a_quiet_partition_goes_idle_and_sigint_stops_the_job_cleanly() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("quiet-{}", std::process::id());
    create_topic(&topic, 3);
    // Two minutes of readings on partitions 0 and 1 only.
    let messages: Vec<(i32, String)> = (0..1_200i64)
        .map(|i| {
            let ts = 1_700_000_040_000 + i * 100;
            let line = format!("{{\"ts\": {ts}, \"sensor\": {}, \"value\": 1.0}}", i % 3);
            ((i % 2) as i32, line)
        })
        .collect();
    produce(&topic, &messages);
    let source = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{topic}\"",
        broker()
    );
    let job = job(dir.path(), "live", &source);
    let text = std::fs::read_to_string(&job).expect("the job");
    let parts = dir.path().join("live-parts");
    let text = text.replace("live.parquet", "live-parts").replace(
        "max_out_of_orderness = \"5s\"",
        "max_out_of_orderness = \"5s\"\nidle_timeout = \"2s\"",
    ) + &format!(
        "\n[checkpoint]\ndir = '{}'\ninterval = \"500ms\"\n",
        dir.path().join("checkpoints").display()
    );
    std::fs::write(&job, text).expect("writing the job");
    let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_panes"))
        .arg("run")
        .arg(&job)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .expect("starting panes");
    // The first minute ends at 1_700_000_100_000 - the start of the readings' second
    // minute: its window fires once partition 2 is idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let published = loop {
        let rows = if parts.is_dir() {
            rows(&parts)
        } else {
            Vec::new()
        };
        if !rows.is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = child.wait().expect("panes ends");
    let log = std::fs::read_to_string(dir.path().join("log")).expect("the log");
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("stopped at"), "{log}");
    // 600 readings in that minute, 200 per sensor.
    assert_eq!(published.len(), 3, "{published:?}\n{log}");
    assert!(
        published.iter().all(|r| r.contains(",200,200.0,")),
        "{published:?}"
    );
}

/// With `[time] column = "_kafka_timestamp"` the messages' own timestamps are the event
/// time: readings without a time field fall into the windows their messages were stamped
/// for.
#[test]
fn message_timestamps_can_be_the_event_time() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("stamped-{}", std::process::id());
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .expect("a producer");
    // 3 minutes, 10 readings a second: 600 a minute, of sensors 0 and 1 alike, an hour
    // ago (a broker deletes messages stamped longer ago than the topic's retention, 7 days
    // by default: the test broker did, while the job read them).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64;
    let start = (now - 3_600_000) / 60_000 * 60_000;
    for i in 0..1_800i64 {
        let payload = format!("{{\"sensor\": {}, \"value\": 1.0}}", i % 2);
        let record = BaseRecord::<(), _>::to(&topic)
            .partition((i % 2) as i32)
            .payload(&payload)
            .timestamp(start + i * 100);
        producer
            .send(record)
            .unwrap_or_else(|(e, _)| panic!("sending: {e}"));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushing");
    visible(broker(), &topic, 1_800);
    let stamped = |name: &str, start: &str| {
        let source = format!(
            "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{topic}\"\nstop = \"end\"{start}",
            broker()
        );
        let job = job(dir.path(), name, &source);
        let text = std::fs::read_to_string(&job).expect("the job");
        let text = text
            .replace("ts = \"timestamp_ms\", ", "")
            .replace("column = \"ts\"", "column = \"_kafka_timestamp\"");
        std::fs::write(&job, text).expect("writing the job");
        let out = run(&job);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        rows(&dir.path().join(format!("{name}.parquet")))
    };
    let all = stamped("stamped", "");
    // Sensors 0 and 1 in 3 minutes (starting at a minute's start): 300 readings each.
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.iter().all(|r| r.contains(",300,300.0,1.0")), "{all:?}");
    // `start` at a time: from the first message stamped at or after it, in each partition
    // (the third minute only).
    let third = std::time::UNIX_EPOCH + Duration::from_millis((start + 120_000) as u64);
    let at = format!("\nstart = \"{}\"", humantime::format_rfc3339_millis(third));
    let last = stamped("late-start", &at);
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(
        last.iter().all(|r| r.contains(",300,300.0,1.0")),
        "{last:?}"
    );
    let window = |r: &String| r.split(',').nth(1).map(str::to_owned);
    let latest = all.iter().filter_map(window).max();
    let want: Vec<String> = all
        .iter()
        .filter(|r| window(r) == latest)
        .cloned()
        .collect();
    assert_eq!(last, want, "the third minute's rows");
}

/// Every message of a topic, from its first offset to its end, as text, sorted.
fn messages(topic: &str, partitions: i32) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", "tests-read")
        .create()
        .expect("a consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("offsets");
        ends.push(high);
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("a partition");
    }
    consumer.assign(&list).expect("assigning");
    // Offsets also number the transactions' markers and aborted rows: read until every
    // partition's position passed its end, not until a count.
    let at_end = |c: &BaseConsumer| {
        let positions = c.position().expect("positions");
        (0..partitions).all(|p| {
            let high = ends[p as usize];
            high == 0
                || matches!(
                    positions.find_partition(topic, p).map(|e| e.offset()),
                    Some(rdkafka::Offset::Offset(o)) if o >= high
                )
        })
    };
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !at_end(&consumer) {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} was not read to its end"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out.sort();
    out
}

/// 2,000 sensor readings 150 ms apart, 4 sensors, as a JSON-lines file in `dir`.
fn readings(dir: &Path) -> PathBuf {
    let lines: String = (0..2_000i64)
        .map(|i| {
            let ts = 1_700_000_000_000 + i * 150;
            format!(
                "{{\"ts\": {ts}, \"sensor\": {}, \"value\": {}.5}}\n",
                i % 4,
                i % 9
            )
        })
        .collect();
    let file = dir.join("readings.jsonl");
    std::fs::write(&file, lines).expect("writing the file");
    file
}

/// Job text `text` with its `[sink]` section replaced by `to`.
fn with_sink(text: &str, to: &str) -> String {
    let start = text.find("[sink]").expect("a sink");
    let end = text.find("[dead_letter]").expect("a dead letter sink");
    format!("{}{to}\n{}", &text[..start], &text[end..])
}

/// Window rows to a Kafka topic, a JSON object a message: the same objects as a JSON-lines
/// file sink writes, at least once without checkpoints and exactly once with them.
#[test]
fn window_rows_go_to_a_topic() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("rows-{}", std::process::id());
    create_topic(&topic, 2);
    let file = readings(dir.path());
    let source = format!("kind = \"jsonl\"\npath = '{}'", file.display());
    let sink = |name: &str, to: &str| {
        let job = job(dir.path(), name, &source);
        let text = std::fs::read_to_string(&job).expect("the job");
        let out = dir
            .path()
            .join(format!("{name}.parquet"))
            .display()
            .to_string();
        let text = text.replace(&format!("[sink]\nkind = \"parquet\"\npath = '{out}'"), to);
        assert!(text.contains(to), "{text}");
        std::fs::write(&job, text).expect("writing the job");
        job
    };
    let to_file = sink(
        "file",
        &format!(
            "[sink]\nkind = \"jsonl\"\npath = '{}'",
            dir.path().join("rows.jsonl").display()
        ),
    );
    let to_topic = sink(
        "topic",
        &format!(
            "[sink]\nkind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{topic}\"",
            broker()
        ),
    );
    for job in [&to_file, &to_topic] {
        let out = run(job);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut want: Vec<String> = std::fs::read_to_string(dir.path().join("rows.jsonl"))
        .expect("rows.jsonl")
        .lines()
        .map(String::from)
        .collect();
    want.sort();
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(messages(&topic, 2), want);

    // With checkpoints: killed with a checkpoint's rows sent inside an open transaction
    // (aborted on restart, sent again), then with a later one committed but not yet marked
    // done on disk (found by its marker, not sent again), the job resumes twice and a
    // read_committed reader sees every row exactly once.
    let exactly = format!("{topic}-exactly");
    create_topic(&exactly, 2);
    let bad = dir.path().join("topic-bad.jsonl").display().to_string();
    let text = std::fs::read_to_string(&to_topic)
        .expect("the job")
        .replace(
            &format!("topic = \"{topic}\""),
            &format!("topic = \"{exactly}\""),
        )
        .replace(&bad, &dir.path().join("bad-parts").display().to_string())
        + &format!(
            "\n[checkpoint]\ndir = '{}'\nevery_events = 400\n",
            dir.path().join("chk").display()
        );
    std::fs::write(&to_topic, text).expect("writing the job");
    use std::os::unix::process::ExitStatusExt;
    for failpoint in [
        "kafka-commit:part-000003.jsonl",
        "kafka-committed:part-000004.jsonl",
    ] {
        let out = run_with(&to_topic, &["--batch-rows", "150"], Some(failpoint));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "killed at {failpoint}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_with(&to_topic, &["--batch-rows", "150"], None);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("restored from    checkpoint 4"), "{log}");
    assert_eq!(messages(&exactly, 2), want);
}

/// Starts (or, with `keep`, restarts with its data) a broker of our own on `port`.
fn own_broker(port: u16, keep: bool) -> String {
    let keep = if keep { "1" } else { "0" };
    start_broker(&[("PORT", &port.to_string()), ("KEEP_DATA", keep)])
}

/// Runs `tests/kafka/broker.sh` with `env` and returns the broker's address. Its
/// lifetime (15 minutes) is well beyond what these tests take on a slow machine, and no
/// broker idles on for long afterwards.
fn start_broker(env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tests/kafka/broker.sh"))
        .arg(root.join("target/kafka"))
        .env("LIFETIME", "900")
        .envs(env.iter().copied())
        .output()
        .expect("running tests/kafka/broker.sh");
    assert!(
        out.status.success(),
        "the broker did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("an address")
        .trim()
        .to_string()
}

fn stop_own_broker(port: u16) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pid = std::fs::read_to_string(root.join(format!("target/kafka/broker-{port}.pid")))
        .expect("the broker's pid");
    let stopped = Command::new("kill").args(["-TERM", pid.trim()]).status();
    assert!(stopped.is_ok_and(|s| s.success()), "stopping the broker");
}

/// The sum of the offsets the newest checkpoint in `dir` holds (0 before the first).
fn checkpointed_offsets(dir: &Path) -> i64 {
    let out = Command::new(env!("CARGO_BIN_EXE_panes"))
        .arg("checkpoints")
        .arg(dir)
        .output()
        .expect("panes checkpoints");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .filter(|l| l.contains("offset"))
        .last()
        .unwrap_or("");
    last.split("offset ")
        .skip(1)
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

/// A broker that goes away while a job runs and comes back on its port with its data:
/// the job waits, logs it, and reads every message, before and after.
#[test]
fn a_broker_that_goes_away_and_comes_back_loses_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = own_broker(port, false);
    let topic = "comeback";
    create_topic_at(&addr, topic, 2);
    let readings = |from: i64| -> Vec<(i32, String)> {
        (from..from + 1_000)
            .map(|i| {
                let ts = 1_700_000_000_000 + i * 100;
                (
                    (i % 2) as i32,
                    format!("{{\"ts\": {ts}, \"sensor\": 1, \"value\": 1.0}}"),
                )
            })
            .collect()
    };
    produce_at(&addr, topic, &readings(0));
    let job = job(
        dir.path(),
        "comeback",
        &format!("kind = \"kafka\"\nbootstrap = \"{addr}\"\ntopic = \"{topic}\""),
    );
    let checkpoints = dir.path().join("checkpoints");
    let text = std::fs::read_to_string(&job)
        .expect("the job")
        .replace("comeback.parquet", "comeback-parts")
        .replace("comeback-bad.jsonl", "comeback-bad")
        + &format!(
            "\n[checkpoint]\ndir = '{}'\ninterval = \"300ms\"\n",
            checkpoints.display()
        );
    std::fs::write(&job, text).expect("writing the job");
    let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_panes"))
        .arg("run")
        .arg(&job)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .expect("starting panes");
    let wait_for = |offsets: i64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while checkpointed_offsets(&checkpoints) < offsets {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint at {offsets}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_for(1_000);
    stop_own_broker(port);
    std::thread::sleep(Duration::from_secs(2));
    let again = own_broker(port, true);
    assert_eq!(again, addr);
    produce_at(&addr, topic, &readings(1_000));
    wait_for(2_000);
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = child.wait().expect("panes ends");
    stop_own_broker(port);
    let log = std::fs::read_to_string(dir.path().join("log")).expect("the log");
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("events in        2000"), "{log}");
}

/// Bad addresses and topics are errors that name them.
#[test]
fn an_unknown_topic_is_named() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let job = job(
        dir.path(),
        "nothing",
        &format!(
            "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"no-such-topic-{}\"\nstop = \"end\"",
            broker(),
            std::process::id()
        ),
    );
    let out = run(&job);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("no-such-topic") && log.contains("no such topic"),
        "{log}"
    );
}

/// Topic to topic, exactly once under at least 20 SIGKILLs at random moments (between
/// batches, while a checkpoint is written, inside a transaction's commit: wherever they
/// land), each followed by a restart from the newest checkpoint, until the job is done:
/// a hop job with allowed lateness over 4 partitions, read back with read_committed,
/// repeats no row, and the last revision of every (sensor, window) holds what the same
/// job over the same events from a file holds. (Which re-firings happen in between
/// depends on how the partitions' events interleave, as in any engine: no late event is
/// dropped here, so the last revisions do not.)
#[test]
fn twenty_random_kills_from_topic_to_topic_lose_and_repeat_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (input, output) = (
        format!("kills-in-{}", std::process::id()),
        format!("kills-out-{}", std::process::id()),
    );
    create_topic(&input, 4);
    create_topic(&output, 2);
    // Events 40 ms apart, a few of them 7 s late (within the lateness: revisions).
    let (mut sent, mut lines) = (Vec::new(), String::new());
    for i in 0..40_000i64 {
        let late = if i % 97 == 0 { 7_000 } else { 0 };
        let line = format!(
            "{{\"ts\": {}, \"sensor\": {}, \"value\": {}.25}}",
            1_700_000_000_000 + i * 40 - late,
            i % 7,
            i % 13
        );
        lines.push_str(&line);
        lines.push('\n');
        sent.push(((i % 4) as i32, line));
    }
    produce(&input, &sent);
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines).expect("writing the file");
    let hop = |text: String| {
        text.replace(
            "[window]\nkind = \"tumble\"\nsize = \"1m\"",
            "[window]\nkind = \"hop\"\nsize = \"1m\"\nslide = \"20s\"",
        )
        .replace(
            "max_out_of_orderness = \"5s\"",
            "max_out_of_orderness = \"2s\"\nallowed_lateness = \"10s\"",
        )
    };
    let sink = |job: &Path, to: String| {
        let text = with_sink(&hop(std::fs::read_to_string(job).expect("the job")), &to);
        assert!(
            text.contains("allowed_lateness") && text.contains("slide"),
            "{text}"
        );
        std::fs::write(job, text).expect("writing the job");
    };
    let from_file = job(
        dir.path(),
        "file",
        &format!("kind = \"jsonl\"\npath = '{}'", file.display()),
    );
    let rows_file = dir.path().join("rows.jsonl");
    sink(
        &from_file,
        format!("[sink]\nkind = \"jsonl\"\npath = '{}'", rows_file.display()),
    );
    let out = run(&from_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want: Vec<String> = (std::fs::read_to_string(&rows_file).expect("rows"))
        .lines()
        .map(String::from)
        .collect();
    want.sort();
    assert!(
        want.iter().any(|r| r.contains("\"revision\":1")),
        "revisions: {want:?}"
    );

    let source = format!(
        "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{input}\"\nstop = \"end\"",
        broker()
    );
    let topic_job = job(dir.path(), "topic", &source);
    sink(
        &topic_job,
        format!(
            "[sink]\nkind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{output}\"\n\
             [checkpoint]\ndir = '{}'\nevery_events = 500",
            broker(),
            dir.path().join("chk").display()
        ),
    );
    let args = ["--batch-rows", "250", "--threads", "2"];
    let mut rng = 0x5eed_u64;
    let (mut kills, mut attempts) = (0, 0);
    loop {
        attempts += 1;
        assert!(attempts < 200, "the job did not finish: {kills} kills");
        let mut child = Command::new(env!("CARGO_BIN_EXE_panes"))
            .arg("run")
            .arg(&topic_job)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("panes runs");
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(150 + (rng >> 33) % 500);
        if kills < 20 {
            std::thread::sleep(delay);
            if child.try_wait().expect("waiting").is_none() {
                child.kill().expect("SIGKILL");
                let status = child.wait().expect("waiting");
                assert_eq!(status.signal(), Some(9));
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().expect("waiting");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "attempt {attempts}: {log}");
        if kills >= 20 {
            break;
        }
    }
    let got = messages(&output, 2);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "a row twice after {kills} kills");
    assert_eq!(
        last_revisions(&got),
        last_revisions(&want),
        "after {kills} kills"
    );
}

/// The row of the highest revision of each (sensor, window) among JSON rows `rows`,
/// without its revision.
fn last_revisions(rows: &[String]) -> Vec<String> {
    let mut last: std::collections::BTreeMap<String, (i64, serde_json::Value)> =
        std::collections::BTreeMap::new();
    for row in rows {
        let mut v: serde_json::Value = serde_json::from_str(row).expect("a JSON row");
        let revision = v["revision"].as_i64().expect("a revision");
        let at = format!("{} {} {}", v["sensor"], v["window_start"], v["window_end"]);
        if let Some(o) = v.as_object_mut() {
            o.remove("revision");
        }
        let e = last.entry(at).or_insert((revision, v.clone()));
        if revision >= e.0 {
            *e = (revision, v);
        }
    }
    last.into_values().map(|(_, v)| v.to_string()).collect()
}

/// A hop job with lateness over a keyed 4-partition topic (a sensor always in the same
/// partition), scaled out (`scale_out = true`, `stop = "end"`, checkpoints in the
/// S3-protocol object store, rows to a topic): one process alone, and three processes in
/// a group of their own, each under a member name (`--member`). One of them is killed
/// (SIGKILL) mid-run and restarted under its name, and takes its partitions back at once;
/// then a fourth process joins, and the partitions are dealt again among the four. The
/// committed output of the group is the lone process's, each row once: a partition that
/// moved was resumed from the checkpoints its last owner wrote, and the killed process's
/// open transactions were fenced. (Restarted under its name because the test broker never
/// expires a dead member's session: without static membership the group would wait for
/// it forever.)
#[test]
fn processes_of_a_group_share_the_partitions_and_together_give_one_process_rows() {
    support::s3_endpoint();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pid = std::process::id();
    let input = format!("scale-in-{pid}");
    create_topic(&input, 4);
    let mut sent = Vec::new();
    for i in 0..48_000i64 {
        let late = if i % 89 == 0 { 6_000 } else { 0 };
        let sensor = i % 12;
        let line = format!(
            "{{\"ts\": {}, \"sensor\": {sensor}, \"value\": {}.5}}",
            1_700_000_000_000 + i * 25 - late,
            i % 17
        );
        sent.push(((sensor % 4) as i32, line));
    }
    produce(&input, &sent);
    // One job file per run: its own group, checkpoints and output topic.
    let job_of = |name: &str| {
        let output = format!("scale-out-{name}-{pid}");
        create_topic(&output, 2);
        let text = JOB
            .replace(
                "SOURCE",
                &format!(
                    "kind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{input}\"\n\
                     group = \"scale-{name}-{pid}\"\nscale_out = true\nstop = \"end\"",
                    broker()
                ),
            )
            .replace(
                "[window]\nkind = \"tumble\"\nsize = \"1m\"",
                "[window]\nkind = \"hop\"\nsize = \"1m\"\nslide = \"20s\"",
            )
            .replace(
                "max_out_of_orderness = \"5s\"",
                "max_out_of_orderness = \"2s\"\nallowed_lateness = \"10s\"",
            );
        let start = text.find("[sink]").expect("a sink");
        let text = format!(
            "{}[sink]\nkind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{output}\"\n\n\
             [checkpoint]\ndir = 's3://panes/tests/scale-{name}-{pid}'\nevery_events = 1000\n",
            &text[..start],
            broker()
        );
        assert!(text.contains("slide") && text.contains("allowed_lateness"));
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("writing a job");
        (path, output)
    };
    // A process's log goes to a file of its own.
    let spawn = |job: &Path, name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
        cmd.arg("run")
            .arg(job)
            .args(["--batch-rows", "200", "--member", name])
            .env("RUST_LOG", "info");
        support::with_s3(&mut cmd);
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("panes runs");
        (child, log)
    };
    let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    // Waits up to 2 minutes for a process's log to say `text`.
    let wait_for_log = |log: &Path, text: &str, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !read(log).contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {}",
                read(log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let wait = |(mut child, log): (std::process::Child, PathBuf)| {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while child.try_wait().expect("waiting").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (child.wait().expect("waiting"), read(&log))
    };

    let (alone, alone_out) = job_of("alone");
    let (status, log) = wait(spawn(&alone, "alone"));
    assert!(status.success(), "{log}");
    let want = messages(&alone_out, 2);
    assert!(
        want.iter().any(|r| r.contains("\"revision\":1")),
        "revisions: {want:?}"
    );

    let (group, group_out) = job_of("group");
    let first = spawn(&group, "first");
    let doomed = spawn(&group, "doomed");
    let third = spawn(&group, "third");
    // Killed once it checkpointed a partition it was given.
    wait_for_log(
        &doomed.1,
        " INFO panes_engine::run: checkpoint ",
        "no checkpoint in the second process",
    );
    let mut doomed = doomed;
    doomed.0.kill().expect("SIGKILL");
    let (status, log) = wait(doomed);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{log}"
    );
    let doomed = spawn(&group, "doomed");
    // Restarted under the same member name, it is given its partitions back and resumes
    // them where it checkpointed.
    wait_for_log(
        &doomed.1,
        "resuming from checkpoint",
        "the restarted process was not given partitions",
    );
    let late_comer = spawn(&group, "late");
    let ended: Vec<_> = [first, third, doomed, late_comer]
        .into_iter()
        .map(wait)
        .collect();
    for (status, log) in &ended {
        assert!(status.success(), "{log}");
        assert!(log.contains(": assigned; its job starts"), "{log}");
    }
    let got = messages(&group_out, 2);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "a row twice");
    assert_eq!(last_revisions(&got), last_revisions(&want));
}

/// A checkpoint in the object store keeps its Kafka sink's staged rows: a job killed with
/// a checkpoint's rows staged and their transaction open, resumed on "another machine"
/// (another temporary directory, where the first one's staged rows are out of reach),
/// sends them from the checkpoint, and a read_committed reader sees every row once.
#[test]
fn staged_rows_travel_with_checkpoints_in_an_object_store() {
    use std::os::unix::process::ExitStatusExt;
    support::s3_endpoint();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = format!("travel-{}", std::process::id());
    create_topic(&topic, 2);
    let file = readings(dir.path());
    let job_with = |name: &str, sink: &str| {
        let path = job(
            dir.path(),
            name,
            &format!("kind = \"jsonl\"\npath = '{}'", file.display()),
        );
        let text = std::fs::read_to_string(&path).expect("the job");
        std::fs::write(&path, with_sink(&text, sink)).expect("writing the job");
        path
    };
    let rows = dir.path().join("rows.jsonl");
    let to_file = job_with(
        "file",
        &format!("[sink]\nkind = \"jsonl\"\npath = '{}'", rows.display()),
    );
    let out = run(&to_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want: Vec<String> = (std::fs::read_to_string(&rows).expect("rows").lines())
        .map(String::from)
        .collect();
    want.sort();
    let to_topic = job_with(
        "topic",
        &format!(
            "[sink]\nkind = \"kafka\"\nbootstrap = \"{}\"\ntopic = \"{topic}\"\n\n\
             [checkpoint]\ndir = 's3://panes/tests/travel-{}'\nevery_events = 400\n",
            broker(),
            std::process::id()
        ),
    );
    // Each "machine" has a temporary directory of its own.
    let run_on = |machine: &str, failpoint: Option<&str>| {
        let tmp = dir.path().join(machine);
        std::fs::create_dir_all(&tmp).expect("a temporary directory");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panes"));
        cmd.arg("run")
            .arg(&to_topic)
            .args(["--batch-rows", "150"])
            .env("RUST_LOG", "info")
            .env("TMPDIR", &tmp);
        if let Some(f) = failpoint {
            cmd.env("PANES_FAILPOINT", f);
        }
        support::with_s3(&mut cmd).output().expect("running panes")
    };
    let out = run_on("a", Some("kafka-commit:part-000003.jsonl"));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_on("b", None);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("resuming from checkpoint 3"), "{log}");
    assert_eq!(messages(&topic, 2), want);
}
