"""patch_splice (incremental occlusion's read boxes) against a same-size copy, CPU.

    python benchmarks/bench_patch_splice.py [--threads 1]

64 copies of a 64-channel 112x112 map, 19x19 boxes with a 16x16 patch spliced in (the
shape of an early layer's read boxes), into a reused buffer; the copy is out.copy_ of a
tensor of the output's size. Prints JSON.
"""
import argparse
import json

import torch
from torch.utils.benchmark import Timer

from interp_ext import ops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src = torch.randn(1, 64, 112, 112)
    k = 64
    sample = torch.zeros(k, dtype=torch.long)
    origin = torch.randint(-2, 100, (k, 2))
    patch = torch.randn(k, 64, 16, 16)
    porigin = origin + 1
    out = torch.empty(k, 64, 19, 19)
    same = torch.randn_like(out)
    env = dict(ops=ops, src=src, sample=sample, origin=origin, patch=patch, porigin=porigin, out=out, same=same)
    splice = Timer("ops.patch_splice(src, sample, origin, (19, 19), 0.0, patch, porigin, out=out)",
                   globals=env).blocked_autorange(min_run_time=1).median
    copy = Timer("out.copy_(same)", globals=env).blocked_autorange(min_run_time=1).median
    print(json.dumps({"threads": args.threads, "patch_splice_ms": splice * 1e3, "copy_ms": copy * 1e3,
                      "ratio": splice / copy}))


if __name__ == "__main__":
    main()
