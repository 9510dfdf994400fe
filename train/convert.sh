#!/usr/bin/env bash
# Converts the trained checkpoint (train/out/hf, unpacked from the GPU run) into the bundled
# package models/moeflux-tiny-kjv and copies the run's evaluation files beside it. The model
# card (README.md) and LICENSE-DATA.md in that folder are kept.
#
#   train/convert.sh [MOEFLUX_BINARY]      (default: build/moeflux)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-build/moeflux}"
src=train/out
dst=models/moeflux-tiny-kjv
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$bin" convert "$src/hf" "$tmp/pkg" --experts bf16 -q
mkdir -p "$dst"
rm -rf "$dst/manifest.json" "$dst/resident.bin" "$dst/experts" "$dst/tokenizer"
cp -r "$tmp/pkg/." "$dst/"
for f in heldout_eval.json samples.txt samples.json routing_trace.json train_log.json; do
  cp "$src/$f" "$dst/$f"
done
"$bin" inspect "$dst"
du -sh "$dst"
