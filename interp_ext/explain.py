"""The batch attribution job behind ``interp-ext explain``: find the images, compute every
requested method's maps per batch on the device, write per image an overlay PNG and the
raw map (.npy, float32) per method, ``summary.json`` and an offline gallery ``index.html``.

The parts: :mod:`interp_ext.inputs` finds and reads the images, :mod:`interp_ext.registry`
describes the methods, :mod:`interp_ext.writers` writes every file; this module is the job:
:func:`check`, :func:`load`, :func:`claim` (the phases ``torchrun`` ranks agree on),
:func:`run` and :func:`summarize`.

Pipelined: reader threads decode, crop and stack the next batches while the model runs
(bounded: :func:`pipeline_limits`), one call computes a batch's maps
(``maps, logits = prep.compute_batch(x, targets)``), and writer threads encode and write
the files behind it. On a GPU the batches are pinned and copied without blocking.

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

import collections
import difflib
import errno
import hashlib
import json
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import inputs, models, registry, writers
from .engine import Explainer
from .layers import resolve_layers
# the job's parts, also importable from here as before the split
from .inputs import (  # noqa: F401
    IMAGE_SUFFIXES,
    LIST_SUFFIXES,
    ExplainError,
    ImageRefused,
    InputImage,
    discover,
    display_name,
    max_decoded_pixels,
    read_image,
    read_label_rows,
    read_labels,
    resolve_labels,
)
from .models import load_model, pick_device
from .registry import (  # noqa: F401
    DEFAULT_METHODS,
    KNOWN_CAM_LAYERS,
    METHODS,
    Method,
    Settings,
    default_layer,
    layer_outputs,
    parse_methods,
    picture,
    spatial_layers,
)
from .writers import (  # noqa: F401
    RECORD_VERSION,
    WriteError,
    clean_text,
    outputs_of,
    read_record,
    read_records,
    record_path,
    remove_stale_temporaries,
    save_npy,
    write_contact_sheet,
    write_gallery,
    write_summary,
)

MIN_FREE_BYTES = 1 << 20  # --out's disk must have at least this much free before the model loads


class BusyError(ExplainError):
    """Another run holds --out's lock."""


