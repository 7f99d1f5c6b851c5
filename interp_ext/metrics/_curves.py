"""The machinery of every perturbation curve: each image's elements get a step (when they are
replaced, from the attribution's ranking) and a replacement value, and copy ``k`` of the image
holds the replacement wherever the step is ``<= k``. The copies of a chunk of steps are built
in one `ops.feature_batch` call (each element written once, no mask per step) and scored in
one forward-only pass, through the execution tuner (`interp_ext.tuning`) when ``tune``."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..attr._common import Target, check_inputs, model_output, normalize_target, resolve_target
from ..fusion import folded_copy
from ..tuning import TunedForward

Baseline = Union[str, float, int, torch.Tensor]
BASELINES = ("black", "white", "mean", "uniform")


def check_attributions(attributions: torch.Tensor, inputs: torch.Tensor, name: str = "attributions") -> torch.Tensor:
    """``attributions`` of images ``inputs (N, C, H, W)``: ``(N, 1 or C, H, W)`` (or ``(N, H, W)``),
    finite; returned as ``(N, 1 or C, H, W)`` float64 on the
    inputs' device. A CAM method's result counts as its ``maps``."""
    if not isinstance(attributions, torch.Tensor) and isinstance(getattr(attributions, "maps", None), torch.Tensor):
        attributions = attributions.maps
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(attributions).__name__}")
    if not (attributions.is_floating_point() or attributions.dtype == torch.bool):
        attributions = attributions.double()
    n, c, h, w = inputs.shape
    a = attributions[:, None] if attributions.dim() == 3 else attributions
    if a.dim() != 4 or a.shape[0] != n or a.shape[1] not in (1, c) or tuple(a.shape[2:]) != (h, w):
        raise ValueError(
            f"{name} must have shape ({n}, 1 or {c}, {h}, {w}) (or ({n}, {h}, {w})) for inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(attributions.shape)}"
        )
    a = a.detach().to(device=inputs.device, dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        bad = sorted({int(i) for i in (~torch.isfinite(a)).flatten(1).any(1).nonzero().flatten()})
        raise ValueError(f"{name} holds NaN or inf values (images {bad}): every value must be finite")
    return a


def check_model_and_inputs(model: nn.Module, inputs: torch.Tensor) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    check_inputs(inputs, model=model if isinstance(model, nn.Module) else None)
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_baseline(baseline: Baseline, inputs: torch.Tensor, name: str = "perturb_baseline") -> Baseline:
    """One of `BASELINES`, a number, or a tensor broadcastable to the inputs (a canvas)."""
    if isinstance(baseline, str):
        if baseline.lower() not in BASELINES:
            raise ValueError(f"{name} must be one of {list(BASELINES)}, a number or a tensor, got {baseline!r}")
        return baseline.lower()
    if isinstance(baseline, bool):
        raise TypeError(f"{name} must be a string, a number or a tensor, got bool")
    if isinstance(baseline, (int, float)):
        if not torch.isfinite(torch.tensor(float(baseline))):
            raise ValueError(f"{name} must be finite, got {baseline!r}")
        return float(baseline)
    if isinstance(baseline, torch.Tensor):
        try:
            fits = torch.broadcast_shapes(baseline.shape, inputs.shape) == inputs.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to the inputs' shape {tuple(inputs.shape)}, got {tuple(baseline.shape)}")
        if not bool(torch.isfinite(baseline).all()):
            raise ValueError(f"{name} contains NaN or inf: every value must be finite")
        return baseline
    raise TypeError(f"{name} must be a string, a number or a tensor, got {type(baseline).__name__}")


def descending_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry of ``scores (N, F)`` in descending order, ties broken by position
    (the earlier entry ranks first): a stable sort, so every run gives the same curve."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def step_values(
    baseline: Baseline,
    ref: torch.Tensor,
    ref_steps: torch.Tensor,
    steps: int,
    *,
    uniform_low: float = 0.0,
    uniform_high: float = 1.0,
    generators: Optional[list[torch.Generator]] = None,
) -> torch.Tensor:
    """Quantus's replacement value of each step ``(N, steps + 1)`` (the last column for
    elements never replaced) for a named or numeric baseline. Quantus takes the statistic
    of the array as perturbed so far, ``ref (N, C, H', W')`` (the image, edge-padded for the
    patch metrics) whose elements are replaced at ``ref_steps (N, 1 or C, H', W')``:
    "black" / "white" are its min / max (unchanged by the replacements), "mean" its mean
    before each step, which follows ``m[k+1] = m[k] + (n_k m[k] - S_k) / F`` (``n_k``
    elements of original sum ``S_k`` replaced at step ``k``, ``F`` elements in all), solved
    in closed form; "uniform" draws one value per image and step (from each image's
    generator in ``generators``, else torch's global one)."""
    n = ref.shape[0]
    flat = ref.reshape(n, -1).double()
    if isinstance(baseline, float):
        return torch.full((n, steps + 1), baseline, dtype=torch.float64, device=ref.device)
    if baseline in ("black", "white"):
        value = flat.amin(1) if baseline == "black" else flat.amax(1)
        return value[:, None].expand(n, steps + 1).contiguous()
    if baseline == "uniform":
        gens = generators or [None] * n
        u = torch.stack([torch.rand(steps + 1, generator=g, dtype=torch.float64) for g in gens])
        return (uniform_low + (uniform_high - uniform_low) * u).to(ref.device)
    # "mean": the per-step element counts and sums of the original values
    ids = ref_steps.expand_as(ref).reshape(n, -1)
    sums = torch.zeros(n, steps + 1, dtype=torch.float64, device=ref.device).scatter_add_(1, ids, flat)
    counts = torch.zeros_like(sums).scatter_add_(1, ids, torch.ones_like(flat))
    total = flat.shape[1]
    a = 1 + counts[:, :steps] / total  # m[k+1] = a_k m[k] + b_k
    b = -sums[:, :steps] / total
    prod = torch.cat([torch.ones(n, 1, dtype=torch.float64, device=ref.device), torch.cumprod(a, 1)], 1)  # P_k
    m0 = flat.mean(1, keepdim=True)
    acc = torch.cat([torch.zeros_like(m0), torch.cumsum(b / prod[:, 1:], 1)], 1)
    return prod * (m0 + acc)  # m[k] = P_k (m0 + sum_{j<k} b_j / P_{j+1}); column `steps` unused


def canvas_of(values: torch.Tensor, elem_steps: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The replacement image ``(N, C, H, W)``: each element gets its step's value."""
    n = values.shape[0]
    ids = elem_steps.expand(shape).reshape(n, -1)
    return values.gather(1, ids).view(shape).to(dtype)


class CurveModel:
    """The model as the curves score it: eval mode, forward only under inference mode,
    the BatchNorm-folded copy in tuned chunks when ``tune`` (`interp_ext.tuning`), softmax
    probabilities or raw outputs of the target class. Every metric shares one tuner per
    model and input shape: their passes are the same work."""

    def __init__(self, model: nn.Module, softmax: bool, tune: bool):
        self.softmax = softmax
        self.planned = model  # what incremental inference traces: the same function
        run = model
        if tune and isinstance(model, nn.Module):
            self.planned = folded_copy(model) or model
            run = TunedForward(self.planned, "metrics")
        self.run = run

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        out = model_output(out)
        if out.dim() != 2:
            raise ValueError(f"the model must return (N, num_classes) scores, got shape {tuple(out.shape)}")
        return out.double().softmax(1) if self.softmax else out.double()

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.run(batch))

    def targets(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image class indices (top-1 where ``target`` is None) and the clean scores."""
        t = normalize_target(target, x.shape[0], x.device)
        logits = model_output(self.run(x))
        idx = resolve_target(t, logits)
        clean = logits.double().softmax(1) if self.softmax else logits.double()
        return idx, clean.gather(1, idx[:, None])[:, 0]


def replacement_curves(
    model: CurveModel,
    x: torch.Tensor,
    idx: torch.Tensor,
    elem_steps: torch.Tensor,
    canvas: torch.Tensor,
    steps: int,
    *,
    insert: bool = False,
    batch_size: int = 64,
    show_progress: bool = False,
    desc: str = "metric",
) -> torch.Tensor:
    """Target scores ``(N, steps)`` float64 of copies ``k = 0 .. steps - 1`` of ``x (N, C, H, W)``:
    copy ``k`` holds ``canvas`` wherever ``elem_steps (N, 1 or C, H, W)`` (int64 in
    ``[0, steps]``; ``steps`` = never) is ``<= k`` and ``x`` elsewhere; ``insert`` swaps the
    roles (the canvas recedes as ``x`` is added). At most ``batch_size`` copies exist at once."""
    n = x.shape[0]
    group = min(n, batch_size)
    per_chunk = max(1, batch_size // group)
    out = torch.empty(n, steps, dtype=torch.float64, device=x.device)
    ids = torch.arange(steps + 1, device=x.device)
    chunks = [(g, k) for g in range(0, n, group) for k in range(0, steps, per_chunk)]
    shown, hidden = (canvas, x) if insert else (x, canvas)
    buffer = torch.empty((min(per_chunk, steps) * group, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for g, k in tqdm(chunks, desc=desc, unit="batch", disable=not show_progress, leave=False):
        rows = slice(g, g + group)
        m = min(group, n - g)
        count = min(per_chunk, steps - k)
        present = ids[None, :] > torch.arange(k, k + count, device=x.device)[:, None]  # (count, steps + 1)
        batch = ops.feature_batch(
            _rows(shown, rows), _rows(hidden, rows), _rows(elem_steps, rows), present, out=buffer[: count * m]
        )
        scores = model.scores(batch)  # copy-major rows: copy j of image i is row j * m + i
        out[rows, k : k + count] = scores.gather(1, idx[rows].repeat(count)[:, None]).view(count, m).t()
    return out


def _rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    return t if t.shape[0] == 1 else t[rows]


def trapezoid(curves: torch.Tensor, dx: float = 1.0) -> torch.Tensor:
    """The area under each curve ``(N, K)`` by the trapezoidal rule (NumPy's ``trapezoid``)."""
    if curves.shape[1] < 2:
        return torch.zeros(curves.shape[0], dtype=curves.dtype, device=curves.device)
    return (curves[:, 1:] + curves[:, :-1]).sum(1) * (dx / 2)
