#!/usr/bin/env bash
# Peers side by side, same data, same answers: panes, DuckDB, Polars and Apache Flink run the
# same tumbling-window query (per article_id and minute: count, sum, min and max of
# scroll_depth) on the same generated events (Parquet; Flink reads them as CSV, as PyFlink
# ships no Parquet format); each peer's rows are checked against panes' output, and the
# median wall times are printed with their ratio to panes.
#
#   benches/peers/run.sh                       # 20M events, 100k keys, 3 runs each
#   EVENTS=200000 RUNS=1 benches/peers/run.sh  # what CI runs (tests/peers.rs)
#
# Settings (environment):
#   EVENTS (20000000), KEYS (100000)  generated input, without late events (seed 1)
#   RUNS (3)                          runs per engine; the median is reported
#   THREADS (nproc)                   panes --threads (DuckDB and Polars use every core)
#   PANES (target/release/panes)      the panes binary; build it first: cargo build --release
#   OUT (target/peers)                where the data, outputs and peers.json go
#   FLINK (1)                         0 leaves Flink out
#
# peers.json (in OUT) holds each engine's times and whether it agreed; `panes bench --report
# DIR --peers OUT/peers.json` puts it in the report. It installs what it needs: DuckDB and
# Polars from PyPI into a virtualenv under target/peers-venv, PyFlink (apache-flink, about
# 850 MB) into target/flink-venv (python3-venv from Debian); Flink needs a Java 17 runtime
# (Debian: openjdk-17-jre-headless). It exits with status 1 when a peer's rows differ from
# panes'. panes is timed as a whole process (read, window, write Parquet); DuckDB and Polars
# around the query in Python, its result in memory; Flink around its query job (submitted
# to a local mini-cluster already started, rows written to CSV).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
EVENTS=${EVENTS:-20000000}
KEYS=${KEYS:-100000}
RUNS=${RUNS:-3}
THREADS=${THREADS:-$(nproc)}
PANES=${PANES:-target/release/panes}
OUT=${OUT:-$ROOT/target/peers}
FLINK=${FLINK:-1}
VENV=$ROOT/target/peers-venv
FLINK_VENV=$ROOT/target/flink-venv

die() {
    echo "error: $*" >&2
    exit 1
}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ -x $PANES ]] || die "$PANES not found or not executable; build it first: cargo build --release"
command -v python3 >/dev/null || die "python3 not found"
mkdir -p "$OUT"

PY=$VENV/bin/python
if ! [[ -x $PY ]] || ! "$PY" -c 'import duckdb, polars' 2>/dev/null; then
    echo "installing duckdb and polars into $VENV" >&2
    [[ -x $PY ]] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check "duckdb==2.0.0" "polars==2.1.0"
fi

flink_args=()
if [[ $FLINK == 1 ]]; then
    command -v java >/dev/null ||
        die "Flink needs a Java runtime: apt-get install openjdk-17-jre-headless (or FLINK=0)"
    if ! [[ -x $FLINK_VENV/bin/python ]] || ! "$FLINK_VENV/bin/python" -c 'import pyflink' 2>/dev/null; then
        echo "installing apache-flink into $FLINK_VENV" >&2
        [[ -x $FLINK_VENV/bin/python ]] || python3 -m venv "$FLINK_VENV"
        "$FLINK_VENV/bin/python" -m pip install -q --disable-pip-version-check "apache-flink==2.3.0"
    fi
    flink_args=("$FLINK_VENV/bin/python" "$THREADS")
fi

INPUT=$OUT/clicks-$EVENTS-$KEYS.parquet
if ! [[ -f $INPUT ]]; then
    "$PANES" gen clickstream --events "$EVENTS" --keys "$KEYS" --seed 1 --late-share 0 \
        --out "$INPUT" 2>/dev/null
fi

cat >"$OUT/tumble.toml" <<TOML
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
path = "$OUT/panes.parquet"
TOML

panes_times=()
for _ in $(seq "$RUNS"); do
    start=$(date +%s%N)
    "$PANES" run "$OUT/tumble.toml" --threads "$THREADS" 2>"$OUT/panes.log" ||
        die "panes failed: $(tail -3 "$OUT/panes.log")"
    end=$(date +%s%N)
    panes_times+=("$((end - start))")
done
grep -q "late events      0$" "$OUT/panes.log" ||
    die "panes saw late events; the comparison needs an input without them ($OUT/panes.log)"

"$PY" "$ROOT/benches/peers/peers.py" "$INPUT" "$OUT/panes.parquet" "$RUNS" "$OUT/peers.json" \
    "${flink_args[@]}"

"$PY" - "$OUT/peers.json" "$EVENTS" "${panes_times[@]}" <<'PY'
import json, statistics, sys
peers = json.load(open(sys.argv[1]))
events = int(sys.argv[2])
panes = statistics.median(int(t) / 1e9 for t in sys.argv[3:])
peers["panes"] = {"median_seconds": panes, "agrees": True, "disagreement": None}
for r in peers.values():
    r["events"] = events
    r["query"] = "tumble(1m) per article_id: count, sum, min, max of scroll_depth"
json.dump(peers, open(sys.argv[1], "w"), indent=2)
print(f"{'engine':<8} {'median s':>9} {'events/s':>12} {'vs panes':>9}  rows agree")
for name in [n for n in ["panes", "duckdb", "polars", "flink"] if n in peers]:
    r = peers[name]
    line = f"{name:<8} {r['median_seconds']:>9.3f} {events / r['median_seconds']:>12.0f} " \
           f"{r['median_seconds'] / panes:>8.2f}x  {'yes' if r['agrees'] else 'NO: ' + r['disagreement']}"
    print(line)
bad = [n for n, r in peers.items() if not r["agrees"]]
if bad:
    print(f"error: {', '.join(bad)} returned other rows than panes", file=sys.stderr)
    sys.exit(1)
PY
