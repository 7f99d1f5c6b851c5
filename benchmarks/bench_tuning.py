"""Execution tuning: what batch size and memory format cost per image, and what the tuner
picks.

For the bundled EfficientNet-Lite0 and ResNet-18 (random weights: the cost does not
depend on them): the forward pass per image (inference mode) and the forward + backward
to the input per image, at batch 1, 4, 16, 64 in NCHW and channels-last; then what
`interp_ext.tuning` chooses for the planner's gradient pass (the default methods, batch
8) and for occlusion copies (64 per call) after its trial chunks, and the time per image
at that choice against the untuned execution (the whole batch, NCHW).

    python benchmarks/bench_tuning.py [--quick] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from interp_ext import models, tuning  # noqa: E402
from interp_ext.engine import DEFAULT_METHODS, Explainer  # noqa: E402

FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def per_image_ms(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best / x.shape[0] * 1000


def layout_rows(name: str, model: torch.nn.Module, batches, repeats: int) -> list[dict]:
    rows = []
    for fmt_name, fmt in FORMATS.items():
        with tuning.model_layout(model, fmt):
            for b in batches:
                x = (torch.rand(b, 3, 224, 224) * 2 - 1).contiguous(memory_format=fmt)

                def forward(t):
                    with torch.inference_mode():
                        model(t)

                def forward_backward(t):
                    t = t.detach().requires_grad_()
                    torch.autograd.grad(model(t)[:, 0].sum(), t)

                rows.append({"model": name, "format": fmt_name, "batch": b,
                             "forward_ms_per_image": per_image_ms(forward, x, repeats),
                             "fwd_bwd_ms_per_image": per_image_ms(forward_backward, x, max(1, repeats - 1))})
                print(rows[-1], flush=True)
    return rows


def tuner_rows(name: str, model: torch.nn.Module, layer: str, batches: int) -> list[dict]:
    """The tuner's choice for the gradient pass (batch 8) and for occlusion (64 copies per
    call), and the time per image there against the untuned execution."""
    rows = []
    x = torch.rand(8, 3, 224, 224) * 2 - 1
    tuned, exact = Explainer(model, DEFAULT_METHODS, layer), Explainer(model, DEFAULT_METHODS, layer, tune=False)
    for _ in range(batches):  # the trial chunks: every candidate once, then the best
        tuned.explain(x)
    tuner = tuning.tuner_for(model, "gradient:" + ",".join(tuned.plan()), x)
    best = tuner.best(8)
    rows.append({"model": name, "pass": "gradient (default methods), batch 8", "chosen_batch": best.batch,
                 "chosen_format": "channels_last" if best.channels_last else "NCHW",
                 "tuned_ms_per_image": per_image_ms(tuned.explain, x, 2),
                 "untuned_ms_per_image": per_image_ms(exact.explain, x, 2)})
    copies = torch.rand(64, 3, 224, 224) * 2 - 1
    forward = tuning.TunedForward(model, "bench-occlusion")
    with torch.no_grad():
        for _ in range(3):
            forward(copies)
        best = tuning.tuner_for(model, "bench-occlusion", copies).best(64)
        rows.append({"model": name, "pass": "occlusion copies, 64 per call", "chosen_batch": best.batch,
                     "chosen_format": "channels_last" if best.channels_last else "NCHW",
                     "tuned_ms_per_image": per_image_ms(forward, copies, 1),
                     "untuned_ms_per_image": per_image_ms(model, copies, 1)})
    for r in rows:
        r["gain"] = r["untuned_ms_per_image"] / r["tuned_ms_per_image"]
        print(r, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batches 1 and 4, one repeat")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches, repeats = ((1, 4), 1) if args.quick else ((1, 4, 16, 64), 3)
    bundled = models.load().model.eval()
    import torchvision

    resnet = torchvision.models.resnet18(weights=None).eval()
    layout = layout_rows("efficientnet_lite0", bundled, batches, repeats) + layout_rows("resnet18", resnet, batches, repeats)
    tuned = tuner_rows("efficientnet_lite0", bundled, "_blocks.15", 3) + tuner_rows("resnet18", resnet, "layer4", 3)
    payload = {"machine": common.machine("cpu"), "threads": args.threads, "quick": args.quick,
               "layouts": layout, "tuner": tuned}
    md = (f"### Execution tuning, CPU ({payload['machine']['cpu']}), {args.threads} thread(s), "
          f"{payload['machine']['date']}{' (quick)' if args.quick else ''}\n\n"
          "Per image, 224x224, fp32 (forward in inference mode; forward + backward to the input):\n\n"
          + common.md_table(layout, ["model", "format", "batch", "forward_ms_per_image", "fwd_bwd_ms_per_image"])
          + "\n\nWhat the tuner picks after its trial chunks, and the gain over the untuned execution:\n\n"
          + common.md_table(tuned, ["model", "pass", "chosen_batch", "chosen_format", "tuned_ms_per_image",
                                    "untuned_ms_per_image", "gain"]) + "\n")
    print(md)
    print("wrote", common.write("tuning", payload, md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
