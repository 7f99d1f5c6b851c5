"""The scoring job behind ``interp-ext evaluate``: every requested attribution method's maps
scored by every requested metric, on every image, into a table (``scores.csv``,
``scores.json``), a plot of the curves (``curves.png``) and a page (the ``explain`` gallery
of the same ``--out`` with the scores added, or ``index.html`` of its own).

It is the ``explain`` job (:mod:`interp_ext.explain`) with another end: the same checks,
model loading, image discovery and reading, targets, the planner's one call per batch for
the maps, the lock on ``--out``, the atomic writes and the ``torchrun`` sharding. Instead of
writing each map it hands the maps, as ``(N, 1, H, W)`` tensors at the model's input size
(an input-shaped ``(N, 3, H, W)`` map summed over its channels), with the normalised images
and their target classes, to the metrics of :mod:`interp_ext.metrics`, and writes per image
a score record ``DIR/records/scores/<hash>.json``.

Metrics (:data:`METRICS`): the faithfulness curves ``pixel-flipping``,
``region-perturbation``, ``selectivity``, ``deletion`` and ``insertion`` (a score is the
area under the image's curve), and the localisation scores ``pointing-game`` and
``energy-pointing-game`` (:mod:`interp_ext.metrics.localisation`; they need a ground-truth
mask per image, ``--masks DIR``). Each has options with defaults for
224 x 224 inputs (:func:`metric_options`), changed with ``NAME.KEY=VALUE``
(:func:`parse_metric_options`).

Resumable per pair: an image's (method, metric) pair is not scored again when its record
shows the same model weights, input size and normalisation, target, input file, method
options and layer, metric options (and mask file); ``force`` redoes every pair. A record
keeps the pairs of other methods and metrics made with the same model and target.
"""
from __future__ import annotations

import csv
import difflib
import html
import importlib
import importlib.util
import io
import json
import math
import os
import sys
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import explain as job
from . import inputs, registry, writers
from .inputs import ExplainError, InputImage, display_name

SCORE_RECORD_VERSION = 1
SCORE_RECORDS = Path("records") / "scores"  # DIR/records/scores/<hash>.json: one per image
TABLE_CSV, TABLE_JSON, PLOT, PAGE = "scores.csv", "scores.json", "curves.png", "index.html"

