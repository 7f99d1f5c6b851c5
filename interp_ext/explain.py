"""The batch attribution job behind ``interp-ext explain``: find the images, run every
requested method per batch on the device, write per image an overlay PNG and the raw
map (.npy, float32) per method, ``summary.json`` and an offline gallery ``index.html``.

Resumable: each finished image gets a record, ``DIR/records/<hash>.json``, written last
(after all its files) and holding the configuration that made it (model and a hash of
its weights, input size and normalisation, target, and per method its options and
layer) and the input file's size and time. A re-run skips an image only if its record
matches the current configuration and its files exist; ``--force`` redoes every image.
``summary.json`` is derived from the records, so a killed run loses at most the images
it was writing.

Crash-safe: every file is written by one helper (``interp_ext.writers.atomic_write``:
unique temporary name, fsync, rename). One run at a time per ``--out``: a run holds
``DIR/.lock`` (``flock``); a second run exits with a message saying so. Under
``torchrun`` the ranks of one run are one job (rank 0 holds the lock) and agree on
the outcome of each phase, so a rank that fails makes every rank exit with its message.
"""
from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import html
import json
import os
import pickle
import re
import socket
import stat
import sys
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

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
from .writers import WriteError, atomic_write, atomic_write_bytes, remove_stale_temporaries

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".lst"}
# Grad-CAM layers of the models we ship or name; other models get the last spatial layer.
KNOWN_CAM_LAYERS = {"efficientnet_lite0": "_blocks.15"}
TORCHVISION_CAM_LAYERS = {"resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4", "vgg": "features",
                          "densenet": "features", "mobilenet": "features", "efficientnet": "features",
                          "convnext": "features", "regnet": "trunk_output"}
RECORD_VERSION = 1
MIN_FREE_BYTES = 1 << 20  # --out's disk must have at least this much free before the model loads
_INT = re.compile(r"^[+-]?\d+$")


class ExplainError(ValueError):
    """A user error found before any work: the message names the argument."""


class BusyError(ExplainError):
    """Another run holds --out's lock."""


# ---- names --------------------------------------------------------------------------------


def _percent_escape(err: UnicodeError) -> tuple[str, int]:
    bad = err.object[err.start:err.end]
    return "".join(f"%{b:02X}" for b in bad), err.end


codecs.register_error("interp_ext_percent", _percent_escape)


def display_name(name: Any) -> str:
    """A file name or path as valid Unicode text for JSON, HTML and output folder names:
    bytes that are not UTF-8 (kept by Python as lone surrogates, PEP 383) become ``%XX``;
    valid names are unchanged."""
    s = os.fspath(name) if isinstance(name, (os.PathLike, bytes)) else str(name)
    raw = s if isinstance(s, bytes) else None
    if raw is None:
        try:
            raw = os.fsencode(s)
        except UnicodeError:  # surrogates that no file name produced (e.g. from JSON)
            raw = s.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "interp_ext_percent")


# ---- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputImage:
    source: Path
    key: str  # output sub-folder under DIR/images: unique, valid Unicode, the same on every run


def _not_regular(mode: int) -> str:
    kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else
            "character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode) else "special file")
    return f"not a regular file ({kind})"


def _stat(path: Path) -> tuple[Optional[os.stat_result], str]:
    """(stat following links, '') or (None, why it cannot be used)."""
    try:
        return path.stat(), ""
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        if e.errno == errno.ENOENT:
            return None, "broken symlink" if path.is_symlink() else "no such file or folder"
        return None, f"cannot read ({e.strerror})"


def _walk(root: Path, found: list[tuple[Path, str]], skipped: list[dict], exclude: set) -> None:
    """Every image under `root`, following symlinked folders but not into a loop."""
    base = Path(root.resolve().name)
    items: list[tuple[Path, Optional[str]]] = []  # (path, None) = image, (path, reason) = skipped

    def visit(folder: Path, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            items.append((folder, f"cannot read the folder ({e.strerror})"))
            return
        for entry in entries:
            path = Path(entry.path)
            st, why = _stat(path)
            if entry.name.startswith(".") and (st is None or not stat.S_ISDIR(st.st_mode)):
                continue  # hidden files
            if st is None:
                items.append((path, why))
            elif stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in exclude:
                    continue  # the --out folder inside an input folder
                if ident in ancestors:
                    items.append((path, "symlink loop (links to a folder above it)"))
                else:
                    visit(path, ancestors | {ident})
            elif not stat.S_ISREG(st.st_mode):
                items.append((path, _not_regular(st.st_mode)))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, None))
            else:
                items.append((path, f"not an image file (suffix {path.suffix or 'none'!r})"))

    st = root.stat()
    visit(root, frozenset({(st.st_dev, st.st_ino)}))
    for path, why in sorted(items, key=lambda item: item[0]):
        if why is None:
            found.append((path, str(base / path.relative_to(root))))
        else:
            skipped.append({"source": display_name(path), "reason": why})


