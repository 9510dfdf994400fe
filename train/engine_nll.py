#!/usr/bin/env python3
"""Held-out NLL of a moeflux package by the engine, window by window, against transformers' numbers.

    python3 train/engine_nll.py [--moeflux build/moeflux] [--pkg models/moeflux-tiny-kjv]
                                [--eval models/moeflux-tiny-kjv/heldout_eval.json] [--windows 0,1]

For each chosen window i of heldout_eval.json (token_ids[i*ctx:(i+1)*ctx], ctx = its "context"),
runs `moeflux logits` on the window's tokens from position 0, computes the mean NLL of the
ctx-1 predicted tokens from the float32 logits (log-softmax in float64) and prints it beside
transformers' per_window_nll[i]. With --windows all, every window, and the overall perplexity.
No numpy needed. Exit status 1 when a window differs by more than --tol (absolute, in nats).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from compare_logits import read_npy  # noqa: E402


def window_nll(logits, V, tokens):
    total = 0.0
    for t in range(len(tokens) - 1):
        row = logits[t * V:(t + 1) * V]
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(x - m) for x in row))
        total += lse - row[tokens[t + 1]]
    return total, len(tokens) - 1


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeflux", default=os.path.join(root, "build", "moeflux"))
    ap.add_argument("--pkg", default=os.path.join(root, "models", "moeflux-tiny-kjv"))
    ap.add_argument("--eval", default=None, help="heldout_eval.json (default: PKG/heldout_eval.json)")
    ap.add_argument("--windows", default="0", help="comma-separated window indices, or 'all'")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    ev = json.load(open(args.eval or os.path.join(args.pkg, "heldout_eval.json")))
    ctx, ids, ref = ev["context"], ev["token_ids"], ev["per_window_nll"]
    wins = range(ev["n_windows"]) if args.windows == "all" else [int(w) for w in args.windows.split(",")]
    tot = cnt = tot_ref = 0.0
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.npy")
        for w in wins:
            toks = ids[w * ctx:(w + 1) * ctx]
            subprocess.run([args.moeflux, "logits", "-m", args.pkg, "--tokens", ",".join(map(str, toks)),
                            "--out", out], check=True, stdout=subprocess.DEVNULL)
            shape, data = read_npy(out)
            if shape != (ctx, shape[1]):
                sys.exit(f"unexpected logits shape {shape}")
            s, c = window_nll(data, shape[1], toks)
            d = s / c - ref[w]
            worst = max(worst, abs(d))
            tot, cnt, tot_ref = tot + s, cnt + c, tot_ref + ref[w] * c
            print(f"window {w:3d}: engine NLL {s / c:.6f}  transformers {ref[w]:.6f}  diff {d:+.2e}", flush=True)
    print(f"{len(wins)} window(s), {int(cnt)} predicted tokens: engine NLL {tot / cnt:.6f} (ppl {math.exp(tot / cnt):.4f}), "
          f"transformers {tot_ref / cnt:.6f} (ppl {math.exp(tot_ref / cnt):.4f}); worst window diff {worst:.2e}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
