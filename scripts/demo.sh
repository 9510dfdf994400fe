#!/usr/bin/env bash
# Builds moeflux and runs it end to end on the bundled model: convert -> inspect -> logits.
# Until the trained default model lands, the bundled model is the committed qwen3_5_moe
# vision-language fixture (tiny, random weights): the run shows the pipeline and its speed, and
# the top next-token ids it predicts.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j "$(nproc)" moeflux

fixture=tests/fixtures/qwen3_5_moe_vl
mkdir -p out
./build/moeflux convert "$fixture/hf" out/demo-package --experts q4 --force
./build/moeflux inspect out/demo-package
tokens=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["tokens"])))' "$fixture/tokens.json")
./build/moeflux logits -m out/demo-package --tokens "$tokens" --out out/demo-logits.npy
python3 - <<'PY'
import struct
with open("out/demo-logits.npy", "rb") as f:
    magic = f.read(8); hlen = struct.unpack("<H", f.read(2))[0]
    header = f.read(hlen).decode()
    shape = tuple(int(x) for x in header.split("(")[1].split(")")[0].split(",") if x.strip())
    data = struct.unpack("<%df" % (shape[0] * shape[1]), f.read())
last = data[(shape[0] - 1) * shape[1]:]
top = sorted(range(shape[1]), key=lambda i: -last[i])[:5]
print("logits", shape, "- top next-token ids after the prompt:", top)
PY