def default_workers() -> int:
    """Reader and writer threads when --workers is not given: the usable cores, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@dataclass
class ExplainConfig:
    """One ``interp-ext explain`` run as the command line gives it: the inputs, --out, the
    methods and model, and every option (the defaults are the command's)."""

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
    settings: Settings = field(default_factory=Settings)  # occlusion window, samples, perturbations per eval...
    workers: Optional[int] = None  # reader threads and writer threads; None: default_workers()
    tune: bool = True  # each pass at its fastest measured batch and memory format (interp_ext.tuning)


class OutLock:
    """An exclusive ``flock`` on DIR/.lock for the life of a run (released by the kernel
    when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> "OutLock":
        """Take the lock (writing who holds it into the file), or raise :class:`BusyError`
        if another run holds it, :class:`ExplainError` if it cannot be created."""
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
                raise BusyError(f"--out {name}: another interp-ext run (explain or evaluate) is writing there ({holder}); "
                                "wait for it to finish or choose another --out") from None
            raise ExplainError(f"--out {name}: cannot lock .lock ({e.strerror})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file); nothing if it is not held."""
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


ComputeBatch = Callable[[torch.Tensor, Optional[torch.Tensor]], "tuple[dict[str, torch.Tensor], torch.Tensor]"]


@dataclass
class Prepared:
    """Everything validated and loaded, before any image is touched."""

    config: ExplainConfig
    loaded: models.LoadedModel
    device: torch.device
    layer: Optional[str]
    methods: list[str]
    compute_batch: ComputeBatch  # maps, logits = compute_batch(x, targets): see BatchComputer
    labels: Optional[dict[str, int]]
    fixed_target: Optional[int]
    images: list[InputImage] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    model_config: dict = field(default_factory=dict)  # model, weights hash, input: recorded per image
    method_configs: dict = field(default_factory=dict)  # per method: options and layer
    execution: dict = field(default_factory=dict)  # recorded per image, not matched on resume: they change no map
    workers: int = 1
    lock: Optional[OutLock] = None
    # image key -> its output folder relative to --out: from claim() (the owner's; every rank adopts them),
    # or given by run() to an image without one (assign_folders)
    folders: dict = field(default_factory=dict)

    def close(self) -> None:
        """Release --out's lock (when this process holds it)."""
        if self.lock is not None:
            self.lock.release()


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
    --workers, the method settings, --device, the form of --target (a labels file is
    read), --weights exists, --out is a writable folder on a disk with room. `owner`:
    take DIR/.lock now if DIR exists (the process that owns the run; torchrun's rank 0)."""
    for m in config.methods:
        if m not in METHODS:
            raise ExplainError(f"--methods: unknown {m}; choose from {', '.join(METHODS)}")
    if not list(config.methods):
        raise ExplainError("--methods: none given")
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ExplainError(f"--batch-size must be positive, got {config.batch_size!r}")
    if config.workers is not None and (isinstance(config.workers, bool) or not isinstance(config.workers, int)
                                       or config.workers < 1):
        raise ExplainError(f"--workers must be a positive integer, got {config.workers!r}")
    try:
        config.settings.check()
    except ValueError as e:
        raise ExplainError(str(e)) from None
    pick_device(config.device)
    label_rows, fixed = None, None
    target = str(config.target).strip()
    if target != "top1":
        if inputs.INT_PATTERN.match(target):
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
    class out of range, label names, a window larger than the input) surface here,
    before any image is read or written."""
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
    if any(m in ("occlusion", "shapley") for m in methods):
        try:
            config.settings.check(loaded.input_size)
        except ValueError as e:
            raise ExplainError(str(e)) from None
    layer = None
    if any(METHODS[m].needs_layer for m in methods):
        if config.layer is not None:
            check_layer(loaded.model, config.layer, loaded.input_size)
        layer = config.layer or default_layer(loaded.name, loaded.model, loaded.input_size)
    options = registry.method_options(methods, config.settings)
    compute = BatchComputer(loaded.model, layer, device, methods, options, config.settings, tune=config.tune)
    model_config = _jsonable({
        "version": RECORD_VERSION,
        "model": {"name": loaded.name, "weights_sha256": fingerprint},
        "input": {"size": loaded.input_size, "resize": loaded.resize_size, "mean": loaded.mean, "std": loaded.std},
    })
    method_configs = _jsonable({m: {"options": options[m], "layer": layer if METHODS[m].needs_layer else None}
                                for m in methods})
    execution = {"batch_size": config.batch_size, "perturbations_per_eval": config.settings.perturbations_per_eval}
    return Prepared(config, loaded, device, layer, methods, compute, labels, fixed, checked.images, checked.skipped,
                    model_config, method_configs, execution, config.workers or default_workers(), checked.lock)


LAYERS_LISTED = 40  # at most this many names in a --layer error (the closest first)


def check_layer(model: torch.nn.Module, layer: str, input_size: int) -> None:
    """``--layer`` must name a layer of the model (:func:`interp_ext.layers.resolve_layers`)
    whose output is a (N, C, h, w) map with h, w > 1 (a 1x1 map gives a flat CAM; the
    layers of :func:`interp_ext.registry.layer_outputs`); else an :class:`ExplainError`
    naming ``--layer``, saying why, and listing the valid names (1x1 layers not among
    them): the close matches first, then the outer layers."""
    try:
        resolve_layers(model, layer, arg="--layer")
        problem = None
    except ValueError:
        problem = f"the model has no layer named {layer!r}"
    calls = registry.layer_outputs(model, input_size)
    valid = registry._cam_layers(calls)  # registry.spatial_layers, from the same forward
    if problem is None and layer in valid:
        return
    if problem is None:
        sizes = sorted({(h, w) for n, h, w in calls if n == layer})
        if sizes:  # a map, but 1x1 (after global pooling): every CAM over it is one value
            shown = " and ".join(f"{h}x{w}" for h, w in sizes)
            problem = (f"layer {layer!r} outputs a {shown} map: a CAM over it is a single value, a flat map; "
                       "choose a layer whose map is larger than 1x1")
        else:
            problem = f"layer {layer!r} does not output a (N, C, h, w) feature map"
    close = difflib.get_close_matches(layer, valid, n=5, cutoff=0.5)
    # then the outer layers before the ones inside them (blocks before their convolutions), in running order
    rest = sorted((n for n in valid if n not in close), key=lambda n: (n.count("."), valid.index(n)))
    ordered = close + rest
    shown = ", ".join(ordered[:LAYERS_LISTED])
    more = f" and {len(ordered) - LAYERS_LISTED} more" if len(ordered) > LAYERS_LISTED else ""
    listing = (f"; valid layers ({len(valid)}, close matches first): {shown}{more}" if valid
               else "; the model has no layer with a spatial output")
    raise ExplainError(f"--layer: {problem}{listing}")


def claim(prep: Prepared) -> dict[str, str]:
    """The run's owner (one process; torchrun's rank 0) before anyone writes: create
    --out, hold its lock, remove temporary files a killed run left behind, and work out
    every image's output folder from the records in DIR/records
    (:func:`interp_ext.writers.image_folders`). Returns the folders (``prep.folders``):
    under torchrun every other rank adopts them, so all ranks agree whatever records
    their own --out holds, and only the owner reads every record."""
    out = Path(prep.config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplainError(f"--out {display_name(out)}: cannot create the folder ({e.strerror})") from None
    if prep.lock is None:
        prep.lock = OutLock(out).acquire()
    for folder, _, _ in os.walk(out):
        remove_stale_temporaries(folder)
    # under the lock: no other run changes the records while they are read
    prep.folders = writers.image_folders([image.key for image in prep.images], writers.recorded_folders(out))
    return prep.folders


def assign_folders(prep: Prepared, images: Sequence[InputImage]) -> None:
    """Give every image of `images` without one an output folder in ``prep.folders``,
    through :func:`interp_ext.writers.image_folders` over the records in DIR/records with
    the folders already given kept (those never change once given)."""
    missing = [image.key for image in images if image.key not in prep.folders]
    if missing:
        claimed = {**writers.recorded_folders(Path(prep.config.out)), **prep.folders}
        prep.folders.update(writers.image_folders(missing, claimed))


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
    files = outputs_of(out, image, prep.methods, prep.folders[image.key])
    return all(rec["files"].get(k) == str(p.relative_to(out)) and p.is_file() for k, p in files.items())


# ---- computing one batch's maps -----------------------------------------------------------
#
# The job asks for a batch's maps in ONE call, ``maps, logits = compute_batch(x, targets)``,
# which the planner answers: each distinct model pass once per batch.


def engine_options(options: dict[str, dict], settings: Settings, batch: int) -> dict[str, dict]:
    """The planner's options of the requested configurable methods for a batch of `batch`
    images: the recorded map options plus the memory bound (copies per model call)."""
    ppe = settings.perturbations_per_eval
    out = {}
    if "smoothgrad" in options:
        o = options["smoothgrad"]
        out["smoothgrad"] = {"n_samples": o["n_samples"], "stdev": o["stdev"], "seed": o["seed"],
                             "batch_size": registry.smoothgrad_chunk(ppe, batch)}
    if "integrated-gradients" in options:  # a backward per path point, which keeps the activations: as smoothgrad
        o = options["integrated-gradients"]
        out["integrated-gradients"] = {"n_steps": o["n_steps"], "method": o["method"], "baseline": o["baseline"],
                                       "batch_size": registry.smoothgrad_chunk(ppe, batch)}
    if "occlusion" in options:
        o = options["occlusion"]
        out["occlusion"] = {"window": tuple(o["window"]), "strides": tuple(o["strides"]), "baseline": o["baseline"],
                            "perturbations_per_eval": registry.copies_per_image(ppe, batch)}
    if "shapley" in options:
        o = options["shapley"]
        out["shapley"] = {"patch": o["patch"], "n_samples": o["n_samples"], "seed": o["seed"], "baseline": o["baseline"],
                          "perturbations_per_eval": registry.copies_per_image(ppe, batch)}
    for cam in ("scorecam", "ablationcam"):  # masked images / ablated copies per model call, across the batch
        if cam in options:
            out[cam] = {"batch_size": ppe}
    return out


class BatchComputer:
    """``maps, logits = compute_batch(x, targets)``: every requested method's maps of one
    batch through the planner (`interp_ext.engine.Explainer`). `x`: the normalised
    (B, 3, H, W) batch on the device; `targets`: (B,) class indices on the device, or None
    for each image's top-1 class. `maps`: {method: (B, H, W) for heat maps, (B, 3, H, W)
    for signed / per-channel maps}, on the device; `logits`: (B, classes). ``seconds``:
    the time spent per pass so far ("gradient", "smoothgrad", "occlusion", "shapley");
    ``passes``: the passes one batch runs. ``tune=False`` keeps the exact batching."""

    def __init__(self, model: torch.nn.Module, layer: Optional[str], device: torch.device, methods: Sequence[str],
                 options: dict[str, dict], settings: Settings, tune: bool = True):
        self.model, self.device, self.layer, self.methods = model, device, layer, list(methods)
        self.options, self.settings, self.tune = options, settings, tune
        self._explainers: dict[int, Explainer] = {}  # by batch size (the last batch may be smaller)
        self.passes = Explainer(model, self.methods, layer).plan()
        self.seconds: dict[str, float] = {}

    def _explainer(self, batch: int) -> Explainer:
        if batch not in self._explainers:
            self._explainers[batch] = Explainer(self.model, self.methods, self.layer, tune=self.tune,
                                                options=engine_options(self.options, self.settings, batch))
        return self._explainers[batch]

    def __call__(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The maps of one batch and its logits (see the class); adds each pass's time to
        ``seconds``."""
        result = self._explainer(x.shape[0]).explain(x, target=targets)
        for kind, s in result.seconds.items():
            self.seconds[kind] = self.seconds.get(kind, 0.0) + s
        return {m: v.detach() for m, v in result.maps.items()}, result.logits


