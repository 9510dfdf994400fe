#!/usr/bin/env bash
# CPU-backend streaming benchmark of a qwen3-30b-a3b-shaped package (the dev machine, or the GPU
# host: 16 cores, NVMe, 128 GiB).
# Usage: [PKG_DIR=dir] [THREADS=n] bench/device_bench.sh MOEFLUX_BINARY OUT_DIR [LAYERS]
# Synthesizes a qwen3-30b-a3b-shaped q4 package cut to LAYERS layers, then runs `moeflux bench`
# miss-bound (O_DIRECT, no cache), warm page cache, with a RAM cache of 25% of the expert bytes,
# and each prefetch mode; every run's JSON lands in OUT_DIR, a summary table on stdout.
set -uo pipefail
B=$1
OUT=$2
LAYERS=${3:-8}
PKG=${PKG_DIR:-/tmp/moeflux-q30b-l$LAYERS}
T=${THREADS:-$(nproc)}
mkdir -p "$OUT"
"$B" devices | tee "$OUT/devices.txt"
[[ -d $PKG ]] || "$B" synth --family qwen3_moe --preset qwen3-30b-a3b --layers "$LAYERS" --experts q4 "$PKG" 2>&1 | tail -2
"$B" inspect "$PKG" | tee "$OUT/inspect.txt"
quarter=$(python3 -c "
import json; m = json.load(open('$PKG/manifest.json'))
c = m['config']; print(int(m['experts']['record_bytes'] * c['num_experts'] * sum(c['layer_is_moe']) / 4))")
run() {  # name, options...
  local name=$1; shift
  "$B" bench -m "$PKG" --prompt-len 64 --gen-len 48 --repeat 3 --threads "$T" --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.txt" 2> "$OUT/$name.err" || echo "$name failed: $(tail -1 "$OUT/$name.err")"
}
run direct-none --io direct --prefetch none
run direct-temporal --io direct --prefetch temporal --no-ceilings
run direct-lookahead --io direct --prefetch lookahead --no-ceilings
run direct-both --io direct --prefetch both --no-ceilings
run direct-uring --io direct --io-backend io_uring --prefetch none --no-ceilings
run warm-none --io page-cache --prefetch none --no-ceilings
run warm-both --io page-cache --prefetch both --no-ceilings
run direct-ram25 --io direct --ram-cache "$quarter" --prefetch none --no-ceilings
run direct-ram25-both --io direct --ram-cache "$quarter" --prefetch both --no-ceilings
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
runs = {}
for f in sorted(os.listdir(out)):
    if f.endswith(".json"): runs[f[:-5]] = json.load(open(os.path.join(out, f)))
for name, r in runs.items():
    if "ceilings" in r: print("ceilings:", json.dumps({k: v["gb_s"] for k, v in r["ceilings"].items() if isinstance(v, dict)}))
# I/O hidden by prefetch = 1 - wait(mode) / wait(same I/O and cache, no prefetch).
def baseline(name):
    for suffix in ("-temporal", "-lookahead", "-both"):
        if name.endswith(suffix): return name[: -len(suffix)] + ("-none" if name.count("-") == 1 else "")
    return None
print("%-20s %9s %9s %10s %7s %9s %8s %9s %6s %6s %8s" % ("run", "dec t/s", "pre t/s", "MiB/tok", "hit%", "wait ms",
      "GB/s", "wait GB/s", "tp%", "la%", "hidden%"))
for name, r in runs.items():
    s = r["decode_streaming"]; st = r["storage"]
    hit = sum(v for k, v in s["hit_rate"].items() if k != "miss")
    base = runs.get(baseline(name) or "", None)
    hidden = ""
    if base and base["decode_streaming"]["io_wait_ms_per_token"] > 0:
        hidden = "%.0f" % (100 * (1 - s["io_wait_ms_per_token"] / base["decode_streaming"]["io_wait_ms_per_token"]))
    print("%-20s %9.2f %9.1f %10.1f %7.1f %9.2f %8.2f %9.2f %6.1f %6.1f %8s" % (name, r["decode_tok_s"]["median"],
          r["prefill_tok_s"]["median"], s["bytes_per_token"]["storage"] / 2**20, 100 * hit, s["io_wait_ms_per_token"],
          st["gb_s_over_decode_wall"], st["gb_s_while_waiting"], s["prefetch"]["temporal"]["accuracy"] * 100,
          s["prefetch"]["lookahead"]["accuracy"] * 100, hidden))
PY
