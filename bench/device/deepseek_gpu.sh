#!/usr/bin/env bash
# On the GPU host (device tool), from the repository root, with ".devbuild" carried (made here by
# `CUDA=1 bench/device/pack.sh`): `bench --backend cuda` on synthesized packages with the
# published shapes of DeepSeek-V3 (671B), Kimi-K2 (1T) and GLM-4.5-Air, cut to a few layers with
# 4-bit experts and resident matrices (as the CPU figures in docs/PERF.md), each with every
# expert in GPU memory (--gpu-mem all) and with a 25% GPU tier over the RAM tier; every run is
# the median of 3 (--repeat 3). Prints a table at the end; logs and JSON reports go to $OUT.
#
# Standalone, or from cuda.sh with DEEPSEEK=1 (after cuda.sh's own steps; its output then has
# these under deepseek/). Meant to finish in about 4 minutes on one H200 with 16 cores: synth of
# a q4 package is CPU work (the resident matrices are quantized on the host), so layers stay few.
# Environment:
#   MODELS  "preset:family:layers;..." (default: deepseek-v3 4 layers = 3 dense + 1 MoE;
#           kimi-k2 2 = 1 dense + 1 MoE; glm-4.5-air 4 = 1 dense + 3 MoE)
#   TIERS   "name:flags;..." (default "all:--gpu-mem all;gpu25:--gpu-mem 25%")
#   BACKEND cuda (default; cpu checks the script on a machine without a GPU)
#   PROMPT  prompt tokens per run (128), GEN decode tokens per run (64)
#   CEILINGS=1 also measure the host's storage / memcpy ceilings (on each model's last tier)
#   RAM_CACHE  the RAM tier's budget (64G)
#   LIMIT   seconds allowed per synth or bench command (120); KEEP=1 keeps the packages
#   MF      a moeflux binary to run instead of the carried bundle's
#   WORK    where packages go (/tmp/ds-gpu), OUT (default /tmp/deepseek-out)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
MF_DIR=/tmp/moeflux-bin
if [[ -z "${MF:-}" ]]; then  # MF=path/to/moeflux runs a local build instead of the bundle
  if [[ ! -x "$MF_DIR/run-moeflux" ]]; then
    mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-cuda-bundle.tar.xz -C "$MF_DIR" || exit 1
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/moeflux "$@"\n' "$MF_DIR" "$MF_DIR" \
      > "$MF_DIR/run-moeflux"
    chmod +x "$MF_DIR/run-moeflux"
  fi
  MF="$MF_DIR/run-moeflux"
fi
OUTD=${OUT:-/tmp/deepseek-out}
WORK=${WORK:-/tmp/ds-gpu}
BACKEND=${BACKEND:-cuda}
LIMIT=${LIMIT:-120}
mkdir -p "$OUTD" "$WORK"
IFS=';' read -ra models <<< "${MODELS:-deepseek-v3:deepseek_v3:4;kimi-k2:deepseek_v3:2;glm-4.5-air:glm4_moe:4}"
IFS=';' read -ra tiers <<< "${TIERS:-all:--gpu-mem all;gpu25:--gpu-mem 25%}"
t0=$SECONDS
rows=()
for m in "${models[@]}"; do
  IFS=':' read -r preset family layers <<< "$m"
  pkg="$WORK/$preset-$layers"
  s0=$SECONDS
  if ! timeout "$LIMIT" "$MF" synth --family "$family" --preset "$preset" --layers "$layers" \
      --experts q4 --resident q4 --force "$pkg" > "$OUTD/synth-$preset.txt" 2>&1; then
    echo "synth $preset: failed (exit $?), see synth-$preset.txt"; tail -3 "$OUTD/synth-$preset.txt"
    rm -rf "$pkg" "$pkg".partial-*
    continue
  fi
  echo "synth $preset ($layers layers): $((SECONDS - s0)) s"
  "$MF" inspect "$pkg" > "$OUTD/inspect-$preset.txt" 2>&1
  grep -E '^(layers|parameters|resident|all experts)' "$OUTD/inspect-$preset.txt"
  res=$(sed -nE 's/^resident +([0-9.]+ [KMG]iB).*/\1/p' "$OUTD/inspect-$preset.txt")
  last=${tiers[${#tiers[@]}-1]%%:*}
  for t in "${tiers[@]}"; do
    name=${t%%:*}; flags=${t#*:}
    [[ "$BACKEND" == cuda ]] || flags=""  # --gpu-mem needs the CUDA backend
    ceil=--no-ceilings
    [[ "${CEILINGS:-0}" == 1 && "$name" == "$last" ]] && ceil=""
    log="$OUTD/bench-$preset-$name.txt"
    # shellcheck disable=SC2086
    timeout "$LIMIT" "$MF" bench -m "$pkg" --backend "$BACKEND" --prompt-len "${PROMPT:-128}" \
      --gen-len "${GEN:-64}" --repeat 3 --ctx 1024 --ram-cache "${RAM_CACHE:-64G}" --keep-cache $ceil $flags \
      --json "$OUTD/bench-$preset-$name.json" > "$log" 2>&1
    rc=$?
    dec=$(sed -nE 's/^decode +([0-9.]+) tok\/s.*/\1/p' "$log")
    pre=$(sed -nE 's/^decode .*prefill ([0-9.]+) tok\/s.*/\1/p' "$log")
    mib=$(sed -nE 's/^experts +([0-9.]+) MiB\/token requested.*/\1/p' "$log")
    hits=$(sed -nE 's/^hits +(.*)prefetch.*/\1/p' "$log" | sed 's/, *$//')
    rows+=("$(printf '| %s (%s layers) | %s | %s | %s | %s | %s | %s |' "$preset" "$layers" \
      "$name" "${dec:-exit $rc}" "${pre:--}" "${res:--}" "${mib:--}" "${hits:--}")")
    echo "== $preset $name: exit $rc"; grep -E '^(decode|experts|hits|ceilings)' "$log"
  done
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$pkg"
done
{
  echo "| model (layers) | tier | decode tok/s | prefill tok/s (${PROMPT:-128}) | resident |" \
    "expert MiB/token | hit rates |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$OUTD/table.md"
echo "deepseek_gpu.sh: $((SECONDS - t0)) s"
