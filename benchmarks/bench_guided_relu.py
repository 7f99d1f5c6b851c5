"""Guided-ReLU backward: native kernel vs eager PyTorch, torch.where, aten
threshold_backward (plain ReLU backward, the same bytes), torch.compile of the
reference and a same-size copy; plus GuidedBackprop end to end vs Captum.

    python benchmarks/bench_guided_relu.py [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import interp_ext  # noqa: E402
from interp_ext import ops, reference  # noqa: E402

SHAPES = [(32, 64, 112, 112), (64, 256, 56, 56), (1, 64, 112, 112)]


def op_rows(device: str, shapes, min_run_time: float) -> list[dict]:
    rows = []
    default_threads = torch.get_num_threads()
    compiled_ref = torch.compile(reference.guided_relu_backward, dynamic=False)
    for threads in common.thread_settings(device):
        torch.set_num_threads(threads)
        for shape in shapes:
            numel = 1
            for s in shape:
                numel *= s
            nbytes = numel * 4

            def make():
                g = torch.randn(shape, device=device)
                x = torch.randn(shape, device=device)
                return g, x, torch.empty_like(g)

            nxt = common.rotating(make, device, 3 * nbytes)
            g0, x0, _ = nxt()
            want = reference.guided_relu_backward(g0, x0)
            assert torch.equal(ops.guided_relu_backward(g0, x0), want), "native result differs from the reference"
            assert torch.equal(compiled_ref(g0, x0), want)

            def run(fn):
                return common.median_seconds(fn, device, min_run_time)

            def native():
                g, x, _ = nxt()
                return ops.guided_relu_backward(g, x)

            def native_out():
                g, x, out = nxt()
                return ops.guided_relu_backward(g, x, out=out)

            def eager():
                g, x, _ = nxt()
                return g * (x > 0) * (g > 0)

            def where():
                g, x, _ = nxt()
                return reference.guided_relu_backward_where(g, x)

            def threshold():
                g, x, _ = nxt()
                return torch.ops.aten.threshold_backward(g, x, 0)

            def threshold_out():
                g, x, out = nxt()
                return torch.ops.aten.threshold_backward.grad_input(g, x, 0, grad_input=out)

            def compiled():
                g, x, _ = nxt()
                return compiled_ref(g, x)

            def copy():
                g, _, _ = nxt()
                return g.clone()

            def copy_out():
                g, _, out = nxt()
                return out.copy_(g)

            t = {name: run(fn) for name, fn in [
                ("native", native), ("native_out", native_out), ("eager", eager), ("where", where),
                ("threshold_backward", threshold), ("threshold_backward_out", threshold_out),
                ("compiled_reference", compiled), ("clone", copy), ("copy_out", copy_out),
            ]}
            # bytes moved: guided reads g and x, writes out (3 passes); a copy reads and writes (2)
            bw = 3 * nbytes / t["native_out"]
            copy_bw = 2 * nbytes / t["copy_out"]
            rows.append({
                "device": device, "threads": threads, "dtype": "float32", "shape": "x".join(map(str, shape)),
                **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                "speedup_vs_eager": t["eager"] / t["native"],
                "speedup_vs_where": t["where"] / t["native"],
                "speedup_vs_compiled": t["compiled_reference"] / t["native"],
                "vs_threshold_backward": t["native"] / t["threshold_backward"],
                "vs_threshold_backward_out": t["native_out"] / t["threshold_backward_out"],
                "GBps_native_out": bw / 1e9,
                "copy_fraction": bw / copy_bw,
            })
            print(_row_line(rows[-1]), flush=True)
    torch.set_num_threads(default_threads)
    return rows


def _row_line(r: dict) -> str:
    return (f"[{r['device']} t={r['threads']} {r['shape']}] native {r['native_ms']:.2f} ms (out= {r['native_out_ms']:.2f}), "
            f"eager {r['eager_ms']:.2f}, where {r['where_ms']:.2f}, threshold_backward {r['threshold_backward_ms']:.2f} "
            f"(out= {r['threshold_backward_out_ms']:.2f}), compiled {r['compiled_reference_ms']:.2f}, "
            f"copy {r['copy_out_ms']:.2f} | x{r['speedup_vs_eager']:.1f} vs eager, "
            f"{r['vs_threshold_backward_out']:.2f}x threshold_backward(out), {r['copy_fraction']:.0%} of copy bandwidth")


def end_to_end_rows(device: str, batch: int, min_run_time: float) -> list[dict]:
    import torchvision

    try:
        from captum.attr import GuidedBackprop as CaptumGB
    except ImportError:
        CaptumGB = None
    rows = []
    default_threads = torch.get_num_threads()
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = list(range(batch))
    ours = lambda: interp_ext.GuidedBackprop(model).attribute(x, target=target)  # noqa: E731
    if CaptumGB is not None:
        torch.testing.assert_close(ours(), CaptumGB(model).attribute(x.clone(), target=target), rtol=1e-3, atol=1e-5)
    for threads in common.thread_settings(device):
        torch.set_num_threads(threads)
        t_ours = common.median_seconds(ours, device, min_run_time)
        row = {"device": device, "threads": threads, "model": "resnet18", "batch": batch, "interp_ext_s": t_ours}
        if CaptumGB is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_captum = common.median_seconds(lambda: CaptumGB(model).attribute(x, target=target), device, min_run_time)
            row.update({"captum_s": t_captum, "speedup_vs_captum": t_captum / t_ours})
        rows.append(row)
        print(f"[{device} t={threads}] GuidedBackprop resnet18 batch {batch}: interp_ext {t_ours:.3f} s"
              + (f", captum {row['captum_s']:.3f} s (x{row['speedup_vs_captum']:.2f})" if "captum_s" in row else ""), flush=True)
    torch.set_num_threads(default_threads)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small shapes and short runs (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    shapes = [(4, 16, 56, 56)] if args.quick else SHAPES
    min_run_time = 0.05 if args.quick else 0.5
    op = op_rows(args.device, shapes, min_run_time)
    # A CPU end-to-end call takes about a second: give the median several samples.
    e2e_time = min_run_time if args.quick or args.device == "cuda" else 6.0
    e2e = end_to_end_rows(args.device, 2 if args.quick else 8, e2e_time)
    payload = {"machine": common.machine(args.device), "build": interp_ext.build_info(), "guided_backward": op, "end_to_end": e2e}
    md = "\n\n".join([
        f"### Guided-ReLU backward, {payload['machine']['device']} ({payload['machine']['cpu']}), torch {payload['machine']['torch']}",
        common.md_table(op, ["device", "threads", "dtype", "shape", "native_ms", "native_out_ms", "eager_ms", "where_ms",
                             "threshold_backward_ms", "threshold_backward_out_ms", "compiled_reference_ms", "copy_out_ms",
                             "speedup_vs_eager", "vs_threshold_backward_out", "copy_fraction"]),
        "### GuidedBackprop end to end (ResNet-18, random weights, 224x224)",
        common.md_table(e2e, ["device", "threads", "model", "batch", "interp_ext_s", "captum_s", "speedup_vs_captum"]),
    ])
    path = common.write("guided_relu", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
