#!/usr/bin/env python3
"""End-to-end latency of a Kafka job: from producing an event to reading, with
read_committed, the window row that holds it.

Produces RATE events a second (default 20 000) of wall-clock event time to a 2-partition
topic for SECONDS (default 30), while `panes run` (run until stopped) aggregates them in
tumble(1s) windows per sensor, with `[checkpoint] interval = "1s"`, to an output topic
through transactions. A window [start, end) is complete once its last event is produced,
at about `end` on the wall clock; its latency is the time its first row is read minus
`end`. That includes the 200 ms out-of-orderness bound, waiting for the next checkpoint
(up to 1 s) and its commit. Prints the median, p90, p99 and max over the windows after the
first 5 s.

Needs `pip install confluent-kafka`, a release build (`target/release/panes`), and a
broker: KAFKA_BOOTSTRAP, else tests/kafka/broker.sh starts one.
    python3 benches/kafka_latency.py
"""

import json, os, random, signal, statistics, subprocess, sys, tempfile, threading, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = int(os.environ.get("RATE", "20000"))
SECONDS = int(os.environ.get("SECONDS", "30"))


def broker():
    if os.environ.get("KAFKA_BOOTSTRAP"):
        return os.environ["KAFKA_BOOTSTRAP"]
    out = subprocess.run(["bash", f"{ROOT}/tests/kafka/broker.sh", f"{ROOT}/target/kafka"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main():
    bootstrap = broker()
    run = f"latency-{os.getpid()}"
    topics = {f"{run}-in": 2, f"{run}-out": 1}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, p, 1) for t, p in topics.items()]).values():
        f.result()
    work = tempfile.mkdtemp()
    job = f"""
[source]
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "{run}-in"
group = "{run}"
schema = {{ ts = "timestamp_ms", sensor = "int64", value = "float64" }}
[time]
column = "ts"
max_out_of_orderness = "200ms"
idle_timeout = "2s"
[window]
kind = "tumble"
size = "1s"
[key]
columns = ["sensor"]
[[aggregate]]
name = "n"
fn = "count"
[[aggregate]]
name = "total"
fn = "sum"
column = "value"
[sink]
kind = "kafka"
bootstrap = "{bootstrap}"
topic = "{run}-out"
[checkpoint]
dir = '{work}/chk'
interval = "1s"
"""
    with open(f"{work}/job.toml", "w") as f:
        f.write(job)
    panes = subprocess.Popen([f"{ROOT}/target/release/panes", "run", f"{work}/job.toml",
                              "--batch-rows", "4096"], stderr=subprocess.DEVNULL)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{run}-reader",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([f"{run}-out"])
    first_seen = {}
    stop = threading.Event()

    def read():
        while not stop.is_set():
            m = consumer.poll(0.05)
            if m is None or m.error():
                continue
            now = time.time() * 1000
            row = json.loads(m.value())
            end = row["window_end"]
            first_seen.setdefault(end, now)

    reader = threading.Thread(target=read)
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.time()
    sent = 0
    while time.time() - started < SECONDS:
        tick = time.time()
        for _ in range(RATE // 100):
            now = int(time.time() * 1000)
            value = json.dumps({"ts": now, "sensor": random.randrange(100),
                                "value": random.random()})
            producer.produce(f"{run}-in", value, partition=sent % 2)
            sent += 1
        producer.poll(0)
        time.sleep(max(0.0, 0.01 - (time.time() - tick)))
    producer.flush()
    time.sleep(4)
    panes.send_signal(signal.SIGINT)
    panes.wait(timeout=60)
    stop.set()
    reader.join()
    consumer.close()
    # window_end as written by the JSON sink: an ISO time without zone (UTC).
    import datetime
    lat = []
    for end, seen in first_seen.items():
        t = datetime.datetime.fromisoformat(end).replace(tzinfo=datetime.timezone.utc)
        end_ms = t.timestamp() * 1000
        if end_ms > started * 1000 + 5000 and end_ms < (started + SECONDS) * 1000:
            lat.append(seen - end_ms)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print(f"events {sent} at {RATE}/s for {SECONDS}s; windows {len(lat)}")
    print(f"latency ms: median {statistics.median(lat):.0f}, p90 {q(0.9):.0f}, "
          f"p99 {q(0.99):.0f}, max {lat[-1]:.0f}")


if __name__ == "__main__":
    sys.exit(main())
