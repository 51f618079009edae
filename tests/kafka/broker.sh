#!/usr/bin/env bash
# Starts a Kafka-protocol broker (noida-db, from PyPI) on 127.0.0.1 for the tests, and
# prints its address once it accepts connections. The broker stops by itself after
# $LIFETIME seconds (default 1200), so a test run that dies leaves nothing behind.
#   tests/kafka/broker.sh DIR      # DIR holds the virtualenv (kept), data and log
# $PORT picks the port (default: a free one); with $KEEP_DATA=1 the broker keeps the data
# a broker on that port left (a restart). DIR/broker-PORT.pid holds the broker's pid.
set -euo pipefail
dir="${1:?usage: broker.sh DIR}"
mkdir -p "$dir"
# Tests start brokers side by side: one of them sets up the virtualenv, the others wait.
(
    flock 9
    if [[ ! -x "$dir/venv/bin/pip" ]]; then
        rm -rf "$dir/venv"
        python3 -m venv "$dir/venv"
    fi
    "$dir/venv/bin/python" -c 'import noida_db' 2>/dev/null ||
        "$dir/venv/bin/pip" install -q noida-db==0.2.3
) 9> "$dir/.setup.lock"
bin=$("$dir/venv/bin/python" -c 'import noida_db,os;print(os.path.join(os.path.dirname(noida_db.__file__),"noida-db"))')
chmod +x "$bin"
port="${PORT:-$("$dir/venv/bin/python" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}"
data="$dir/data-$port"
[[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$data"
# The binary itself (not the pip entry point), detached, with a lifetime.
setsid timeout "${LIFETIME:-1200}" "$bin" start --data-dir "$data" --host 127.0.0.1 --only kafka \
    --kafka-port "$port" >> "$dir/broker-$port.log" 2>&1 < /dev/null &
echo $! > "$dir/broker-$port.pid"
for _ in $(seq 1 100); do
    if "$dir/venv/bin/python" -c "import socket;socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
        echo "127.0.0.1:$port"
        exit 0
    fi
    sleep 0.1
done
echo "the broker did not start; its log:" >&2
cat "$dir/broker-$port.log" >&2
exit 1
