"""Grad-CAM: the native reduction (weights, weighted sum, ReLU, resize, min-max) vs the
eager PyTorch reference, torch.compile of it and pytorch-grad-cam's NumPy/OpenCV path
fed the same tensors; every variant vs the same in eager torch ops; then
Grad-CAM end to end on ResNet-50 vs Captum and pytorch-grad-cam.

    python benchmarks/bench_gradcam.py [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import interp_ext  # noqa: E402
from interp_ext import ops, reference  # noqa: E402

SHAPES = [((64, 512, 14, 14), (224, 224)), ((64, 2048, 7, 7), (224, 224)), ((1, 2048, 7, 7), (224, 224))]


def eager_finish(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU'd (N, 1, h, w) map -> F.interpolate -> per-sample min-max."""
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    lo = cam.amin((2, 3), keepdim=True)
    span = cam.amax((2, 3), keepdim=True) - lo
    return torch.where(span > 0, (cam - lo) / span.clamp_min(1e-30), torch.zeros_like(cam))


def eager_gradcam(a: torch.Tensor, g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What a user writes by hand: mean, weighted sum, ReLU, F.interpolate, min-max."""
    return eager_finish((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).relu(), size)


def eager_variant(a: torch.Tensor, g: torch.Tensor, variant: str, size: tuple[int, int]) -> torch.Tensor:
    """Any variant by hand: the weights and map of ``reference.gradcam`` (torch ops at the
    layer's resolution), then F.interpolate and min-max as in `eager_gradcam`."""
    return eager_finish(reference.gradcam(a, g, variant, relu=True, output_size=None, normalize=False), size)


def pgc_reduction():
    """pytorch-grad-cam's own post-processing, as its GradCAM runs it per call."""
    try:
        import numpy as np
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.image import scale_cam_image
    except ImportError:
        return None
    dummy = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    pgc = PGC(model=dummy, target_layers=[dummy[0]])

    def run(a: torch.Tensor, g: torch.Tensor, size):
        a_np, g_np = a.detach().cpu().numpy(), g.detach().cpu().numpy()
        cam = np.maximum(pgc.get_cam_image(None, None, None, a_np, g_np, False), 0)
        return scale_cam_image(cam, (size[1], size[0]))

    return run


def reduction_rows(device: str, shapes, min_run_time: float) -> list[dict]:
    rows = []
    default_threads = torch.get_num_threads()
    compiled = torch.compile(eager_gradcam, dynamic=False)
    peer = pgc_reduction()
    for threads in common.thread_settings(device):
        torch.set_num_threads(threads)
        for shape, size in shapes:
            nbytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]

            def make():
                a, g = torch.randn(shape, device=device).relu(), torch.randn(shape, device=device) * 1e-3
                return a, g, torch.empty_like(a), torch.empty_like(g)  # + buffers for the copy floor

            nxt = common.rotating(make, device, 4 * nbytes)
            a0, g0, _, _ = nxt()
            want = eager_gradcam(a0, g0, size)
            torch.testing.assert_close(ops.gradcam(a0, g0, output_size=size), want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(compiled(a0, g0, size), want, rtol=1e-4, atol=1e-4)
            if peer is not None:  # it normalises before resizing: compare with that order
                cam = (g0.mean((2, 3), keepdim=True) * a0).sum(1, keepdim=True).relu()
                cam = cam - cam.amin((2, 3), keepdim=True)
                cam = F.interpolate(cam / (1e-7 + cam.amax((2, 3), keepdim=True)), size=size, mode="bilinear", align_corners=False)
                torch.testing.assert_close(torch.from_numpy(peer(a0, g0, size)), cam[:, 0].cpu(), rtol=0, atol=1e-3)
            out_bytes = 4 * shape[0] * size[0] * size[1]

            def timed(fn):
                def call():
                    a, g, _, _ = nxt()
                    return fn(a, g, size)

                return common.median_seconds(call, device, min_run_time)

            def copy_into():  # reads and writes A and G once, into reused buffers
                a, g, a_buf, g_buf = nxt()
                return a_buf.copy_(a), g_buf.copy_(g)

            t = {
                "native": timed(lambda a, g, s: ops.gradcam(a, g, output_size=s)),
                "eager": timed(eager_gradcam),
                "compiled": timed(compiled),
            }
            if peer is not None:
                t["pytorch_grad_cam"] = timed(peer)
            t["copy"] = common.median_seconds(copy_into, device, min_run_time)
            floor_bytes = 2 * nbytes + out_bytes  # read A and G once, write the map
            row = {
                "device": device, "threads": threads, "dtype": "float32",
                "shape": "x".join(map(str, shape)) + "->" + "x".join(map(str, size)),
                **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                "speedup_vs_eager": t["eager"] / t["native"],
                "speedup_vs_compiled": t["compiled"] / t["native"],
                # a copy moves the inputs twice (read + write): its time is the floor for twice the bytes
                "vs_bytes_floor": t["native"] / (t["copy"] * floor_bytes / (4 * nbytes)),
            }
            if peer is not None:
                row["speedup_vs_pytorch_grad_cam"] = t["pytorch_grad_cam"] / t["native"]
            rows.append(row)
            print(f"[{device} t={threads} {row['shape']}] native {row['native_ms']:.2f} ms, eager {row['eager_ms']:.2f}, "
                  f"compiled {row['compiled_ms']:.2f}"
                  + (f", pytorch-grad-cam {row['pytorch_grad_cam_ms']:.2f}" if peer else "")
                  + f" | x{row['speedup_vs_eager']:.1f} vs eager"
                  + (f", x{row['speedup_vs_pytorch_grad_cam']:.0f} vs pytorch-grad-cam" if peer else "")
                  + f", {row['vs_bytes_floor']:.2f}x the bytes floor", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def variant_rows(device: str, shapes, min_run_time: float) -> list[dict]:
    """Each variant, native vs by hand in eager torch ops (`eager_variant`), resized to
    `size` and normalised."""
    rows = []
    for variant in reference.GRADCAM_VARIANTS:
        for shape, size in shapes:
            def setup(shape, variant=variant, size=size):
                a, g = torch.randn(shape, device=device).relu(), torch.randn(shape, device=device) * 1e-3
                want = eager_variant(a, g, variant, size)
                torch.testing.assert_close(ops.gradcam(a, g, variant=variant, output_size=size), want, rtol=1e-4, atol=1e-4)
                return lambda: ops.gradcam(a, g, variant=variant, output_size=size), lambda: eager_variant(a, g, variant, size)

            size_str = "x".join(map(str, size))
            for r in common.native_vs_eager_rows(device, f"Grad-CAM {variant} ->{size_str}", [shape], min_run_time, setup):
                r["native_ms"] = r.pop("interp_ext_ms")
                rows.append({**r, "shape": f"{r['shape']}->{size_str}", "variant": variant})
    return rows


def end_to_end_rows(device: str, batch: int, rounds: int) -> list[dict]:
    import torchvision

    rows = []
    default_threads = torch.get_num_threads()
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = list(range(batch))

    def ours():
        return interp_ext.GradCAM(model, "layer4").attribute(x, target=target).maps

    def model_only():  # the unavoidable part: forward, and backward as far as layer4
        return interp_ext.GradCAM(model, "layer4").attribute(x, target=target, output_size=None, normalize=False)

    peers = {}
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        def captum_run():
            cam = LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, (224, 224), interpolate_mode="bilinear")
            lo = cam.amin((2, 3), keepdim=True)
            return (cam - lo) / (cam.amax((2, 3), keepdim=True) - lo + 1e-12)

        peers["captum"] = captum_run
    except ImportError:
        pass
    try:
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_run():
            with PGC(model=model, target_layers=[model.layer4]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])

        peers["pytorch_grad_cam"] = pgc_run
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for threads in common.thread_settings(device):
            torch.set_num_threads(threads)
            t = common.interleaved_medians({"interp_ext": ours, "model": model_only, **peers}, device, rounds)
            row = {"device": device, "threads": threads, "model": "resnet50", "batch": batch,
                   "interp_ext_s": t["interp_ext"], "model_share": min(1.0, t["model"] / t["interp_ext"])}
            for name in peers:
                row[f"{name}_s"] = t[name]
                row[f"speedup_vs_{name}"] = t[name] / t["interp_ext"]
            rows.append(row)
            print(f"[{device} t={threads}] Grad-CAM resnet50 batch {batch}: interp_ext {t['interp_ext']:.3f} s "
                  f"(model {row['model_share']:.0%})"
                  + "".join(f", {n} {row[f'{n}_s']:.3f} s (x{row[f'speedup_vs_{n}']:.2f})" for n in peers), flush=True)
    torch.set_num_threads(default_threads)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small shapes and short runs (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    shapes = [((4, 64, 14, 14), (56, 56))] if args.quick else SHAPES
    min_run_time = 0.05 if args.quick else 0.5
    red = reduction_rows(args.device, shapes, min_run_time)
    variants = variant_rows(args.device, shapes[:1] if args.quick else SHAPES[1:2], min_run_time)
    e2e = end_to_end_rows(args.device, 2 if args.quick else 16, 3 if args.quick else (20 if args.device == "cuda" else 9))
    payload = {"machine": common.machine(args.device), "build": interp_ext.build_info(), "reduction": red, "variants": variants,
               "end_to_end": e2e}
    md = "\n\n".join([
        f"### Grad-CAM reduction, {payload['machine']['device']} ({payload['machine']['cpu']}), torch {payload['machine']['torch']}",
        common.md_table(red, ["device", "threads", "dtype", "shape", "native_ms", "eager_ms", "compiled_ms",
                              "pytorch_grad_cam_ms", "copy_ms", "speedup_vs_eager", "speedup_vs_compiled",
                              "speedup_vs_pytorch_grad_cam", "vs_bytes_floor"]),
        "### Grad-CAM variants vs eager torch ops (weights as in `reference.gradcam`, F.interpolate, min-max)",
        common.md_table(variants, ["device", "threads", "shape", "variant", "native_ms", "eager_ms", "speedup_vs_eager"]),
        "### Grad-CAM end to end (ResNet-50, random weights, 224x224, layer4)",
        common.md_table(e2e, ["device", "threads", "model", "batch", "interp_ext_s", "model_share", "captum_s",
                              "speedup_vs_captum", "pytorch_grad_cam_s", "speedup_vs_pytorch_grad_cam"]),
    ])
    path = common.write("gradcam", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
