#!/usr/bin/env python3
"""Compares two .npy logits files [positions, vocab] (float32 or float64) without numpy.

Prints, per file pair, the worst per-position relative L2 error ||a - b|| / ||b|| (b = the
reference, second argument) and how many positions agree on the argmax. Exit status 1 when the
worst error exceeds --tol.

    scripts/compare_logits.py OURS.npy REFERENCE.npy [--tol 1e-3]
"""
import argparse
import ast
import math
import struct
import sys


def read_npy(path):
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            sys.exit(f"{path}: not a .npy file")
        major = f.read(2)[0]
        hlen = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        code = {"<f4": "f", "<f8": "d"}.get(header["descr"])
        if code is None or header["fortran_order"]:
            sys.exit(f"{path}: need a C-order float32/float64 array")
        shape = header["shape"]
        n = math.prod(shape)
        return shape, struct.unpack(f"<{n}{code}", f.read(n * struct.calcsize(code)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    sa, a = read_npy(args.ours)
    sb, b = read_npy(args.reference)
    if sa != sb or len(sa) != 2:
        sys.exit(f"shape mismatch: {sa} vs {sb}")
    T, V = sa
    worst, same_top = 0.0, 0
    for t in range(T):
        ra, rb = a[t * V:(t + 1) * V], b[t * V:(t + 1) * V]
        num = sum((x - y) ** 2 for x, y in zip(ra, rb))
        den = sum(y * y for y in rb)
        worst = max(worst, math.sqrt(num / den))
        same_top += max(range(V), key=ra.__getitem__) == max(range(V), key=rb.__getitem__)
    print(f"{args.ours}: worst relative L2 {worst:.3g} over {T} positions, argmax agrees at {same_top}/{T}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
