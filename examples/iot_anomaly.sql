-- IoT anomaly, the SQL twin of iot_anomaly.toml: each sensor's average temperature per
-- minute, and an alert when a minute strays 5 standard deviations from the sensor's last 30
-- minutes (once it has 10 and the minute has 1000 readings).
-- Run: cargo run --release -- sql examples/iot_anomaly.sql
CREATE TABLE readings (
  ts TIMESTAMP(3),
  sensor_id BIGINT,
  temperature DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'panes-generator',
  'dataset' = 'iot',
  'events' = '15400000',
  'keys' = '200',
  'seed' = '7'
);

CREATE TABLE minutes WITH ('connector' = 'filesystem', 'path' = 'out/iot_minutes.parquet');

-- Anomaly detection has no SQL of its own in Flink; panes options set it.
SET 'panes.anomaly.value' = 'avg_temp';
SET 'panes.anomaly.baseline_windows' = '30';
SET 'panes.anomaly.threshold' = '5.0';
SET 'panes.anomaly.min_history' = '10';
SET 'panes.anomaly.count' = 'readings';
SET 'panes.anomaly.min_count' = '1000';
SET 'panes.anomaly.sink.path' = 'out/alerts.parquet';

INSERT INTO minutes
SELECT sensor_id, window_start, window_end, AVG(temperature) AS avg_temp, COUNT(*) AS readings
FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, sensor_id;
