#!/usr/bin/env bash
# Builds moeflux and runs the bundled model: a small Qwen3.5-MoE (hybrid Gated DeltaNet +
# attention, 32 experts) trained on the King James Bible, streaming its text with its speed.
#   scripts/demo.sh ["prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$(nproc)" moeflux
./build/moeflux inspect models/moeflux-tiny-kjv
echo
./build/moeflux run -p "${1:-And it came to pass}" -n 120 --seed 7
echo