# ---- the pipeline: readers ahead of the model, writers behind it --------------------------


def pipeline_limits(batch_size: int, workers: int) -> dict[str, int]:
    """The bounds that keep the job's memory flat on any number of images:
    ``read_ahead`` images being decoded by the readers, ``ready_batches`` stacked batches
    waiting for the model, ``write_behind`` images queued or being written. An image is
    in flight from its read to its record; at most ``in_flight`` are at once (the readers,
    the batch being assembled, the ready batches, the batch at the model, the writers)."""
    read_ahead = max(batch_size, 2 * workers)
    ready_batches = 2
    write_behind = batch_size + 2 * workers
    return {"read_ahead": read_ahead, "ready_batches": ready_batches, "write_behind": write_behind,
            "in_flight": read_ahead + (ready_batches + 2) * batch_size + write_behind}


@dataclass
class _Item:
    image: InputImage
    spec: Any  # "top1" or the class index
    image_config: dict
    crop: Optional[Image.Image] = None


@dataclass
class _Batch:
    items: list[_Item]
    x: Optional[torch.Tensor]  # (B, 3, S, S) on the host, pinned for a CUDA device
    skipped: list[tuple[Path, str]]  # unreadable or refused images met while assembling it (in order)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _decode(image: InputImage, loaded: models.LoadedModel) -> tuple[bool, Any]:
    """(True, (crop, tensor)) or (False, why the image is skipped)."""
    try:
        return True, inputs.load_crop(image, loaded)
    except ImageRefused as e:
        return False, str(e)
    except Exception as e:  # unreadable, truncated, not an image: skip it
        return False, f"unreadable ({type(e).__name__}: {display_name(str(e))})"


