#!/usr/bin/env bash
# On the GPU host (device tool), from the repository root, with ".devbuild" (bench/device/pack.sh)
# and ".peer" (a copy of ../shared/peer) carried: unpacks moeflux and its tests, runs the CPU
# kernel and parity tests there (AVX-512 paths the dev machines may lack), then the peer
# benchmark — llama.cpp and moeflux on the same weights in one call — with moeflux's per-layer
# profile, and moeflux again with EXTRA_ARGS variants on the same package.
# Environment: MODE (cpu|cuda), LAYERS (8), MF_ARGS (moeflux bench flags), TESTS (a gtest
# filter; "" skips), VARIANTS ("name:[ENV=v ...|]flags;..." extra moeflux runs), OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
MF_DIR=/tmp/moeflux-bin
mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-bundle.tar.xz -C "$MF_DIR"
# Wrappers, so that the bundled libraries never reach llama.cpp's build or python.
for b in moeflux moeflux_tests; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/%s "$@"\n' "$MF_DIR" "$MF_DIR" "$b" > "$MF_DIR/run-$b"
  chmod +x "$MF_DIR/run-$b"
done
OUTD=${OUT:-/tmp/peer-out}
mkdir -p "$OUTD"
"$MF_DIR/run-moeflux" devices | tee "$OUTD/devices.txt"
if [ -n "${TESTS-Matvec*:*BackendOps*:*Parity*:*EngineTest*}" ]; then
  # The test binary has the source tree's paths compiled in: recreate them here.
  SRC=$(cat "$MF_DIR/source_dir")
  mkdir -p "$SRC/build-device/tests" && ln -sfn "$PWD/tests" "$SRC/tests" 2>/dev/null
  cp "$MF_DIR/run-moeflux" "$SRC/build-device/moeflux"
  ( cd "$SRC/build-device/tests" && "$MF_DIR/run-moeflux_tests" \
      --gtest_filter="${TESTS-Matvec*:*BackendOps*:*Parity*:*EngineTest*}" > "$OUTD/tests.log" 2>&1 )
  echo "tests: exit $? — $(grep -E '^\[  (PASSED|FAILED)' "$OUTD/tests.log" | tr '\n' ' ')"
fi
MOEFLUX="$MF_DIR/run-moeflux" TOKENIZER=models/moeflux-tiny-kjv/tokenizer/tokenizer.json \
  MF_ARGS="${MF_ARGS:---ram-cache 64G --timing}" bash .peer/peer_bench.sh
grep -E "^\[timing\]|decode|prefill" "$OUTD/moeflux.txt" | tail -24
IFS=';' read -ra variants <<< "${VARIANTS:-}"
for v in "${variants[@]}"; do
  name=${v%%:*}; flags=${v#*:}; envs=""
  if [[ $flags == *"|"* ]]; then envs=${flags%%|*}; flags=${flags#*|}; fi
  # shellcheck disable=SC2086
  env $envs "$MF_DIR/run-moeflux" bench -m /tmp/peer-work/pkg --prompt-len 512 --gen-len 64 --repeat 3 \
    --threads "$(nproc)" --no-ceilings --ram-cache 64G $flags --json "$OUTD/moeflux-$name.json" \
    > "$OUTD/moeflux-$name.txt" 2>&1
  echo "variant $name ($flags): $(grep -E '^decode' "$OUTD/moeflux-$name.txt")"
done
# Everything in one archive: the device tool brings back at most 8 files.
( cd "$OUTD" && tar czf /tmp/peer-all.tgz . && find . -mindepth 1 -delete && mv /tmp/peer-all.tgz . )
