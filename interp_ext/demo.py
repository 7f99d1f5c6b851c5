"""`make demo`: the main job, `interp-ext explain`, on the scikit-learn sample photos with
the bundled model: Grad-CAM, guided Grad-CAM, guided backprop, saliency and SmoothGrad
overlays, raw maps, summary.json and the gallery out/index.html (and out/gallery.png).

Deconvnet is left out of the default methods: on the bundled EfficientNet-Lite0, whose
strided convolutions it runs backwards, its map is a flat checkerboard that hardly
depends on the input (the maps of the two sample photos correlate at 0.9999; Captum's
deconvnet gives the same), so it would show the stride pattern, not the photo.
``--methods ...,deconvnet`` still draws it."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import cli
from ._extras import require

METHODS = "gradcam,guided-gradcam,guided-backprop,saliency,smoothgrad"
SAMPLES = ("china.jpg", "flower.jpg")  # scikit-learn's sample photos


def main(argv: list[str] | None = None) -> int:
    """Write the sample photos to OUT/samples and run ``interp-ext explain`` on them into
    OUT; returns the command's exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", type=Path, help="output folder (default: out)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--methods", default=METHODS, help=f"comma list of methods (default: {METHODS})")
    args = parser.parse_args(argv)

    from PIL import Image
    load_sample_image = require("sklearn.datasets", "the demo's sample photos", extra="demo").load_sample_image

    samples = args.out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        if not (samples / name).is_file():
            Image.fromarray(load_sample_image(name)).save(samples / name, quality=95)
    return cli.main(["explain", str(samples), "--out", str(args.out), "--methods", args.methods, "--device", args.device])


if __name__ == "__main__":
    raise SystemExit(main())
