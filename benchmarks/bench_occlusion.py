"""Occlusion: interp_ext.Occlusion vs Captum's Occlusion at the same perturbations_per_eval,
with a near-free model (to isolate the overhead) and real CNNs (random weights). Each
contender runs in its own process so that its peak memory (max RSS) is its own; the
call's own peak (the process's peak RSS during the call minus its RSS just before it,
the peak reset first through /proc/self/clear_refs) leaves out the ~450 MB that Python,
torch and the model take in both processes.

    python benchmarks/bench_occlusion.py [--quick] [--models free,resnet18,vgg16] [--images N]
    python benchmarks/bench_occlusion.py --refine-study [--quick]
    python benchmarks/bench_occlusion.py --incremental [--models resnet18,vgg16,lite0] [--strides 8,16]
    python benchmarks/bench_occlusion.py --field-study [--quick]

The refine study: the bundled EfficientNet-Lite0 on the two sample photos, exact map vs
coarse-to-fine ``refine=`` fractions: time and SSIM against the exact map.

--incremental: exact incremental inference (``incremental=True``) vs full re-inference
(``incremental=False``) vs Captum, one process each, 1 image 224x224, window 16, on
ResNet-18, VGG-16 (random weights) and the bundled model (``lite0``), beside the plan's
multiply-add ratio; the maps are compared (max |diff| over the map's max).

--field-study: ``field_threshold=`` (approximate) on ResNet-18 and the bundled model with
the two sample photos: time and SSIM against the exact incremental map.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CHILD = r"""
import json, re, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(int(sys.argv[5]))
import interp_ext
which, model_name, images, ppe = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

class Free(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3))

