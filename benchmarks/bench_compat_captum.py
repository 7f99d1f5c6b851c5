"""interp_ext.compat.captum vs Captum: the same calls through both, 1 thread, the time of
each and the largest difference of their results.

Models: a near-free model (16 images 3x64x64: where the methods' own work shows; the
targets for Occlusion and ShapleyValueSampling are set here), ResNet-50 (torchvision, random
weights from a fixed seed: no downloads) and the bundled EfficientNet-Lite0
(``interp_ext.models.load()``), batch 16 at 224x224.

Timing: the two libraries' calls alternate (compat, Captum, compat, ...) for ``--rounds``
rounds after one warm-up pass of each model; the table gives the best of the rounds of
each (this machine's second core is shared and noisy), with the same global seed before
every call (the noise and the permutations are then the same in both).

    python benchmarks/bench_compat_captum.py [--quick] [--rounds N] [--big-rounds N] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class CheapCNN(nn.Module):
    """A near-free model (8x8 average pooling, ReLU, linear: ~0.4 kFLOP per 1,000 input
    values), so that the methods' own work shows, as the near-free model of
    bench_occlusion.py."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.relu(self.pool(x) - 0.5).flatten(1))


def grid_mask(size: int, patch: int) -> torch.Tensor:
    cols = -(-size // patch)
    idx = torch.arange(size) // patch
    return (idx[:, None] * cols + idx[None, :])[None, None]


def cases(quick: bool) -> list[dict]:
    """(model, method, description, call(lib, model, x) -> result); an optional note."""
    m64, m224 = grid_mask(64, 8), grid_mask(224, 112)
    cheap = [
        ("Occlusion", "window 3x8x8, stride 4, ppe 1 (Captum's default)",
         lambda L, m, x: L.Occlusion(m).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=1)),
        ("Occlusion", "window 3x8x8, stride 4, ppe 64",
         lambda L, m, x: L.Occlusion(m).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=1,
                                                  perturbations_per_eval=64)),
        ("ShapleyValueSampling", "64 patches, 4 samples, ppe 1 (Captum's default)",
         lambda L, m, x: L.ShapleyValueSampling(m).attribute(x, feature_mask=m64, n_samples=4, target=1)),
        ("ShapleyValueSampling", "64 patches, 4 samples, ppe 64",
         lambda L, m, x: L.ShapleyValueSampling(m).attribute(x, feature_mask=m64, n_samples=4, target=1,
                                                             perturbations_per_eval=64)),
        ("Saliency", "target 1", lambda L, m, x: L.Saliency(m).attribute(x, target=1)),
        ("IntegratedGradients", "50 steps (gausslegendre), delta",
         lambda L, m, x: L.IntegratedGradients(m).attribute(x, target=1, return_convergence_delta=True)[0]),
        ("NoiseTunnel(Saliency)", "smoothgrad, 10 samples",
         lambda L, m, x: L.NoiseTunnel(L.Saliency(m)).attribute(x, nt_samples=10, stdevs=0.1, target=1)),
        ("GuidedGradCam", "pooling layer", lambda L, m, x: L.GuidedGradCam(m, m.pool).attribute(x, target=1)),
    ]
    big = [
        ("Saliency", "target 3", lambda L, m, x: L.Saliency(m).attribute(x, target=3)),
        ("GuidedBackprop", "target 3", lambda L, m, x: L.GuidedBackprop(m).attribute(x, target=3)),
        ("LayerGradCam", "last conv block", lambda L, m, x: L.LayerGradCam(m, _last(m)).attribute(x, target=3)),
        ("GuidedGradCam", "last conv block", lambda L, m, x: L.GuidedGradCam(m, _last(m)).attribute(x, target=3)),
        ("Occlusion", "window 3x112x112, stride 112, ppe 4",
         lambda L, m, x: L.Occlusion(m).attribute(x, sliding_window_shapes=(3, 112, 112), strides=(3, 112, 112),
                                                  target=3, perturbations_per_eval=4)),
        ("ShapleyValueSampling", "2x2 patches, 2 samples, ppe 4",
         lambda L, m, x: L.ShapleyValueSampling(m).attribute(x, feature_mask=m224, n_samples=2, target=3,
                                                             perturbations_per_eval=4)),
    ]
    extra_bundled = [
        ("IntegratedGradients", "4 steps (gausslegendre), internal_batch_size 32",
         lambda L, m, x: L.IntegratedGradients(m).attribute(x, target=3, n_steps=4, internal_batch_size=32)),
        ("NoiseTunnel(Saliency)", "smoothgrad, 2 samples, batch 1",
         lambda L, m, x: L.NoiseTunnel(L.Saliency(m)).attribute(x, nt_samples=2, nt_samples_batch_size=1, stdevs=0.1,
                                                                target=3)),
    ]
    out = [dict(model="cheap", method=a, what=b, call=c) for a, b, c in cheap]
    if quick:
        return out[:4] + [dict(model="resnet50", method=a, what=b, call=c) for a, b, c in big[2:4]]
    out += [dict(model="resnet50", method=a, what=b, call=c) for a, b, c in big]
    out += [dict(model="efficientnet_lite0", method=a, what=b, call=c) for a, b, c in big + extra_bundled]
    return out


