"""The batch attribution job behind ``interp-ext explain``: find the images, run every
requested method per batch on the device, write per image an overlay PNG and the raw
map (.npy, float32) per method, ``summary.json`` and an offline gallery ``index.html``.

Resumable (an image whose outputs all exist is skipped) and crash-safe (every file is
written under a temporary name and renamed).
"""
from __future__ import annotations

import csv
import html
import json
import os
import sys
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import models, ops, viz
from .attr import (
    Deconvolution,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    Occlusion,
    Saliency,
    ShapleySampling,
    SmoothGrad,
    XGradCAM,
    grid_feature_mask,
)
from .attr.cam import resolve_layers

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".lst"}
# Grad-CAM layers of the models we ship or name; other models get the last spatial layer.
KNOWN_CAM_LAYERS = {"efficientnet_lite0": "_blocks.15"}
TORCHVISION_CAM_LAYERS = {"resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "vgg": "features",
                          "densenet": "features", "mobilenet": "features", "efficientnet": "features",
                          "convnext": "features", "regnet": "trunk_output"}


# ---- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    source: Path
    key: str  # output sub-folder under DIR/images: unique, and the same on every run


def discover(inputs: Sequence[str]) -> tuple[list[InputImage], list[dict]]:
    """Image files, folders (recursive) and text files listing paths (.txt / .lst) ->
    images with stable unique keys, and the entries that are not images (with why)."""
    found: list[tuple[Path, str]] = []
    skipped: list[dict] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, str(Path(path.resolve().name) / f.relative_to(path))))
                else:
                    skipped.append({"source": str(f), "reason": f"not an image file (suffix {f.suffix or 'none'!r})"})
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                f = Path(line) if Path(line).is_absolute() else path.parent / line
                if f.is_file():
                    found.append((f, f.name))
                else:
                    skipped.append({"source": str(f), "reason": f"listed in {path} but not a file"})
        elif path.is_file():
            found.append((path, path.name))
        else:
            skipped.append({"source": arg, "reason": "no such file or folder"})
    images, used = [], set()
    for source, key in found:
        unique, k = key, 2
        while unique in used:
            unique, k = f"{key}~{k}", k + 1
        used.add(unique)
        images.append(InputImage(source, unique))
    return images, skipped