class _Reader:
    """Reads, crops and stacks batches ahead of the model: `workers` threads decode (PIL
    releases the GIL), one thread assembles the batches in input order into a queue of
    ``ready_batches``. Iterate to get the batches; :meth:`close` stops it (always call it)."""

    def __init__(self, todo: Sequence[_Item], loaded: models.LoadedModel, batch_size: int, workers: int,
                 limits: dict, pin: bool):
        self.todo, self.loaded, self.batch_size, self.pin = todo, loaded, batch_size, pin
        self.read_ahead = limits["read_ahead"]
        self.ready: queue.Queue = queue.Queue(maxsize=limits["ready_batches"])
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="interp-ext-read")
        self.thread = threading.Thread(target=self._assemble, name="interp-ext-batches", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def _batch(self, items: list[_Item], tensors: list[torch.Tensor], skipped: list) -> _Batch:
        x = torch.stack(tensors) if tensors else None
        if x is not None and self.pin:
            x = x.pin_memory()  # so that the copy to the device does not block
        return _Batch(items, x, skipped)

    def _assemble(self) -> None:
        try:
            pending: collections.deque = collections.deque()
            source = iter(self.todo)

            def fill() -> None:
                while len(pending) < self.read_ahead and not self.stop.is_set():
                    item = next(source, None)
                    if item is None:
                        return
                    pending.append((item, self.pool.submit(_decode, item.image, self.loaded)))

            fill()
            items: list[_Item] = []
            tensors: list[torch.Tensor] = []
            skipped: list[tuple[Path, str]] = []
            while pending and not self.stop.is_set():
                item, future = pending.popleft()
                ok, value = future.result()
                fill()
                if ok:
                    items.append(_Item(item.image, item.spec, item.image_config, value[0]))
                    tensors.append(value[1])
                else:
                    skipped.append((item.image.source, value))
                if len(items) == self.batch_size:
                    self._put(self._batch(items, tensors, skipped))
                    items, tensors, skipped = [], [], []
            if items or skipped:
                self._put(self._batch(items, tensors, skipped))
            self._put(_END)
        except BaseException as e:  # handed to the main thread, which raises it
            self._put(_Failed(e))

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            got = self.ready.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                raise got.error
            yield got

    def close(self) -> None:
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        while self.thread.is_alive():
            try:
                self.ready.get(timeout=0.1)  # unblock the assembler
            except queue.Empty:
                pass
        self.pool.shutdown(wait=True)


class _Writer:
    """Encodes and writes images' files behind the model in `workers` threads; at most
    `limit` images queued or being written (:meth:`submit` waits for a slot). The first
    error is kept: later writes do nothing, and :meth:`submit` / :meth:`finish` raise it.
    :meth:`close` (always call it) drops the writes not started and waits for those
    running, so no temporary file remains."""

    def __init__(self, workers: int, limit: int, done: Callable[[Any], None]):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="interp-ext-write")
        self.slots = threading.Semaphore(limit)
        self.done = done
        self.error: Optional[BaseException] = None
        self.lock = threading.Lock()

    def _run(self, fn: Callable, args: tuple) -> None:
        try:
            if self.error is None:
                self.done(fn(*args))
        except BaseException as e:
            with self.lock:
                if self.error is None:
                    self.error = e
        finally:
            self.slots.release()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, fn: Callable, *args: Any) -> None:
        self.check()
        while not self.slots.acquire(timeout=0.1):
            self.check()
        self.pool.submit(self._run, fn, args)

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        self.check()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Host:
    """One batch's results copied to the host; on a CUDA device the copies run without
    blocking and `ready` says when they are complete."""

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor
    ready: Optional[Any] = None  # torch.cuda.Event

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()