# ---- the metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a metric: its ``kind`` and default. Kinds: "int+" (a positive int),
    "int+?" (a positive int or none), "int?" (an int or none), "float", "float+" (a
    positive float), "float0" (a float >= 0), "bool", "choice" (one of ``choices``),
    "baseline" (one of ``choices`` or a finite number)."""

    kind: str
    default: Any
    choices: tuple = ()
    help: str = ""


@dataclass(frozen=True)
class Metric:
    """A metric as the job runs it: the function (``module``.``function`` of
    :mod:`interp_ext.metrics`), ``kind`` "curve" (the score is the curve's area) or
    "localisation" (a score per image, against a mask), which way is ``better``, its
    options, and how its curve is drawn (``axis``: "step" or "fraction"; ``y_label``)."""

    module: str
    function: str
    kind: str
    better: str
    help: str
    options: dict
    axis: str = "step"
    x_label: str = ""
    y_label: str = ""


_BASELINES = ("black", "white", "mean", "uniform")
_QUANTUS = {
    "perturb_baseline": Option("baseline", "black", _BASELINES, "the replacement: black / white (the image's min / "
                               "max), mean, uniform (seeded by seed) or a number"),
    "softmax": Option("bool", True, help="score by class probability instead of the raw output"),
    "normalise": Option("bool", True, help="divide the maps by the batch's largest magnitude"),
    "abs": Option("bool", False, help="rank by the maps' magnitude"),
    "uniform_low": Option("float", 0.0, help="the range of the uniform baseline"),
    "uniform_high": Option("float", 1.0, help="the range of the uniform baseline"),
    "seed": Option("int?", 0, help="of the uniform baseline (none: unseeded)"),
}
# the patch metrics' chains of incremental inference
_CHAIN = {"incremental": Option("bool?", None, help="none: when the model can be planned and it pays; "
                                "false: every copy in full")}
_RISE = {
    "pixels_per_step": Option("int+?", None, help="none: ceil(H * W / 224), 224 pixels at 224 x 224"),
    "blur_sigma": Option("float+", 5.0, help="of the blur canvas (Gaussian, zero padding)"),
    "blur_size": Option("int+", 11, help="taps of the blur canvas"),
    "softmax": Option("bool", True, help="score by class probability instead of the raw output"),
}

METRICS: dict[str, Metric] = {
    "pixel-flipping": Metric(
        "faithfulness", "pixel_flipping", "curve", "lower",
        "Bach et al.: the target's probability as the highest-ranked pixels are replaced, features_in_step at a time",
        {"features_in_step": Option("int+", 3136, help="elements replaced per step; must divide H * W "
                                    "(3136: 48 steps at 224 x 224)"), **_QUANTUS},
        "step", "steps", "target probability"),
    "region-perturbation": Metric(
        "faithfulness", "region_perturbation", "curve", "higher",
        "Samek et al.: the target's score drop as the most relevant patches are replaced, one by one",
        {"patch_size": Option("int+", 16, help="side of the square patches, in pixels"),
         "order": Option("choice", "morf", ("morf", "lerf", "random"), "morf: most relevant first, lerf: least "
                         "relevant first, random (seeded by seed)"),
         "regions_evaluation": Option("int+", 50, help="patches replaced"), **_QUANTUS, **_CHAIN},
        "step", "patches replaced", "score drop"),
    "selectivity": Metric(
        "faithfulness", "selectivity", "curve", "lower",
        "Montavon et al.: the target's probability as every patch is replaced, most relevant first",
        {"patch_size": Option("int+", 16), **_QUANTUS, **_CHAIN},
        "step", "patches replaced", "target probability"),
    "deletion": Metric(
        "faithfulness", "deletion", "curve", "lower",
        "RISE: the target's probability as the most important pixels are removed",
        {**_RISE, "canvas": Option("baseline", "zeros", ("zeros", "blur"), "what removed pixels become: zeros, blur "
                                   "or a number")},
        "fraction", "fraction of pixels removed", "target probability"),
    "insertion": Metric(
        "faithfulness", "insertion", "curve", "higher",
        "RISE: the target's probability as the most important pixels are added to a blurred copy",
        {**_RISE, "canvas": Option("baseline", "blur", ("zeros", "blur"), "what the image starts as: blur, zeros "
                                   "or a number")},
        "fraction", "fraction of pixels inserted", "target probability"),
    # the localisation scores need --masks
    "pointing-game": Metric(
        "localisation", "pointing_game", "localisation", "higher",
        "1 if the map's maximum lies in the image's mask (within tolerance pixels), else 0",
        {"tolerance": Option("float0", 0.0, help="pixels around the mask that still count as a hit")}),
    "energy-pointing-game": Metric(
        "localisation", "energy_pointing_game", "localisation", "higher",
        "the share of the map's positive mass inside the image's mask", {}),
}

DEFAULT_METRICS = ("pixel-flipping", "region-perturbation", "selectivity", "deletion", "insertion")
LOCALISATION_METRICS = tuple(k for k, m in METRICS.items() if m.kind == "localisation")


def _unknown(kind: str, names: Sequence[str], known: Sequence[str]) -> str:
    """"unknown X (did you mean Y?); choose from ..." for each unknown name."""
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.7)
        parts.append(f"{name}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return f"unknown {kind} {', '.join(parts) or '(none given)'}; choose from {', '.join(known)}"


def parse_metrics(spec: str) -> list[str]:
    """The metric names of a comma-separated ``--metrics`` value, in order, duplicates
    dropped; an unknown name (with its close matches) or none at all is an
    :class:`~interp_ext.inputs.ExplainError` listing the choices."""
    names = [m.strip() for m in str(spec).split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ExplainError(f"--metrics: {_unknown('metric', unknown, list(METRICS))}")
    return list(dict.fromkeys(names))


def parse_methods(spec: str) -> list[str]:
    """``--methods`` as ``explain`` takes it (:func:`interp_ext.registry.parse_methods`),
    an unknown name with its close matches."""
    names = [m.strip() for m in str(spec).split(",") if m.strip()]
    unknown = [m for m in names if m not in registry.METHODS]
    if unknown or not names:
        raise ExplainError(f"--methods: {_unknown('method', unknown, list(registry.METHODS))}")
    return registry.parse_methods(spec)


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _parse_value(option: Option, text: str, where: str) -> Any:
    """`text` (from the command line) as the value `option` takes; an error naming `where`."""
    t = text.strip()
    low = t.lower()
    try:
        if option.kind == "bool?" and low in ("none", "null", ""):
            return None
        if option.kind in ("bool", "bool?"):
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if option.kind in ("int?", "int+?") and low in ("none", "null", ""):
            return None
        if option.kind.startswith("int"):
            if not inputs.INT_PATTERN.match(t):
                raise ValueError
            return int(t)
        if option.kind.startswith("float"):
            return float(t)
        if option.kind == "choice":
            return low
        if option.kind == "baseline":
            return low if low in option.choices else float(t)
    except ValueError:
        pass
    raise ExplainError(f"{where}: {_expected(option)}, got {text!r}")


def _expected(option: Option) -> str:
    return {"int+": "a positive integer", "int+?": "a positive integer or none", "int?": "an integer or none",
            "float": "a number", "float+": "a positive number", "float0": "a number >= 0",
            "bool": "true or false", "bool?": "true, false or none", "choice": f"one of {', '.join(option.choices)}",
            "baseline": f"one of {', '.join(option.choices)} or a number"}[option.kind]


def _check_value(option: Option, value: Any, where: str) -> Any:
    """`value` if `option` takes it (a Python value, from the API or parsed), else an error."""
    kind, ok = option.kind, False
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "bool?":
        ok = value is None or isinstance(value, bool)
    elif kind == "int+":
        ok = is_int and value >= 1
    elif kind == "int+?":
        ok = value is None or (is_int and value >= 1)
    elif kind == "int?":
        ok = value is None or is_int
    elif kind == "float":
        ok = is_num
    elif kind == "float+":
        ok = is_num and value > 0
    elif kind == "float0":
        ok = is_num and value >= 0
    elif kind == "choice":
        ok = value in option.choices
    elif kind == "baseline":
        ok = value in option.choices or is_num
    if not ok:
        raise ExplainError(f"{where}: {_expected(option)}, got {value!r}")
    return float(value) if kind.startswith("float") or (kind == "baseline" and is_num) else value


def _option_key(metric: str, key: str, known: dict) -> str:
    k = key.strip().replace("-", "_")
    if k not in known:
        close = difflib.get_close_matches(k, list(known), n=3, cutoff=0.7)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        listed = ", ".join(known) or "none"
        raise ExplainError(f"--metric-option {metric}.{key}: {metric} has no option {key!r}{hint}; "
                           f"its options: {listed}")
    return k


def parse_metric_options(items: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--metric-option NAME.KEY=VALUE`` values -> {metric: {key: value}}. NAME must be one
    of `metrics` (those of ``--metrics``), KEY one of its options (``-`` may stand for
    ``_``), VALUE of the option's kind (numbers, true / false, none, a choice); anything else
    is an :class:`~interp_ext.inputs.ExplainError` naming the item."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        metric, dot, key = name.strip().partition(".")
        if not sep or not dot or not metric or not key.strip():
            raise ExplainError(f"--metric-option must be NAME.KEY=VALUE (e.g. pixel-flipping.features_in_step=1568), "
                               f"got {item!r}")
        if metric not in METRICS:
            raise ExplainError(f"--metric-option {name}: {_unknown('metric', [metric], list(METRICS))}")
        if metric not in metrics:
            raise ExplainError(f"--metric-option {name}: {metric} is not in --metrics ({', '.join(metrics)})")
        known = METRICS[metric].options
        k = _option_key(metric, key, known)
        where = f"--metric-option {metric}.{k}"
        out.setdefault(metric, {})[k] = _check_value(known[k], _parse_value(known[k], value, where), where)
    return out


def metric_options(metrics: Sequence[str], overrides: Optional[dict] = None) -> dict[str, dict[str, Any]]:
    """Every option of each of `metrics`: its default, or its value in `overrides`
    ({metric: {key: value}}, e.g. from :func:`parse_metric_options`), checked."""
    overrides = overrides or {}
    for metric in overrides:
        if metric not in metrics:
            raise ExplainError(f"--metric-option {metric}: {metric} is not in --metrics ({', '.join(metrics)})")
    out = {}
    for metric in metrics:
        known = METRICS[metric].options
        given = {_option_key(metric, k, known): v for k, v in (overrides.get(metric) or {}).items()}
        out[metric] = {k: _check_value(o, given.get(k, o.default), f"--metric-option {metric}.{k}")
                       for k, o in known.items()}
    return out


def check_input_size(options: dict[str, dict[str, Any]], size: int) -> None:
    """The options that depend on the model's input size (``size`` x ``size``): pixel
    flipping's ``features_in_step`` divides ``H * W``, the patches fit."""
    pixels = size * size
    o = options.get("pixel-flipping")
    if o and pixels % o["features_in_step"]:
        hint = f" (e.g. {pixels // 16}: 48 steps)" if pixels % 16 == 0 else ""
        raise ExplainError(f"--metric-option pixel-flipping.features_in_step={o['features_in_step']} must divide "
                           f"the model's input H * W = {size} x {size} = {pixels}{hint}")
    for metric in ("region-perturbation", "selectivity"):
        o = options.get(metric)
        if o and o["patch_size"] > size:
            raise ExplainError(f"--metric-option {metric}.patch_size={o['patch_size']} is larger than the model's "
                               f"input size {size}")


def metric_maps(maps: torch.Tensor) -> torch.Tensor:
    """A method's maps as the metrics take them: ``(N, H, W)`` heat maps -> ``(N, 1, H, W)``;
    input-shaped ``(N, C, H, W)`` maps summed over their channels -> ``(N, 1, H, W)``."""
    if maps.dim() == 3:
        return maps[:, None].float()
    return maps.float().sum(1, keepdim=True)


def _map_rule(method: str) -> str:
    """How a method's map becomes the metrics' (N, 1, H, W): recorded with its scores."""
    return "as is" if registry.METHODS[method].picture == "heat" else "sum over channels"


def score_maps(metric: str, model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
               options: dict, *, batch_size: int = 64, tune: bool = True, masks: Optional[torch.Tensor] = None,
               keys: Optional[Sequence[str]] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One metric over a batch: (scores (N,) float64, curves (N, K) float64 or None). A
    curve metric's score is its curve's area (as ``return_auc_per_sample=True`` gives it);
    a localisation metric's the value per image (a pointing-game hit is 1.0). `maps`:
    ``(N, 1, H, W)`` (:func:`metric_maps`); `x` the normalised images the model takes;
    `options` the metric's (:func:`metric_options`); `masks` ``(N, H, W)`` bool, for the
    localisation metrics; `keys` the images' keys: a ``seed`` option seeds each image with
    ``seed`` and its key (CRC-32), so its score does not depend on the batch it came in."""
    from .metrics import faithfulness

    m = METRICS[metric]
    fn = getattr(importlib.import_module(f"{__package__}.metrics.{m.module}"), m.function)
    if m.kind == "localisation":
        if masks is None:
            raise ExplainError(f"{metric} needs masks (--masks DIR)")
        values = fn(maps.detach().cpu().double(), masks[:, None].cpu(), **options)
        return torch.as_tensor(values).double().reshape(-1).numpy(), None
    if options.get("seed") is not None and keys is not None:
        options = {**options, "seed": [(options["seed"] + zlib.crc32(k.encode())) % 2**63 for k in keys]}
    curves = fn(model, x, maps, target, **options, batch_size=batch_size, tune=tune, show_progress=False)
    area = faithfulness.curve_area(curves, over_fraction=m.axis == "fraction")
    return area.cpu().numpy(), curves.cpu().numpy()


# ---- masks ------------------------------------------------------------------------------------------


def mask_index(folder: Path) -> dict[str, Optional[Path]]:
    """The mask images under `folder` (recursive) by the name they match: the path without
    its suffix relative to `folder` (``sub/cat``) and the stem alone (``cat``; None when
    two masks share it)."""
    found: dict[str, Optional[Path]] = {}
    stems: dict[str, Optional[Path]] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in inputs.IMAGE_SUFFIXES:
                continue
            rel = path.relative_to(folder).with_suffix("").as_posix()
            found.setdefault(rel, path)
            stems[path.stem] = None if path.stem in stems else path
    for stem, path in stems.items():
        found.setdefault(stem, path)
    return found


def mask_for(index: dict[str, Optional[Path]], image: InputImage) -> Optional[Path]:
    """The mask of `image` in a :func:`mask_index`: by its key's path below the input folder
    (``inputs/sub/cat.jpg`` -> ``sub/cat``), its whole key, then its stem."""
    key = writers._DEDUP_TAIL.sub("", image.key)
    for name in ("/".join(key.split("/")[1:]), key, Path(image.source).name):
        if not name:
            continue
        path = PurePosixPath(name)
        found = index.get(str(path.with_suffix("")) if path.suffix else name)
        if found is not None:
            return found
    return None


def read_mask(path: Path, image_size: tuple[int, int], loaded: Any) -> torch.Tensor:
    """A mask image as the model's crop of its image sees it: ``(S, S)`` bool, True on the
    object: above half the mask's brightest value (0 / 1 and 0 / 255 masks alike, JPEG
    noise aside), or, in a palette image, any index but 0 (background) and 255 (VOC's
    "void" border). It must have its image's size."""
    with Image.open(path) as im:
        size = im.size
        if size != tuple(image_size):
            raise ValueError(f"mask {display_name(path)} is {size[0]}x{size[1]}, its image {image_size[0]}x{image_size[1]}")
        if im.mode == "P":
            index = np.asarray(im)
            on = ((index != 0) & (index != 255)).astype(np.uint8) * 255
        else:
            values = np.asarray(im, dtype=np.float64)  # any bit depth; colour: the brightest band, alpha aside
            values = values[..., :3].max(axis=2) if values.ndim == 3 else values
            top = values.max()
            on = (values > top / 2).astype(np.uint8) * 255 if top > 0 else np.zeros(values.shape, np.uint8)
    crop = loaded.crop(Image.fromarray(on).convert("RGB"))
    return torch.from_numpy(np.asarray(crop)[..., 0] > 127)


# ---- the job ------------------------------------------------------------------------------------------


@dataclass
class EvaluateConfig:
    """One ``interp-ext evaluate`` run: the ``explain`` options (inputs, --out, methods,
    model, target, batch size, method settings...; ``settings.perturbations_per_eval`` also
    bounds the metrics' copies per model call), the metrics, their options (overrides of
    :func:`metric_options`' defaults) and the masks folder."""

    explain: job.ExplainConfig
    metrics: Sequence[str] = DEFAULT_METRICS
    metric_options: dict = field(default_factory=dict)
    masks: Optional[Path] = None


@dataclass
class Checked:
    """The checks that need no model, and the inputs (``explain``'s :class:`~interp_ext.explain.Checked`)."""

    config: EvaluateConfig
    job: job.Checked
    options: dict  # metric -> every option
    masks: Optional[dict] = None  # mask_index of --masks

    @property
    def lock(self) -> Optional[job.OutLock]:
        """--out's lock, when this process holds it."""
        return self.job.lock


@dataclass
class Prepared:
    """The model and methods loaded (``explain``'s :class:`~interp_ext.explain.Prepared`), the metrics' options."""

    config: EvaluateConfig
    job: job.Prepared
    metrics: list[str]
    options: dict
    masks: Optional[dict] = None
    computers: dict = field(default_factory=dict)  # methods -> BatchComputer (a re-run may need a few methods)

    @property
    def lock(self) -> Optional[job.OutLock]:
        """--out's lock, when this process holds it."""
        return self.job.lock

    def close(self) -> None:
        """Release --out's lock (when this process holds it)."""
        self.job.close()

    def compute(self, methods: Sequence[str]) -> Callable:
        """``maps, logits = compute(methods)(x, targets)``: the planner for these methods."""
        methods = tuple(methods)
        if methods == tuple(self.job.methods):
            return self.job.compute_batch
        if methods not in self.computers:
            p, cfg = self.job, self.job.config
            self.computers[methods] = job.BatchComputer(p.loaded.model, p.layer, p.device, methods,
                                                        registry.method_options(methods, cfg.settings), cfg.settings,
                                                        tune=cfg.tune)
        return self.computers[methods]


def check(config: EvaluateConfig, owner: bool = True) -> Checked:
    """Every check that needs no model: the metrics and their options, ``--masks`` (a
    folder, given exactly when a localisation metric is asked for), then ``explain``'s
    (:func:`interp_ext.explain.check`: methods, options, device, target, --out, the lock
    of an existing --out, the inputs)."""
    metrics = list(dict.fromkeys(config.metrics))
    if not metrics:
        raise ExplainError("--metrics: none given")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        parse_metrics(",".join(metrics))
    options = metric_options(metrics, config.metric_options)
    local = [m for m in metrics if METRICS[m].kind == "localisation"]
    index = None
    if config.masks is not None:
        folder = Path(config.masks)
        if not local:
            raise ExplainError(f"--masks: only the localisation metrics ({', '.join(LOCALISATION_METRICS)}) "
                               "use masks; add one to --metrics")
        if not folder.is_dir():
            raise ExplainError(f"--masks {display_name(folder)}: not a folder")
        index = mask_index(folder)
        if not index:
            raise ExplainError(f"--masks {display_name(folder)}: no mask images in it")
    elif local:
        raise ExplainError(f"--metrics {', '.join(local)}: need a mask per image, --masks DIR")
    return Checked(config, job.check(config.explain, owner=owner), options, index)


def load(checked: Checked) -> Prepared:
    """``explain``'s :func:`~interp_ext.explain.load` (the model, the methods, the layer),
    then the metric options that depend on the model's input size."""
    prep = job.load(checked.job)
    check_input_size(checked.options, prep.loaded.input_size)
    return Prepared(checked.config, prep, list(checked.config.metrics), checked.options, checked.masks)


def claim(prep: Prepared) -> None:
    """The run's owner: create --out, hold its lock, sweep a killed run's temporaries
    (:func:`interp_ext.explain.claim`)."""
    job.claim(prep.job)


def prepare(config: EvaluateConfig, owner: bool = True) -> Prepared:
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


def score_record_path(out: Path, key: str) -> Path:
    """DIR/records/scores/<hash of the key>.json (the hash of ``explain``'s records)."""
    return Path(out) / SCORE_RECORDS / writers.record_path(out, key).name


def read_score_record(path: Path) -> Optional[dict]:
    """A score record, or None if missing, unreadable, of another version or malformed."""
    try:
        rec = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    if (not isinstance(rec, dict) or rec.get("version") != SCORE_RECORD_VERSION or not isinstance(rec.get("key"), str)
            or any(f not in rec for f in ("source", "target", "target_name"))
            or not isinstance(rec.get("config"), dict) or not isinstance(rec.get("scores"), dict)
            or not all(isinstance(v, dict) and all(isinstance(p, dict) and all(f in p for f in _PAIR_FIELDS)
                                                   for p in v.values()) for v in rec["scores"].values())):
        return None
    return rec


_PAIR_FIELDS = ("config", "score", "curve")  # and "error" where there is no score


def read_score_records(out: Path) -> dict[str, dict]:
    """key -> score record, for every valid one under DIR/records/scores."""
    folder = Path(out) / SCORE_RECORDS
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".json"))
    except OSError:
        return {}
    found = {}
    for name in names:
        rec = read_score_record(folder / name)
        if rec is not None:
            found.setdefault(rec["key"], rec)
    return found