def _read_list(path: Path, found: list[tuple[Path, str]], skipped: list[dict]) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        skipped.append({"source": display_name(path), "reason": f"cannot read the list ({e.strerror})"})
        return
    for raw in data.splitlines():
        line = os.fsdecode(raw.strip())
        if not line or line.startswith("#"):
            continue
        f = Path(line) if Path(line).is_absolute() else path.parent / line
        st, why = _stat(f)
        if st is not None and stat.S_ISREG(st.st_mode):
            found.append((f, f.name))
            continue
        if st is not None:
            why = "a folder" if stat.S_ISDIR(st.st_mode) else _not_regular(st.st_mode)
        skipped.append({"source": display_name(f), "reason": f"listed in {display_name(path)} but {why}"})


def discover(inputs: Sequence[str], exclude: Optional[Path] = None) -> tuple[list[InputImage], list[dict]]:
    """Image files, folders (recursive, following symlinked folders, loops reported) and
    text files listing paths (.txt / .lst) -> images with stable unique keys, and the
    entries that are not images (with why). `exclude`: a folder not to descend into
    (the output folder). Keys and reported sources are valid Unicode (:func:`display_name`)."""
    found: list[tuple[Path, str]] = []
    skipped: list[dict] = []
    excluded = set()
    if exclude is not None:
        try:
            st = Path(exclude).stat()
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    for arg in inputs:
        path = Path(arg)
        st, why = _stat(path)
        if st is None:
            skipped.append({"source": display_name(arg), "reason": why})
        elif stat.S_ISDIR(st.st_mode):
            _walk(path, found, skipped, excluded)
        elif not stat.S_ISREG(st.st_mode):
            skipped.append({"source": display_name(arg), "reason": _not_regular(st.st_mode)})
        elif path.suffix.lower() in LIST_SUFFIXES:
            _read_list(path, found, skipped)
        else:
            found.append((path, path.name))
    images, used = [], set()
    for source, key in found:
        key = display_name(key)
        unique, k = key, 2
        while unique in used:
            unique, k = f"{key}~{k}", k + 1
        used.add(unique)
        images.append(InputImage(source, unique))
    return images, skipped


class ImageRefused(ValueError):
    """An image that is not decoded because it is too large."""