def _to_host(maps: dict[str, torch.Tensor], logits: torch.Tensor, target: torch.Tensor, device: torch.device) -> _Host:
    if device.type != "cuda":
        return _Host({m: v.detach().float().cpu() for m, v in maps.items()}, logits.detach().float().cpu(),
                     target.cpu())
    # device -> pinned host memory without blocking; the writers wait for the event
    host = _Host({m: v.detach().float().to("cpu", non_blocking=True) for m, v in maps.items()},
                 logits.detach().float().to("cpu", non_blocking=True), target.to("cpu", non_blocking=True))
    host.ready = torch.cuda.Event()
    host.ready.record(torch.cuda.current_stream(device))
    return host


# ---- the job ------------------------------------------------------------------------------


def run(prep: Prepared, images: Optional[Sequence[InputImage]] = None) -> dict:
    """Explain `images` (default: all discovered) and return this run's summary part:
    ``images`` (key -> entry), ``skipped``, ``seconds`` per method, ``processed``. An image
    whose record matches this configuration is taken from the record (unless ``force``).

    Pipelined (:func:`pipeline_limits`): reader threads decode and stack the next batches
    while ``prep.compute_batch`` runs, writer threads write each image's files and then its
    record behind it. A file that cannot be written raises :class:`WriteError` once the
    writes under way have ended (the writes not started are dropped; no temporary file is
    left; the images finished so far keep their records). An image without a folder in
    ``prep.folders`` (one not discovered, or a process that did not :func:`claim`) gets
    one first, apart from every other (:func:`assign_folders`)."""
    cfg, loaded = prep.config, prep.loaded
    out = Path(cfg.out)
    images = prep.images if images is None else images
    assign_folders(prep, images)  # images not discovered (or a process that did not claim): folders apart from all
    entries: dict[str, dict] = {}
    skipped: list[dict] = []

    def report(source: Path, reason: str) -> None:
        skipped.append({"source": display_name(source), "reason": reason})
        print(f"interp-ext: skipped {display_name(source)}: {reason}", file=sys.stderr)

    todo: list[_Item] = []
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
                entries[image.key] = writers.entry_of(rec)
                continue
        todo.append(_Item(image, spec, image_config))

    cuda = prep.device.type == "cuda"
    seconds_before = dict(getattr(prep.compute_batch, "seconds", None) or {})
    kinds = {m: METHODS[m].picture for m in prep.methods}
    limits = pipeline_limits(cfg.batch_size, prep.workers)
    lock = threading.Lock()
    processed = [0]
    compute_seconds = 0.0
    start_all = time.perf_counter()
    bar = tqdm(total=len(todo), desc="explain", unit="img", disable=cfg.quiet)

    def written(result: tuple[str, dict]) -> None:  # in a writer thread
        key, entry = result
        with lock:
            entries[key] = entry
            processed[0] += 1
            bar.update(1)

    def write(item: _Item, i: int, host: _Host) -> tuple[str, dict]:  # in a writer thread
        host.wait()
        t = int(host.target[i])
        fields = {
            "target": t,
            "target_name": loaded.categories[t] if t < len(loaded.categories) else str(t),
            "top5": [{"class": c, "probability": round(p, 4)} for c, p in loaded.top_k(host.logits[i : i + 1], 5)[0]],
        }
        entry = writers.write_image(out, item.image, item.image_config, prep.method_configs, item.crop,
                                    {m: host.maps[m][i] for m in prep.methods}, fields, picture, kinds,
                                    prep.execution, folder=prep.folders[item.image.key])
        return item.image.key, entry

    reader = _Reader(todo, loaded, cfg.batch_size, prep.workers, limits, pin=cuda) if todo else None
    writer = _Writer(prep.workers, limits["write_behind"], written)
    try:
        for batch in reader or ():
            for source, reason in batch.skipped:
                report(source, reason)
                with lock:
                    bar.update(1)
            if not batch.items:
                continue
            writer.check()
            x = batch.x.to(prep.device, non_blocking=cuda)
            targets = None
            if batch.items[0].spec != "top1":
                targets = torch.tensor([item.spec for item in batch.items], device=prep.device)
            t0 = time.perf_counter()
            maps, logits = prep.compute_batch(x, targets)
            host = _to_host(maps, logits, logits.argmax(dim=1) if targets is None else targets, prep.device)
            compute_seconds += time.perf_counter() - t0
            del maps, logits, x
            for i, item in enumerate(batch.items):
                writer.submit(write, item, i, host)
            del batch, host
        writer.finish()
    finally:
        if reader is not None:
            reader.close()
        writer.close()
        bar.close()
    seconds = dict(getattr(prep.compute_batch, "seconds", None) or {})
    return {"images": entries, "skipped": skipped,
            "seconds": {k: s - seconds_before.get(k, 0.0) for k, s in seconds.items()},
            "compute_seconds": compute_seconds, "processed": processed[0],
            "wall_seconds": time.perf_counter() - start_all}


