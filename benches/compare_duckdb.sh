#!/usr/bin/env bash
# Compare panes end to end (Parquet in -> tumbling windows -> Parquet out) with DuckDB running
# the same query on the same file, in one run.
#
#   benches/compare_duckdb.sh            # 20M events, 100k keys, 3 runs each, both key types
#   EVENTS=2000000 RUNS=5 KEY_TYPES=string benches/compare_duckdb.sh
#
# Settings (environment):
#   EVENTS (20000000), KEYS (100000)   generated input, target/bench-data/clicks.parquet (seed 1)
#   RUNS (3)                           runs per system; the median wall time is reported
#   KEY_TYPES ("int string")           integer keys (article_id) and string keys (the same
#                                      articles as slugs, 'art-000123', with 2% of
#                                      scroll_depth null), each compared on its own file
#   THREADS (nproc)                    DuckDB `threads` and panes `--threads`
#   PANES (target/release/panes)       the panes binary; build it first with cargo build --release
#   DUCKDB_VERSION (2.0.0)             pip version installed into target/bench-venv if absent
#   DUCKDB_COMPRESSION (zstd)          DuckDB Parquet codec; panes writes zstd
#
# Both systems get the same file, all cores, and write Parquet. panes is timed as a whole process
# (startup, read, window, write); DuckDB is timed with time.perf_counter around the COPY in a
# fresh in-memory connection per run (connect and import are outside the clock). The job has no
# [late] section, so panes reads only the columns it needs and counts late events without
# keeping them; DuckDB has no watermark, so it also aggregates the events panes drops as late.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

EVENTS=${EVENTS:-20000000}
KEYS=${KEYS:-100000}
RUNS=${RUNS:-3}
THREADS=${THREADS:-$(nproc)}
PANES=${PANES:-target/release/panes}
DUCKDB_VERSION=${DUCKDB_VERSION:-2.0.0}
DUCKDB_COMPRESSION=${DUCKDB_COMPRESSION:-zstd}

VENV=$ROOT/target/bench-venv
DATA=$ROOT/target/bench-data
INPUT=$DATA/clicks.parquet
STAMP=$DATA/clicks.parquet.params
KEY_TYPES=${KEY_TYPES:-int string}
HELPER=$DATA/duckdb_bench.py
LOGS=$DATA/logs

die() {
    echo "error: $*" >&2
    exit 1
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ -x $PANES ]] || die "$PANES not found or not executable; build it first: cargo build --release"
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$DATA" "$LOGS"

# --- 1. DuckDB in a venv ---------------------------------------------------------------------
PY=$VENV/bin/python
if ! [[ -x $PY ]] || ! "$PY" -c 'import duckdb' 2>/dev/null; then
    echo "installing duckdb==$DUCKDB_VERSION into $VENV" >&2
    [[ -x $PY ]] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
fi

cat >"$HELPER" <<'PY'
import json, statistics, sys, time
import duckdb

def connect():
    con = duckdb.connect()  # in-memory
    con.execute("SET enable_progress_bar = false")  # keep stdout/stderr clean for the script
    return con

def version():
    print(duckdb.__version__)

def rows(path):
    # from the footer: rows and row groups (DuckDB parallelises a file's scan by row group)
    con = connect()
    r = con.execute("SELECT sum(num_rows), sum(num_row_groups) FROM parquet_file_metadata(?)", [path]).fetchone()
    print(r[0], r[1])

def bench(inp, out, threads, runs, codec):
    # window_end refers to the window_start alias of the same SELECT (DuckDB lateral alias).
    # time_bucket with a sub-day interval is aligned to 2000-01-03 00:00, a whole minute, so the
    # buckets are the epoch-aligned 1-minute tumbling windows panes computes.
    sql = f"""
        COPY (
            SELECT article_id,
                   time_bucket(INTERVAL 1 MINUTE, ts) AS window_start,
                   window_start + INTERVAL 1 MINUTE AS window_end,
                   count(*) AS views,
                   sum(scroll_depth) AS scroll_sum,
                   min(scroll_depth) AS scroll_min,
                   max(scroll_depth) AS scroll_max
            FROM read_parquet('{inp}')
            GROUP BY ALL
        ) TO '{out}' (FORMAT parquet, COMPRESSION {codec})
    """
    times = []
    for i in range(int(runs)):
        con = connect()  # fresh in-memory database per run
        con.execute(f"SET threads = {int(threads)}")
        t0 = time.perf_counter()
        con.execute(sql)
        dt = time.perf_counter() - t0
        con.close()
        times.append(dt)
        print(f"  duckdb run {i + 1}: {dt:.3f} s", file=sys.stderr)
    print(json.dumps(times))

