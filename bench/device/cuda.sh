#!/usr/bin/env bash
# On the GPU host (device tool), from the repository root, with ".devbuild" carried (made here by
# `CUDA=1 bench/device/pack.sh`): the CUDA tests (every op against its CPU twin, engine parity
# with the CPU backend, GPU-tier invariance), parity against transformers' references with the
# CLI on the GPU (MOEFLUX_BACKEND=cuda), optionally compute-sanitizer, then `bench` on a
# synthesized Qwen3-30B-A3B-shaped 8-layer 4-bit package for each GPU-tier size.
# Environment: TESTS (gtest filter; "" skips), TEST_RUNS ("NAME=value ... filter;...": the tests
# again under other settings), SANITIZE=1 (SANITIZE_RUNS "tool=filter;...",
# SANITIZE_TIMEOUT s each, 300),
# VARIANTS ("name:flags;...", flags may start with NAME=value environment words), GEN (decode tokens per run, 128), TIMING=1 (bench --timing: host
# time per layer), NSYS=1 (Nsight Systems kernel/API summaries of resident decode, when nsys is
# installed), NCU=1 (each kernel's time and DRAM bytes over a window of decode launches:
# NCU_SKIP, NCU_COUNT), NCU_PROMPT=1 (the prompt's GEMM kernels, NCU_KERNELS regex: speed of
# light, warp stalls, occupancy), DIRECT=1 (experts read with O_DIRECT into a 1 GiB RAM tier, against the
# measured ceilings), REAL=1 (the bundled model's real routing: REAL_VARIANTS), CHECKSUM=1 (the CPU backend's checksum cost on O_DIRECT reads: bench
# with and without --no-verify), DEEPSEEK=1 (then bench/device/deepseek_gpu.sh: DeepSeek-V3 /
# Kimi-K2 / GLM-4.5-Air shapes, into $OUT/deepseek), QWEN35=1 (a Qwen3.6-35B-A3B-shaped 8-layer
# hybrid package, every expert resident: prompt 512 with the DeltaNet's chunked form and with its
# recurrence, MOEFLUX_CUDA_DELTA_CHUNKED=0), BATCH=1 (bench-batch of 1-32 sessions, every expert
# resident, 9-31 rows routed on the device and grouped on the host: MOEFLUX_DEVICE_ROUTING=host),
# NSYS_VARIANTS (per-token GPU busy/idle time of decode runs, below), PCIE=1 (moeflux_pcie_bench: kernels reading page-locked host memory in place, against the copy
# engine and HBM), OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
MF_DIR=/tmp/moeflux-bin
mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-cuda-bundle.tar.xz -C "$MF_DIR"
for b in moeflux moeflux_tests moeflux_pcie_bench; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/%s "$@"\n' "$MF_DIR" "$MF_DIR" "$b" > "$MF_DIR/run-$b"
  chmod +x "$MF_DIR/run-$b"
done
MF="$MF_DIR/run-moeflux"
OUTD=${OUT:-/tmp/cuda-out}
mkdir -p "$OUTD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTD/gpu.txt"
"$MF" devices | tee -a "$OUTD/gpu.txt"

# The test binary has the source tree's paths compiled in: recreate them here.
SRC=$(cat "$MF_DIR/source_dir")
BUILD=$(cat "$MF_DIR/build_dir")
mkdir -p "$BUILD/tests" "$(dirname "$SRC")"
[ -e "$SRC/tests" ] || { mkdir -p "$SRC" && ln -sfn "$PWD/tests" "$SRC/tests"; }
cp "$MF_DIR/run-moeflux" "$BUILD/moeflux"
FILTER=${TESTS-*Cuda*:*Parity*}
if [ -n "$FILTER" ]; then
  ( cd "$BUILD/tests" && MOEFLUX_BACKEND=cuda "$MF_DIR/run-moeflux_tests" --gtest_filter="$FILTER" \
      > "$OUTD/tests.log" 2>&1 )
  echo "tests: exit $? — $(grep -E '^\[  (PASSED|FAILED)|^\[  SKIPPED' "$OUTD/tests.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED|cuda parity' "$OUTD/tests.log" | head -20
