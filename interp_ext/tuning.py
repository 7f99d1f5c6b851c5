"""Execution tuning: run each pass at its fastest batch size and memory format.

On a CPU the cost of a pass per image depends on the batch size and the memory format
far more than one would guess (the bundled EfficientNet-Lite0, 1 thread: 60.9 ms per
image forward at batch 64 NCHW, 15.9 ms at batch 16 channels-last). The batch a caller
gives (``--batch-size``, ``perturbations_per_eval``) is a memory bound; within it, a
`Tuner` tries each candidate (batch size, memory format) once on the real work, records
the time per image, and keeps the fastest from then on: nothing is computed only to
measure. Choices are kept per model and per (pass kind, device, input shape, dtype), and
on disk (``$INTERP_EXT_CACHE`` or ``~/.cache/interp_ext``, ``tuning.json``) keyed by the
model's architecture (not its weights), the machine, the torch version and the thread
count, so that the next job on the same machine starts at the best choice; set
``INTERP_EXT_CACHE=off`` to keep nothing on disk.

Channels-last convolutions sum in another order: maps agree with the NCHW ones to float
rounding (tests use rtol 1e-4 on normalised maps), not bit for bit; ``tune=False`` keeps
the caller's exact batching and layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .attr._common import model_output


@dataclass(frozen=True)
class Execution:
    """How a pass runs: ``batch`` items per model call, in ``memory_format``."""

    batch: int
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def channels_last(self) -> bool:
        """Whether the pass runs in ``torch.channels_last``."""
        return self.memory_format == torch.channels_last


def candidates(limit: int, formats: Sequence[torch.memory_format]) -> list[Execution]:
    """Powers of two up to ``limit`` (and ``limit`` itself), in each memory format."""
    sizes = sorted({min(1 << k, limit) for k in range(limit.bit_length() + 1)})
    return [Execution(b, f) for f in formats for b in sizes]


class Tuner:
    """Online choice among candidate executions for one kind of pass.

    `next(limit)` gives the execution for the next chunk of work: an untried candidate
    while there are some (after one warm-up chunk, whose time is not kept: first calls
    pay for allocation), then the fastest measured; `record` takes the time a chunk of
    ``items`` took under that execution. Chunks smaller than their execution's batch are
    not recorded (they would flatter it)."""

    def __init__(self, formats: Sequence[torch.memory_format]):
        self.formats = tuple(formats)
        self.seconds_per_item: dict[Execution, float] = {}
        self.warmed_up = False
        self.disk_key: Optional[str] = None  # where its measurements persist (see _disk_key)

    def next(self, limit: int) -> Execution:
        """The execution for the next chunk of at most ``limit`` items: the first untried
        candidate, else the fastest measured (`best`)."""
        pending = [c for c in candidates(limit, self.formats) if c not in self.seconds_per_item]
        if pending:
            return pending[0]
        return self.best(limit)

    def best(self, limit: int) -> Execution:
        """The fastest measured execution within ``limit`` (the first candidate if none is)."""
        measured = [(t, c) for c, t in self.seconds_per_item.items() if c.batch <= limit]
        return min(measured, key=lambda tc: tc[0])[1] if measured else candidates(limit, self.formats)[0]

    def record(self, execution: Execution, items: int, seconds: float) -> None:
        """Keep ``seconds / items`` as the time per item of ``execution`` (and save it to
        the on-disk cache when the tuner has a key). Ignored for the first full chunk (the
        warm-up), a chunk of fewer than ``execution.batch`` items, or an execution
        already measured."""
        if items < execution.batch or execution in self.seconds_per_item:
            return
        if not self.warmed_up:
            self.warmed_up = True
            return
        self.seconds_per_item[execution] = seconds / items
        if self.disk_key is not None:
            _save(self.disk_key, self.seconds_per_item)


# ---- the on-disk cache ----------------------------------------------------------------------


def cache_file() -> Optional[str]:
    """tuning.json in $INTERP_EXT_CACHE, $XDG_CACHE_HOME/interp_ext or ~/.cache/interp_ext;
    None when INTERP_EXT_CACHE is "off"."""
    root = os.environ.get("INTERP_EXT_CACHE")
    if root == "off":
        return None
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "interp_ext")
    return os.path.join(root, "tuning.json")


def _disk_key(model: nn.Module, kind: str, example: torch.Tensor) -> str:
    """What the costs depend on: the architecture (module types and parameter shapes, not
    the values), the pass kind, the device, input shape and dtype, torch, threads, CPU."""
    arch = [(type(m).__qualname__, tuple(tuple(p.shape) for p in m.parameters(recurse=False))) for m in model.modules()]
    device = torch.cuda.get_device_name(example.device) if example.device.type == "cuda" else platform.processor()
    what = (arch, kind, example.device.type, device, tuple(example.shape[1:]), str(example.dtype), torch.__version__,
            torch.get_num_threads(), platform.machine(), os.cpu_count())
    return hashlib.sha256(repr(what).encode()).hexdigest()[:32]


def _read_cache(path: str) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _load(key: str) -> dict[Execution, float]:
    path = cache_file()
    entry = _read_cache(path).get(key) if path else None
    out = {}
    for row in entry or []:
        try:
            fmt = torch.channels_last if row["channels_last"] else torch.contiguous_format
            out[Execution(int(row["batch"]), fmt)] = float(row["seconds_per_item"])
        except (KeyError, TypeError, ValueError):
            return {}
    return out


def _save(key: str, measured: dict[Execution, float]) -> None:
    """Merge one tuner's measurements into the cache file (best effort: the cache is an
    optimisation; an unwritable folder or a race with another process only costs trials)."""
    path = cache_file()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read_cache(path)
        data[key] = [{"batch": e.batch, "channels_last": e.channels_last, "seconds_per_item": s}
                     for e, s in measured.items()]
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def _formats(model: nn.Module, example: torch.Tensor) -> tuple[torch.memory_format, ...]:
    """Channels-last is a candidate for 4-D inputs of a model with convolutions."""
    # 4-D weights, not Conv2d modules: the folded copy (interp_ext.fusion) calls F.conv2d
    has_conv = any(p.dim() == 4 for p in model.parameters())
    return (torch.contiguous_format, torch.channels_last) if example.dim() == 4 and has_conv else (torch.contiguous_format,)


_TUNERS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Tuner]]" = weakref.WeakKeyDictionary()


def tuner_for(model: nn.Module, kind: str, example: torch.Tensor) -> Tuner:
    """The tuner of one pass kind on one model, device, input shape and dtype (kept as
    long as the model lives)."""
    per_model = _TUNERS.setdefault(model, {})
    key = (kind, example.device.type, example.device.index, tuple(example.shape[1:]), example.dtype)
    if key not in per_model:
        tuner = Tuner(_formats(model, example))
        tuner.disk_key = _disk_key(model, kind, example)
        known = _load(tuner.disk_key)
        if known:  # measured by an earlier process on this machine: no trials
            tuner.seconds_per_item.update(known)
            tuner.warmed_up = True
        per_model[key] = tuner
    return per_model[key]


class model_layout:
    """Within the block, the model's 4-D parameters (convolution weights) are in
    ``memory_format``; afterwards each parameter gets its own layout back."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format):
        self.model, self.memory_format = model, memory_format
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        if self.memory_format == torch.contiguous_format:
            return self
        for p in self.model.parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=self.memory_format):
                self.saved.append((p, p.data))
                p.data = p.data.contiguous(memory_format=self.memory_format)
        return self

    def __exit__(self, *exc):
        for p, data in self.saved:
            p.data = data
        self.saved.clear()
        return False