def read_image(path: Path, size_hint: int) -> Image.Image:
    """An RGB image; 16-bit and float images scaled to 8 bits, palette / grayscale / RGBA
    converted. Huge JPEGs decode at reduced size (``draft``), which is all the model
    needs; other formats beyond PIL's decompression-bomb limit raise (and are skipped)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.draft("RGB", (size_hint, size_hint))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                return Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
            return im.convert("RGB")


def read_labels(path: Path, categories: Sequence[str]) -> dict[str, int]:
    """labels.csv rows ``image,label``: image is a file name or path, label a class
    index or an ImageNet class name. A header row is allowed."""
    index = {name.lower(): i for i, name in enumerate(categories)}
    labels = {}
    with open(path, newline="") as fh:
        for row_no, row in enumerate(csv.reader(fh), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"--target {path}: line {row_no} needs two columns (image,label), got {row!r}")
            name, label = row[0].strip(), row[1].strip()
            if label.lstrip("-").isdigit():
                value = int(label)
            elif label.lower() in index:
                value = index[label.lower()]
            elif row_no == 1:
                continue  # header
            else:
                raise ValueError(f"--target {path}: line {row_no}: unknown class {label!r}")
            if not 0 <= value < len(categories):
                raise ValueError(f"--target {path}: line {row_no}: class {value} is not in [0, {len(categories)})")
            labels[name] = value
    return labels


# ---- methods ----------------------------------------------------------------------------


@dataclass
class Context:
    model: torch.nn.Module
    layer: Optional[str]
    device: torch.device
    batch_size: int


Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, target) -> maps


@dataclass(frozen=True)
class Method:
    """One explanation: how to build its runner once (validating its options before any
    work) and how its per-image map is drawn ("heat": (H, W) overlay; "signed": (3, H, W)
    gradient picture; "channels": (3, H, W) summed over channels, then overlaid)."""

    build: Callable[[Context], Runner]
    picture: str
    needs_layer: bool = False
    help: str = ""


def _cam(cls) -> Callable[[Context], Runner]:
    def build(ctx: Context) -> Runner:
        method = cls(ctx.model, ctx.layer)
        return lambda x, t: method.attribute(x, target=t).maps[:, 0]
    return build


def _guided_gradcam(ctx: Context) -> Runner:
    method = GuidedGradCAM(ctx.model, ctx.layer)
    return lambda x, t: method.attribute(x, target=t)


def _saliency(ctx: Context) -> Runner:
    method = Saliency(ctx.model)
    return lambda x, t: method.saliency_map(x, target=t)


def _smoothgrad(ctx: Context) -> Runner:
    method = SmoothGrad(Saliency(ctx.model), n_samples=16, stdev=0.15, batch_size=16, seed=0)
    return lambda x, t: ops.saliency_reduce(method.attribute(x, target=t, abs=True))


def _gradient(cls) -> Callable[[Context], Runner]:
    def build(ctx: Context) -> Runner:
        method = cls(ctx.model)
        return lambda x, t: method.attribute(x, target=t)
    return build


def _occlusion(ctx: Context) -> Runner:
    method = Occlusion(ctx.model)
    return lambda x, t: method.attribute(x, (3, 16, 16), (3, 8, 8), target=t, perturbations_per_eval=64)


def _shapley(ctx: Context) -> Runner:
    method = ShapleySampling(ctx.model)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mask = grid_feature_mask(x.shape[2], x.shape[3], 32)
        return method.attribute(x, mask, n_samples=8, target=t, perturbations_per_eval=64, seed=0)
    return run


METHODS: dict[str, Method] = {
    "gradcam": Method(_cam(GradCAM), "heat", True, "Grad-CAM (Selvaraju et al.)"),
    "gradcam++": Method(_cam(GradCAMPlusPlus), "heat", True, "Grad-CAM++"),
    "xgradcam": Method(_cam(XGradCAM), "heat", True, "XGrad-CAM"),
    "layercam": Method(_cam(LayerCAM), "heat", True, "LayerCAM"),
    "hirescam": Method(_cam(HiResCAM), "heat", True, "HiResCAM"),
    "guided-gradcam": Method(_guided_gradcam, "signed", True, "guided backprop x Grad-CAM"),
    "saliency": Method(_saliency, "heat", False, "Simonyan et al. max |gradient| over channels"),
    "smoothgrad": Method(_smoothgrad, "heat", False, "SmoothGrad of the saliency map (16 samples)"),
    "guided-backprop": Method(_gradient(GuidedBackprop), "signed", False, "Springenberg et al."),
    "deconvnet": Method(_gradient(Deconvolution), "signed", False, "Zeiler & Fergus"),
    "occlusion": Method(_occlusion, "channels", False, "window 16, stride 8, baseline 0"),
    "shapley": Method(_shapley, "channels", False, "Shapley sampling, 32-px patches, 8 permutations"),
}
DEFAULT_METHODS = ("gradcam", "guided-gradcam", "saliency", "guided-backprop")


def parse_methods(spec: str) -> list[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def default_layer(model_name: str, model: torch.nn.Module, input_size: int) -> str:
    """The Grad-CAM layer: a known one, else the last module (in execution order) whose
    output is a spatial (N, C, h, w) map with h, w > 1."""
    if model_name in KNOWN_CAM_LAYERS:
        return KNOWN_CAM_LAYERS[model_name]
    for prefix, layer in TORCHVISION_CAM_LAYERS.items():
        if model_name.startswith(prefix) and layer in dict(model.named_modules()):
            return layer
    last: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    hooks = [m.register_forward_hook(lambda mod, i, o: last.append(names[mod])
                                     if isinstance(o, torch.Tensor) and o.dim() == 4 and min(o.shape[2:]) > 1 else None)
             for m in names]
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(1, 3, input_size, input_size, device=p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
    if not last:
        raise ValueError("--layer: the model has no layer with a spatial output; name one with --layer")
    return last[-1]


# ---- outputs ------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_npy(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
    return path


def picture(kind: str, crop: Image.Image, amap: torch.Tensor) -> Image.Image:
    if kind == "heat":
        return viz.overlay(crop, amap)
    if kind == "signed":
        return viz.gradient_image(amap)
    return viz.overlay(crop, amap.sum(0))


def outputs_of(out: Path, image: InputImage, methods: Sequence[str]) -> dict[str, Path]:
    folder = out / "images" / image.key
    files = {"input": folder / "input.png"}
    for m in methods:
        files[f"{m}.png"] = folder / f"{m}.png"
        files[f"{m}.npy"] = folder / f"{m}.npy"
    return files


def write_gallery(out: Path, summary: dict) -> Path:
    """DIR/index.html: images x methods, relative links only (viewable offline)."""
    methods = summary["methods"]
    rows = []
    for key, entry in sorted(summary["images"].items()):
        cells = []
        for name in ["input", *methods]:
            rel = entry["files"].get("input" if name == "input" else f"{name}.png")
            if rel is None:
                cells.append("<td>-</td>")
                continue
            src = urllib.parse.quote(rel)
            cells.append(f'<td><a href="{src}"><img src="{src}" alt="{html.escape(key)} {name}" width="160"></a></td>')
        top = entry.get("top5") or []
        pred = html.escape(f"{top[0]['class']} ({top[0]['probability']:.1%})") if top else ""
        target = html.escape(str(entry.get("target_name", entry.get("target", ""))))
        rows.append(f"<tr><th>{html.escape(key)}<br><small>top-1: {pred}<br>target: {target}</small></th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["image", "input", *methods])
    skipped = "".join(f"<li>{html.escape(s['source'])}: {html.escape(s['reason'])}</li>" for s in summary.get("skipped", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interp_ext gallery</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}} img{{display:block}}</style></head>
<body><h1>interp_ext: {html.escape(summary['model'])}</h1>
<p>{len(summary['images'])} images, methods: {html.escape(', '.join(methods))}; device {html.escape(summary['device'])}</p>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>
"""
    path = out / "index.html"
    _atomic_write_bytes(path, page.encode())
    return path