def max_decoded_pixels() -> Optional[int]:
    """The most pixels an image may decode to: PIL's decompression-bomb error limit
    (2 x ``Image.MAX_IMAGE_PIXELS``, about 179 million), or None when that is off."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def read_image(path: Path, size_hint: int) -> Image.Image:
    """An RGB image; 16-bit and float images scaled to 8 bits, palette / grayscale / RGBA
    converted. JPEGs decode at reduced size (``draft``: 1/2, 1/4 or 1/8, never below
    `size_hint`), which is all the model needs, so a huge JPEG is read at a fraction of
    its size; any image still above :func:`max_decoded_pixels` raises
    :class:`ImageRefused` (the job skips it and says why)."""
    limit = max_decoded_pixels()
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None  # checked below, after draft() shrank a JPEG
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        with im:
            w0, h0 = im.size
            im.draft("RGB", (size_hint, size_hint))  # JPEG only; a no-op for other formats
            w, h = im.size
            if limit is not None and w * h > limit:
                raise ImageRefused(f"refused: {w0}x{h0} is {w0 * h0 / 1e6:.1f} Mpixels, above the limit of "
                                   f"{limit / 1e6:.1f} Mpixels decoded (PIL.Image.MAX_IMAGE_PIXELS x 2)")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                return Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype(np.uint8)).convert("RGB")
            return im.convert("RGB")


def read_label_rows(path: Path) -> list[tuple[int, str, str]]:
    """labels.csv rows ``image,label`` -> (line number, image, label text), checked for
    form only (class names need the model's categories: :func:`resolve_labels`). The
    first row is a header when its label is not a number and its image column does not
    name an image file (``image,label``); a first row like ``cat.jpg,tabby`` is data."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise ExplainError(f"--target {display_name(path)}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ExplainError(f"--target {display_name(path)}: not a UTF-8 CSV file ({e})") from None
    out, first = [], True
    for row_no, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ExplainError(f"--target {display_name(path)}: line {row_no} needs two columns (image,label), got {row!r}")
        name, label = row[0].strip(), row[1].strip()
        if first and not _INT.match(label) and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            first = False
            continue  # header
        first = False
        out.append((row_no, name, label))
    return out


def resolve_labels(path: Path, rows: Sequence[tuple[int, str, str]], categories: Sequence[str]) -> dict[str, int]:
    """Class indices (``5``, ``+5``) or names (case-insensitive) -> {image: class};
    an unknown class, an index out of range or one image with two different labels is an
    error naming the line(s)."""
    index = {name.lower(): i for i, name in enumerate(categories)}
    where = display_name(path)
    labels: dict[str, int] = {}
    line_of: dict[str, int] = {}
    for row_no, name, label in rows:
        if _INT.match(label):
            value = int(label)
        elif label.lower() in index:
            value = index[label.lower()]
        else:
            raise ExplainError(f"--target {where}: line {row_no}: unknown class {label!r}")
        if not 0 <= value < len(categories):
            raise ExplainError(f"--target {where}: line {row_no}: class {value} is not in [0, {len(categories)})")
        if name in labels and labels[name] != value:
            raise ExplainError(f"--target {where}: line {row_no}: {name!r} has class {value}, but line "
                               f"{line_of[name]} gave it class {labels[name]}")
        labels[name] = value
        line_of.setdefault(name, row_no)
    return labels


def read_labels(path: Path, categories: Sequence[str]) -> dict[str, int]:
    """labels.csv rows ``image,label``: image is a file name or path, label a class
    index or an ImageNet class name. A header row is allowed."""
    return resolve_labels(path, read_label_rows(path), categories)


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
    gradient picture; "channels": (3, H, W) summed over channels, then overlaid).
    ``options`` are the settings its maps depend on; they are recorded with every image
    (a re-run with other options redoes the image)."""

    make: Callable[[Context, dict], Runner]
    picture: str
    needs_layer: bool = False
    help: str = ""
    options: dict = field(default_factory=dict)

    def build(self, ctx: Context) -> Runner:
        return self.make(ctx, self.options)


def _cam(cls) -> Callable[[Context, dict], Runner]:
    def build(ctx: Context, options: dict) -> Runner:
        method = cls(ctx.model, ctx.layer)
        return lambda x, t: method.attribute(x, target=t).maps[:, 0]
    return build


def _guided_gradcam(ctx: Context, options: dict) -> Runner:
    method = GuidedGradCAM(ctx.model, ctx.layer)
    return lambda x, t: method.attribute(x, target=t)


def _saliency(ctx: Context, options: dict) -> Runner:
    method = Saliency(ctx.model)
    return lambda x, t: method.saliency_map(x, target=t)


def _smoothgrad(ctx: Context, options: dict) -> Runner:
    method = SmoothGrad(Saliency(ctx.model), n_samples=options["n_samples"], stdev=options["stdev"], batch_size=16,
                        seed=options["seed"])
    return lambda x, t: ops.saliency_reduce(method.attribute(x, target=t, abs=True))


def _gradient(cls) -> Callable[[Context, dict], Runner]:
    def build(ctx: Context, options: dict) -> Runner:
        method = cls(ctx.model)
        return lambda x, t: method.attribute(x, target=t)
    return build


def _occlusion(ctx: Context, options: dict) -> Runner:
    method = Occlusion(ctx.model)
    window, strides, baseline = tuple(options["window"]), tuple(options["strides"]), options["baseline"]
    return lambda x, t: method.attribute(x, window, strides, baselines=baseline, target=t, perturbations_per_eval=64)


def _shapley(ctx: Context, options: dict) -> Runner:
    method = ShapleySampling(ctx.model)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mask = grid_feature_mask(x.shape[2], x.shape[3], options["patch"])
        return method.attribute(x, mask, baselines=options["baseline"], n_samples=options["n_samples"], target=t,
                                perturbations_per_eval=64, seed=options["seed"])
    return run


METHODS: dict[str, Method] = {
    "gradcam": Method(_cam(GradCAM), "heat", True, "Grad-CAM (Selvaraju et al.)"),
    "gradcam++": Method(_cam(GradCAMPlusPlus), "heat", True, "Grad-CAM++"),
    "xgradcam": Method(_cam(XGradCAM), "heat", True, "XGrad-CAM"),
    "layercam": Method(_cam(LayerCAM), "heat", True, "LayerCAM"),
    "hirescam": Method(_cam(HiResCAM), "heat", True, "HiResCAM"),
    "guided-gradcam": Method(_guided_gradcam, "signed", True, "guided backprop x Grad-CAM"),
    "saliency": Method(_saliency, "heat", False, "Simonyan et al. max |gradient| over channels"),
    "smoothgrad": Method(_smoothgrad, "heat", False, "SmoothGrad of the saliency map (16 samples)",
                         {"n_samples": 16, "stdev": 0.15, "seed": 0, "abs": True}),
    "guided-backprop": Method(_gradient(GuidedBackprop), "signed", False, "Springenberg et al."),
    "deconvnet": Method(_gradient(Deconvolution), "signed", False, "Zeiler & Fergus"),
    "occlusion": Method(_occlusion, "channels", False, "window 16, stride 8, baseline 0",
                        {"window": [3, 16, 16], "strides": [3, 8, 8], "baseline": 0}),
    "shapley": Method(_shapley, "channels", False, "Shapley sampling, 32-px patches, 8 permutations",
                      {"patch": 32, "n_samples": 8, "seed": 0, "baseline": 0}),
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


def save_npy(array: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, array))


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


def _text(value: Any) -> str:
    return html.escape(display_name(value))


def write_gallery(out: Path, summary: dict) -> Path:
    """DIR/index.html: images x methods, relative links only (viewable offline). Every
    name goes through :func:`display_name`, so no file name can break the page."""
    methods = summary["methods"]
    rows = []
    for key, entry in sorted(summary["images"].items()):
        files = entry.get("files") or {}
        cells = []
        for name in ["input", *methods]:
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel is None:
                cells.append("<td>-</td>")
                continue
            src = html.escape(urllib.parse.quote(display_name(rel)))
            cells.append(f'<td><a href="{src}"><img src="{src}" alt="{_text(key)} {_text(name)}" width="160"></a></td>')
        top = entry.get("top5") or []
        pred = _text(f"{top[0]['class']} ({top[0]['probability']:.1%})") if top else ""
        target = _text(entry.get("target_name", entry.get("target", "")))
        rows.append(f"<tr><th>{_text(key)}<br><small>top-1: {pred}<br>target: {target}</small></th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_text(n)}</th>" for n in ["image", "input", *methods])
    skipped = "".join(f"<li>{_text(s['source'])}: {_text(s['reason'])}</li>" for s in summary.get("skipped", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interp_ext gallery</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}} img{{display:block}}</style></head>
<body><h1>interp_ext: {_text(summary['model'])}</h1>
<p>{len(summary['images'])} images, methods: {_text(', '.join(methods))}; device {_text(summary['device'])}</p>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>
"""
    return atomic_write_bytes(out / "index.html", page.encode("utf-8"))


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
        files = summary["images"][key].get("files") or {}
        for c, name in enumerate(columns):
            rel = files.get("input" if name == "input" else f"{name}.png")
            if rel and (out / rel).is_file():
                try:
                    with Image.open(out / rel) as im:
                        sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.BILINEAR), (c * thumb, label_h + r * thumb))
                except (OSError, ValueError):  # changed under us: leave the cell blank
                    pass
    return atomic_write(out / "gallery.png", lambda fh: sheet.save(fh, format="PNG", optimize=True))


