#!/usr/bin/env bash
# On the GPU host (device tool), from the repository root, with ".devbuild" (bench/device/pack.sh)
# and ".peer" (a copy of ../shared/peer) carried: unpacks moeflux, then runs the peer benchmark —
# llama.cpp and moeflux on the same weights in one call — with moeflux's per-layer profile.
# Environment: MODE (cpu|cuda), LAYERS (8), MF_ARGS (extra moeflux bench flags), OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
MF_DIR=/tmp/moeflux-bin
mkdir -p "$MF_DIR" && tar xJf .devbuild/moeflux-bundle.tar.xz -C "$MF_DIR"
# A wrapper, so that the bundled libraries never reach llama.cpp's build or python.
cat > "$MF_DIR/run" <<EOS
#!/bin/sh
LD_LIBRARY_PATH=$MF_DIR/lib exec $MF_DIR/moeflux "\$@"
EOS
chmod +x "$MF_DIR/run"
OUTD=${OUT:-/tmp/peer-out}
mkdir -p "$OUTD"
"$MF_DIR/run" devices | tee "$OUTD/devices.txt"
MOEFLUX="$MF_DIR/run" TOKENIZER=models/moeflux-tiny-kjv/tokenizer/tokenizer.json \
  MF_ARGS="${MF_ARGS:---ram-cache 64G --timing}" bash .peer/peer_bench.sh
grep -E "^\[timing\]|decode|prefill" "$OUTD/moeflux.txt" | tail -20
