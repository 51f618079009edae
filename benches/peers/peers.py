"""Runs the peers' side of benches/peers/run.sh: the same tumbling-window query on the same
Parquet file in DuckDB and Polars, and on the same events as CSV in Apache Flink, timed,
with each engine's rows checked against panes'.

    peers.py INPUT PANES_OUTPUT RUNS OUT_JSON [FLINK_PYTHON PARALLELISM]

With FLINK_PYTHON (PyFlink's interpreter), flink.py runs the query in Flink over INPUT's
events as CSV (INPUT with .csv for .parquet, written once by DuckDB).

The query: per article_id and 1-minute tumbling window, count, sum, min and max of
scroll_depth. Window starts are epoch milliseconds. Rows agree when keys, windows and counts
are equal and floats are within a relative 1e-9 (sums added in another order). The input has
no late events (run.sh generates it with --late-share 0), so a batch engine, which drops
nothing, must give exactly panes' windows. PEERS_CORRUPT=ENGINE drops one row of that
engine's result: the check's own test.
"""
import json, os, statistics, sys, time

def duckdb_query(path):
    import duckdb
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con.execute(
        """SELECT article_id, epoch_ms(ts) // 60000 * 60000 AS ws, count(*), sum(scroll_depth),
                  min(scroll_depth), max(scroll_depth)
           FROM read_parquet(?) GROUP BY ALL""", [path]).fetchall()

def polars_query(path):
    import polars as pl
    df = (pl.scan_parquet(path)
          .with_columns((pl.col("ts").dt.epoch("ms") // 60000 * 60000).alias("ws"))
          .group_by(["article_id", "ws"])
          .agg(pl.len(), pl.col("scroll_depth").sum().alias("s"),
               pl.col("scroll_depth").min().alias("mn"), pl.col("scroll_depth").max().alias("mx"))
          .collect())
    return df.rows()

def flink_query(python, csv, parallelism, out):
    """Runs flink.py; returns (seconds of the query job, its rows)."""
    import duckdb, shutil, subprocess
    shutil.rmtree(out, ignore_errors=True)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flink.py")
    run = subprocess.run([python, script, csv, out, parallelism], capture_output=True, text=True)
    lines = [l for l in run.stdout.splitlines() if l.startswith("seconds ")]
    if run.returncode != 0 or not lines:
        sys.exit(f"error: flink failed: {run.stderr[-2000:]}")
    rows = duckdb.connect().execute(
        "SELECT * FROM read_csv(?, header = false, columns = {'article_id': 'BIGINT', "
        "'ws': 'BIGINT', 'n': 'BIGINT', 's': 'DOUBLE', 'mn': 'DOUBLE', 'mx': 'DOUBLE'})",
        [os.path.join(out, "*")]).fetchall()
    return float(lines[-1].split()[1]), rows

def panes_rows(path):
    import duckdb
    con = duckdb.connect()
    return con.execute(
        """SELECT article_id, epoch_ms(window_start), views, scroll_sum, scroll_min, scroll_max
           FROM read_parquet(?)""", [path]).fetchall()

def timed(query):
    start = time.perf_counter()
    rows = query()
    return time.perf_counter() - start, rows

def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))

def differs(want, got):
    want, got = sorted(want, key=lambda r: r[:2]), sorted(got, key=lambda r: r[:2])
    if len(want) != len(got):
        return f"{len(got)} rows against panes' {len(want)}"
    for w, g in zip(want, got):
        if w[:3] != tuple(g[:3]) or not all(close(x, y) for x, y in zip(w[3:], g[3:])):
            return f"row {tuple(g)} where panes has {tuple(w)}"
    return None

def main():
    path, panes_out, runs, out_json = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    want = panes_rows(panes_out)
    engines = [("duckdb", lambda: timed(lambda: duckdb_query(path))),
               ("polars", lambda: timed(lambda: polars_query(path)))]
    versions = {"duckdb": lambda: __import__("duckdb").__version__,
                "polars": lambda: __import__("polars").__version__}
    if len(sys.argv) > 5:
        python, parallelism = sys.argv[5:7]
        csv = path.removesuffix(".parquet") + ".csv"
        if not os.path.exists(csv):
            import duckdb
            duckdb.connect().execute(
                f"COPY (SELECT epoch_ms(ts), article_id, scroll_depth FROM read_parquet('{path}')) "
                f"TO '{csv}' (HEADER false)")
        out = os.path.join(os.path.dirname(os.path.abspath(out_json)), "flink-out")
        engines.append(("flink", lambda: flink_query(python, csv, parallelism, out)))
        versions["flink"] = lambda: "2.3.0 (PyFlink, batch mode, CSV input)"
    results = {}
    for name, query in engines:
        times, rows = [], None
        for _ in range(runs):
            seconds, rows = query()
            times.append(seconds)
        if os.environ.get("PEERS_CORRUPT") == name:
            rows = rows[1:]
        problem = differs(want, rows)
        results[name] = {
            "version": versions[name](),
            "median_seconds": statistics.median(times),
            "seconds": times,
            "rows": len(rows),
            "agrees": problem is None,
            "disagreement": problem,
        }
    with open(out_json, "w") as f:
        json.dump(results, f, indent=2)

main()