def summarize(prep: Prepared, parts: Sequence[dict]) -> dict:
    """One summary from the records in DIR/records (this run's images and those of earlier
    runs, each entry with the configuration that made it) and the runs' parts (one per
    rank; they carry the entries of ranks whose DIR is another machine's disk)."""
    out = Path(prep.config.out)
    images = {key: writers.entry_of(rec) for key, rec in read_records(out).items()}
    for p in parts:
        images.update(p["images"])
    done = {e["source"] for p in parts for e in p["images"].values()}
    skipped = [s for s in list(prep.skipped) + [s for p in parts for s in p["skipped"]] if s["source"] not in done]
    processed = sum(p["processed"] for p in parts)
    wall = max((p["wall_seconds"] for p in parts), default=0.0)
    seconds: dict[str, float] = {}
    for p in parts:
        for kind, s in p["seconds"].items():
            seconds[kind] = seconds.get(kind, 0.0) + s
    compute = sum(p.get("compute_seconds", 0.0) for p in parts)
    target = prep.config.target
    return {
        "model": prep.loaded.name,
        "device": str(prep.device),
        "layer": prep.layer,
        "methods": list(prep.methods),
        "target": display_name(target),
        "config": {**prep.model_config, "target": "top1" if target == "top1" else
                   (prep.fixed_target if prep.fixed_target is not None else f"labels from {display_name(target)}"),
                   "methods": prep.method_configs, "execution": prep.execution},
        "images": dict(sorted(images.items())),
        "skipped": skipped,
        "timing": {
            "processed_this_run": processed,
            "wall_seconds": round(wall, 3),
            "images_per_second": round(processed / wall, 3) if wall > 0 else None,
            # the planner's passes (each shared by the methods that need it), and all of compute_batch
            "pass_seconds": {k: round(s, 3) for k, s in seconds.items()},
            "passes_per_batch": list(getattr(prep.compute_batch, "passes", [])),
            "compute_seconds": round(compute, 3),
            "workers": prep.workers,
            "ranks": len(parts),
        },
    }
