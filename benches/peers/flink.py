"""Apache Flink's side of benches/peers/run.sh, run by PyFlink's Python:

    flink.py CSV OUT_DIR PARALLELISM

Runs panes' tumbling query as Flink SQL (a window table-valued function, batch mode) over
CSV (ts_ms, article_id, scroll_depth: PyFlink ships no Parquet format), writes the rows as
CSV files into OUT_DIR and prints `seconds S`: the time of the query job alone, from
submission to its end, as the other peers are timed around their query.
"""
import sys, time
from pyflink.table import EnvironmentSettings, TableEnvironment

csv, out, parallelism = sys.argv[1], sys.argv[2], sys.argv[3]
env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
conf = env.get_config()
conf.set("table.local-time-zone", "UTC")
conf.set("parallelism.default", parallelism)
env.execute_sql(f"""CREATE TABLE clicks (
  ts_ms BIGINT, article_id BIGINT, scroll_depth DOUBLE,
  ts AS TO_TIMESTAMP_LTZ(ts_ms, 3), WATERMARK FOR ts AS ts
) WITH ('connector' = 'filesystem', 'path' = '{csv}', 'format' = 'csv')""")
env.execute_sql(f"""CREATE TABLE windows_out (
  article_id BIGINT, ws BIGINT, n BIGINT, s DOUBLE, mn DOUBLE, mx DOUBLE
) WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'csv')""")
start = time.perf_counter()
env.execute_sql("""INSERT INTO windows_out
SELECT article_id, UNIX_TIMESTAMP(CAST(window_start AS STRING)) * 1000, COUNT(*),
       SUM(scroll_depth), MIN(scroll_depth), MAX(scroll_depth)
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
GROUP BY article_id, window_start, window_end""").wait()
print("seconds", time.perf_counter() - start)
