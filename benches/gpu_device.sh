#!/usr/bin/env bash
# The GPU checks and profile on a machine with a hardware GPU, in under 8 minutes:
# the GPU tests (kernels against the reference, both f64 paths, hot keys, 500 backends),
# then the trending example on cpu and gpu (the same rows), then `panes bench --backend
# cpu,gpu --profile` at 10k, 100k and 1M keys, with the machine's description. Writes
# gpu.txt, tests.txt, trending.txt, bench.txt and bench.json to $OUT
# (default: bench-gpu/).
#
# The device machine has no network: build here, carry the binaries and a Vulkan loader.
#   benches/gpu_device.sh --prepare     # here: builds, fills .bin/ and .gl/ (git-ignored)
# then, with the `device` tool, carry [".bin", ".gl"] and run:
#   bash benches/gpu_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    cargo build --release
    # The test binaries that need a GPU, built without running them.
    cargo test --release -p panes-kernels --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' > /tmp/panes-gpu-tests
    # Stripped, and only the tests that need a GPU: carried files may total 64 MiB.
    rm -rf .bin && mkdir -p .bin/tests
    strip -o .bin/panes target/release/panes
    grep -E '/(backends|soft_f64)-' /tmp/panes-gpu-tests |
        while read -r t; do strip -o ".bin/tests/$(basename "$t")" "$t"; done
    grep -qx '/.bin/' .git/info/exclude 2>/dev/null || printf '/.bin/\n/.gl/\n' >> .git/info/exclude
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    echo "prepared: .bin/ ($(ls .bin/tests | wc -l) test binaries, $(du -sh .bin .gl | cut -f1 | tr '\n' ' ')); carry both"
    exit 0
fi

OUT="${OUT:-bench-gpu}"
mkdir -p "$OUT"
[[ -x .bin/panes ]] || { echo "no .bin/panes: run benches/gpu_device.sh --prepare first" >&2; exit 2; }
if compgen -G ".gl/*.deb" > /dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
    [[ -f "$icd" ]] && export VK_DRIVER_FILES="$icd" && break
done
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    lscpu | grep -E '^(Model name|CPU\(s\))' || true
    echo "panes $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
} | tee "$OUT/gpu.txt"

# The GPU tests: a failure is printed and counted, and the profile still runs.
failed=0
for t in .bin/tests/*; do
    echo "== $t" | tee -a "$OUT/tests.txt"
    timeout 180 "$t" 2>&1 | grep -E '^test |test result|panicked' | tee -a "$OUT/tests.txt" || failed=1
done

# The trending example (approx_count_distinct included) on both backends: the same rows.
for b in cpu gpu; do
    sed "s|out/|$OUT/trending-$b/|" examples/trending.toml > "$OUT/trending-$b.toml"
    echo "== trending on $b" | tee -a "$OUT/trending.txt"
    timeout 120 .bin/panes run --backend "$b" "$OUT/trending-$b.toml" 2>&1 |
        grep -E 'events/s|peak|wall|elapsed' | tee -a "$OUT/trending.txt" || failed=1
done
if cmp -s "$OUT/trending-cpu/trending.parquet" "$OUT/trending-gpu/trending.parquet"; then
    echo "trending: the same rows on cpu and gpu" | tee -a "$OUT/trending.txt"
else
    echo "trending: the outputs differ" | tee -a "$OUT/trending.txt"
    failed=1
fi

EVENTS="${EVENTS:-20000000}"
args=(bench --events "$EVENTS" --keys 10000,100000,1000000 --backend cpu,gpu --cases tumble,hop --profile)
timeout 300 .bin/panes "${args[@]}" 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$OUT/bench.txt"
timeout 120 .bin/panes bench --events "$((EVENTS / 4))" --keys 100000 --backend cpu,gpu --cases tumble --profile --json \
    > "$OUT/bench.json" 2>/dev/null || true
echo "results in $OUT/ (tests failed: $failed)"
exit $failed