def slugs(inp, out):
    # The same events with string keys: each article as a slug, and 2% of scroll_depth null.
    connect().execute(f"""
        COPY (
            SELECT ts, user_id, printf('art-%06d', article_id) AS article_id, session_id,
                   CASE WHEN hash(user_id, ts) % 50 = 0 THEN NULL ELSE scroll_depth END
                       AS scroll_depth,
                   referrer
            FROM read_parquet('{inp}')
        ) TO '{out}' (FORMAT parquet, ROW_GROUP_SIZE 100000, COMPRESSION zstd)
    """)

def median(*xs):
    print(f"{statistics.median(float(x) for x in xs):.6f}")

def check(panes_out, duckdb_out):
    # Row counts and total views of both outputs, then a join on (article_id, window_start):
    # groups only DuckDB has (every event late for panes), groups only panes has (should be 0),
    # groups whose views differ (some events late), and groups with equal views whose other
    # columns disagree (should be 0).
    con = connect()
    q = "SELECT count(*), sum(views) FROM read_parquet(?)"
    p = con.execute(q, [panes_out]).fetchone()
    d = con.execute(q, [duckdb_out]).fetchone()
    j = con.execute("""
        SELECT count(*) FILTER (WHERE p.views IS NULL),
               count(*) FILTER (WHERE d.views IS NULL),
               count(*) FILTER (WHERE p.views <> d.views),
               count(*) FILTER (WHERE p.views = d.views AND (
                   p.window_end IS DISTINCT FROM d.window_end
                   OR p.scroll_min IS DISTINCT FROM d.scroll_min
                   OR p.scroll_max IS DISTINCT FROM d.scroll_max
                   OR abs(p.scroll_sum - d.scroll_sum) > 1e-6 * greatest(1, abs(d.scroll_sum))
                   OR (p.scroll_sum IS NULL) <> (d.scroll_sum IS NULL)))
        FROM read_parquet(?) p
        FULL JOIN read_parquet(?) d USING (article_id, window_start)
    """, [panes_out, duckdb_out]).fetchone()
    print(p[0], p[1], d[0], d[1], *j)

globals()[sys.argv[1]](*sys.argv[2:])
PY

echo "duckdb $("$PY" "$HELPER" version)"

# --- 2. input --------------------------------------------------------------------------------
params="events=$EVENTS keys=$KEYS seed=1"
if ! [[ -f $INPUT && -f $STAMP && $(<"$STAMP") == "$params" ]]; then
    echo "generating $INPUT ($params)" >&2
    rm -f "$STAMP"
    "$PANES" gen clickstream --events "$EVENTS" --keys "$KEYS" --seed 1 --out "$INPUT"
    echo "$params" >"$STAMP"
fi
read -r events row_groups <<<"$("$PY" "$HELPER" rows "$INPUT")"
echo "input $INPUT: $events events, $KEYS keys, $row_groups row groups, $(du -h "$INPUT" | cut -f1)"

