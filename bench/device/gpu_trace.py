#!/usr/bin/env python3
"""Where a decode run's GPU time goes, from an Nsight Systems GPU trace (bench/device/cuda.sh
NSYS_VARIANTS): `nsys stats --report cuda_gpu_trace --format csv` rows, one per kernel or copy.

    gpu_trace.py TRACE.csv TOKENS

The decode window is from the end of the first greedy pick on the device (argmax_kernel: the
prompt's last token) to the end of the last, one token per pick in it; without picks, the whole
trace over TOKENS. Prints, per decoded token: the span, the time some kernel or copy ran (busy), the time nothing
ran (idle) split by gap length, the time kernels and copies overlapped, and the kernels and
copies that took most time. Idle gaps are where the GPU waited for the host: its routing wait,
planning, the CPU's share, launches.
"""
import csv
import collections
import sys


def main():
    path, tokens = sys.argv[1], int(sys.argv[2])
    ops = []  # (start ns, end ns, name, is_copy)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    hdr_at = next(i for i, r in enumerate(rows) if "Start (ns)" in r and "Duration (ns)" in r)
    hdr = rows[hdr_at]
    si, di, ni = hdr.index("Start (ns)"), hdr.index("Duration (ns)"), hdr.index("Name")
    for r in rows[hdr_at + 1:]:
        if len(r) <= max(si, di, ni) or not r[si].strip():
            continue
        start, dur = int(float(r[si])), int(float(r[di]))
        name = r[ni]
        is_copy = name.startswith("[CUDA mem") or "memcpy" in name.lower()
        short = name.replace("(anonymous namespace)::", "").replace("moeflux::cuda::", "")
        short = short.split("(")[0].removeprefix("void ").strip() if not is_copy else short
        ops.append((start, start + dur, short[:60], is_copy))
    if not ops:
        sys.exit(f"gpu_trace: no operations in {path}")
    ops.sort()
    picks = [e for s, e, n, _ in ops if n.startswith("argmax_kernel")]
    if len(picks) >= 2:  # the decode window
        lo, hi = picks[0], picks[-1]
        tokens = len(picks) - 1
        ops = [o for o in ops if o[0] >= lo and o[1] <= hi]
        t0, t1 = lo, hi
    else:
        t0, t1 = ops[0][0], max(o[1] for o in ops)
    # Busy time: the union of all operations' intervals; idle gaps between them by length.
    busy = 0
    gaps = collections.Counter()
    gap_time = collections.Counter()
    bins = [(2e3, "< 2 us"), (10e3, "2-10 us"), (50e3, "10-50 us"), (200e3, "50-200 us"),
            (float("inf"), ">= 200 us")]
    cur_s, cur_e = ops[0][0], ops[0][1]
    for s, e, _, _ in ops[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gap = s - cur_e
            label = next(l for lim, l in bins if gap < lim)
            gaps[label] += 1
            gap_time[label] += gap
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = t1 - t0
    # Kernel time overlapped by copies (both running): kernels' union against copies' union.
    def union(intervals):
        out = []
        for s, e in sorted(intervals):
            if out and s <= out[-1][1]:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e])
        return out
    kern = union([(s, e) for s, e, _, c in ops if not c])
    copy = union([(s, e) for s, e, _, c in ops if c])
    overlap, j = 0, 0
    for s, e in kern:
        while j < len(copy) and copy[j][1] <= s:
            j += 1
        k = j
        while k < len(copy) and copy[k][0] < e:
            overlap += max(0, min(e, copy[k][1]) - max(s, copy[k][0]))
            k += 1
    per = lambda ns: ns / tokens / 1e3  # microseconds per token
    print(f"gpu trace: {len(ops)} operations, {tokens} tokens; per token: span {per(span):.1f} us, "
          f"busy {per(busy):.1f} us ({100 * busy / span:.1f}%), idle {per(span - busy):.1f} us")
    print(f"  kernels {per(sum(e - s for s, e in kern)):.1f} us, copies "
          f"{per(sum(e - s for s, e in copy)):.1f} us, both at once {per(overlap):.1f} us")
    for _, label in bins:
        if gaps[label]:
            print(f"  idle gaps {label:>9s}: {gaps[label] / tokens:7.1f} a token, "
                  f"{per(gap_time[label]):8.1f} us a token")
    total = collections.Counter()
    count = collections.Counter()
    for s, e, n, _ in ops:
        total[n] += e - s
        count[n] += 1
    print("  top operations (us a token, count a token, us each):")
    for n, t in total.most_common(16):
        print(f"    {n:60s} {per(t):8.1f} {count[n] / tokens:6.1f} {t / count[n] / 1e3:8.2f}")


if __name__ == "__main__":
    main()
