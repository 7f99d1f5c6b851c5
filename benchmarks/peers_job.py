"""The peers' job: what a user writes with Captum and pytorch-grad-cam to do what
``interp-ext explain`` does, run by benchmarks/bench_explain.py as its own process.

For every image in a folder: the bundled model's crop and normalisation (from
``interp_ext.models``, so that the inputs are identical to the job's), the top-1 class
from a forward pass, then per batch and method the map, and per image and method a PNG
(overlay or gradient picture) and the raw map (.npy), plus the input crop as PNG:

- gradcam: Captum ``LayerGradCam`` (ReLU), ``LayerAttribution.interpolate`` (bilinear) to
  the input size, min-max per image
- guided-gradcam: Captum ``GuidedGradCam``; saliency: Captum ``Saliency`` (abs), max over
  channels; guided-backprop: Captum ``GuidedBackprop``
- gradcam++, xgradcam, layercam, hirescam: pytorch-grad-cam's classes, used as its README
  shows (``with CAM(model=..., target_layers=[...]) as cam: cam(input_tensor=..., targets=...)``)
- occlusion: Captum ``Occlusion``, window (3, 16, 16), strides (3, 8, 8), baseline 0

    python benchmarks/peers_job.py FOLDER --methods gradcam,saliency --out DIR
        [--batch-size 8] [--device cpu] [--layer _blocks.15] [--ppe 64] [--stats FILE]

``--stats FILE``: count the model's forward and backward passes and their seconds
(``common.PassCounter``) and write them with the loop's seconds to FILE (JSON).
``OMP_NUM_THREADS``, when set, is also passed to ``torch.set_num_threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
SUFFIXES = {".jpg", ".jpeg", ".png"}
CAPTUM = ("gradcam", "guided-gradcam", "saliency", "guided-backprop", "occlusion")
GRAD_CAM_LIB = {"gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "hirescam": "HiResCAM"}
SIGNED = {"guided-gradcam", "guided-backprop"}


def heat_png(rgb01: np.ndarray, heat: np.ndarray) -> Image.Image:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    return Image.fromarray(show_cam_on_image(rgb01, heat.astype(np.float32), use_rgb=True))


def signed_png(grad: np.ndarray) -> Image.Image:
    g = grad - grad.mean()
    g = g / (3 * g.std() + 1e-12)
    return Image.fromarray(((np.clip(g, -1, 1) * 0.5 + 0.5) * 255).round().astype(np.uint8).transpose(1, 2, 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--methods", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layer", default="_blocks.15")
    p.add_argument("--ppe", type=int, default=64, help="occlusion: perturbations_per_eval")
    p.add_argument("--stats", type=Path, help="count and time the model's passes; write them here (JSON)")
    args = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.simplefilter("ignore")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam, Occlusion, Saliency
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from interp_ext import models

    loaded = models.load()
    device = torch.device(args.device)
    model = loaded.model.to(device).eval()
    layer = dict(model.named_modules())[args.layer]
    gradcam, guided_gc = LayerGradCam(model, layer), GuidedGradCam(model, layer)
    saliency, guided_bp, occlusion = Saliency(model), GuidedBackprop(model), Occlusion(model)

    def attribute(m: str, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        if m == "gradcam":
            cam = gradcam.attribute(x, target=target, relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
            lo = cam.amin((2, 3), keepdim=True)
            cam = (cam - lo) / (cam.amax((2, 3), keepdim=True) - lo).clamp_min(1e-12)
            return cam[:, 0].detach().cpu().numpy()
        if m == "guided-gradcam":
            return guided_gc.attribute(x, target=target).detach().cpu().numpy()
        if m == "saliency":
            return saliency.attribute(x, target=target, abs=True).amax(1).detach().cpu().numpy()
        if m == "guided-backprop":
            return guided_bp.attribute(x, target=target).detach().cpu().numpy()
        if m == "occlusion":
            return occlusion.attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0,
                                       target=target, perturbations_per_eval=args.ppe).detach().cpu().numpy()
        if m in GRAD_CAM_LIB:
            with getattr(pytorch_grad_cam, GRAD_CAM_LIB[m])(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in target])
        raise SystemExit(f"peers_job: no peer for method {m!r}")

    files = sorted(f for f in args.folder.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
    keys = [str(Path(args.folder.resolve().name) / f.relative_to(args.folder)) for f in files]
    counter = None
    if args.stats:
        sys.path.insert(0, str(HERE))
        import common

        counter = common.PassCounter(type(model)).__enter__()
    targets, batches = {}, 0
    start = time.perf_counter()
    for first in range(0, len(files), args.batch_size):
        crops = [loaded.crop(f) for f in files[first:first + args.batch_size]]
        x = torch.stack([loaded.normalize(models.to_unit_tensor(c)) for c in crops]).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
        maps = {m: attribute(m, x, target) for m in methods}
        for i, (key, crop) in enumerate(zip(keys[first:], crops)):
            folder = args.out / "images" / key
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / "input.png")
            rgb01 = np.asarray(crop, dtype=np.float32) / 255.0
            for m in methods:
                a = maps[m][i].astype(np.float32)
                np.save(folder / f"{m}.npy", a)
                pic = signed_png(a) if m in SIGNED else heat_png(rgb01, a.sum(0) if a.ndim == 3 else a)
                pic.save(folder / f"{m}.png")
            targets[key] = int(target[i])
        batches += 1
    loop_s = time.perf_counter() - start
    if counter is not None:
        counter.__exit__(None, None, None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.json").write_text(json.dumps(targets, indent=1))
    if args.stats:
        args.stats.write_text(json.dumps({"images": len(files), "batches": batches, "loop_s": loop_s,
                                          "layer": args.layer, **counter.stats()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
