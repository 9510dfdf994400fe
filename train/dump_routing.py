#!/usr/bin/env python3
"""Record which experts transformers' routers pick for held-out tokens of moeflux-tiny-kjv.

    python3 train/dump_routing.py --ckpt WORK/hf --eval WORK/heldout_eval.json --out WORK/routing_trace.json

Takes the first --windows windows (default 8 x 256 = 2048 tokens) of the held-out token ids in
heldout_eval.json, runs each window on its own from position 0 (as `moeflux logits` does, no cache,
float32 compute from the bf16 weights, eager attention and experts) and records, for every MoE
layer and token, the router's top-k expert ids in transformers' order (descending router
probability) and their normalised routing weights (rounded to 1e-4).

Output (one JSON object):
  format, model, source, context, num_experts, top_k, moe_layers,
  windows: [{start, tokens: [context ids],
             experts: [layer][token] -> [k expert ids], weights: [layer][token] -> [k weights]}],
  stats: per layer: expert counts, share of a token's experts already used by the previous token
         at the same layer (the reuse a "previous token's experts" prefetch would see).
For the streaming-cache work: replaying this trace gives the expert reads a cache would serve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import load_for_eval, router_parts, routers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--eval", required=True, help="heldout_eval.json written by train.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args()
    t0 = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    ev = json.load(open(args.eval))
    ctx = int(ev["context"])
    ids = ev["token_ids"]
    model = load_for_eval(args.ckpt, dev)
    E, K = model.config.num_experts, model.config.num_experts_per_tok
    taps = {}

    def hook(layer):
        def fn(mod, inputs, output):
            _, idx, w = router_parts(output, K)
            taps[layer] = (idx.reshape(-1, K).cpu(), None if w is None else w.reshape(-1, K).float().cpu())
        return fn

    rs = routers(model)
    hs = [g.register_forward_hook(hook(i)) for i, g in rs]
    layers = [i for i, _ in rs]
    windows = []
    n = min(args.windows, len(ids) // ctx)
    with torch.no_grad():
        for wi in range(n):
            toks = ids[wi * ctx:(wi + 1) * ctx]
            taps.clear()
            model(input_ids=torch.tensor([toks], device=dev), use_cache=False)
            windows.append({
                "start": wi * ctx,
                "tokens": toks,
                "experts": [taps[i][0].tolist() for i in layers],
                "weights": [[[round(x, 4) for x in row] for row in taps[i][1].tolist()] if taps[i][1] is not None
                            else None for i in layers],
            })
    for h in hs:
        h.remove()

    stats = {}
    for li, layer in enumerate(layers):
        counts = [0] * E
        reuse = tot = 0
        for w in windows:
            prev = None
            for sel in w["experts"][li]:
                for e in sel:
                    counts[e] += 1
                if prev is not None:
                    reuse += len(set(sel) & prev)
                    tot += K
                prev = set(sel)
        stats[str(layer)] = {"counts": counts, "unused": sum(c == 0 for c in counts),
                             "prev_token_reuse": round(reuse / max(1, tot), 4)}
        print(f"layer {layer}: experts used {E - stats[str(layer)]['unused']}/{E}, min/max count "
              f"{min(counts)}/{max(counts)}, share of experts reused from the previous token "
              f"{stats[str(layer)]['prev_token_reuse']:.3f} (random: {K / E:.3f})", flush=True)

    out = {
        "format": "moeflux routing trace v1",
        "model": ev.get("model", "moeflux-tiny-kjv"),
        "source": f"transformers {transformers.__version__} router outputs (top-k indices, normalised weights), "
                  f"float32 compute from the bf16 checkpoint, eager attention/experts, no cache, each window "
                  f"from position 0; tokens = heldout_eval.json token_ids",
        "context": ctx,
        "num_experts": E,
        "top_k": K,
        "moe_layers": layers,
        "windows": windows,
        "stats": stats,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {args.out}: {n} windows x {ctx} tokens x {len(layers)} layers, "
          f"{os.path.getsize(args.out) / 1e6:.2f} MB, {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