def _pair_configs(prep: Prepared, image: InputImage, mask: Optional[Path]) -> dict[tuple[str, str], dict]:
    """(method, metric) -> what the pair's score depends on, for one image."""
    out = {}
    for m in prep.job.methods:
        for k in prep.metrics:
            c = {"method": prep.job.method_configs[m], "metric": prep.options[k], "map": _map_rule(m)}
            if METRICS[k].kind == "localisation":
                c["mask"] = None if mask is None else {"file": display_name(mask), **(job._file_identity(mask) or {})}
            out[(m, k)] = json.loads(json.dumps(c))
    return out


def _recorded(rec: Optional[dict], image_config: dict, key: str) -> dict[tuple[str, str], dict]:
    """The pairs of a record made with this model, target and input file."""
    if rec is None or rec["key"] != key or rec["config"] != image_config:
        return {}
    return {(m, k): p for m, per in rec["scores"].items() for k, p in per.items()}


@dataclass
class _Todo:
    record: dict  # the pairs kept from the image's record
    missing: dict  # (method, metric) -> pair config
    wanted: dict
    mask: Optional[Path]


def _finite(v: float) -> Optional[float]:
    return float(v) if math.isfinite(v) else None


def run(prep: Prepared, images: Optional[Sequence[InputImage]] = None) -> dict:
    """Score `images` (default: all discovered) and return this run's part: ``images``
    (key -> entry: source, target, target_name and per method and metric its score and
    curve), ``skipped``, ``seconds`` (per metric, and "maps"), ``processed`` (images
    scored this run). A pair whose record matches is taken from the record (unless
    ``force``); an image with every pair recorded is not read. Each image's record is
    written as soon as its batch is scored."""
    p, cfg = prep.job, prep.job.config
    out = Path(cfg.out)
    images = p.images if images is None else images
    entries: dict[str, dict] = {}
    skipped: list[dict] = []

    def report(source: Path, reason: str) -> None:
        skipped.append({"source": display_name(source), "reason": reason})
        print(f"interp-ext: skipped {display_name(source)}: {reason}", file=sys.stderr)

    todo: list[job._Item] = []
    state: dict[str, _Todo] = {}
    for image in images:
        label = None
        if p.labels is not None:
            label = job._label_for(p.labels, image)
            if label is None:
                report(image.source, f"no label in {display_name(cfg.target)}")
                continue
        spec = job._target_spec(p, label)
        image_config = {**p.model_config, "target": spec, "image": job._file_identity(image.source)}
        mask = mask_for(prep.masks, image) if prep.masks is not None else None
        wanted = _pair_configs(prep, image, mask)
        rec = read_score_record(score_record_path(out, image.key))
        recorded = _recorded(rec, image_config, image.key)
        done = {} if cfg.force else {pair: recorded[pair] for pair, c in wanted.items()
                                     if pair in recorded and recorded[pair]["config"] == c}
        if len(done) == len(wanted):
            entries[image.key] = _entry(rec, wanted)
            continue
        kept = {pair: v for pair, v in recorded.items() if pair not in wanted or pair in done}
        state[image.key] = _Todo(kept, {pair: c for pair, c in wanted.items() if pair not in done}, wanted, mask)
        todo.append(job._Item(image, spec, image_config))

    cuda = p.device.type == "cuda"
    seconds: dict[str, float] = {}
    processed = 0
    start = time.perf_counter()
    limits = job.pipeline_limits(cfg.batch_size, p.workers)
    reader = job._Reader(todo, p.loaded, cfg.batch_size, p.workers, limits, pin=cuda) if todo else None
    bar = tqdm(total=len(todo), desc="evaluate", unit="img", disable=cfg.quiet)
    copies = cfg.settings.perturbations_per_eval
    try:
        for batch in reader or ():
            for source, reason in batch.skipped:
                report(source, reason)
                bar.update(1)
            if not batch.items:
                continue
            items = batch.items
            x = batch.x.to(p.device, non_blocking=cuda)
            targets = None
            if items[0].spec != "top1":
                targets = torch.tensor([item.spec for item in items], device=p.device)
            methods = [m for m in p.methods if any(pair[0] == m for it in items for pair in state[it.image.key].missing)]
            t0 = time.perf_counter()
            maps, logits = prep.compute(methods)(x, targets)
            seconds["maps"] = seconds.get("maps", 0.0) + time.perf_counter() - t0
            target = logits.argmax(dim=1) if targets is None else targets
            masks = _batch_masks(prep, items, state)
            results: dict[str, dict] = {it.image.key: {} for it in items}
            for m in methods:
                amap = metric_maps(maps[m])
                finite = torch.isfinite(amap.flatten(1)).all(1).tolist()
                for k in prep.metrics:
                    rows = [i for i, it in enumerate(items) if (m, k) in state[it.image.key].missing]
                    for i in rows:
                        if not finite[i]:
                            results[items[i].image.key][(m, k)] = {"score": None, "curve": None,
                                                                   "error": "the map holds NaN or inf"}
                    if METRICS[k].kind == "localisation":
                        for i in rows:
                            if isinstance(masks[i], str):
                                results[items[i].image.key][(m, k)] = {"score": None, "curve": None, "error": masks[i]}
                    rows = [i for i in rows if (m, k) not in results[items[i].image.key]]
                    if not rows:
                        continue
                    bar.set_postfix_str(f"{m} {k}", refresh=False)
                    idx = torch.tensor(rows, device=p.device)
                    mk = torch.stack([masks[i] for i in rows]) if METRICS[k].kind == "localisation" else None
                    t0 = time.perf_counter()
                    scores, curves = score_maps(k, p.loaded.model, x[idx], amap[idx], target[idx], prep.options[k],
                                                batch_size=copies, tune=cfg.tune, masks=mk,
                                                keys=[items[i].image.key for i in rows])
                    seconds[k] = seconds.get(k, 0.0) + time.perf_counter() - t0
                    for j, i in enumerate(rows):
                        value = _finite(float(scores[j]))
                        res = {"score": value, "curve": None if curves is None else curves[j].tolist()}
                        if value is None:
                            res["error"] = ("the map has no positive value" if k == "energy-pointing-game"
                                            else "the score is not finite")
                        results[items[i].image.key][(m, k)] = res
            del maps, logits, x
            for i, it in enumerate(items):
                key = it.image.key
                st = state[key]
                t = int(target[i])
                rec = _write_record(out, it, st, results[key], t, p)
                entries[key] = _entry(rec, st.wanted)
                processed += 1
                bar.update(1)
    finally:
        if reader is not None:
            reader.close()
        bar.close()
    return {"images": entries, "skipped": skipped, "seconds": seconds, "processed": processed,
            "wall_seconds": time.perf_counter() - start}


