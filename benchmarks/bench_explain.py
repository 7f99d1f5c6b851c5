"""The whole explain job against the peers' job, each a whole process.

Ours: ``python -m interp_ext.cli explain FOLDER --methods M --out DIR --quiet`` on the
bundled EfficientNet-Lite0. The peers': ``benchmarks/peers_job.py``, the same job as a user
writes it with Captum (Grad-CAM, guided Grad-CAM, saliency, guided backprop, occlusion) and
pytorch-grad-cam (the other CAM variants): same model, crops, normalisation, top-1 targets,
layer and batch size; a PNG and a .npy per image and method. The images: crops and
horizontal flips of scikit-learn's two sample photos, JPEG and PNG, short side <= 427
(so that a JPEG draft decode, which only shrinks by 2 from 512 up, changes no pixel).

Per method set (the default methods; eight methods; occlusion) and thread setting (1 and
the default; OMP_NUM_THREADS for both processes): each process on N0 and N images,
interleaved ours / peers, `repeats` times; the marginal seconds per image
``(t(N) - t(N0)) / (N - N0)`` (start-up excluded; from the medians, and from the minima),
images/s, the speed-up (peers' marginal / ours), each process's peak RSS (``wait4``).
Then, from separate counting runs at 1 thread (ours: the CLI entry point ``cli.main``
in-process; the peers' script with ``--stats``): forward / backward passes of the model
per batch and the share of the job's loop spent in them. The maps are checked before any
figure is reported: both jobs' .npy files from their first runs (N0 images), compared on
two images, and guided backprop against a hand-written reference through nn.ReLU6.

    python benchmarks/bench_explain.py [--quick] [--sets default,eight,occlusion] [--images 8,32]
        [--occlusion-images 1,4] [--repeats 3] [--threads 1,2] [--device cpu|cuda] [--batch-size 8]

``--quick``: the default and eight-method sets on 4 and 8 images, 1 repeat, 1 thread, 8 in
the counting runs (about 2 minutes on 2 cores): a smoke run, not figures to quote.
``--quick --sets occlusion``: occlusion on 1 image (seconds per image with start-up included),
no counting run (about 3 minutes). The full occlusion set (1 and 4 images, 1 repeat, both
thread settings, a counting run on 1 image) is the long part of a full run: at ~75 s per
image and process at 1 thread here, about half an hour; ``--occlusion-images 1,2`` halves it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

EIGHT = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "guided-gradcam", "saliency", "guided-backprop")
PEER_OF = {"gradcam": "Captum LayerGradCam + interpolate", "guided-gradcam": "Captum GuidedGradCam",
           "saliency": "Captum Saliency", "guided-backprop": "Captum GuidedBackprop", "occlusion": "Captum Occlusion",
           "gradcam++": "pytorch-grad-cam GradCAMPlusPlus", "xgradcam": "pytorch-grad-cam XGradCAM",
           "layercam": "pytorch-grad-cam LayerCAM", "hirescam": "pytorch-grad-cam HiResCAM"}


def _job_constant(name: str):
    """A constant of the job's method registry, wherever this version keeps it."""
    import importlib

    for module in ("interp_ext.registry", "interp_ext.explain"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def default_methods() -> tuple[str, ...]:
    return tuple(_job_constant("DEFAULT_METHODS") or ("gradcam", "guided-gradcam", "saliency", "guided-backprop"))


def cam_layer() -> str:
    return (_job_constant("KNOWN_CAM_LAYERS") or {}).get("efficientnet_lite0", "_blocks.15")


# ---- inputs --------------------------------------------------------------------------------


def make_images(root: Path, sizes) -> dict[int, Path]:
    """root/img{n}/ holds the first n of max(sizes) photos: crops (60-100% of each side)
    of the two sample photos, every other pair flipped, one in three PNG, the rest JPEG."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    files = []
    for i in range(max(sizes)):
        rng = np.random.default_rng(1000 + i)
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[top:top + ch, left:left + cw]
        if (i // 2) % 2:
            crop = crop[:, ::-1]
        name = f"photo_{i:04d}." + ("png" if i % 3 == 0 else "jpg")
        files.append((name, Image.fromarray(np.ascontiguousarray(crop))))
    folders = {}
    for n in sorted(set(sizes)):
        folder = root / f"img{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, im in files[:n]:
            im.save(folder / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        folders[n] = folder
    return folders


# ---- the two jobs --------------------------------------------------------------------------


def cli_flags() -> str:
    """`interp-ext explain --help`, to pass the options this version of the job has."""
    res = subprocess.run([sys.executable, "-m", "interp_ext.cli", "explain", "--help"], capture_output=True, text=True)
    return " ".join(res.stdout.split())  # argparse wraps the lines


def ours_cmd(folder: Path, methods, out: Path, args, help_text: str) -> list[str]:
    cmd = [sys.executable, "-m", "interp_ext.cli", "explain", str(folder), "--methods", ",".join(methods),
           "--out", str(out), "--quiet", "--batch-size", str(args.batch_size), "--device", args.device]
    if "occlusion" in methods and "--perturbations-per-eval" in help_text:
        cmd += ["--perturbations-per-eval", str(args.ppe)]
    return cmd


def peers_cmd(folder: Path, methods, out: Path, args, layer: str, stats: Path | None = None) -> list[str]:
    cmd = [sys.executable, str(HERE / "peers_job.py"), str(folder), "--methods", ",".join(methods), "--out", str(out),
           "--batch-size", str(args.batch_size), "--device", args.device, "--layer", layer, "--ppe", str(args.peers_ppe)]
    return cmd + (["--stats", str(stats)] if stats else [])


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def checked_run(cmd, env, what: str, timeout: float) -> dict:
    r = common.run_process(cmd, env=env, timeout=timeout)
    if r["rc"] != 0:
        raise RuntimeError(f"{what} failed (exit {r['rc']}): {' '.join(cmd)}\n{r['stderr']}")
    return r


def read_summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def runner_share(summary: dict):
    """Our job's own figure: seconds in the planner's passes (model passes and the map
    reductions) over its loop's wall seconds, from summary.json's timing."""
    t = summary.get("timing") or {}
    secs, wall = t.get("pass_seconds") or t.get("method_seconds"), t.get("wall_seconds")
    if not secs or not wall:
        return None
    return sum(secs.values()) / wall


# ---- counting runs ---------------------------------------------------------------------------


def count_ours_child(argv) -> int:
    """In-process: the job's CLI entry point with the model's passes counted."""
    stats_path, batch_size, cli_args = Path(argv[0]), int(argv[1]), argv[2:]
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from interp_ext import cli, models

    model_class = type(models.load().model)
    with common.PassCounter(model_class) as counter:
        start = time.perf_counter()
        rc = cli.main(cli_args)
        call_s = time.perf_counter() - start
    out = Path(cli_args[cli_args.index("--out") + 1])
    summary = read_summary(out)
    t = summary.get("timing") or {}
    images = t.get("processed_this_run") or len(summary.get("images", {}))
    stats_path.write_text(json.dumps({"rc": rc, "images": images, "batches": math.ceil(images / batch_size),
                                      "loop_s": t.get("wall_seconds"), "call_s": call_s, **counter.stats()}))
    return rc


def count_passes(set_name, methods, folder: Path, tmp: Path, args, layer: str, help_text: str) -> list[dict]:
    rows = []
    env = thread_env(1)
    for side in ("interp_ext", "peers"):
        out, stats = tmp / f"count_{side}_{set_name}", tmp / f"count_{side}_{set_name}.json"
        if side == "interp_ext":
            cmd = ours_cmd(folder, methods, out, args, help_text)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_count-ours", str(stats), str(args.batch_size)] + cmd[3:]
        else:
            cmd = peers_cmd(folder, methods, out, args, layer, stats)
        checked_run(cmd, env, f"{side} counting run ({set_name})", args.timeout)
        s = json.loads(stats.read_text())
        shutil.rmtree(out, ignore_errors=True)
        b = max(1, s["batches"])
        row = {"set": set_name, "side": side, "threads": 1, "images": s["images"], "batches": s["batches"],
               "forwards_per_batch": s["forwards"] / b, "backwards_per_batch": s["backwards"] / b,
               "model_s": s["model_s"], "loop_s": s["loop_s"],
               "model_share": s["model_s"] / s["loop_s"] if s.get("loop_s") else None}
        if side == "interp_ext":
            row["call_s"] = s["call_s"]
        row["outside_model_share"] = None if row["model_share"] is None else 1 - row["model_share"]
        rows.append(row)
        print(f"[passes {set_name} {side}] {row['forwards_per_batch']:.3g} forward, {row['backwards_per_batch']:.3g} "
              f"backward per batch of {args.batch_size}; model passes "
              + (f"{row['model_share']:.0%} of the loop" if row["model_share"] is not None else "(loop time unknown)"),
              flush=True)
    return rows


# ---- checks ----------------------------------------------------------------------------------


def _guided_relu6_gradient(model, x, target, guided: bool):
    """Reference input gradient of the target logits, with every nn.ReLU6 guided (only
    positive gradients of units in (0, 6)) when `guided`: hand-written, for the check."""
    import torch

    class GuidedReLU6(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return v.clamp(0, 6)

        @staticmethod
        def backward(ctx, g):
            (v,) = ctx.saved_tensors
            return g * ((v > 0) & (v < 6)) * (g > 0)

    swapped = [m for m in model.modules() if isinstance(m, torch.nn.ReLU6)] if guided else []
    for m in swapped:
        m.forward = GuidedReLU6.apply
    try:
        x = x.clone().requires_grad_(True)
        score = model(x).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(score, x)
    finally:
        for m in swapped:
            del m.forward
    return g.detach()


def check_maps(set_name, methods, ours_out: Path, peers_out: Path, folder: Path, n_images: int) -> tuple[list[dict], dict]:
    """Both jobs' .npy maps on the first `n_images` images, and the top-1 targets of all."""
    import numpy as np
    import torch

    from interp_ext import models

    summary = read_summary(ours_out)
    ours_targets = {k: e.get("target") for k, e in summary.get("images", {}).items()}
    peers_targets = json.loads((peers_out / "targets.json").read_text())
    agree = {"set": set_name, "images": len(peers_targets),
             "targets_equal": sum(ours_targets.get(k) == t for k, t in peers_targets.items()),
             "ours_layer": summary.get("layer")}
    keys = sorted(peers_targets)[:n_images]
    loaded = models.load()
    model = loaded.model.eval()
    files = [folder / Path(k).relative_to(Path(k).parts[0]) for k in keys]
    x = torch.stack([loaded.normalize(models.to_unit_tensor(loaded.crop(f))) for f in files])
    target = torch.tensor([peers_targets[k] for k in keys])
    plain = _guided_relu6_gradient(model, x, target, guided=False).numpy()
    guided = _guided_relu6_gradient(model, x, target, guided=True).numpy()
    rows = []

    def add(method, versus, a, b, tol, note=""):
        diff = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        rel = diff / scale if scale > 0 else diff
        rows.append({"set": set_name, "method": method, "image": key, "versus": versus, "max_abs_diff": diff,
                     "max_abs_ref": scale, "rel_diff": rel, "tolerance": tol,
                     "ok": None if tol is None else rel <= tol, "note": note})

    for i, key in enumerate(keys):
        ours_files = summary["images"][key]["files"]  # where our job put them (its folders are the stems)
        ours = {m: np.load(ours_out / ours_files[f"{m}.npy"]) for m in methods}
        peer = {m: np.load(peers_out / "images" / key / f"{m}.npy") for m in methods}
        for m in methods:
            if m == "gradcam":
                add(m, "Captum (LayerGradCam, bilinear, min-max)", ours[m], peer[m], 1e-4)
            elif m == "saliency":
                add(m, "Captum (Saliency abs, max over channels)", ours[m], peer[m], 1e-4)
            elif m == "occlusion":
                add(m, "Captum (Occlusion)", ours[m], peer[m], 1e-4)
            elif m == "guided-backprop":
                add(m, "reference: guided through nn.ReLU6", ours[m], guided[i], 1e-4)
                add(m, "Captum (GuidedBackprop)", ours[m], peer[m], None,
                    "Captum's hooks catch nn.ReLU only; this model's rectifiers are nn.ReLU6")
                add("Captum guided-backprop", "reference: plain gradient (no rectifier guided)", peer[m], plain[i], 1e-4,
                    "so Captum's guided backprop here is the plain gradient")
            elif m == "guided-gradcam":
                if "gradcam" in ours:
                    add(m, "reference: guided (ReLU6) x our Grad-CAM map", ours[m], guided[i] * ours["gradcam"][None], 1e-4)
                add(m, "Captum (GuidedGradCam)", ours[m], peer[m], None,
                    "Captum: unnormalised nearest-upsampled Grad-CAM x unguided gradient (ReLU6)")
            else:
                add(m, "pytorch-grad-cam", ours[m], peer[m], None,
                    "pytorch-grad-cam min-max normalises at the layer's size, then resizes (OpenCV)")
    for r in rows:
        flag = "" if r["ok"] is None else (" ok" if r["ok"] else f" ABOVE {r['tolerance']:g}")
        print(f"[check {set_name}] {r['method']} {r['image']} vs {r['versus']}: max |diff| {r['max_abs_diff']:.3g} "
              f"(rel {r['rel_diff']:.3g}){flag}", flush=True)
    print(f"[check {set_name}] top-1 targets equal on {agree['targets_equal']}/{agree['images']} images", flush=True)
    return rows, agree


# ---- timing ----------------------------------------------------------------------------------


def time_set(set_name, methods, sizes, repeats, threads, folders, tmp: Path, args, layer, help_text, check_first):
    """Interleaved whole-process runs; a row with the marginal time per image and peak RSS."""
    env = thread_env(threads)
    samples = {side: {n: [] for n in sizes} for side in ("interp_ext", "peers")}
    rss = {side: {n: [] for n in sizes} for side in ("interp_ext", "peers")}
    share = None
    checks, agree = [], None
    for rep in range(repeats):
        order = ("interp_ext", "peers") if rep % 2 == 0 else ("peers", "interp_ext")
        for n in sizes:
            outs = {}
            for side in order:
                out = tmp / f"{side}_{set_name}_t{threads}_n{n}_r{rep}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = ours_cmd(folders[n], methods, out, args, help_text) if side == "interp_ext" else \
                    peers_cmd(folders[n], methods, out, args, layer)
                r = checked_run(cmd, env, f"{side} job ({set_name}, {n} images)", args.timeout)
                samples[side][n].append(r["seconds"])
                rss[side][n].append(r["peak_rss_mb"])
                outs[side] = out
                print(f"[{set_name} t={threads} n={n} rep {rep}] {side}: {r['seconds']:.2f} s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            if n == sizes[-1]:
                share = runner_share(read_summary(outs["interp_ext"]))
            if check_first and rep == 0 and n == sizes[0]:
                checks, agree = check_maps(set_name, methods, outs["interp_ext"], outs["peers"], folders[n], 2)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    row = {"set": set_name, "methods": ",".join(methods), "device": args.device, "threads": threads,
           "batch_size": args.batch_size, "images": "/".join(map(str, sizes)), "repeats": repeats}
    med = {side: {n: statistics.median(v) for n, v in s.items()} for side, s in samples.items()}
    low = {side: {n: min(v) for n, v in s.items()} for side, s in samples.items()}
    for side in ("interp_ext", "peers"):
        for n in sizes:
            row[f"{side}_s_{n}_median"] = med[side][n]
            row[f"{side}_s_{n}_min"] = low[side][n]
            row[f"{side}_peak_rss_mb_{n}"] = round(max(rss[side][n]))
        if len(sizes) > 1:
            n0, n1 = sizes[0], sizes[-1]
            row[f"{side}_s_per_image"] = (med[side][n1] - med[side][n0]) / (n1 - n0)
            row[f"{side}_s_per_image_from_min"] = (low[side][n1] - low[side][n0]) / (n1 - n0)
            row["per_image"] = "marginal"
        else:
            row[f"{side}_s_per_image"] = med[side][sizes[0]] / sizes[0]
            row["per_image"] = "whole process / images (start-up included)"
        spi = row[f"{side}_s_per_image"]
        row[f"{side}_images_per_s"] = 1 / spi if spi > 0 else None
        row[f"{side}_peak_rss_mb"] = round(max(rss[side][sizes[-1]]))
    row["speedup_vs_peers"] = row["peers_s_per_image"] / row["interp_ext_s_per_image"] \
        if row["interp_ext_s_per_image"] > 0 else None
    if len(sizes) > 1:
        row["speedup_from_min"] = row["peers_s_per_image_from_min"] / row["interp_ext_s_per_image_from_min"] \
            if row["interp_ext_s_per_image_from_min"] > 0 else None
    row["interp_ext_runner_share"] = share
    print(f"[{set_name} t={threads}] s/image ({row['per_image']}): interp_ext {row['interp_ext_s_per_image']:.3f}, "
          f"peers {row['peers_s_per_image']:.3f} -> x{row['speedup_vs_peers']:.2f}; peak RSS "
          f"{row['interp_ext_peak_rss_mb']:.0f} / {row['peers_peak_rss_mb']:.0f} MB", flush=True)
    return row, checks, agree


def markdown(payload: dict) -> str:
    m = payload["machine"]
    cfg = payload["config"]
    parts = [
        f"### The explain job vs the peers' job{' (QUICK smoke run: not figures to quote)' if payload['quick'] else ''}, "
        f"{m['device']} ({m['cpu']}), torch {m['torch']}, {m['date']}",
        f"Bundled {cfg['model']}, layer `{cfg['layer']}`, batch {cfg['batch_size']}, images: {cfg['images']}; "
        f"occlusion window (3,16,16) stride 8 baseline 0, perturbations_per_eval: job {cfg['ours_ppe']}, "
        f"Captum {cfg['peers_ppe']}. Threads: torch's (OMP_NUM_THREADS) in both processes. Whole processes; "
        "per image = (t(N) - t(N0)) / (N - N0) from the medians "
        "(start-up excluded) unless said; speed-up = peers' s/image / ours.",
        common.md_table(payload["timing"], ["set", "threads", "images", "repeats", "per_image", "interp_ext_s_per_image",
                                            "peers_s_per_image", "speedup_vs_peers", "speedup_from_min",
                                            "interp_ext_images_per_s", "peers_images_per_s", "interp_ext_peak_rss_mb",
                                            "peers_peak_rss_mb", "interp_ext_runner_share"]),
        "#### Model passes (counting runs, 1 thread; per batch of --batch-size images)",
        common.md_table(payload["passes"], ["set", "side", "images", "batches", "forwards_per_batch", "backwards_per_batch",
                                            "model_s", "loop_s", "model_share", "outside_model_share"]),
        "#### Maps checked first (two images; max |diff| relative to the reference's max |value|)",
        common.md_table(payload["checks"], ["set", "method", "image", "versus", "max_abs_diff", "rel_diff", "tolerance",
                                            "ok", "note"]),
        "Top-1 targets equal: " + ", ".join(f"{a['set']} {a['targets_equal']}/{a['images']}" for a in payload["targets"]),
        "Notes:\n" + "\n".join(f"- {n}" for n in payload["notes"]),
    ]
    return "\n\n".join(parts) + "\n"


def _ints(spec: str) -> list[int]:
    return [int(v) for v in spec.split(",") if v.strip()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_count-ours"]:
        return count_ours_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 and 8 images, 1 repeat, 1 thread")
    p.add_argument("--sets", default=None,
                   help="comma list of default, eight, occlusion (default all three; quick: default,eight)")
    p.add_argument("--images", default=None, help="N0,N: image counts (default 8,32; quick 4,8)")
    p.add_argument("--occlusion-images", default=None, help="for occlusion (default 1,4; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per size and side (default 3; quick 1)")
    p.add_argument("--occlusion-repeats", type=int, default=1)
    p.add_argument("--threads", default=None, help="comma list (default: 1 and the default count; quick 1)")
    p.add_argument("--count-images", type=int, default=None, help="images in the counting runs (default 16; quick 8)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ppe", type=int, default=64, help="occlusion: the job's --perturbations-per-eval (default 64)")
    p.add_argument("--peers-ppe", type=int, default=None, help="occlusion: Captum's perturbations_per_eval (default --ppe)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new one in the temp dir)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    import torch

    q = args.quick
    sizes = _ints(args.images or ("4,8" if q else "8,32"))
    occ_sizes = _ints(args.occlusion_images or ("1" if q else "1,4"))
    repeats = args.repeats or (1 if q else 3)
    if args.threads:
        thread_list = _ints(args.threads)
    else:
        thread_list = [1] if q else list(common.thread_settings(args.device))
    count_images = args.count_images or (8 if q else 16)
    sets = {"default": default_methods(), "eight": EIGHT, "occlusion": ("occlusion",)}
    spec = args.sets or ("default,eight" if q else "default,eight,occlusion")
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in sets]
    if unknown:
        p.error(f"--sets: unknown {', '.join(unknown)}; choose from {', '.join(sets)}")
    if args.peers_ppe is None:
        args.peers_ppe = args.ppe
    layer = cam_layer()
    help_text = cli_flags()
    ours_ppe = args.ppe if "--perturbations-per-eval" in help_text else 64
    notes = []
    if ours_ppe != args.ppe:
        notes.append("the job has no --perturbations-per-eval: it runs occlusion at 64 copies per image per call")
    if "occlusion" in chosen and "over the whole batch" in help_text:
        notes.append(f"occlusion: the job's --perturbations-per-eval {ours_ppe} bounds the copies in one model call over "
                     f"the whole batch (max(1, {ours_ppe} // images) per image); Captum's perturbations_per_eval "
                     f"{args.peers_ppe} is copies per image, so its calls hold images x {args.peers_ppe} "
                     "(--peers-ppe sets it)")
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_explain_"))
    tmp.mkdir(parents=True, exist_ok=True)
    made_tmp = args.tmp is None
    try:
        folders = make_images(tmp / "inputs", sizes + occ_sizes + [count_images])
        timing, checks, agree, passes = [], [], [], []
        for set_name in chosen:
            methods = sets[set_name]
            set_sizes, set_repeats = (occ_sizes, args.occlusion_repeats) if set_name == "occlusion" else (sizes, repeats)
            for k, threads in enumerate(thread_list):
                row, c, a = time_set(set_name, methods, set_sizes, set_repeats, threads, folders, tmp, args, layer,
                                     help_text, check_first=k == 0)
                timing.append(row)
                checks += c
                if a:
                    agree.append(a)
                    if a.get("ours_layer") not in (None, layer):
                        notes.append(f"{set_name}: the job used layer {a['ours_layer']!r}, the peers {layer!r}")
            if set_name == "occlusion" and q:
                notes.append("occlusion: no counting run in --quick (the occlusion job takes about a minute per image here)")
                continue
            n = min(occ_sizes) if set_name == "occlusion" else count_images
            passes += count_passes(set_name, methods, folders[n], tmp, args, layer, help_text)
    finally:
        if made_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    notes += [
        "peers' job: Captum for gradcam / guided-gradcam / saliency / guided-backprop / occlusion, pytorch-grad-cam for "
        "gradcam++ / xgradcam / layercam / hirescam (one `with CAM(...)` per batch, as its README shows); PNGs via "
        "pytorch-grad-cam's show_cam_on_image and a +-3 std gradient picture, saved with PIL; .npy with np.save",
        "our job also writes per image its record, and summary.json, index.html and gallery.png, all atomically (fsync)",
        "Captum's GuidedBackprop and GuidedGradCam hook nn.ReLU modules only; EfficientNet-Lite0's rectifiers are "
        "nn.ReLU6, so on this model the peers' guided maps are the plain gradient (see the checks): they cost the "
        "peers one plain backward, not a guided one",
        "pytorch-grad-cam's backward is loss.backward(): it also computes the weights' gradients",
        "passes: forward calls of the model's top-level module and calls of torch.autograd.grad / .backward, in "
        "separate counting runs (ours: interp_ext.cli.main in-process); model_share = their seconds / the loop's "
        "(ours: summary.json timing.wall_seconds, i.e. after the model is loaded)",
        "interp_ext_runner_share: the job's own summary.json, seconds in the methods (model passes + map reductions) "
        "over its loop's wall seconds, in the timed run on the most images",
        "peak RSS: each process's own maximum resident set (wait4), at the largest image count",
        "threads: torch's intra-op threads (OMP_NUM_THREADS, MKL_NUM_THREADS) in both processes; the job's own "
        "--workers reader / writer threads are left at their default",
    ]
    payload = {"machine": common.machine(args.device), "quick": q,
               "config": {"model": "efficientnet_lite0", "layer": layer, "batch_size": args.batch_size,
                          "images": f"{'/'.join(map(str, sizes))} (occlusion {'/'.join(map(str, occ_sizes))}; "
                                    f"counting runs {count_images}, occlusion {min(occ_sizes)})",
                          "ours_ppe": ours_ppe, "peers_ppe": args.peers_ppe, "threads": thread_list, "repeats": repeats,
                          "sets": {s: list(sets[s]) for s in chosen}, "peers": {m: PEER_OF[m] for s in chosen for m in sets[s]}},
               "timing": timing, "passes": passes, "checks": checks, "targets": agree, "notes": notes,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import captum
        import pytorch_grad_cam  # noqa: F401
        from importlib.metadata import version

        payload["versions"] = {"torch": torch.__version__, "captum": captum.__version__, "grad-cam": version("grad-cam")}
    except Exception:
        pass
    path = common.write("explain", payload, markdown(payload), args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
