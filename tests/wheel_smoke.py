"""The README's examples against an installed wheel, run from outside the checkout by
scripts/wheel_check.sh (a fresh venv with the wheel and its [demo] extra). Fails if the
wheel lacks a file the package needs at run time."""
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

import interp_ext
from interp_ext import GradCAM, GuidedBackprop, Occlusion, Saliency, models, ops

here = Path(interp_ext.__file__).resolve().parent
assert "site-packages" in str(here), f"interp_ext imported from {here}, not from the installed wheel"
assert (here / "py.typed").is_file(), "py.typed is missing from the wheel"
dist = metadata.distribution("interp_ext")
assert any(str(f).endswith("LICENSE") for f in dist.files or []), "LICENSE is missing from the wheel's metadata"
pin = [r for r in dist.requires or [] if r.startswith("torch==")]
assert pin and pin[0] == "torch=={}.{}.*".format(*torch.__version__.split(".")[:2]), pin
info = interp_ext.build_info()
assert "gradcam" in info["ops"] and "guided_relu" in info["ops"], info

loaded = models.load()                      # the bundled model ([models], via [demo])
model = loaded.model
with tempfile.TemporaryDirectory() as tmp:
    from sklearn.datasets import load_sample_image
    from PIL import Image

    photos = []
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(Path(tmp) / name)
        photos.append(Path(tmp) / name)
    x = models.batch(loaded, photos)
    assert x.shape == (2, 3, 224, 224)
    gb = GuidedBackprop(model).attribute(x, target=None)
    grad = Saliency(model).attribute(x, target=985, abs=True)
    res = GradCAM(model, "_blocks.15").attribute(x)
    assert gb.shape == grad.shape == x.shape and res.maps.shape == (2, 1, 224, 224)
    ex = interp_ext.Explainer(model, ["gradcam", "saliency", "guided-backprop"], layers="_blocks.15").explain(x)
    torch.testing.assert_close(ex.maps["gradcam"], res.maps[:, 0], rtol=1e-3, atol=1e-3)
    occ = Occlusion(model).attribute(x[:1], (3, 56, 56), strides=(3, 56, 56), target=None, perturbations_per_eval=16)
    assert occ.shape == (1, 3, 224, 224)
    y = ops.guided_relu(torch.randn(8, 16), upper=6.0, rule="guided")
    dele = interp_ext.metrics.deletion(model, x, res.maps, pixels_per_step=224 * 56, return_auc_per_sample=True)
    assert dele.shape == (2,) and bool(((dele >= 0) & (dele <= 1)).all()), dele
    # the command: explain with the default methods, its gallery and summary
    out = Path(tmp) / "out"
    subprocess.run(["interp-ext", "explain", tmp, "--out", str(out), "--quiet"], check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 2 and (out / "index.html").is_file(), summary.get("skipped")
    subprocess.run(["interp-ext", "evaluate", tmp, "--out", str(out), "--quiet", "--methods", "gradcam",
                    "--metrics", "deletion", "--metric-option", "deletion.pixels_per_step=12544"], check=True)
    assert (out / "scores.csv").read_text().count("gradcam,deletion") == 2
    version = subprocess.run(["interp-ext", "--version"], check=True, capture_output=True, text=True).stdout
    assert version.startswith(f"interp-ext {interp_ext.__version__}"), version
print(f"wheel smoke test passed: {here} ({'CUDA' if info['cuda_compiled'] else 'CPU-only'} build, torch {torch.__version__})")