def _batch_masks(prep: Prepared, items: Sequence[Any], state: dict) -> list:
    """Per item its mask (S, S) bool on the device, or why it has none (a string)."""
    if not any(METRICS[k].kind == "localisation" for k in prep.metrics):
        return [None] * len(items)
    out: list = []
    for it in items:
        path = state[it.image.key].mask
        if path is None:
            out.append("no mask in --masks for this image")
            continue
        try:
            with Image.open(it.image.source) as im:
                size = im.size
            mask = read_mask(path, size, prep.job.loaded)
        except Exception as e:  # unreadable, another size
            out.append(f"mask: {display_name(str(e))}")
            continue
        out.append(mask.to(prep.job.device) if bool(mask.any()) else
                   f"mask {display_name(path)} covers no pixel of the model's crop")
    return out


def _write_record(out: Path, item: Any, st: _Todo, results: dict, target: int, p: job.Prepared) -> dict:
    scores: dict[str, dict] = {}
    for (m, k), v in st.record.items():
        scores.setdefault(m, {})[k] = v
    for (m, k), res in results.items():
        scores.setdefault(m, {})[k] = {"config": st.missing[(m, k)], **res}
    cats = p.loaded.categories
    rec = {"version": SCORE_RECORD_VERSION, "key": item.image.key, "source": display_name(item.image.source),
           "config": item.image_config, "target": target, "target_name": cats[target] if target < len(cats) else str(target),
           "scores": scores, "execution": {"batch_size": p.config.batch_size, "tune": p.config.tune,
                                           "perturbations_per_eval": p.config.settings.perturbations_per_eval}}
    rec = writers.clean_text(rec)
    writers.atomic_write_bytes(score_record_path(out, item.image.key), json.dumps(rec).encode("ascii"))
    return rec


