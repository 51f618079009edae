-- Clickstream trending, the SQL twin of trending.toml: the 10 most viewed articles over a
-- sliding 15-minute window, every minute, on 2 million generated events.
-- Run: cargo run --release -- sql examples/trending.sql
CREATE TABLE clicks (
  ts TIMESTAMP(3),
  article_id BIGINT,
  user_id BIGINT,
  scroll_depth DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
  'connector' = 'panes-generator',
  'dataset' = 'clickstream',
  'events' = '2000000',
  'keys' = '10000',
  'seed' = '42'
);

CREATE TABLE trending WITH ('connector' = 'filesystem', 'path' = 'out/trending.parquet', 'format' = 'parquet');

-- Late events (beyond the 5 s bound) go to their own file.
SET 'panes.late.path' = 'out/late.parquet';

INSERT INTO trending
SELECT * FROM (
  SELECT window_start, window_end, article_id,
         COUNT(*) AS views,
         APPROX_COUNT_DISTINCT(user_id) AS readers,
         AVG(scroll_depth) AS avg_scroll,
         MAX(scroll_depth) AS max_scroll,
         ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY COUNT(*) DESC) AS rn
  FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '15' MINUTE))
  GROUP BY window_start, window_end, article_id
) WHERE rn <= 10;
