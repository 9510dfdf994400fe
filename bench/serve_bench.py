#!/usr/bin/env python3
"""Measures a running `moeflux serve` (standard library only).

  serve_bench.py URL ttft      time to first token of a follow-up turn, with the conversation's
                               state cached (prefix reuse) and without (the slot was taken by
                               another conversation in between; run the server with --parallel 1)
  serve_bench.py URL batch     N = 1, 2, 4, 8 concurrent requests (ignore_eos, 64 tokens each):
                               aggregate tok/s (wall), decode tok/s and expert bytes per generated
                               token from the server's /health counters
"""
import json
import sys
import threading
import time
import urllib.request

URL = sys.argv[1].rstrip("/")

def post(path, body, stream=False):
    req = urllib.request.Request(URL + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)

def health():
    return json.load(urllib.request.urlopen(URL + "/health", timeout=60))

def ttft(messages):
    """Seconds to the first content delta of a streamed reply, and the reply's usage."""
    t0 = time.perf_counter()
    first = None
    usage = None
    text = ""
    with post("/v1/chat/completions", {"messages": messages, "max_tokens": 16, "temperature": 0,
                                       "stream": True,
                                       "stream_options": {"include_usage": True}}) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev["choices"]:
                c = ch["delta"].get("content")
                if c:
                    text += c
                    if first is None:
                        first = time.perf_counter() - t0
    return first, usage, text

def run_ttft():
    book = ("And God said, Let there be light: and there was light. And God saw the light, that it "
            "was good: and God divided the light from the darkness. ") * 40
    conv = [{"role": "system", "content": book}, {"role": "user", "content": "In the beginning"}]
    _, u1, reply = ttft(conv)
    follow = conv + [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "And the evening and the morning"}]
    with_reuse, u2, _ = ttft(follow)
    # Another conversation takes the slot (--parallel 1), then the same follow-up again.
    ttft([{"role": "user", "content": "Blessed is the man"}])
    without, u3, _ = ttft(follow)
    print(f"first turn: {u1['prompt_tokens']} prompt tokens")
    print(f"follow-up ({u2['prompt_tokens']} prompt tokens): TTFT {with_reuse*1e3:.0f} ms with "
          f"prefix reuse ({u2['prompt_tokens_details']['cached_tokens']} cached), "
          f"{without*1e3:.0f} ms without ({u3['prompt_tokens_details']['cached_tokens']} cached)")

def run_batch():
    print(f"{'requests':>8} {'agg tok/s':>10} {'decode tok/s':>13} {'expert MiB/tok':>15} "
          f"{'storage MiB/tok':>16} {'rows/step':>10}")
    for n in (1, 2, 4, 8):
        h0 = health()
        done = []
        def one(i):
            with post("/v1/completions", {"prompt": f"And it came to pass {i}", "max_tokens": 64,
                                          "temperature": 0, "ignore_eos": True}) as r:
                done.append(json.load(r)["usage"]["completion_tokens"])
        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        h1 = health()
        d0, d1 = h0["decode"], h1["decode"]
        toks = sum(done)
        rows = d1["rows"] - d0["rows"]
        print(f"{n:>8} {toks / wall:>10.1f} {rows / max(d1['seconds'] - d0['seconds'], 1e-9):>13.1f} "
              f"{(d1['expert_bytes'] - d0['expert_bytes']) / max(rows, 1) / 2**20:>15.3f} "
              f"{(d1['storage_bytes'] - d0['storage_bytes']) / max(rows, 1) / 2**20:>16.3f} "
              f"{rows / max(d1['steps'] - d0['steps'], 1):>10.2f}")

{"ttft": run_ttft, "batch": run_batch}[sys.argv[2]]()
