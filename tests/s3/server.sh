#!/usr/bin/env bash
# Starts an S3-protocol object store (moto's server mode, from PyPI) on 127.0.0.1 for the
# tests, creates bucket `panes` in it, and prints its endpoint (http://127.0.0.1:PORT) once
# it answers. The server stops by itself after $LIFETIME seconds (default 1200), so a test
# run that dies leaves nothing behind. It keeps its objects in memory only.
#   tests/s3/server.sh DIR      # DIR holds the virtualenv (kept) and the log
# DIR/server-PORT.pid holds the server's pid.
set -euo pipefail
dir="${1:?usage: server.sh DIR}"
mkdir -p "$dir"
(
    flock 9
    if [[ ! -x "$dir/venv/bin/pip" ]]; then
        rm -rf "$dir/venv"
        python3 -m venv "$dir/venv"
    fi
    "$dir/venv/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null ||
        "$dir/venv/bin/pip" install -q "moto[server]==5.1.*"
) 9> "$dir/.setup.lock"
py="$dir/venv/bin/python"
port="${PORT:-$("$py" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}"
setsid timeout "${LIFETIME:-1200}" "$dir/venv/bin/moto_server" -H 127.0.0.1 -p "$port" \
    >> "$dir/server-$port.log" 2>&1 < /dev/null &
echo $! > "$dir/server-$port.pid"
for _ in $(seq 1 200); do
    if "$py" -c "import urllib.request as u;u.urlopen(u.Request('http://127.0.0.1:$port/panes',method='PUT'),timeout=1)" 2>/dev/null; then
        echo "http://127.0.0.1:$port"
        exit 0
    fi
    sleep 0.1
done
echo "the object store did not start; its log:" >&2
cat "$dir/server-$port.log" >&2
exit 1