def run_tuned(tuner: Optional[Tuner], items: torch.Tensor, limit: int,
              step: Callable[[torch.Tensor, int], list[torch.Tensor]], model: nn.Module) -> list[torch.Tensor]:
    """``step(chunk, start)`` over ``items`` in chunks (``start``: the chunk's first row),
    each chunk's outputs concatenated along dim 0 (contiguous).

    With a tuner each chunk runs at the execution it chooses (batch <= ``limit``, memory
    format of the items and of the model's convolution weights) and is timed; without
    one, chunks of ``limit`` as given."""
    outputs: list[list[torch.Tensor]] = []
    start = 0
    current = torch.contiguous_format
    layout = model_layout(model, torch.contiguous_format)
    try:
        while start < items.shape[0]:
            execution = tuner.next(limit) if tuner else Execution(limit)
            chunk = items[start : start + execution.batch]
            if execution.memory_format != current:
                layout.__exit__(None, None, None)
                layout = model_layout(model, execution.memory_format).__enter__()
                current = execution.memory_format
            if execution.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            outputs.append(step(chunk, start))
            if tuner:
                if items.device.type == "cuda":
                    torch.cuda.synchronize(items.device)
                tuner.record(execution, chunk.shape[0], time.perf_counter() - t0)
            start += chunk.shape[0]
    finally:
        layout.__exit__(None, None, None)
    return [(torch.cat(parts) if len(outputs) > 1 else parts[0]).contiguous() for parts in zip(*outputs)]


class TunedForward(nn.Module):
    """``model(x)`` in tuned chunks: what the forward-only passes (occlusion and Shapley
    copies, under no_grad) call instead of the model. Extra forward arguments turn the
    chunking off (they may be per copy)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    @property
    def planned_model(self) -> nn.Module:
        """What incremental occlusion traces and plans instead: the same function, and
        its patch batches need no chunking."""
        return self.model

    def forward(self, x: torch.Tensor, *args):
        """``model(x, *args)``: in tuned chunks along the first dimension of ``x`` (outputs
        concatenated) when there are no extra arguments and gradients are off, else one
        plain call."""
        if args or torch.is_grad_enabled() or x.dim() == 0 or x.shape[0] == 0:
            return self.model(x, *args)
        step = lambda chunk, _: [model_output(self.model(chunk))]  # noqa: E731
        (out,) = run_tuned(tuner_for(self.model, self.kind, x), x, x.shape[0], step, self.model)
        return out