def clean_text(value: Any) -> Any:
    """`value` with every string (keys included) made valid Unicode (:func:`display_name`),
    so that the JSON written is valid for any reader (no lone surrogates)."""
    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_text(v) for v in value]
    return value


def write_summary(out: Path, summary: dict) -> Path:
    return atomic_write_bytes(out / "summary.json", json.dumps(clean_text(summary), indent=2).encode("ascii"))


# ---- per-image records ----------------------------------------------------------------------


def record_path(out: Path, key: str) -> Path:
    """DIR/records/<hash of the key>.json: written last for each image, after all its files."""
    return Path(out) / "records" / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.json"


_ENTRY_FIELDS = ("source", "target", "target_name", "top5", "files", "config", "methods")


def read_record(path: Path) -> Optional[dict]:
    """A record, or None if missing, unreadable, of another version or malformed."""
    try:
        rec = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if (not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION or not isinstance(rec.get("key"), str)
            or any(f not in rec for f in _ENTRY_FIELDS) or not isinstance(rec["files"], dict)
            or not isinstance(rec["methods"], dict) or not isinstance(rec["config"], dict)):
        return None
    return rec


def _entry(rec: dict) -> dict:
    return {f: rec[f] for f in _ENTRY_FIELDS}


def _files_exist(out: Path, files: dict) -> bool:
    return all(isinstance(rel, str) and (out / rel).is_file() for rel in files.values())


