#!/usr/bin/env bash
# CPU-backend streaming benchmark on a bigger machine (the GPU host: 16 cores, NVMe, 128 GiB).
# Usage: bench/device_bench.sh MOEFLUX_BINARY OUT_DIR [LAYERS]
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
rows = []
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"): continue
    r = json.load(open(os.path.join(out, f)))
    s = r["decode_streaming"]; st = r["storage"]
    rows.append((f[:-5], r["decode_tok_s"]["median"], r["prefill_tok_s"]["median"],
                 s["bytes_per_token"]["storage"] / 2**20, 100 * (s["hit_rate"]["ram"] + s["hit_rate"]["prefetch"]),
                 s["io_wait_ms_per_token"], st["gb_s_over_decode_wall"],
                 s["prefetch"]["temporal"]["accuracy"] * 100, s["prefetch"]["lookahead"]["accuracy"] * 100))
    if "ceilings" in r: print("ceilings:", json.dumps(r["ceilings"]))
print("%-20s %9s %9s %10s %7s %9s %8s %6s %6s" % ("run", "dec t/s", "pre t/s", "MiB/tok", "hit%", "wait ms", "GB/s", "tp%", "la%"))
for row in rows: print("%-20s %9.2f %9.1f %10.1f %7.1f %9.2f %8.2f %6.1f %6.1f" % row)
PY
