#!/usr/bin/env bash
# On the GPU host (device tool), with ".devbuild" carried: the CPU kernel, backend-op, parity and
# engine tests on its AVX-512 paths, then moeflux alone on a synthesized Qwen3-30B-A3B-shaped
# 8-layer 4-bit package (no peer: a quick check between peer runs, not a ratio).
set -uo pipefail
cd "$(dirname "$0")/../.."
MF_DIR=/tmp/moeflux-bin
mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-bundle.tar.xz -C "$MF_DIR"
SRC=$(cat "$MF_DIR/source_dir")
mkdir -p "$SRC/build-device/tests" && ln -sfn "$PWD/tests" "$SRC/tests"
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/moeflux "$@"\n' "$MF_DIR" "$MF_DIR" > "$SRC/build-device/moeflux"
chmod +x "$SRC/build-device/moeflux"
MF="$SRC/build-device/moeflux"
( cd "$SRC/build-device/tests" && LD_LIBRARY_PATH="$MF_DIR/lib" "$MF_DIR/moeflux_tests" \
    --gtest_filter="${TESTS:-*Matvec*:*BackendOps*:*Parity*:*EngineTest*}" 2>&1 | tail -4 )
"$MF" synth --family qwen3_moe --preset qwen3-30b-a3b --layers 8 --experts q4 --resident q4 -q \
  /tmp/q30-8 && "$MF" bench -m /tmp/q30-8 --prompt-len 512 --gen-len 64 --repeat 3 --no-ceilings \
  --ram-cache 64G --keep-cache --timing 2>&1 | grep -E "^\[bench\]|^decode"