def read_records(out: Path) -> dict[str, dict]:
    """key -> record, for every valid record under DIR/records whose files all exist."""
    found = {}
    try:
        names = sorted(e.name for e in os.scandir(Path(out) / "records") if e.name.endswith(".json"))
    except OSError:
        return found
    for name in names:
        rec = read_record(Path(out) / "records" / name)
        if rec is not None and display_name(rec["key"]) == rec["key"] and _files_exist(Path(out), rec["files"]):
            found[rec["key"]] = rec
    return found


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
    force: bool = False  # redo images even when their record matches


class OutLock:
    """An exclusive ``flock`` on DIR/.lock for the life of a run (released by the kernel
    when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> "OutLock":
        import fcntl

        name = display_name(self.out)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ExplainError(f"--out {name}: cannot create its lock file .lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "holder unknown"
            finally:
                os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise BusyError(f"--out {name}: another interp-ext explain run is writing there ({holder}); "
                                "wait for it to finish or choose another --out") from None
            raise ExplainError(f"--out {name}: cannot lock .lock ({e.strerror})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


@dataclass
class Checked:
    """The options checked without loading the model, and the inputs found."""

    config: ExplainConfig
    images: list[InputImage]
    skipped: list[dict]
    label_rows: Optional[list] = None
    fixed_target: Optional[int] = None
    lock: Optional[OutLock] = None


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
    model_config: dict = field(default_factory=dict)  # model, weights hash, input: recorded per image
    method_configs: dict = field(default_factory=dict)  # per method: options and layer
    lock: Optional[OutLock] = None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


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
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise ExplainError(f"--model {spec}: cannot import {module_name!r} ({e})") from None
            if not callable(getattr(module, func_name, None)):
                raise ExplainError(f"--model {spec}: {module_name!r} has no function {func_name!r}")
            obj = getattr(module, func_name)()
        finally:
            sys.path.pop(0)
        if isinstance(obj, models.LoadedModel):
            return obj
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(f"--model {spec}: must return an nn.Module or interp_ext.models.LoadedModel, got {type(obj).__name__}")
        return models.LoadedModel(model=obj.eval(), name=spec, categories=models.imagenet_categories(), input_size=224,
                                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_size=256)
    try:
        return models.load(spec, weights)
    except (EOFError, pickle.UnpicklingError) as e:
        raise ExplainError(f"--weights {display_name(weights)}: not a PyTorch state-dict file "
                           f"({type(e).__name__})") from None
    except RuntimeError as e:  # not a torch file, or another model's state
        words = " ".join(str(e).split())
        words = words if len(words) <= 240 else words[:240] + "..."
        raise ExplainError(f"--weights {display_name(weights)}: cannot load it into {spec} ({words})") from None


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's state (names, dtypes, shapes and values of every parameter
    and buffer): which weights made a map, whatever file or function they came from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(repr((name, t)).encode())
            continue
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        try:
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        except (RuntimeError, TypeError):  # quantized and other exotic tensors
            h.update(repr(t).encode())
    return h.hexdigest()[:24]


def check_out(out: Path) -> None:
    """--out must be (or become) a folder this process can write in, on a disk that is
    not full; checked by writing and removing a small probe file."""
    name = display_name(out)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {name}: exists and is not a folder")
    base = Path(os.path.abspath(out))
    while not base.exists():
        if base.is_symlink():
            raise ExplainError(f"--out {name}: {display_name(base)} is a broken symlink")
        base = base.parent
    if not base.is_dir():
        raise ExplainError(f"--out {name}: {display_name(base)} is not a folder")
    try:
        st = os.statvfs(base)
    except OSError as e:
        raise ExplainError(f"--out {name}: cannot use {display_name(base)} ({e.strerror})") from None
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise ExplainError(f"--out {name}: no space left on its disk ({free // 1024} KiB free)")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".probe.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ExplainError(f"--out {name}: cannot write in {display_name(base)} ({e.strerror})") from None


def check(config: ExplainConfig, owner: bool = True) -> Checked:
    """Every check that needs no model, and the inputs: the methods, --batch-size,
    --device, the form of --target (a labels file is read), --weights exists, --out is a
    writable folder on a disk with room. `owner`: take DIR/.lock now if DIR exists (the
    process that owns the run; torchrun's rank 0)."""
    for m in config.methods:
        if m not in METHODS:
            raise ExplainError(f"--methods: unknown {m}; choose from {', '.join(METHODS)}")
    if not list(config.methods):
        raise ExplainError("--methods: none given")
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ExplainError(f"--batch-size must be positive, got {config.batch_size!r}")
    pick_device(config.device)
    label_rows, fixed = None, None
    target = str(config.target).strip()
    if target != "top1":
        if _INT.match(target):
            fixed = int(target)
            if fixed < 0:
                raise ExplainError(f"--target: class {fixed} is negative")
        elif Path(target).is_file():
            label_rows = read_label_rows(Path(target))
        elif Path(target).exists():
            raise ExplainError(f"--target {display_name(target)}: not a file")
        else:
            raise ExplainError(f"--target must be top1, a class index or a labels CSV file, got {config.target!r}")
    if config.weights is not None and not Path(config.weights).is_file():
        raise ExplainError(f"--weights: no such file {display_name(config.weights)!r}")
    out = Path(config.out)
    check_out(out)
    lock = OutLock(out).acquire() if owner and out.is_dir() else None
    try:
        images, skipped = discover(config.inputs, exclude=out)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Checked(config, images, skipped, label_rows, fixed, lock)


def load(checked: Checked) -> Prepared:
    """Load the model and build each method: the remaining errors (unknown model, layer,
    class out of range, label names) surface here, before any image is read or written."""
    config = checked.config
    methods = list(config.methods)
    device = pick_device(config.device)
    loaded = load_model(config.model, config.weights)
    fingerprint = model_fingerprint(loaded.model)
    loaded.model.to(device)
    labels, fixed = None, checked.fixed_target
    if fixed is not None and not 0 <= fixed < len(loaded.categories):
        raise ExplainError(f"--target: class {fixed} is not in [0, {len(loaded.categories)})")
    if checked.label_rows is not None:
        labels = resolve_labels(Path(config.target), checked.label_rows, loaded.categories)
    layer = None
    if any(METHODS[m].needs_layer for m in methods):
        layer = config.layer or default_layer(loaded.name, loaded.model, loaded.input_size)
        resolve_layers(loaded.model, layer)  # unknown name: an error with close matches
    ctx = Context(loaded.model, layer, device, config.batch_size)
    runners = {m: METHODS[m].build(ctx) for m in methods}
    model_config = _jsonable({
        "version": RECORD_VERSION,
        "model": {"name": loaded.name, "weights_sha256": fingerprint},
        "input": {"size": loaded.input_size, "resize": loaded.resize_size, "mean": loaded.mean, "std": loaded.std},
    })
    method_configs = _jsonable({m: {"options": METHODS[m].options, "layer": layer if METHODS[m].needs_layer else None}
                                for m in methods})
    return Prepared(config, loaded, device, layer, runners, labels, fixed, checked.images, checked.skipped,
                    model_config, method_configs, checked.lock)


def claim(prep: Prepared) -> None:
    """The run's owner (one process; torchrun's rank 0) before anyone writes: create
    --out, hold its lock, remove temporary files a killed run left behind."""
    out = Path(prep.config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplainError(f"--out {display_name(out)}: cannot create the folder ({e.strerror})") from None
    if prep.lock is None:
        prep.lock = OutLock(out).acquire()
    for folder, _, _ in os.walk(out):
        remove_stale_temporaries(folder)


def prepare(config: ExplainConfig, owner: bool = True) -> Prepared:
    """:func:`check`, :func:`load` and (for the owner) :func:`claim` in one; call
    ``close()`` on the result when done (it releases the lock)."""
    checked = check(config, owner)
    try:
        prep = load(checked)
        if owner:
            claim(prep)
    except BaseException:
        if checked.lock is not None:
            checked.lock.release()
        raise
    return prep


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _label_for(labels: dict[str, int], image: InputImage) -> Optional[int]:
    for name in (str(image.source), image.source.name, image.key, display_name(image.source),
                 display_name(image.source.name)):
        if name in labels:
            return labels[name]
    return None


def _target_spec(prep: Prepared, label: Optional[int]) -> Any:
    """What decides an image's class: "top1", or the class index (--target N or its label)."""
    if label is not None:
        return label
    return "top1" if prep.fixed_target is None else prep.fixed_target


def _file_identity(path: Path) -> Optional[dict]:
    """Size and modification time of an input: a changed image is redone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _finished(out: Path, rec: Optional[dict], image_config: dict, prep: Prepared, image: InputImage) -> bool:
    if rec is None or rec["key"] != image.key or rec["config"] != image_config:
        return False
    if any(rec["methods"].get(m) != mc for m, mc in prep.method_configs.items()):
        return False
    files = outputs_of(out, image, list(prep.runners))
    return all(rec["files"].get(k) == str(p.relative_to(out)) and p.is_file() for k, p in files.items())


def _write_image(out: Path, prep: Prepared, image: InputImage, image_config: dict, crop: Image.Image,
                 maps: dict[str, torch.Tensor], fields: dict) -> dict:
    """The image's files, then its record (last: a record means every file is complete)."""
    methods = list(prep.runners)
    rpath = record_path(out, image.key)
    old = read_record(rpath)
    if old is not None or rpath.exists():
        try:
            rpath.unlink()  # the files are about to change: no record until they are all written
        except FileNotFoundError:
            pass
        except OSError as e:
            raise WriteError(rpath, e) from e
    files = outputs_of(out, image, methods)
    for m in methods:
        amap = maps[m]
        save_npy(amap.numpy().astype(np.float32), files[f"{m}.npy"])
        viz.save_png(picture(METHODS[m].picture, crop, amap), files[f"{m}.png"])
    viz.save_png(crop, files["input"])
    rec_methods: dict[str, dict] = {}
    rec_files = {"input": str(files["input"].relative_to(out))}
    if old is not None and old["key"] == image.key and old["config"] == image_config:
        for m, mc in old["methods"].items():  # maps of other methods made with the same model and target
            kept = {k: old["files"].get(k) for k in (f"{m}.png", f"{m}.npy")}
            if m not in prep.method_configs and _files_exist(out, kept):
                rec_methods[m] = mc
                rec_files.update(kept)
    for m in methods:
        rec_methods[m] = prep.method_configs[m]
        rec_files[f"{m}.png"] = str(files[f"{m}.png"].relative_to(out))
        rec_files[f"{m}.npy"] = str(files[f"{m}.npy"].relative_to(out))
    record = {"version": RECORD_VERSION, "key": image.key, "source": display_name(image.source),
              "config": image_config, "methods": rec_methods, **fields, "files": rec_files}
    record = clean_text(record)
    atomic_write_bytes(rpath, json.dumps(record, indent=1).encode("ascii"))
    return _entry(record)


def run(prep: Prepared, images: Optional[Sequence[InputImage]] = None) -> dict:
    """Explain `images` (default: all discovered) and return this run's summary part:
    ``images`` (key -> entry), ``skipped``, ``seconds`` per method, ``processed``. An image
    whose record matches this configuration is taken from the record (unless ``force``).
    A file that cannot be written raises :class:`WriteError` (no temporary file is left;
    the images finished so far keep their records)."""
    cfg, loaded = prep.config, prep.loaded
    out = Path(cfg.out)
    images = prep.images if images is None else images
    entries: dict[str, dict] = {}
    skipped: list[dict] = []
    seconds = {m: 0.0 for m in prep.runners}

    def report(source: Path, reason: str) -> None:
        skipped.append({"source": display_name(source), "reason": reason})
        print(f"interp-ext: skipped {display_name(source)}: {reason}", file=sys.stderr)

    todo: list[tuple[InputImage, Any, dict]] = []
    for image in images:
        label = None
        if prep.labels is not None:
            label = _label_for(prep.labels, image)
            if label is None:
                report(image.source, f"no label in {display_name(cfg.target)}")
                continue
        spec = _target_spec(prep, label)
        image_config = {**prep.model_config, "target": spec, "image": _file_identity(image.source)}
        if not cfg.force:
            rec = read_record(record_path(out, image.key))
            if _finished(out, rec, image_config, prep, image):
                entries[image.key] = _entry(rec)
                continue
        todo.append((image, spec, image_config))

    processed = 0
    start_all = time.perf_counter()
    bar = tqdm(total=len(todo), desc="explain", unit="img", disable=cfg.quiet)
    for first in range(0, len(todo), cfg.batch_size):
        batch, crops, tensors = [], [], []
        for image, spec, image_config in todo[first : first + cfg.batch_size]:
            try:
                pil = read_image(image.source, loaded.resize_size)
            except ImageRefused as e:
                report(image.source, str(e))
                bar.update(1)
                continue
            except Exception as e:  # unreadable, truncated, not an image: skip it
                report(image.source, f"unreadable ({type(e).__name__}: {display_name(str(e))})")
                bar.update(1)
                continue
            crop = loaded.crop(pil)  # what preprocess would compute, done once
            batch.append((image, spec, image_config))
            crops.append(crop)
            tensors.append(loaded.normalize(models.to_unit_tensor(crop)))
        if not batch:
            continue
        x = torch.stack(tensors).to(prep.device)
        with torch.no_grad():
            logits = loaded.model(x)
        if batch[0][1] == "top1":
            target = logits.argmax(dim=1)
        else:
            target = torch.tensor([spec for _, spec, _ in batch], device=prep.device)
        top5 = loaded.top_k(logits, 5)
        maps = {}
        for m, runner in prep.runners.items():
            t0 = time.perf_counter()
            maps[m] = runner(x, target).detach().float().cpu()
            if prep.device.type == "cuda":
                torch.cuda.synchronize(prep.device)
            seconds[m] += time.perf_counter() - t0
        for i, (image, spec, image_config) in enumerate(batch):
            t = int(target[i])
            fields = {
                "target": t,
                "target_name": loaded.categories[t] if t < len(loaded.categories) else str(t),
                "top5": [{"class": c, "probability": round(p, 4)} for c, p in top5[i]],
            }
            entries[image.key] = _write_image(out, prep, image, image_config, crops[i], {m: maps[m][i] for m in maps},
                                              fields)
            processed += 1
        bar.update(len(batch))
        elapsed = time.perf_counter() - start_all
        bar.set_postfix_str(f"{processed / elapsed:.2f} img/s" if elapsed > 0 else "")
    bar.close()
    return {"images": entries, "skipped": skipped, "seconds": seconds, "processed": processed,
            "wall_seconds": time.perf_counter() - start_all}


def summarize(prep: Prepared, parts: Sequence[dict]) -> dict:
    """One summary from the records in DIR/records (this run's images and those of earlier
    runs, each entry with the configuration that made it) and the runs' parts (one per
    rank; they carry the entries of ranks whose DIR is another machine's disk)."""
    out = Path(prep.config.out)
    images = {key: _entry(rec) for key, rec in read_records(out).items()}
    for p in parts:
        images.update(p["images"])
    done = {e["source"] for p in parts for e in p["images"].values()}
    skipped = [s for s in list(prep.skipped) + [s for p in parts for s in p["skipped"]] if s["source"] not in done]
    processed = sum(p["processed"] for p in parts)
    wall = max((p["wall_seconds"] for p in parts), default=0.0)
    seconds = {m: sum(p["seconds"][m] for p in parts) for m in prep.runners}
    target = prep.config.target
    return {
        "model": prep.loaded.name,
        "device": str(prep.device),
        "layer": prep.layer,
        "methods": list(prep.runners),
        "target": display_name(target),
        "config": {**prep.model_config, "target": "top1" if target == "top1" else
                   (prep.fixed_target if prep.fixed_target is not None else f"labels from {display_name(target)}"),
                   "methods": prep.method_configs},
        "images": dict(sorted(images.items())),
        "skipped": skipped,
        "timing": {
            "processed_this_run": processed,
            "wall_seconds": round(wall, 3),
            "images_per_second": round(processed / wall, 3) if wall > 0 else None,
            "method_seconds": {m: round(s, 3) for m, s in seconds.items()},
            "ranks": len(parts),
        },
    }