def _entry(rec: dict, wanted: dict) -> dict:
    """An image's part of the table: the wanted pairs of its record."""
    scores: dict[str, dict] = {}
    for (m, k) in wanted:
        v = rec["scores"][m][k]
        scores.setdefault(m, {})[k] = {f: v[f] for f in ("score", "curve", "error") if f in v}
    return {"source": rec["source"], "target": rec["target"], "target_name": rec["target_name"], "scores": scores}


def _stats(values: Sequence[Optional[float]]) -> dict:
    """mean, std (sample, ddof 1; None for one value) and n of the values that exist."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def summarize(prep: Prepared, parts: Sequence[dict]) -> dict:
    """The run's table from the ranks' parts: ``rows`` (one per image, method and metric:
    score, curve, target), ``summary`` (per method and metric: mean, std, n, which way is
    better), the configuration, the skipped inputs and the timing."""
    p = prep.job
    images: dict[str, dict] = {}
    for part in parts:
        images.update(part["images"])
    done = {e["source"] for e in images.values()}
    skipped = [s for s in list(p.skipped) + [s for part in parts for s in part["skipped"]] if s["source"] not in done]
    rows = []
    for key in sorted(images):
        e = images[key]
        for m in p.methods:
            for k in prep.metrics:
                v = e["scores"][m][k]
                row = {"image": key, "source": e["source"], "method": m, "metric": k, "score": v["score"],
                       "target": e["target"], "target_name": e["target_name"], "curve": v["curve"]}
                if v.get("error"):
                    row["error"] = v["error"]
                rows.append(row)
    summary = {m: {k: {**_stats([r["score"] for r in rows if r["method"] == m and r["metric"] == k]),
                       "better": METRICS[k].better} for k in prep.metrics} for m in p.methods}
    seconds: dict[str, float] = {}
    for part in parts:
        for k, s in part["seconds"].items():
            seconds[k] = seconds.get(k, 0.0) + s
    processed = sum(part["processed"] for part in parts)
    wall = max((part["wall_seconds"] for part in parts), default=0.0)
    target = p.config.target
    return {
        "model": p.loaded.name, "device": str(p.device), "layer": p.layer, "methods": list(p.methods),
        "metrics": list(prep.metrics),
        "config": {**p.model_config,
                   "target": "top1" if target == "top1" else
                   (p.fixed_target if p.fixed_target is not None else f"labels from {display_name(target)}"),
                   "methods": p.method_configs, "metrics": prep.options,
                   "maps": {m: _map_rule(m) for m in p.methods},
                   "execution": {"batch_size": p.config.batch_size, "tune": p.config.tune,
                                 "perturbations_per_eval": p.config.settings.perturbations_per_eval}},
        "summary": summary, "rows": rows, "skipped": skipped,
        "timing": {"processed_this_run": processed, "images": len(images), "wall_seconds": round(wall, 3),
                   "seconds": {k: round(s, 3) for k, s in seconds.items()}, "ranks": len(parts)},
    }


CSV_COLUMNS = ("image", "source", "method", "metric", "score", "target", "target_name", "curve_points", "error")


def write_table(out: Path, table: dict) -> tuple[Path, Path]:
    """DIR/scores.csv (one row per image, method and metric: the columns of
    :data:`CSV_COLUMNS`; an empty score where there is none, with the error) and
    DIR/scores.json (the whole table, curves included)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table["rows"]:
        w.writerow([r["image"], r["source"], r["method"], r["metric"], "" if r["score"] is None else repr(r["score"]),
                    r["target"], r["target_name"], 0 if r["curve"] is None else len(r["curve"]), r.get("error", "")])
    csv_path = writers.atomic_write_bytes(Path(out) / TABLE_CSV, writers.clean_text(buf.getvalue()).encode("utf-8"))
    json_path = writers.atomic_write_bytes(Path(out) / TABLE_JSON,
                                           json.dumps(writers.clean_text(table), indent=1).encode("ascii"))
    return csv_path, json_path