def write_contact_sheet(out: Path, summary: dict, thumb: int = 112, max_images: int = 16) -> Optional[Path]:
    """DIR/gallery.png: the first `max_images` images x (input + methods) as one picture,
    for a README or a report (the full set is in index.html)."""
    keys = sorted(summary["images"])[:max_images]
    if not keys:
        return None
    columns = ["input", *summary["methods"]]
    label_h = 16
    sheet = Image.new("RGB", (thumb * len(columns), label_h + thumb * len(keys)), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * thumb + 4, 2), name, fill="black")
    for r, key in enumerate(keys):
        files = summary["images"][key]["files"]
        for c, name in enumerate(columns):
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel and (out / rel).is_file():
                with Image.open(out / rel) as im:
                    sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (c * thumb, label_h + r * thumb))
    path = out / "gallery.png"
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)
    return path


def write_summary(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    _atomic_write_bytes(path, json.dumps(summary, indent=2).encode())
    return path


# ---- the job ------------------------------------------------------------------------------


@dataclass
class ExplainConfig:
    inputs: Sequence[str]
    out: Path
    methods: Sequence[str] = DEFAULT_METHODS
    model: str = models.BUNDLED
    weights: Optional[str] = None
    batch_size: int = 8
    device: str = "auto"
    target: str = "top1"
    layer: Optional[str] = None
    quiet: bool = False


@dataclass
class Prepared:
    """Everything validated and loaded, before any image is touched."""

    config: ExplainConfig
    loaded: models.LoadedModel
    device: torch.device
    layer: Optional[str]
    runners: dict[str, Runner]
    labels: Optional[dict[str, int]]
    fixed_target: Optional[int]
    images: list[InputImage] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if spec not in ("cpu", "cuda") and not spec.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return torch.device(spec)


def load_model(spec: str, weights: Optional[str]) -> models.LoadedModel:
    """The bundled model, a torchvision architecture with --weights, or module:function
    returning an nn.Module or a LoadedModel (ImageNet preprocessing for a bare module)."""
    if ":" in spec:
        import importlib

        module_name, func_name = spec.split(":", 1)
        sys.path.insert(0, os.getcwd())
        try:
            obj = getattr(importlib.import_module(module_name), func_name)()
        finally:
            sys.path.pop(0)
        if isinstance(obj, models.LoadedModel):
            return obj
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(f"--model {spec}: must return an nn.Module or interp_ext.models.LoadedModel, got {type(obj).__name__}")
        return models.LoadedModel(model=obj.eval(), name=spec, categories=models.imagenet_categories(), input_size=224,
                                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_size=256)
    return models.load(spec, weights)


def prepare(config: ExplainConfig) -> Prepared:
    """Check every option, load the model and build each method: all errors surface here,
    before any image is read or written."""
    methods = list(config.methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods: unknown {m}; choose from {', '.join(METHODS)}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {config.batch_size}")
    device = pick_device(config.device)
    loaded = load_model(config.model, config.weights)
    loaded.model.to(device)
    labels, fixed = None, None
    if config.target != "top1":
        if config.target.lstrip("-").isdigit():
            fixed = int(config.target)
            if not 0 <= fixed < len(loaded.categories):
                raise ValueError(f"--target: class {fixed} is not in [0, {len(loaded.categories)})")
        elif Path(config.target).is_file():
            labels = read_labels(Path(config.target), loaded.categories)
        else:
            raise ValueError(f"--target must be top1, a class index or a labels CSV file, got {config.target!r}")
    layer = None
    if any(METHODS[m].needs_layer for m in methods):
        layer = config.layer or default_layer(loaded.name, loaded.model, loaded.input_size)
        resolve_layers(loaded.model, layer)  # unknown name: an error with close matches
    ctx = Context(loaded.model, layer, device, config.batch_size)
    runners = {m: METHODS[m].build(ctx) for m in methods}
    images, skipped = discover(config.inputs)
    return Prepared(config, loaded, device, layer, runners, labels, fixed, images, skipped)


def _label_for(labels: dict[str, int], image: InputImage) -> Optional[int]:
    for name in (str(image.source), image.source.name, image.key):
        if name in labels:
            return labels[name]
    return None


def run(prep: Prepared, images: Optional[Sequence[InputImage]] = None) -> dict:
    """Explain `images` (default: all discovered) and return this run's summary part:
    ``images`` (key -> entry), ``skipped``, ``seconds`` per method, ``processed``."""
    cfg, loaded = prep.config, prep.loaded
    out = Path(cfg.out)
    images = prep.images if images is None else images
    methods = list(prep.runners)
    entries: dict[str, dict] = {}
    skipped: list[dict] = []
    seconds = {m: 0.0 for m in methods}
    todo = []
    for image in images:
        files = outputs_of(out, image, methods)
        if all(f.is_file() for f in files.values()):
            entries[image.key] = {"source": str(image.source), "resumed": True,
                                  "files": {k: str(v.relative_to(out)) for k, v in files.items()}}
        else:
            todo.append(image)

    def report(source: Path, reason: str) -> None:
        skipped.append({"source": str(source), "reason": reason})
        print(f"interp-ext: skipped {source}: {reason}", file=sys.stderr)

    processed = 0
    start_all = time.perf_counter()
    bar = tqdm(total=len(todo), desc="explain", unit="img", disable=cfg.quiet)
    for first in range(0, len(todo), cfg.batch_size):
        batch_images, crops, tensors, targets = [], [], [], []
        for image in todo[first : first + cfg.batch_size]:
            if prep.labels is not None:
                label = _label_for(prep.labels, image)
                if label is None:
                    report(image.source, f"no label in {cfg.target}")
                    bar.update(1)
                    continue
                targets.append(label)
            try:
                pil = read_image(image.source, loaded.resize_size)
            except Exception as e:  # unreadable, truncated, not an image, too large: skip it
                if prep.labels is not None:
                    targets.pop()
                report(image.source, f"unreadable ({type(e).__name__}: {e})")
                bar.update(1)
                continue
            batch_images.append(image)
            crop = loaded.crop(pil)  # what preprocess would compute, done once
            crops.append(crop)
            tensors.append(loaded.normalize(models.to_unit_tensor(crop)))
        if not batch_images:
            continue
        x = torch.stack(tensors).to(prep.device)
        with torch.no_grad():
            logits = loaded.model(x)
        if prep.labels is not None:
            target = torch.tensor(targets, device=prep.device)
        elif prep.fixed_target is not None:
            target = torch.full((len(batch_images),), prep.fixed_target, device=prep.device)
        else:
            target = logits.argmax(dim=1)
        top5 = loaded.top_k(logits, 5)
        maps = {}
        for m, runner in prep.runners.items():
            t0 = time.perf_counter()
            maps[m] = runner(x, target).detach().float()
            if prep.device.type == "cuda":
                torch.cuda.synchronize(prep.device)
            seconds[m] += time.perf_counter() - t0
        for i, image in enumerate(batch_images):
            files = outputs_of(out, image, methods)
            for m in methods:
                amap = maps[m][i].cpu()
                save_npy(amap.numpy().astype(np.float32), files[f"{m}.npy"])
                viz.save_png(picture(METHODS[m].picture, crops[i], amap), files[f"{m}.png"])
            viz.save_png(crops[i], files["input"])  # last: its presence marks nothing half-done
            t = int(target[i])
            entries[image.key] = {
                "source": str(image.source),
                "target": t,
                "target_name": loaded.categories[t] if t < len(loaded.categories) else str(t),
                "top5": [{"class": c, "probability": round(p, 4)} for c, p in top5[i]],
                "files": {k: str(v.relative_to(out)) for k, v in files.items()},
            }
            processed += 1
        bar.update(len(batch_images))
        elapsed = time.perf_counter() - start_all
        bar.set_postfix_str(f"{processed / elapsed:.2f} img/s" if elapsed > 0 else "")
    bar.close()
    return {"images": entries, "skipped": skipped, "seconds": seconds, "processed": processed,
            "wall_seconds": time.perf_counter() - start_all}


def summarize(prep: Prepared, parts: Sequence[dict], previous: Optional[dict] = None) -> dict:
    """One summary from the runs' parts (one per rank), keeping entries of earlier runs."""
    images = dict((previous or {}).get("images", {}))
    for p in parts:
        for key, entry in p["images"].items():
            if entry.get("resumed") and key in images:
                continue  # keep the earlier run's full entry
            images[key] = entry
    skipped = list(prep.skipped) + [s for p in parts for s in p["skipped"]]
    done = {e["source"] for e in images.values()}
    skipped = [s for s in skipped if s["source"] not in done]
    processed = sum(p["processed"] for p in parts)
    wall = max((p["wall_seconds"] for p in parts), default=0.0)
    seconds = {m: sum(p["seconds"][m] for p in parts) for m in prep.runners}
    return {
        "model": prep.loaded.name,
        "device": str(prep.device),
        "layer": prep.layer,
        "methods": list(prep.runners),
        "target": prep.config.target,
        "images": images,
        "skipped": skipped,
        "timing": {
            "processed_this_run": processed,
            "wall_seconds": round(wall, 3),
            "images_per_second": round(processed / wall, 3) if wall > 0 else None,
            "method_seconds": {m: round(s, 3) for m, s in seconds.items()},
            "ranks": len(parts),
        },
    }


def read_previous(out: Path) -> Optional[dict]:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