class Timed(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds = inner, 0.0
    def forward(self, x):
        t = time.perf_counter(); out = self.inner(x); self.seconds += time.perf_counter() - t
        return out

torch.manual_seed(0)
if model_name == "free":
    inner = Free()
else:
    import torchvision
    inner = getattr(torchvision.models, model_name)(weights=None).eval()
model = Timed(inner)
x = torch.randn(images, 3, 224, 224)
kw = dict(sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.0, target=0, perturbations_per_eval=ppe)
if which == "interp_ext":
    # whole copies, as Captum: this table measures the overhead outside the model (the
    # Timed wrapper only sees whole copies); --incremental compares incremental inference
    run = lambda: interp_ext.Occlusion(model).attribute(x, **kw, incremental=False)
else:
    from captum.attr import Occlusion
    run = lambda: Occlusion(model).attribute(x, **kw)
def status_mb(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status_mb("VmRSS")
start = time.perf_counter()
with torch.no_grad():
    attr = run()
total = time.perf_counter() - start
call_peak = status_mb("VmHWM") - before
torch.save(attr, sys.argv[6])
print(json.dumps({"seconds": total, "model_seconds": model.seconds, "call_peak_mb": call_peak,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


INCREMENTAL_CHILD = r"""
import json, re, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(int(sys.argv[5]))
import interp_ext
which, model_name, stride, ppe = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
if model_name == "lite0":
    from interp_ext import models
    model = models.load().model.eval()
else:
    import torchvision
    model = getattr(torchvision.models, model_name)(weights=None).eval()
device = torch.device(sys.argv[7])
model = model.to(device)
x = torch.rand(1, 3, 224, 224, device=device) * 2 - 1
kw = dict(sliding_window_shapes=(3, 16, 16), strides=(3, stride, stride), baselines=0.0, target=0,
          perturbations_per_eval=ppe)
ratio = None
if which == "captum":
    from captum.attr import Occlusion
    run = lambda: Occlusion(model).attribute(x, **kw)
else:
    occ = interp_ext.Occlusion(model)
    plan, _ = occ.incremental_plan(x, (3, 16, 16), (3, stride, stride))
    ratio = plan.flop_ratio
    run = lambda: occ.attribute(x, **kw, incremental=which == "incremental")
def status_mb(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_mb("VmRSS")
start = time.perf_counter()
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
with torch.no_grad():
    attr = run()
sync()
total = cold = time.perf_counter() - start
if which == "incremental":  # again, warm: the trace, the plan and the batch tuning are kept per model
    start = time.perf_counter()
    with torch.no_grad():
        attr = run()
    sync()
    total = time.perf_counter() - start
torch.save(attr.cpu(), sys.argv[6])
print(json.dumps({"seconds": total, "cold_seconds": cold, "call_peak_mb": status_mb("VmHWM") - before,
                  "flop_ratio": ratio}))
"""


def incremental_table(args) -> int:
    import torch

    rows = []
    for model in args.models.split(","):
        for stride in (int(s) for s in args.strides.split(",")):
            r = {}
            for which in ("incremental", "full", "captum"):
                cmd = [sys.executable, "-c", INCREMENTAL_CHILD, which, model, str(stride), str(args.ppe), str(args.threads),
                       f"/tmp/occ_inc_{which}.pt", args.device]
                # no tuning cache on disk: the first incremental call measures its batches afresh
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=7200,
                                     env={**os.environ, "INTERP_EXT_CACHE": "off"})
                if res.returncode != 0:
                    raise RuntimeError(f"{which} on {model} failed:\n{res.stderr[-2000:]}")
                r[which] = json.loads(res.stdout.strip().splitlines()[-1])
            maps = {w: torch.load(f"/tmp/occ_inc_{w}.pt") for w in r}
            scale = float(maps["full"].abs().max())
            inc, full, cap = r["incremental"], r["full"], r["captum"]
            row = {"model": model, "stride": stride, "windows": ((224 - 16 + stride - 1) // stride + 1) ** 2,
                   "threads": args.threads, "flop_ratio": inc["flop_ratio"], "incremental_s": inc["seconds"],
                   "incremental_cold_s": inc["cold_seconds"],
                   "full_s": full["seconds"], "captum_s": cap["seconds"],
                   "vs_full": full["seconds"] / inc["seconds"], "vs_captum": cap["seconds"] / inc["seconds"],
                   "of_flop_ratio": full["seconds"] / inc["seconds"] / inc["flop_ratio"],
                   "incremental_call_mb": inc["call_peak_mb"], "full_call_mb": full["call_peak_mb"],
                   "captum_call_mb": cap["call_peak_mb"],
                   "max_diff_vs_full": float((maps["incremental"] - maps["full"]).abs().max()) / scale,
                   "max_diff_vs_captum": float((maps["incremental"] - maps["captum"]).abs().max()) / scale}
            rows.append(row)
            print(f"[{model} stride {stride}] incremental {row['incremental_s']:.1f} s | full {row['full_s']:.1f} s | "
                  f"captum {row['captum_s']:.1f} s | x{row['vs_full']:.2f} vs full, x{row['vs_captum']:.2f} vs captum "
                  f"(plan {row['flop_ratio']:.2f}x: {row['of_flop_ratio']:.0%}) | max diff {row['max_diff_vs_full']:.1e}",
                  flush=True)
    machine = common.machine(args.device)
    where = machine["device"] if args.device == "cuda" else machine["cpu"]
    payload = {"machine": machine, "incremental": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "torch": torch.__version__}
    md = ("### Incremental occlusion (exact), 1 image 224x224, window (3,16,16), perturbations_per_eval "
          f"{args.ppe}, {args.threads} thread(s), torch {torch.__version__}, {where}\n\n"
          + common.md_table(rows, ["model", "stride", "windows", "threads", "flop_ratio", "incremental_s",
                                   "incremental_cold_s", "full_s",
                                   "captum_s", "vs_full", "vs_captum", "of_flop_ratio", "incremental_call_mb",
                                   "full_call_mb", "captum_call_mb", "max_diff_vs_full", "max_diff_vs_captum"]))
    path = common.write(f"occlusion_incremental_{args.threads}thread", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


PHOTOS = ["china.jpg", "flower.jpg"]


def sample_photos(bundled, quick: bool):
    """The two sample photos as the bundled model's batch (96x96 with --quick)."""
    import torch
    from sklearn.datasets import load_sample_image

    x = torch.stack([bundled.preprocess(load_sample_image(p)) for p in PHOTOS])
    if quick:
        x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    return x


def ssim_to(exact, attr) -> list[float]:
    """SSIM of each channel-summed map against the exact one (the exact map's range)."""
    from skimage.metrics import structural_similarity

    e2d, a2d = exact.sum(1).double().numpy(), attr.sum(1).double().numpy()
    return [structural_similarity(e, a, data_range=float(e.max() - e.min())) for e, a in zip(e2d, a2d)]


def timed_attribute(occ, x, kw):
    def timed(**extra):
        start = time.perf_counter()
        attr = occ.attribute(x, **kw, **extra)
        return attr, time.perf_counter() - start
    return timed


def field_study(args) -> int:
    import torch
    import torchvision

    import interp_ext
    from interp_ext import models

    torch.set_num_threads(args.threads)
    bundled = models.load()
    photos = PHOTOS
    x = sample_photos(bundled, args.quick)
    torch.manual_seed(0)
    nets = {"lite0": bundled.model, "resnet18": torchvision.models.resnet18(weights=None).eval()}
    kw = dict(sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), perturbations_per_eval=args.ppe)
    rows = []
    for name, net in nets.items():
        occ = interp_ext.Occlusion(net)
        timed = timed_attribute(occ, x, kw)
        full, full_s = timed(incremental=False)
        exact, exact_s = timed(incremental=True)
        rows.append({"model": name, "field_threshold": "exact", "seconds": exact_s, "vs_full": full_s / exact_s,
                     "ssim_mean": 1.0, "ssim_min": 1.0})
        for tau in (0.75, 0.5, 0.4, 0.3, 0.2):
            attr, secs = timed(field_threshold=tau)
            ssim = ssim_to(exact, attr)
            plan, _ = occ.incremental_plan(x, (3, 16, 16), (3, 8, 8), field_threshold=tau)
            rows.append({"model": name, "field_threshold": tau, "flop_ratio": plan.flop_ratio, "seconds": secs,
                         "vs_full": full_s / secs, "ssim_mean": sum(ssim) / len(ssim), "ssim_min": min(ssim)})
            print(f"{name} tau {tau}: {secs:.1f} s (x{full_s / secs:.2f} vs full), SSIM {rows[-1]['ssim_mean']:.3f} "
                  f"(min {rows[-1]['ssim_min']:.3f})", flush=True)
    payload = {"machine": common.machine("cpu"), "images": photos, "size": list(x.shape[2:]), "field": rows,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__}
    md = (f"### Occlusion field_threshold (approximate), {', '.join(photos)}, window (3,16,16), stride 8, "
          f"{x.shape[2]}x{x.shape[3]}, {args.threads} thread(s), " + payload["machine"]["cpu"] + "\n\n"
          + common.md_table(rows, ["model", "field_threshold", "flop_ratio", "seconds", "vs_full", "ssim_mean",
                                   "ssim_min"]))
    path = common.write(f"occlusion_field_{args.threads}thread", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


def run_child(which: str, model: str, images: int, ppe: int, threads: int, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, which, model, str(images), str(ppe), str(threads), str(out)],
                         capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{which} on {model} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def refine_study(args) -> int:
    import torch

    import interp_ext
    from interp_ext import models

    torch.set_num_threads(args.threads)
    bundled = models.load()
    photos = PHOTOS
    x = sample_photos(bundled, args.quick)
    kw = dict(sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), perturbations_per_eval=args.ppe)
    occ = interp_ext.Occlusion(bundled.model)
    timed = timed_attribute(occ, x, kw)

    exact, exact_s = timed()
    windows = interp_ext.ops.occlusion_window_count(x.shape[1:], (3, 16, 16), (3, 8, 8))
    coarse = interp_ext.ops.occlusion_window_count(x.shape[1:], (3, 16, 16), (3, 16, 16))
    rows = [{"refine": "exact", "model_copies_per_image": windows, "seconds": exact_s, "speedup": 1.0,
             "ssim_mean": 1.0, "ssim_min": 1.0}]
    for fraction in (0.05, 0.1, 0.25, 0.5):
        attr, secs = timed(refine=fraction)
        ssim = ssim_to(exact, attr)
        rows.append({"refine": fraction, "model_copies_per_image": coarse + math.ceil(fraction * windows),
                     "seconds": secs, "speedup": exact_s / secs, "ssim_mean": sum(ssim) / len(ssim), "ssim_min": min(ssim)})
        print(f"refine {fraction}: {secs:.1f} s (x{exact_s / secs:.2f}), SSIM {rows[-1]['ssim_mean']:.3f} "
              f"(min {rows[-1]['ssim_min']:.3f})", flush=True)
    payload = {"machine": common.machine("cpu"), "model": "efficientnet_lite0 (bundled, pretrained)",
               "images": photos, "size": list(x.shape[2:]), "refine": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    md = (f"### Occlusion coarse-to-fine, EfficientNet-Lite0 on {', '.join(photos)}, window (3,16,16), stride 8, "
          f"{x.shape[2]}x{x.shape[3]}, {args.threads} thread(s), " + payload["machine"]["cpu"] + "\n\n"
          + common.md_table(rows, ["refine", "model_copies_per_image", "seconds", "speedup", "ssim_mean", "ssim_min"]))
    path = common.write("occlusion_refine", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one image, near-free model only")
    p.add_argument("--models", default="free,resnet18", help="comma list of free, resnet18, vgg16")
    p.add_argument("--images", type=int, default=8, help="images for the near-free model (default 8)")
    p.add_argument("--cnn-images", type=int, default=1, help="images for the CNNs (default 1: CPU time)")
    p.add_argument("--ppe", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--refine-study", action="store_true", help="time and SSIM of refine= on the bundled model")
    p.add_argument("--incremental", action="store_true", help="incremental vs full re-inference vs Captum")
    p.add_argument("--strides", default="8,16", help="--incremental: comma list of strides (default 8,16)")
    p.add_argument("--device", default="cpu", help="--incremental: cpu or cuda (default cpu)")
    p.add_argument("--field-study", action="store_true", help="time and SSIM of field_threshold=")
    args = p.parse_args(argv)
    if args.refine_study:
        return refine_study(args)
    if args.field_study:
        return field_study(args)
    if args.incremental:
        if args.models == "free,resnet18":
            args.models = "resnet18,vgg16,lite0"
        return incremental_table(args)
    import torch

    models = ["free"] if args.quick else args.models.split(",")
    rows = []
    tmp = Path("/tmp")
    for model in models:
        images = 1 if args.quick else (args.images if model == "free" else args.cnn_images)
        r = {}
        for which in ("interp_ext", "captum"):
            r[which] = run_child(which, model, images, args.ppe, args.threads, tmp / f"occ_{which}.pt")
        a, b = torch.load(tmp / "occ_interp_ext.pt"), torch.load(tmp / "occ_captum.pt")
        max_diff = float((a - b).abs().max())
        ours, theirs = r["interp_ext"], r["captum"]
        row = {
            "model": model, "images": images, "windows_per_image": 729, "perturbations_per_eval": args.ppe,
            "threads": args.threads, "interp_ext_s": ours["seconds"], "captum_s": theirs["seconds"],
            "speedup": theirs["seconds"] / ours["seconds"],
            "interp_ext_outside_model": 1 - ours["model_seconds"] / ours["seconds"],
            "captum_outside_model": 1 - theirs["model_seconds"] / theirs["seconds"],
            "interp_ext_peak_mb": ours["peak_rss_mb"], "captum_peak_mb": theirs["peak_rss_mb"],
            "peak_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
            "interp_ext_call_mb": ours["call_peak_mb"], "captum_call_mb": theirs["call_peak_mb"],
            "call_peak_ratio": ours["call_peak_mb"] / max(theirs["call_peak_mb"], 1e-9), "max_abs_diff": max_diff,
        }
        rows.append(row)
        print(f"[{model} x{images}] interp_ext {row['interp_ext_s']:.2f} s ({row['interp_ext_outside_model']:.1%} outside the model, "
              f"peak {row['interp_ext_peak_mb']:.0f} MB, call {row['interp_ext_call_mb']:.0f} MB) | captum {row['captum_s']:.2f} s "
              f"({row['captum_outside_model']:.1%}, peak {row['captum_peak_mb']:.0f} MB, call {row['captum_call_mb']:.0f} MB) "
              f"| x{row['speedup']:.1f}, max |diff| {max_diff:.2e}", flush=True)
    payload = {"machine": common.machine("cpu"), "occlusion": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    md = "### Occlusion, window (3,16,16), stride 8, 224x224, " + payload["machine"]["cpu"] + "\n\n" + common.md_table(
        rows, ["model", "images", "perturbations_per_eval", "threads", "interp_ext_s", "captum_s", "speedup",
               "interp_ext_outside_model", "captum_outside_model", "interp_ext_peak_mb", "captum_peak_mb", "peak_ratio",
               "interp_ext_call_mb", "captum_call_mb", "call_peak_ratio", "max_abs_diff"])
    path = common.write("occlusion", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