# One comparison on $1 (int or string keys).
compare() {
    local INPUT=$1 label=$2
    local JOB=$DATA/panes_tumble_$label.toml
    local PANES_OUT=$DATA/panes_out_$label.parquet
    local DUCKDB_OUT=$DATA/duckdb_out_$label.parquet
    LOGS=$DATA/logs/$label
    mkdir -p "$LOGS"
    echo
    echo "=== $label keys: $INPUT"
    # --- 3. panes --------------------------------------------------------------------------------
    cat >"$JOB" <<EOF
    [source]
    kind = "parquet"
    path = "$INPUT"

    [time]
    column = "ts"
    max_out_of_orderness = "5s"

    [window]
    kind = "tumble"
    size = "1m"

    [key]
    columns = ["article_id"]

    [[aggregate]]
    name = "views"
    fn = "count"

    [[aggregate]]
    name = "scroll_sum"
    fn = "sum"
    column = "scroll_depth"

    [[aggregate]]
    name = "scroll_min"
    fn = "min"
    column = "scroll_depth"

    [[aggregate]]
    name = "scroll_max"
    fn = "max"
    column = "scroll_depth"

    [sink]
    kind = "parquet"
    path = "$PANES_OUT"
EOF

    have_time=0
    [[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1 && have_time=1

    now() { echo "${EPOCHREALTIME/,/.}"; }

    panes_times=()
    late=?
    echo "panes: $RUNS runs of $PANES run $JOB" >&2
    for ((i = 1; i <= RUNS; i++)); do
        log=$LOGS/panes_run$i.log
        tlog=$LOGS/panes_run$i.time
        rm -f "$PANES_OUT"
        t0=$(now)
        if ((have_time)); then
            status=0
            /usr/bin/time -v -o "$tlog" "$PANES" run --threads "$THREADS" "$JOB" 2>"$log" || status=$?
        else
            status=0
            "$PANES" run --threads "$THREADS" "$JOB" 2>"$log" || status=$?
        fi
        t1=$(now)
        if ((status != 0)); then
            cat "$log" >&2
            die "panes run failed (exit $status); log in $log"
        fi
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        panes_times+=("$wall")
        late=$(awk '/^late events/ { print $3 }' "$log")
        inner=$(awk '/^elapsed/ { print $2 }' "$log")
        rss=""
        if ((have_time)); then
            rss=$(awk -F': ' '/Maximum resident set size/ { printf ", max RSS %.0f MiB", $2 / 1024 }' "$tlog")
        fi
        echo "  panes run $i: $wall s wall (panes elapsed ${inner:-?} s, late events ${late:-?}$rss)" >&2
    done
    panes_med=$("$PY" "$HELPER" median "${panes_times[@]}")

    # --- 4. DuckDB -------------------------------------------------------------------------------
    echo "duckdb: $RUNS runs, threads=$THREADS, COPY ... TO $DUCKDB_OUT (compression $DUCKDB_COMPRESSION)" >&2
    duck_times=$("$PY" "$HELPER" bench "$INPUT" "$DUCKDB_OUT" "$THREADS" "$RUNS" "$DUCKDB_COMPRESSION" | tail -n 1)
    read -r -a duck_list <<<"$(tr -d '[],' <<<"$duck_times")"
    duck_med=$("$PY" "$HELPER" median "${duck_list[@]}")

    # --- 5. report -------------------------------------------------------------------------------
    read -r p_rows p_views d_rows d_views only_duck only_panes fewer mismatched \
        <<<"$("$PY" "$HELPER" check "$PANES_OUT" "$DUCKDB_OUT")"

    echo
    echo "tumble(1m) by article_id: count, sum/min/max(scroll_depth); $events events, $KEYS keys," \
        "$(nproc) cores, median of $RUNS runs"
    awk -v ev="$events" -v pm="$panes_med" -v dm="$duck_med" 'BEGIN {
        printf "%-8s %12s %12s %14s\n", "system", "events", "median s", "events/s"
        printf "%-8s %12d %12.3f %14.0f\n", "panes", ev, pm, ev / pm
        printf "%-8s %12d %12.3f %14.0f\n", "duckdb", ev, dm, ev / dm
        printf "ratio panes/duckdb (time): %.2f  (<1 means panes is faster)\n", pm / dm
    }'
    echo
    echo "output rows: panes $p_rows, duckdb $d_rows (difference $((d_rows - p_rows)));" \
        "panes late events dropped: $late"
    echo "sum(views):  panes $p_views, duckdb $d_views (difference $((d_views - p_views)), should equal the late events)"
    echo "by (article_id, window_start): $only_duck groups only in duckdb (all late), $fewer with fewer" \
        "views in panes (some late), $only_panes only in panes (expect 0), $mismatched with equal" \
        "views but other columns differing (expect 0)"
}

for key_type in $KEY_TYPES; do
    case $key_type in
    int) compare "$INPUT" int ;;
    string)
        SLUGS=$DATA/clicks_slugs.parquet
        if ! [[ -f $SLUGS && $SLUGS -nt $INPUT ]]; then
            echo "writing $SLUGS (string keys)" >&2
            "$PY" "$HELPER" slugs "$INPUT" "$SLUGS"
        fi
        compare "$SLUGS" string
        ;;
    *) die "KEY_TYPES: unknown key type '$key_type' (int or string)" ;;
    esac
done
