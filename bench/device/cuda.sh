#!/usr/bin/env bash
# On the GPU host (device tool), from the repository root, with ".devbuild" carried (made here by
# `CUDA=1 bench/device/pack.sh`): the CUDA tests (every op against its CPU twin, engine parity
# with the CPU backend, GPU-tier invariance), parity against transformers' references with the
# CLI on the GPU (MOEFLUX_BACKEND=cuda), optionally compute-sanitizer, then `bench` on a
# synthesized Qwen3-30B-A3B-shaped 8-layer 4-bit package for each GPU-tier size.
# Environment: TESTS (gtest filter; "" skips), SANITIZE=1, VARIANTS ("name:flags;..."),
# GEN (decode tokens per run, 128), CHECKSUM=1 (the CPU backend's checksum cost on O_DIRECT
# reads: bench with and without --no-verify), DEEPSEEK=1 (then bench/device/deepseek_gpu.sh:
# DeepSeek-V3 / Kimi-K2 / GLM-4.5-Air shapes, into $OUT/deepseek), OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
MF_DIR=/tmp/moeflux-bin
mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-cuda-bundle.tar.xz -C "$MF_DIR"
for b in moeflux moeflux_tests; do
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
if [ "${SANITIZE:-0}" = 1 ]; then
  ( cd "$BUILD/tests" && LD_LIBRARY_PATH="$MF_DIR/lib" compute-sanitizer --tool memcheck \
      --report-api-errors no --error-exitcode 9 "$MF_DIR/moeflux_tests" \
      --gtest_filter='*CudaEngine*:CudaOps.*' \
      > "$OUTD/sanitizer.log" 2>&1 )
  echo "compute-sanitizer memcheck: exit $? — $(grep -E 'ERROR SUMMARY' "$OUTD/sanitizer.log" | tail -1)"
fi

PKG=/tmp/q30-8
"$MF" synth --family qwen3_moe --preset qwen3-30b-a3b --layers 8 --experts q4 --resident q4 -q "$PKG"
IFS=';' read -ra variants <<< "${VARIANTS:-resident:--gpu-mem all;gpu25:--gpu-mem 25%;slots:--gpu-mem 0}"
for v in "${variants[@]}"; do
  name=${v%%:*}; flags=${v#*:}
  # shellcheck disable=SC2086
  "$MF" bench -m "$PKG" --backend cuda --prompt-len 512 --gen-len "${GEN:-128}" --repeat 3 \
    --no-ceilings --ram-cache 64G --keep-cache $flags --json "$OUTD/bench-$name.json" \
    > "$OUTD/bench-$name.txt" 2>&1
  echo "== $name ($flags)"; grep -E '^(decode|experts|hits)' "$OUTD/bench-$name.txt"
done
if [ "${PROFILE:-0}" = 1 ]; then  # each op's own GPU time (serialised), resident experts
  MOEFLUX_CUDA_PROFILE=1 "$MF" bench -m "$PKG" --backend cuda --prompt-len 512 --gen-len 64 \
    --repeat 1 --no-ceilings --gpu-mem all > "$OUTD/profile.txt" 2>&1
  grep -E '^\[cuda profile\]' "$OUTD/profile.txt"
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
if [ "${DEEPSEEK:-0}" = 1 ]; then
  rm -rf "$PKG"  # its disk space, for the larger packages
  OUT="$OUTD/deepseek" MF="$MF" bench/device/deepseek_gpu.sh
fi
( cd "$OUTD" && tar czf /tmp/cuda-all.tgz . && find . -mindepth 1 -delete && mv /tmp/cuda-all.tgz . )