fi
# TEST_RUNS: "NAME=value ... filter;..." — the tests again under other settings (the switches
# MOEFLUX_CUDA_* that pick other kernels), each into $OUT/tests-N.log.
IFS=";" read -ra test_runs <<< "${TEST_RUNS:-}"
n=0
for r in "${test_runs[@]}"; do
  n=$((n + 1)); envs=(); filter=
  read -ra words <<< "$r"  # no globbing: the filter has stars
  for w in "${words[@]}"; do
    if [[ $w =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$w"); else filter=$w; fi
  done
  ( cd "$BUILD/tests" && env MOEFLUX_BACKEND=cuda "${envs[@]}" "$MF_DIR/run-moeflux_tests" \
      --gtest_filter="$filter" > "$OUTD/tests-$n.log" 2>&1 )
  echo "tests ($r): exit $? — $(grep -E '^\[  (PASSED|FAILED)|^\[  SKIPPED' "$OUTD/tests-$n.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED' "$OUTD/tests-$n.log" | head -10
done
if [ "${SANITIZE:-0}" = 1 ]; then
  # SANITIZE_RUNS: "tool=gtest filter;..." (compute-sanitizer tools: memcheck, racecheck,
  # synccheck, initcheck), each within SANITIZE_TIMEOUT seconds, into $OUT/sanitizer-TOOL.log.
  IFS=";" read -ra runs <<< "${SANITIZE_RUNS:-memcheck=*CudaEngine*:CudaOps.*}"
  for r in "${runs[@]}"; do
    tool=${r%%=*}; filter=${r#*=}
    ( cd "$BUILD/tests" && LD_LIBRARY_PATH="$MF_DIR/lib" timeout "${SANITIZE_TIMEOUT:-300}" \
        compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 \
        "$MF_DIR/moeflux_tests" --gtest_filter="$filter" > "$OUTD/sanitizer-$tool.log" 2>&1 )
    echo "compute-sanitizer $tool ($filter): exit $? — $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED)" "$OUTD/sanitizer-$tool.log" | tr "\n" " ")"
    grep -E -A6 "Failure$" "$OUTD/sanitizer-$tool.log" | head -24
  done
fi

if [ "${PCIE:-0}" = 1 ]; then  # kernels reading page-locked host memory in place vs the copy engine
  echo "== PCIe: kernel reads of host memory against the copy engine"
  "$MF_DIR/run-moeflux_pcie_bench" | tee "$OUTD/pcie.txt"
fi

PKG=/tmp/q30-8
"$MF" synth --family qwen3_moe --preset qwen3-30b-a3b --layers 8 --experts q4 --resident q4 -q "$PKG"
IFS=";" read -ra variants <<< "${VARIANTS:-resident:--gpu-mem all;gpu25:--gpu-mem 25%;slots:--gpu-mem 0;slots-cpu:--gpu-mem 0 --cpu-experts auto}"
for v in "${variants[@]}"; do
  name=${v%%:*}; flags=${v#*:}
  # Words of the form NAME=value set the environment (MOEFLUX_CUDA_GRAPHS=0); the rest are flags.
  envs=(); args=()
  for w in $flags; do
    if [[ $w =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$w"); else args+=("$w"); fi
  done
  env "${envs[@]}" "$MF" bench -m "$PKG" --backend cuda --prompt-len 512 --gen-len "${GEN:-128}" \
    --repeat 3 --no-ceilings --ram-cache 64G --keep-cache "${args[@]}" ${TIMING:+--timing} \
    --json "$OUTD/bench-$name.json" > "$OUTD/bench-$name.txt" 2>&1
  echo "== $name ($flags)"; grep -E '^(decode|experts|hits|cpu |copies|in place|bus|host|graphs)' "$OUTD/bench-$name.txt"
done
if [ "${DIRECT:-0}" = 1 ]; then  # experts from storage (O_DIRECT, 1 GiB RAM tier), with the ceilings
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  "$MF" bench -m "$PKG" --backend cuda --prompt-len 64 --gen-len "${GEN:-128}" --repeat 3 \
    --io direct --ram-cache 1G --gpu-mem 0 --json "$OUTD/bench-direct.json" \
    > "$OUTD/bench-direct.txt" 2>&1
  echo "== direct (--io direct --ram-cache 1G --gpu-mem 0)"
  grep -E '^(decode|experts|hits|copies|host|storage|ceilings)' "$OUTD/bench-direct.txt"
fi
if [ "${REAL:-0}" = 1 ]; then  # the bundled model's real routing: GPU-tier hits, prefetch accuracy
  IFS=";" read -ra real <<< "${REAL_VARIANTS:-gpu25:--gpu-mem 25%;gpu25-lookahead:--gpu-mem 25% --prefetch lookahead}"
  for v in "${real[@]}"; do
    name=${v%%:*}; flags=${v#*:}
    # shellcheck disable=SC2086
    "$MF" bench -m models/moeflux-tiny-kjv --backend cuda --prompt-len 64 --gen-len 256 --repeat 3 \
      --no-ceilings --ram-cache 1G --keep-cache $flags --json "$OUTD/real-$name.json" \
      > "$OUTD/real-$name.txt" 2>&1
    echo "== real routing, $name ($flags)"
    grep -E '^(decode|experts|hits|copies|host|prefetch)' "$OUTD/real-$name.txt"
  done
fi
if [ "${PROFILE:-0}" = 1 ]; then  # each op's own GPU time (serialised), resident experts
  MOEFLUX_CUDA_PROFILE=1 "$MF" bench -m "$PKG" --backend cuda --prompt-len 512 --gen-len 64 \
    --repeat 1 --no-ceilings --gpu-mem all > "$OUTD/profile.txt" 2>&1
  grep -E '^\[cuda profile\]' "$OUTD/profile.txt"
fi
if [ "${NSYS:-0}" = 1 ]; then  # GPU kernel and CUDA API summaries of resident decode (Nsight Systems)
  if command -v nsys >/dev/null; then
    # --cuda-graph-trace=node: each kernel of the recorded decode step, not the graph as one.
    nsys profile -o "$OUTD/resident" --force-overwrite true --stats=true \
      --cuda-graph-trace=node "$MF" bench -m "$PKG" \
      --backend cuda --prompt-len 16 --gen-len 256 --repeat 1 --no-ceilings --gpu-mem all --timing \
      > "$OUTD/nsys.txt" 2>&1
    echo "nsys: exit $? ($(grep -c . "$OUTD/nsys.txt") lines in nsys.txt)"; rm -f "$OUTD"/resident.nsys-rep
  else
    echo "nsys: not installed on this host"
  fi
fi
# NSYS_VARIANTS ("name:flags;...", as VARIANTS): decode under Nsight Systems, GPU trace only; per
# token the GPU's busy and idle time (idle gaps by length: where it waited for the host), kernels
# and copies overlapping, the costliest operations (bench/device/gpu_trace.py), into
# $OUT/trace-NAME.txt.
IFS=";" read -ra nsys_variants <<< "${NSYS_VARIANTS:-}"
for v in "${nsys_variants[@]}"; do
  command -v nsys >/dev/null || { echo "nsys: not installed on this host"; break; }
  name=${v%%:*}; flags=${v#*:}; envs=(); args=()
  for w in $flags; do
    if [[ $w =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$w"); else args+=("$w"); fi
  done
  gen=${NSYS_GEN:-128}
  env "${envs[@]}" nsys profile -t cuda --cuda-graph-trace=node -o "/tmp/trace-$name" \
    --force-overwrite true \
    "$MF" bench -m "$PKG" --backend cuda --prompt-len 16 --gen-len "$gen" --repeat 1 \
    --no-ceilings --ram-cache 64G "${args[@]}" > "$OUTD/trace-$name.bench.txt" 2>&1
  nsys stats --report cuda_gpu_trace --format csv --output "/tmp/trace-$name" \
    "/tmp/trace-$name.nsys-rep" > /dev/null 2>&1
  echo "== nsys $name ($flags)"
  python3 bench/device/gpu_trace.py "/tmp/trace-${name}_cuda_gpu_trace.csv" "$gen" \
    | tee "$OUTD/trace-$name.txt"
  rm -f "/tmp/trace-$name".*
done
if [ "${NCU:-0}" = 1 ]; then  # each kernel's GPU time and DRAM bytes over ~2 decode tokens (Nsight Compute)
  ncu --launch-skip "${NCU_SKIP:-3000}" --launch-count "${NCU_COUNT:-320}" --csv \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size \
    "$MF" bench -m "$PKG" --backend cuda --prompt-len 16 --gen-len 64 --repeat 1 --no-ceilings \
    --gpu-mem all > "$OUTD/ncu.csv" 2> "$OUTD/ncu.err"
  echo "ncu: exit $?"
  python3 - "$OUTD/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ki, mi, vi = hdr.index("Kernel Name"), hdr.index("Metric Name"), hdr.index("Metric Value")
t = collections.defaultdict(float); b = collections.defaultdict(float); n = collections.Counter()
for r in rows:
    k = r[ki].replace("(anonymous namespace)::", "").replace("moeflux::cuda::", "").split("(")[0][:70]
    v = float(r[vi].replace(",", ""))
    if r[mi] == "gpu__time_duration.sum": t[k] += v; n[k] += 1
    if r[mi] == "dram__bytes_read.sum": b[k] += v
tot = sum(t.values())
print(f"ncu: {sum(n.values())} kernels, {tot/1e3:.1f} us in all")
for k in sorted(t, key=lambda k: -t[k]):
    print(f"{k:72s} n={n[k]:4d} {t[k]/1e3:9.1f} us  {t[k]/n[k]/1e3:7.2f} us each  {b[k]/max(t[k],1):7.1f} GB/s")
PY
fi
if [ "${NCU_PROMPT:-0}" = 1 ]; then  # the prompt's kernels one by one: time, grid, throughput, occupancy
  ncu -k "regex:${NCU_KERNELS:-gemm|group_pairs|split}" --launch-skip "${NCU_SKIP:-0}" \
    --launch-count "${NCU_COUNT:-24}" --csv --section SpeedOfLight --section WarpStateStats \
    --section Occupancy --section LaunchStats "$MF" bench -m "$PKG" --backend cuda \
    --prompt-len 512 --gen-len 1 --repeat 1 --no-ceilings --gpu-mem all ${NCU_PROMPT_FLAGS:-} \
    > "$OUTD/ncu-prompt.csv" 2> "$OUTD/ncu-prompt.err"
  echo "ncu (prompt): exit $?"
  python3 - "$OUTD/ncu-prompt.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ii, ki, mi, vi = (hdr.index(h) for h in ("ID", "Kernel Name", "Metric Name", "Metric Value"))
launches = collections.OrderedDict()
for r in rows:
    launches.setdefault(r[ii], {"name": r[ki].replace("(anonymous namespace)::", "").replace("moeflux::cuda::", "").split("(")[0][-28:]})[r[mi]] = r[vi]
print(f"{'kernel':28s} {'grid':>14s} {'us':>8s} {'SM%':>6s} {'mem%':>6s} {'occ%':>6s} {'regs':>5s}")
for l in launches.values():
    print(f"{l['name']:28s} {l.get('Grid Size','?'):>14s} {float(l.get('Duration','0').replace(',',''))/1e3:8.1f} "
          f"{l.get('Compute (SM) Throughput','?'):>6s} {l.get('Memory Throughput','?'):>6s} "
          f"{l.get('Achieved Occupancy','?'):>6s} {l.get('Registers Per Thread','?'):>5s}")
PY
fi
if [ "${CHECKSUM:-0}" = 1 ]; then
  for verify in off on off on; do
    extra=""; [ $verify = off ] && extra=--no-verify
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
    "$MF" bench -m "$PKG" --backend cpu --io direct --prompt-len 64 --gen-len 32 --repeat 3 \
      --no-ceilings --threads "$(nproc)" $extra >> "$OUTD/checksum-$verify.txt" 2>&1
    echo "checksums $verify: $(grep -E '^(decode|verify)' "$OUTD/checksum-$verify.txt" | tail -2 | tr '\n' ' ')"
  done
fi
if [ "${QWEN35:-0}" = 1 ]; then  # the hybrid family's prompts: DeltaNet chunked vs recurrent
  Q35=/tmp/q35-8
  "$MF" synth --family qwen3_5_moe --preset qwen3.6-35b-a3b --layers 8 --experts q4 --resident q4 \
    -q "$Q35"
  for v in chunked:1 recurrent:0; do
    MOEFLUX_CUDA_DELTA_CHUNKED=${v#*:} "$MF" bench -m "$Q35" --backend cuda --prompt-len 512 \
      --gen-len 64 --repeat 3 --no-ceilings --ram-cache 64G --keep-cache --gpu-mem all \
      --json "$OUTD/bench-q35-${v%%:*}.json" > "$OUTD/bench-q35-${v%%:*}.txt" 2>&1
    echo "== qwen3.6-35b shape, DeltaNet ${v%%:*}"
    grep -E '^(prefill|decode|host)' "$OUTD/bench-q35-${v%%:*}.txt"
  done
  rm -rf "$Q35"
fi
if [ "${BATCH:-0}" = 1 ]; then  # batched decode: 9-31 rows grouped on the host or routed on the device
  for v in host:host device:default; do
    MOEFLUX_DEVICE_ROUTING=${v#*:} "$MF" bench-batch -m "$PKG" --backend cuda --gpu-mem all \
      --sessions 1,8,12,16,24,32 --prompt-len 32 --gen-len 64 > "$OUTD/batch-${v%%:*}.txt" 2>&1
    echo "== bench-batch, 9-31 rows ${v%%:*}"; tail -8 "$OUTD/batch-${v%%:*}.txt"
  done
fi
if [ "${DEEPSEEK:-0}" = 1 ]; then
  rm -rf "$PKG"  # its disk space, for the larger packages
  OUT="$OUTD/deepseek" MF="$MF" bench/device/deepseek_gpu.sh
fi
( cd "$OUTD" && tar czf /tmp/cuda-all.tgz . && find . -mindepth 1 -delete && mv /tmp/cuda-all.tgz . )
