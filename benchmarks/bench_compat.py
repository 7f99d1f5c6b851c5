"""pytorch-grad-cam vs interp_ext.compat.pytorch_grad_cam: the same calls through both,
1 thread (torch, NumPy's BLAS, OpenCV): seconds per call, the speed-up and the largest
difference between the two maps (both in [0, 1]).

    python benchmarks/bench_compat.py [--quick]

Cases (random weights: no download; ImageNet-sized inputs of uniform noise in [-1, 1]):
- every gradient / Eigen class and FullGrad: ResNet-50 batch 16 at 224 (``layer4[-1]``),
  and the bundled EfficientNet-Lite0 batch 16 (``_blocks.15``); FullGrad at batch 4:
  theirs resizes every channel of every layer to the input (6.6 GB for one 2048-channel
  ResNet-50 layer at batch 16; 157 s on the bundled model at batch 16);
- ScoreCAM and AblationCAM, N x K model calls' worth of copies: ResNet-50 at 64x64
  (``layer4[-1]``, 2048 channels; ScoreCAM 1 image, AblationCAM 2), the bundled model at
  224 (1 image; ScoreCAM ``_blocks.15``, AblationCAM ``_blocks.15._bn2``: their ablation
  layer replaces a module called with one argument, and the blocks get two).
Each call is timed once after a warm-up call on 2 images; ScoreCAM / AblationCAM: ours
after a first call on the same input (also reported: it tunes the masked batches),
theirs after a Grad-CAM call. Both get the same targets (one class per image).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # NumPy's BLAS (their maths) on one thread too

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import interp_ext  # noqa: E402
import interp_ext.compat.pytorch_grad_cam as ours  # noqa: E402
from interp_ext.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as OurTarget  # noqa: E402

GRADIENT = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM", "GradCAMElementWise", "EigenCAM",
            "EigenGradCAM", "FullGrad"]
PERTURBATION = ["ScoreCAM", "AblationCAM"]


def _classes():
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    return pgc, ClassifierOutputTarget


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(name: str, model, layers, x: torch.Tensor, warm: torch.Tensor, batch_size=None) -> dict:
    pgc, TheirTarget = _classes()
    cats = [(37 * i + 5) % 1000 for i in range(x.shape[0])]
    kw_ours = {"show_progress": False} if name in PERTURBATION else {}
    if batch_size is not None:
        kw_ours["batch_size"] = batch_size
    cam_ours = getattr(ours, name)(model=model, target_layers=layers, **kw_ours)
    cam_theirs = getattr(pgc, name)(model=model, target_layers=layers)
    if batch_size is not None:
        cam_theirs.batch_size = batch_size

    def run_ours(inp):
        return cam_ours(input_tensor=inp, targets=[OurTarget(c) for c in cats[: inp.shape[0]]])

    def run_theirs(inp):
        return cam_theirs(input_tensor=inp, targets=[TheirTarget(c) for c in cats[: inp.shape[0]]])

    row = {"class": name}
    if name in PERTURBATION:
        # ours: the first call measures (and keeps) the masked batches' fastest execution;
        # timed separately ("first call"); theirs has nothing to warm but the model itself
        row["interp_ext_first_call_s"], _ = timed(lambda: run_ours(x))
        getattr(pgc, "GradCAM")(model=model, target_layers=layers)(
            input_tensor=x, targets=[TheirTarget(c) for c in cats[: x.shape[0]]])
    else:
        run_ours(warm)
        run_theirs(warm)
    t_ours, a = timed(lambda: run_ours(x))
    t_theirs, b = timed(lambda: run_theirs(x))
    row.update({"interp_ext_s": t_ours, "pytorch_grad_cam_s": t_theirs, "speedup": t_theirs / t_ours,
                "max_abs_diff": float(np.abs(a - b).max())})
    return row


def case_rows(label: str, model, layer, batch: int, size: int, names, batch_size=None, fullgrad_batch=None,
              perturb_layer=None) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for name in names:
        n = fullgrad_batch if name == "FullGrad" and fullgrad_batch else batch
        x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        warm = x[:2]
        lyr = [] if name == "FullGrad" else [perturb_layer if (perturb_layer is not None and name == "AblationCAM")
                                            else layer]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = compare(name, model, lyr, x, warm, batch_size)
        row.update({"model": label, "batch": n, "input": f"{size}x{size}", "threads": torch.get_num_threads()})
        rows.append(row)
        first = (f" (first call {row['interp_ext_first_call_s']:.2f} s)" if "interp_ext_first_call_s" in row else "")
        print(f"[t={row['threads']}] {label} {name} batch {n} {row['input']}: interp_ext {row['interp_ext_s']:.2f} s"
              f"{first}, pytorch-grad-cam {row['pytorch_grad_cam_s']:.2f} s (x{row['speedup']:.2f}), "
              f"max |diff| {row['max_abs_diff']:.1e}", flush=True)
    return rows


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-18 and the bundled model on small inputs (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(1)  # their resize
    except ImportError:
        pass
    import torchvision
    from interp_ext import models

    torch.manual_seed(0)
    bundled = models.load().model
    rows = []
    if args.quick:
        r18 = torchvision.models.resnet18(weights=None).eval()
        rows += case_rows("resnet18", r18, r18.layer4[-1], 2, 64, GRADIENT)
        rows += case_rows("resnet18", r18, r18.layer2[-1], 1, 32, PERTURBATION, batch_size=32)
        rows += case_rows("efficientnet_lite0", bundled, bundled._blocks[15], 2, 96, GRADIENT)
        rows += case_rows("efficientnet_lite0", bundled, bundled._blocks[2], 1, 64, PERTURBATION, batch_size=32,
                          perturb_layer=bundled._blocks[2]._bn2)
    else:
        r50 = torchvision.models.resnet50(weights=None).eval()
        rows += case_rows("resnet50", r50, r50.layer4[-1], 16, 224, GRADIENT, fullgrad_batch=4)
        rows += case_rows("efficientnet_lite0", bundled, bundled._blocks[15], 16, 224, GRADIENT, fullgrad_batch=4)
        rows += case_rows("resnet50", r50, r50.layer4[-1], 1, 64, ["ScoreCAM"], batch_size=32)
        rows += case_rows("resnet50", r50, r50.layer4[-1], 2, 64, ["AblationCAM"], batch_size=32)
        rows += case_rows("efficientnet_lite0", bundled, bundled._blocks[15], 1, 224, PERTURBATION, batch_size=32,
                          perturb_layer=bundled._blocks[15]._bn2)
    grad_rows = [r for r in rows if r["class"] in GRADIENT]
    pert_rows = [r for r in rows if r["class"] in PERTURBATION]
    summary = {
        "gradient_classes_geomean_speedup": geomean(r["speedup"] for r in grad_rows),
        "gradient_classes_min_speedup": min(r["speedup"] for r in grad_rows),
        "score_ablation_speedups": {f"{r['model']} {r['class']}": r["speedup"] for r in pert_rows},
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
    }
    print(f"gradient / Eigen / FullGrad classes: geometric mean x{summary['gradient_classes_geomean_speedup']:.2f}, "
          f"min x{summary['gradient_classes_min_speedup']:.2f}; largest map difference {summary['max_abs_diff']:.1e}")
    payload = {"machine": common.machine("cpu"), "build": interp_ext.build_info(), "threads": 1, "quick": args.quick,
               "rows": rows, "summary": summary}
    cols = ["model", "class", "batch", "input", "threads", "interp_ext_s", "pytorch_grad_cam_s", "speedup",
            "max_abs_diff"]
    pert_cols = cols[:5] + ["interp_ext_first_call_s"] + cols[5:]
    md = "\n\n".join([
        f"### interp_ext.compat.pytorch_grad_cam vs pytorch-grad-cam, {payload['machine']['cpu']}, "
        f"torch {payload['machine']['torch']}, 1 thread{' (quick)' if args.quick else ''}",
        "Same call through both (`cam(input_tensor=x, targets=[ClassifierOutputTarget(c) ...])`), seconds per call "
        "after a warm-up, max |difference| of the [0, 1] maps. Random weights, inputs uniform in [-1, 1].",
        common.md_table(grad_rows, cols),
        "ScoreCAM / AblationCAM (batch_size 32 for both; ours: the second call, the first one measured the masked "
        "batches' fastest batch size and layout, `interp_ext.tuning`, and kept it on disk):",
        common.md_table(pert_rows, pert_cols),
        f"Gradient, Eigen and FullGrad classes: geometric-mean speed-up x{summary['gradient_classes_geomean_speedup']:.2f}"
        f" (min x{summary['gradient_classes_min_speedup']:.2f}).",
    ])
    path = common.write("compat_grad_cam_quick" if args.quick else "compat_grad_cam", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