def plot_available() -> bool:
    """Whether matplotlib (for ``curves.png``) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(out: Path, table: dict) -> Optional[Path]:
    """DIR/curves.png: one panel per curve metric, per method the mean curve over the images
    and a band of one standard deviation around it (the legend gives the mean area).
    None when no curve metric was scored or matplotlib is missing (imported here only)."""
    curve_metrics = [k for k in table["metrics"] if METRICS[k].kind == "curve"]
    if not curve_metrics or not plot_available():
        return None
    from matplotlib.figure import Figure

    cols = min(3, len(curve_metrics))
    nrows = -(-len(curve_metrics) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    drawn = False
    for ax, k in zip(axes, curve_metrics):
        metric = METRICS[k]
        for i, m in enumerate(table["methods"]):
            curves = [r["curve"] for r in table["rows"] if r["method"] == m and r["metric"] == k and r["curve"]]
            if not curves:
                continue
            lengths = [len(c) for c in curves]
            common = max(set(lengths), key=lengths.count)  # (the same for every image of one configuration)
            c = np.array([c for c in curves if len(c) == common], dtype=np.float64)
            mean = c.mean(0)
            spread = c.std(0, ddof=1) if len(c) > 1 else np.zeros_like(mean)
            xs = np.linspace(0, 1, common) if metric.axis == "fraction" else np.arange(1, common + 1)
            s = table["summary"][m][k]
            label = f"{m} (area {s['mean']:.3g})" if s["mean"] is not None else m
            line, = ax.plot(xs, mean, label=label, color=f"C{i % 10}", lw=1.5)
            ax.fill_between(xs, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0)
            drawn = True
        n = max((table["summary"][m][k]["n"] for m in table["methods"]), default=0)
        ax.set_title(f"{k} ({metric.better} area is better; {n} images)", fontsize=10)
        ax.set_xlabel(metric.x_label)
        raw = table["config"]["metrics"][k].get("softmax") is False
        ax.set_ylabel("target score (raw)" if raw and metric.y_label == "target probability" else metric.y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(curve_metrics):]:
        ax.set_visible(False)
    if not drawn:
        return None
    # two lines: one panel is narrower than the title
    fig.suptitle(f"{table['model']}\nmean and one standard deviation over the images", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return writers.atomic_write_bytes(Path(out) / PLOT, buf.getvalue())


# ---- the page ------------------------------------------------------------------------------------------


def _page(out: Path, methods: list, metrics: list, per_image: dict, summary: dict) -> dict:
    """What :func:`interp_ext.writers.write_gallery` shows: per image, method and metric the
    score; the summary; links to the files written beside it."""
    return {"metrics": metrics, "better": {k: METRICS[k].better for k in metrics}, "methods": methods,
            "images": per_image, "summary": summary,
            "links": [name for name in (TABLE_CSV, TABLE_JSON, PLOT) if (Path(out) / name).is_file()]}


def scores_for_page(table: dict, out: Path) -> dict:
    """:func:`_page` of a table."""
    per_image: dict[str, dict] = {}
    for r in table["rows"]:
        per_image.setdefault(r["image"], {}).setdefault(r["method"], {})[r["metric"]] = r["score"]
    return _page(out, list(table["methods"]), list(table["metrics"]), per_image, table["summary"])


def _last_metric_options(out: Path) -> Optional[dict]:
    """The metric options of the last evaluate run into DIR (its scores.json), if any."""
    try:
        options = json.loads((Path(out) / TABLE_JSON).read_bytes())["config"]["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return options if isinstance(options, dict) else None


def gallery_scores(out: Path, summary: dict, metric_options: Optional[dict] = None) -> Optional[dict]:
    """The scores the ``explain`` gallery of `summary` (its ``summary.json``) shows, from the
    score records in DIR: for each image the pairs made from the same model, target and
    input file (its entry's ``config``), each method's same options and layer, and the
    metric options of `metric_options` (default: the last evaluate run's, in scores.json),
    so the page's numbers agree with scores.csv; None when there are none."""
    recs = read_score_records(out)
    if not recs:
        return None
    wanted = _last_metric_options(out) if metric_options is None else metric_options
    methods = list(summary.get("methods") or [])
    per_image: dict[str, dict] = {}
    found: list[str] = []
    for key, entry in (summary.get("images") or {}).items():
        rec = recs.get(key)
        if rec is None or rec["config"] != entry.get("config"):
            continue
        for m in methods:
            for k, v in (rec["scores"].get(m) or {}).items():
                same_metric = wanted is None or (k in wanted and v["config"].get("metric") == wanted[k])
                if k in METRICS and same_metric and v["config"].get("method") == (entry.get("methods") or {}).get(m):
                    per_image.setdefault(key, {}).setdefault(m, {})[k] = v.get("score")
                    found.append(k)
    if not per_image:
        return None
    metrics = [k for k in METRICS if k in found]
    stats = {m: {k: {**_stats([per_image[i].get(m, {}).get(k) for i in per_image if k in per_image[i].get(m, {})]),
                     "better": METRICS[k].better} for k in metrics} for m in methods}
    return _page(out, methods, metrics, per_image, stats)


def explain_summary(out: Path) -> Optional[dict]:
    """DIR/summary.json of an ``explain`` run, or None if there is none (or it is not one)."""
    try:
        summary = json.loads((Path(out) / "summary.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("images"), dict) or "methods" not in summary:
        return None
    return summary


def write_page(out: Path, table: dict) -> Path:
    """DIR/index.html with the scores: the ``explain`` gallery of DIR (when DIR holds an
    ``explain`` run's summary.json) rewritten with each image's scores beside its pictures
    and the summary table on its first page; else a page of its own (the summary table,
    the plot, a row of scores per image)."""
    out = Path(out)
    summary = explain_summary(out)
    if summary is not None and summary["images"]:
        return writers.write_gallery(out, summary, scores=gallery_scores(out, summary, table["config"]["metrics"]))
    scores = scores_for_page(table, out)
    methods, metrics = scores["methods"], scores["metrics"]
    t = writers._text
    head1 = "<th rowspan=2>image</th><th rowspan=2>target</th>" + "".join(
        f"<th colspan={len(metrics)}>{t(m)}</th>" for m in methods)
    head2 = "".join(f"<th>{t(k)}</th>" for _ in methods for k in metrics)
    rows = []
    by_key = {r["image"]: r for r in table["rows"]}
    for key in sorted(scores["images"]):
        per = scores["images"][key]
        cells = "".join(f"<td>{writers.format_score(per.get(m, {}).get(k))}</td>" for m in methods for k in metrics)
        rows.append(f"<tr><th>{t(key)}</th><td>{t(by_key[key]['target_name'])}</td>{cells}</tr>")
    plot = ""
    if (out / PLOT).is_file():
        plot = f'<p><img src="{html.escape(urllib.parse.quote(PLOT))}" alt="curves" style="max-width:100%"></p>'
    skipped = "".join(f"<li>{t(s['source'])}: {t(s['reason'])}</li>" for s in table.get("skipped", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interp_ext scores</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{writers._GALLERY_STYLE}</style></head>
<body><h1>interp_ext scores: {t(table['model'])}</h1>
<p>{len(scores['images'])} images, methods: {t(', '.join(methods))}; metrics: {t(', '.join(metrics))};
device {t(table['device'])}. Run <code>interp-ext explain</code> into this folder for the pictures.</p>
{writers.scores_summary_html(scores)}
{plot}
<h2>Per image</h2>
<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{f'<h2>Skipped</h2><ul>{skipped}</ul>' if skipped else ''}
</body></html>
"""
    return writers.atomic_write_bytes(out / PAGE, page.encode("utf-8"))


def format_summary(table: dict) -> str:
    """The summary as text: a line per method, mean ± std per metric (the header says
    which way each is better)."""
    metrics, methods = table["metrics"], table["methods"]
    cells = [[f"{k} ({METRICS[k].better} better)" for k in metrics]]
    for m in methods:
        row = []
        for k in metrics:
            s = table["summary"][m][k]
            if s["mean"] is None:
                row.append("-")
            else:
                row.append(f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else ""))
        cells.append(row)
    names = ["method", *methods]
    width0 = max(len(n) for n in names)
    widths = [max(len(r[j]) for r in cells) for j in range(len(metrics))]
    lines = []
    for name, row in zip(names, cells):
        lines.append("  ".join([name.ljust(width0), *(c.rjust(w) for c, w in zip(row, widths))]).rstrip())
    n = max((table["summary"][m][k]["n"] for m in methods for k in metrics), default=0)
    return f"scores: mean ± std over {n} images\n" + "\n".join(lines)


def finish(prep: Prepared, parts: Sequence[dict]) -> dict:
    """The run's owner, after every shard: :func:`summarize`, then scores.csv, scores.json,
    curves.png and the page. Returns the table with ``files`` (what was written)."""
    out = Path(prep.job.config.out)
    table = summarize(prep, parts)
    csv_path, json_path = write_table(out, table)
    plot = write_plot(out, table)
    page = write_page(out, table)
    table["files"] = {"csv": csv_path, "json": json_path, "plot": plot, "page": page}
    return table
