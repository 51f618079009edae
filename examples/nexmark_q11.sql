-- Nexmark q11 (user sessions), as Flink's Nexmark suite writes it with the SESSION window
-- function, the SQL twin of nexmark_q11.toml: the bids of each bidder per session, a
-- session ending after 10 seconds without a bid.
CREATE TABLE nexmark (
  ts TIMESTAMP(3),
  auction_id BIGINT,
  bidder BIGINT,
  price BIGINT,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH ('connector' = 'panes-generator', 'dataset' = 'nexmark', 'events' = '5000000',
        'keys' = '10000', 'seed' = '11');

CREATE TABLE sessions WITH ('connector' = 'filesystem', 'path' = 'out/nexmark_q11.parquet');

INSERT INTO sessions
SELECT bidder, window_start, window_end, COUNT(price) AS bids, MAX(price) AS max_price
FROM TABLE(SESSION(TABLE nexmark PARTITION BY bidder, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, bidder;
