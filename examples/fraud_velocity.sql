-- Fraud velocity: a card with at least 8 payments within any 1-minute window (sliding by 10
-- seconds) is flagged, one alert row per (card, window). Runs on 2 million generated card
-- payments (200 seconds of event time, 10,000 a second) from 2 million cards, in which
-- cards taken over make bursts of 10 to 40 payments within seconds (the `burst` column
-- says which). Why 8: the busiest honest card pays about 4 times a minute, so 8 within
-- one minute is rare for it, and every burst has at least 10 (the README has the
-- measured precision and recall).
-- Run: cargo run --release -- sql examples/fraud_velocity.sql
CREATE TABLE payments (
  ts TIMESTAMP(3),
  card_id BIGINT,
  merchant_id BIGINT,
  amount DOUBLE,
  country STRING,
  burst BOOLEAN,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'panes-generator',
  'dataset' = 'transactions',
  'events' = '2000000',
  'keys' = '2000000',
  'seed' = '9'
);

CREATE TABLE alerts WITH ('connector' = 'filesystem', 'path' = 'out/fraud_alerts.parquet');

INSERT INTO alerts
SELECT card_id, window_start, window_end,
       COUNT(*) AS payments,
       SUM(amount) AS total,
       APPROX_COUNT_DISTINCT(merchant_id) AS merchants
FROM TABLE(HOP(TABLE payments, DESCRIPTOR(ts), INTERVAL '10' SECOND, INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, card_id
HAVING COUNT(*) >= 8;
