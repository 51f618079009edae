-- Nexmark q7 (highest bid), the SQL twin of nexmark_q7.toml: the highest price bid in
-- each 10-second tumbling window, one global group.
CREATE TABLE nexmark (
  ts TIMESTAMP(3),
  auction_id BIGINT,
  bidder BIGINT,
  price BIGINT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'panes-generator', 'dataset' = 'nexmark', 'events' = '5000000',
        'keys' = '10000', 'seed' = '7');

CREATE TABLE highest_bid WITH ('connector' = 'filesystem', 'path' = 'out/nexmark_q7.parquet');

INSERT INTO highest_bid
SELECT window_start, window_end, MAX(price) AS max_price, COUNT(price) AS bids
FROM TABLE(TUMBLE(TABLE nexmark, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