def _last(model: nn.Module) -> nn.Module:
    return getattr(model, "layer4", None) or getattr(model, "_conv_head")


NOTES = {
    ("efficientnet_lite0", "GuidedBackprop"): "differs on purpose: the model's rectifiers are ReLU6 modules, which "
                                              "Captum's hooks skip (its result is the plain gradient)",
    ("efficientnet_lite0", "GuidedGradCam"): "differs on purpose (ReLU6, as GuidedBackprop)",
}


def load_models(quick: bool) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    import torchvision

    import interp_ext

    torch.manual_seed(0)
    models = {"cheap": (CheapCNN().eval(), torch.rand(16, 3, 64, 64))}
    batch = 4 if quick else 16
    torch.manual_seed(0)
    models["resnet50"] = (torchvision.models.resnet50(weights=None).eval(), torch.randn(batch, 3, 224, 224))
    if not quick:
        models["efficientnet_lite0"] = (interp_ext.models.load().model, torch.randn(batch, 3, 224, 224))
    return models


def _flat(result: Any) -> torch.Tensor:
    parts = result if isinstance(result, tuple) else (result,)
    return torch.cat([p.detach().double().flatten() for p in parts])


def run_case(case: dict, model: nn.Module, x: torch.Tensor, rounds: int) -> dict:
    import captum.attr as ca

    from interp_ext.compat import captum as cc

    libs = {"compat": cc, "captum": ca}
    times: dict[str, list[float]] = {k: [] for k in libs}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for name, lib in libs.items():
            torch.manual_seed(7)
            start = time.perf_counter()
            results[name] = case["call"](lib, model, x)
            times[name].append(time.perf_counter() - start)
    a, b = _flat(results["compat"]), _flat(results["captum"])
    scale = float(b.abs().max()) or 1.0
    best = {k: min(v) for k, v in times.items()}
    return {
        "model": case["model"], "method": case["method"], "call": case["what"], "batch": x.shape[0],
        "threads": torch.get_num_threads(), "rounds": rounds, "compat_s": best["compat"], "captum_s": best["captum"],
        "speedup": best["captum"] / best["compat"], "max_abs_diff": float((a - b).abs().max()),
        "max_rel_diff": float((a - b).abs().max()) / scale,
        "note": NOTES.get((case["model"], case["method"]), ""),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the cheap model's perturbation calls and ResNet-50 batch 4 CAMs")
    p.add_argument("--rounds", type=int, default=3, help="rounds for the cheap model (default 3)")
    p.add_argument("--big-rounds", type=int, default=2, help="rounds for ResNet-50 and the bundled model (default 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    models = load_models(args.quick)
    for model, x in models.values():  # warm-up: allocations, lazy initialisation
        with torch.no_grad():
            model(x[:2])
    rows = []
    t0 = time.perf_counter()
    for case in cases(args.quick):
        model, x = models[case["model"]]
        rounds = args.rounds if case["model"] == "cheap" else args.big_rounds
        row = run_case(case, model, x, rounds)
        rows.append(row)
        print(f"[{row['model']} x{row['batch']}] {row['method']} ({row['call']}): compat {row['compat_s']:.3g} s, "
              f"Captum {row['captum_s']:.3g} s, x{row['speedup']:.2f}, max |diff| {row['max_abs_diff']:.2e}"
              f"{' (' + row['note'] + ')' if row['note'] else ''}", flush=True)
    payload = {"machine": common.machine("cpu"), "threads": args.threads, "quick": args.quick,
               "seconds": time.perf_counter() - t0, "compat_captum": rows}
    import captum

    payload["machine"]["captum"] = captum.__version__
    md = (f"### interp_ext.compat.captum vs Captum {captum.__version__}, {payload['machine']['cpu']}, {args.threads} "
          f"thread(s){' (quick)' if args.quick else ''}\n\nBest of `rounds` calls each, alternating; same seed before "
          "every call. `max_rel_diff`: the largest difference over the largest |value| of Captum's result.\n\n"
          + common.md_table(rows, ["model", "method", "call", "batch", "threads", "rounds", "compat_s", "captum_s",
                                   "speedup", "max_abs_diff", "max_rel_diff", "note"]) + "\n")
    path = common.write("compat_captum", payload, md, args.out)
    print(f"wrote {path} and its .json ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
