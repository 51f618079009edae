-- Nexmark q5 (hot items) in its window Top-N form, the SQL twin of nexmark_q5.toml: every
-- 2 seconds, the auction with the most bids over the last 10 seconds.
-- COUNT(price) counts bids: price is null for persons and auctions.
CREATE TABLE nexmark (
  ts TIMESTAMP(3),
  auction_id BIGINT,
  bidder BIGINT,
  price BIGINT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'panes-generator', 'dataset' = 'nexmark', 'events' = '5000000',
        'keys' = '10000', 'seed' = '5');

CREATE TABLE hot_items WITH ('connector' = 'filesystem', 'path' = 'out/nexmark_q5.parquet');

INSERT INTO hot_items
SELECT * FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY bids DESC) AS rownum
  FROM (
    SELECT window_start, window_end, auction_id, COUNT(price) AS bids
    FROM TABLE(HOP(TABLE nexmark, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY window_start, window_end, auction_id
  )
) WHERE rownum <= 1;
