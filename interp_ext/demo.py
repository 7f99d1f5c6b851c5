"""`make demo`: Grad-CAM, guided Grad-CAM, guided backprop, deconvnet, saliency and
SmoothGrad on the bundled model and the scikit-learn sample photos; writes overlays and
the top-5 predictions to out/."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image

from . import Deconvolution, GradCAM, GuidedBackprop, Saliency, SmoothGrad, models, viz

# The bundled model's last MBConv block: 7x7 maps, the usual Grad-CAM layer.
CAM_LAYER = "_blocks.15"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--smoothgrad-samples", type=int, default=16)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    from sklearn.datasets import load_sample_image

    names = ["china.jpg", "flower.jpg"]
    loaded = models.load()
    model = loaded.model.to(device)
    photos = [Image.fromarray(load_sample_image(n)) for n in names]
    x = models.batch(loaded, photos).to(device)
    crops = [loaded.crop(p) for p in photos]

    with torch.no_grad():
        logits = model(x)
    top5 = loaded.top_k(logits, 5)
    target = logits.argmax(dim=1)

    out = Path(args.out)
    timings = {}
    start = time.perf_counter()
    guided = GuidedBackprop(model).attribute(x, target=target)
    timings["guided_backprop"] = time.perf_counter() - start
    start = time.perf_counter()
    deconv = Deconvolution(model).attribute(x, target=target)
    timings["deconvnet"] = time.perf_counter() - start
    start = time.perf_counter()
    sal = Saliency(model).saliency_map(x, target=target)
    timings["saliency"] = time.perf_counter() - start
    start = time.perf_counter()
    smooth = SmoothGrad(Saliency(model), n_samples=args.smoothgrad_samples, stdev=0.15, batch_size=16, seed=0)
    smooth_map = torch.ops.interp_ext.saliency_reduce(smooth.attribute(x, target=target, abs=True))
    timings["smoothgrad_saliency"] = time.perf_counter() - start
    start = time.perf_counter()
    gradcam = GradCAM(model, CAM_LAYER).attribute(x, target=target).maps[:, 0]
    timings["gradcam"] = time.perf_counter() - start
    guided_gradcam = guided * gradcam[:, None]

    report = {"model": loaded.name, "device": str(device), "seconds": timings, "images": {}}
    for i, name in enumerate(names):
        stem = Path(name).stem
        files = {
            "input": viz.save_png(crops[i], out / f"{stem}_input.png"),
            "guided_backprop": viz.save_png(viz.gradient_image(guided[i]), out / f"{stem}_guided_backprop.png"),
            "deconvnet": viz.save_png(viz.gradient_image(deconv[i]), out / f"{stem}_deconvnet.png"),
            "saliency": viz.save_png(viz.overlay(crops[i], sal[i]), out / f"{stem}_saliency.png"),
            "smoothgrad": viz.save_png(viz.overlay(crops[i], smooth_map[i]), out / f"{stem}_smoothgrad.png"),
            "gradcam": viz.save_png(viz.overlay(crops[i], gradcam[i]), out / f"{stem}_gradcam.png"),
            "guided_gradcam": viz.save_png(viz.gradient_image(guided_gradcam[i]), out / f"{stem}_guided_gradcam.png"),
        }
        report["images"][name] = {
            "top5": [{"class": c, "probability": round(p, 4)} for c, p in top5[i]],
            "files": {k: str(v) for k, v in files.items()},
        }
        print(f"{name}: " + ", ".join(f"{c} {p:.1%}" for c, p in top5[i]))
    tmp = out / ".predictions.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "predictions.json")
    print(f"wrote {sum(len(v['files']) for v in report['images'].values())} PNGs and predictions.json to {out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
