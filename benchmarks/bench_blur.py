"""Gaussian blur and total variation: the native ops vs torchvision's ``gaussian_blur``
(a 2-D depthwise convolution), kornia's ``gaussian_blur2d`` (separable and 2-D),
``torch.compile`` of the pure-PyTorch reference and a same-size copy (the bytes floor);
forward and forward + backward. TV forward + backward and the regularisation step vs
the eager reference. The class-visualisation loop with the native regularisers vs the same loop in eager ops.

    python benchmarks/bench_blur.py [--device cpu|cuda] [--quick] [--loop-steps 200]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import interp_ext  # noqa: E402
from interp_ext import ops, reference  # noqa: E402

CASES = [((64, 3, 224, 224), 5), ((64, 3, 224, 224), 9), ((1, 3, 224, 224), 5), ((256, 3, 224, 224), 5)]
SIGMA = {5: 1.0, 9: 2.0}


def contenders(kernel: int):
    sigma = SIGMA[kernel]
    fns = {"interp_ext": lambda x: ops.gaussian_blur(x, sigma, kernel)}
    try:
        import torchvision.transforms.functional as tvf

        fns["torchvision"] = lambda x: tvf.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    except ImportError:
        pass
    try:
        import kornia.filters as kf

        fns["kornia_separable"] = lambda x: kf.gaussian_blur2d(x, (kernel, kernel), (sigma, sigma), separable=True)
        fns["kornia_2d"] = lambda x: kf.gaussian_blur2d(x, (kernel, kernel), (sigma, sigma), separable=False)
    except ImportError:
        pass
    taps = ops.gaussian_taps(torch.tensor([sigma]), kernel).float()
    fns["compiled_reference"] = torch.compile(lambda x: reference.separable_filter(x, taps.to(x.device), taps.to(x.device)),
                                              dynamic=False)
    return fns


def blur_rows(device: str, cases, min_run_time: float) -> list[dict]:
    rows = []
    default_threads = torch.get_num_threads()
    for threads in common.thread_settings(device):
        torch.set_num_threads(threads)
        for shape, kernel in cases:
            fns = contenders(kernel)
            nbytes = 4 * torch.Size(shape).numel()
            nxt = common.rotating(lambda: (torch.rand(shape, device=device), torch.empty(shape, device=device)), device, 2 * nbytes)
            x0, _ = nxt()
            want = ops.gaussian_blur(x0, SIGMA[kernel], kernel)
            for name, fn in fns.items():
                if name != "interp_ext":
                    torch.testing.assert_close(fn(x0), want, rtol=1e-4, atol=1e-5)
            row = {"device": device, "threads": threads, "shape": "x".join(map(str, shape)), "kernel": kernel}
            for name, fn in fns.items():
                row[f"{name}_ms"] = 1e3 * common.median_seconds(lambda fn=fn: fn(nxt()[0]), device, min_run_time)

            def copy():
                x, buf = nxt()
                buf.copy_(x)

            row["copy_ms"] = 1e3 * common.median_seconds(copy, device, min_run_time)

            def into_buffer():  # out=: what a loop that reuses its buffer pays
                x, buf = nxt()
                ops.gaussian_blur(x, SIGMA[kernel], kernel, out=buf)

            row["interp_ext_out_ms"] = 1e3 * common.median_seconds(into_buffer, device, min_run_time)

            def fwd_bwd(fn):
                def run():
                    x = nxt()[0].requires_grad_(True)
                    fn(x).sum().backward()
                return run

            row["interp_ext_fwd_bwd_ms"] = 1e3 * common.median_seconds(fwd_bwd(fns["interp_ext"]), device, min_run_time)
            if "torchvision" in fns:
                row["torchvision_fwd_bwd_ms"] = 1e3 * common.median_seconds(fwd_bwd(fns["torchvision"]), device, min_run_time)
            for name in fns:
                if name != "interp_ext":
                    row[f"speedup_vs_{name}"] = row[f"{name}_ms"] / row["interp_ext_ms"]
            if "torchvision_fwd_bwd_ms" in row:
                row["speedup_fwd_bwd_vs_torchvision"] = row["torchvision_fwd_bwd_ms"] / row["interp_ext_fwd_bwd_ms"]
            row["vs_copy"] = row["interp_ext_ms"] / row["copy_ms"]
            row["out_vs_copy"] = row["interp_ext_out_ms"] / row["copy_ms"]
            rows.append(row)
            print(f"[{device} t={threads}] blur {row['shape']} k{kernel}: interp_ext {row['interp_ext_ms']:.3g} ms "
                  f"(out= {row['interp_ext_out_ms']:.3g} ms), "
                  + ", ".join(f"{n} x{row[f'speedup_vs_{n}']:.1f}" for n in fns if n != "interp_ext")
                  + f", copy {row['copy_ms']:.3g} ms (x{row['vs_copy']:.2f} of copy)", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def tv_rows(device: str, shapes, min_run_time: float) -> list[dict]:
    """Total variation (beta 2), forward + backward: native vs the eager reference."""
    def setup(shape):
        nxt = common.rotating(lambda: torch.rand(shape, device=device), device, 4 * torch.Size(shape).numel())
        x0 = nxt()
        torch.testing.assert_close(ops.total_variation(x0), reference.total_variation(x0), rtol=1e-4, atol=1e-3)

        def run(fn):
            def go():
                x = nxt().requires_grad_(True)
                fn(x).sum().backward()
            return go

        return run(ops.total_variation), run(reference.total_variation)

    return [{**row, "beta": 2.0} for row in common.native_vs_eager_rows(device, "TV fwd+bwd", shapes, min_run_time, setup)]


def regularize_rows(device: str, shapes, min_run_time: float) -> list[dict]:
    """One Yosinski regularisation step (every clip on, percentiles 10) in place: the native
    op vs the same step in eager float32 ops (torch.quantile per sample, masks)."""
    kw = dict(decay=1e-3, grad_percentile=10.0, norm_percentile=10.0, contribution_percentile=10.0)

    def setup(shape):
        x0, g = torch.randn(shape, device=device), torch.randn(shape, device=device)
        buf = x0.clone()
        ops.regularize_step_(buf, g, 0.1, **kw)
        torch.testing.assert_close(buf.double(), reference.regularize_step(x0, g, 0.1, **kw), rtol=1e-5, atol=1e-6)

        def native():
            buf.copy_(x0)
            ops.regularize_step_(buf, g, 0.1, **kw)

        return native, lambda: reference.regularize_step(x0, g, 0.1, **kw, dtype=None)

    return common.native_vs_eager_rows(device, "regularise step", shapes, min_run_time, setup)


def loop_rows(device: str, steps: int, batch: int, size: int) -> list[dict]:
    """The class-visualisation loop (jitter, class score gradient, regularised step, blur
    every 4 steps, clamp) on the bundled model: interp_ext.visualize vs the same loop
    written with eager ops (reference.regularize_step, torchvision's gaussian_blur)."""
    import time

    import torchvision.transforms.functional as tvf

    from interp_ext import models, visualize

    loaded = models.load()
    loaded.model.to(device)
    targets = list(range(0, 1000, 1000 // batch))[:batch]
    kw = dict(decay=1e-3, grad_percentile=10.0, norm_percentile=10.0, contribution_percentile=10.0)

    def ours():
        visualize.class_visualization(loaded, targets, steps=steps, lr=0.1, image_size=size, seed=0, **kw)

    def eager():
        pre = visualize._common.preprocessed(loaded, None, None)
        lo, hi = pre.bounds()
        x = torch.zeros(batch, 3, size, size, device=device)
        gen = torch.Generator().manual_seed(0)
        t = torch.tensor(targets, device=device)
        for step in range(steps):
            oy, ox = torch.randint(-8, 9, (2,), generator=gen).tolist()
            xj = x.roll((oy, ox), dims=(2, 3)).requires_grad_(True)
            obj = loaded.model(xj).gather(1, t[:, None])[:, 0]
            (g,) = torch.autograd.grad(obj.sum(), xj)
            g = g.roll((-oy, -ox), dims=(2, 3))
            g = g / (g.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
            x = reference.regularize_step(x, g, 0.1, **kw, dtype=None)  # eager ops in float32
            if (step + 1) % 4 == 0:
                x = tvf.gaussian_blur(x, [3, 3], [0.5, 0.5])
            x = torch.maximum(torch.minimum(x, hi), lo)

    rows = []
    for name, fn in (("interp_ext", ours), ("eager", eager)):
        start = time.perf_counter()
        fn()
        common.sync(device)
        rows.append((name, time.perf_counter() - start))
    out = {"device": device, "threads": torch.get_num_threads(), "steps": steps, "batch": batch, "size": size,
           "interp_ext_s": rows[0][1], "eager_s": rows[1][1], "speedup_vs_eager": rows[1][1] / rows[0][1]}
    print(f"[{device}] class-visualisation loop, {steps} steps, batch {batch}, {size}px: interp_ext {rows[0][1]:.2f} s, "
          f"eager {rows[1][1]:.2f} s (x{out['speedup_vs_eager']:.2f})", flush=True)
    return [out]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small shapes and short runs (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--loop-steps", type=int, default=200, help="steps of the class-visualisation loop (default 200)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    cases = [((4, 3, 64, 64), 5), ((4, 3, 64, 64), 9)] if args.quick else CASES
    min_run_time = 0.05 if args.quick else 0.5
    blur = blur_rows(args.device, cases, min_run_time)
    tv = tv_rows(args.device, [(4, 3, 64, 64)] if args.quick else [(8, 3, 224, 224), (64, 3, 224, 224)], min_run_time)
    reg = regularize_rows(args.device, [(2, 3, 64, 64)] if args.quick else [(8, 3, 224, 224)], min_run_time)
    loop = loop_rows(args.device, 4 if args.quick else args.loop_steps, 2 if args.quick else 8, 64 if args.quick else 224)
    # PyTorch's own allocations get huge pages only under THP_MEM_ALLOC_ENABLE=1; the
    # native blur asks for them for its output either way (see csrc/cpu/huge_pages.h).
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    payload = {"machine": common.machine(args.device), "build": interp_ext.build_info(), "THP_MEM_ALLOC_ENABLE": thp,
               "blur": blur, "tv": tv, "regularize": reg, "loop": loop}
    names = [k[: -len("_ms")] for k in blur[0] if k.endswith("_ms")]
    md = "\n\n".join([
        f"### Gaussian blur, {payload['machine']['device']} ({payload['machine']['cpu']}), torch {payload['machine']['torch']}, "
        f"THP_MEM_ALLOC_ENABLE={thp}",
        common.md_table(blur, ["device", "threads", "shape", "kernel", *[f"{n}_ms" for n in names],
                               *[k for k in blur[0] if k.startswith("speedup")], "vs_copy",
                               "out_vs_copy"]),
        "### Total variation, forward + backward",
        common.md_table(tv, ["device", "threads", "shape", "beta", "interp_ext_ms", "eager_ms", "speedup_vs_eager"]),
        "### Regularisation step (in place; decay, gradient / norm / contribution clips at percentile 10)",
        common.md_table(reg, ["device", "threads", "shape", "interp_ext_ms", "eager_ms", "speedup_vs_eager"]),
        "### Class-visualisation loop (bundled EfficientNet-Lite0; regularisers every step, blur every 4)",
        common.md_table(loop, ["device", "threads", "steps", "batch", "size", "interp_ext_s", "eager_s", "speedup_vs_eager"]),
    ])
    path = common.write("blur", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
