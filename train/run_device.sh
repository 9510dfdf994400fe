#!/usr/bin/env bash
# The GPU-machine side of training moeflux-tiny-kjv (see train/README.md): train + save + evaluate
# (train.py), routing trace (dump_routing.py), then pack everything for the trip back.
#
#   OUT=/some/dir train/run_device.sh        (from the repository root; corpus in train/data)
#
# Results: $OUT/log.txt and $OUT/result.tar.partNN (split at 15 MiB; `cat result.tar.part* | tar x`
# gives hf/ (the checkpoint), heldout_eval.json, samples.txt, samples.json, train_log.json,
# routing_trace.json).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/kjv-out}"
WORK="${WORK:-/tmp/kjv-work}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  TOKENIZERS_PARALLELISM=true
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  timeout -s INT "${TRAIN_TIMEOUT:-470}" python3 train/train.py --data train/data --work "$WORK" \
    --train-seconds "${TRAIN_SECONDS:-290}" "$@"
  echo "train.py rc=$?"
  timeout 60 python3 train/dump_routing.py --ckpt "$WORK/hf" --eval "$WORK/heldout_eval.json" \
    --out "$WORK/routing_trace.json"
  echo "dump_routing.py rc=$?"
  rm -rf "$WORK/_config"
  ls -la "$WORK" "$WORK/hf"
} 2>&1 | tee "$OUT/log.txt"
tar -cf /tmp/kjv-result.tar -C "$WORK" . && split -b 15m -d /tmp/kjv-result.tar "$OUT/result.tar.part"
ls -la "$OUT"
