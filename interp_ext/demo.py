"""`make demo`: the main job, `interp-ext explain`, on the scikit-learn sample photos with
the bundled model: Grad-CAM, guided Grad-CAM, guided backprop, deconvnet, saliency and
SmoothGrad overlays, raw maps, summary.json and the gallery out/index.html."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import cli
from ._extras import require

METHODS = "gradcam,guided-gradcam,guided-backprop,deconvnet,saliency,smoothgrad"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out", type=Path, help="output folder (default: out)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--methods", default=METHODS)
    args = parser.parse_args(argv)

    from PIL import Image
    load_sample_image = require("sklearn.datasets", "the demo's sample photos", extra="demo").load_sample_image

    samples = args.out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for name in ("china.jpg", "flower.jpg"):
        if not (samples / name).is_file():
            Image.fromarray(load_sample_image(name)).save(samples / name, quality=95)
    return cli.main(["explain", str(samples), "--out", str(args.out), "--methods", args.methods, "--device", args.device])


if __name__ == "__main__":
    raise SystemExit(main())
