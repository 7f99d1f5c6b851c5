"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"): an explanation that depends on what the model learnt must change when the model's
weights are re-initialised, layer after layer from the output down ("cascading") or one
layer at a time ("independent"). A map that stays the same (an edge detector of the input,
say) explains the image, not the model.

The layers are randomised in place and every tensor they hold is put back afterwards: the
model object, its modules and hooks stay the ones the caller has (a clone of the chosen
layers' tensors is kept meanwhile; of all of them when every layer is chosen). `ssim` and `spearman` are the similarities Adebayo et al.
report, per sample and in pure PyTorch.
"""
from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..attr._common import Target, eval_mode, model_output, normalize_target, resolve_target
from ..attr.cam import unit_scale
from ..layers import LayerSpec, resolve_layers
from ._curves import check_model_and_inputs

Explain = Callable[[nn.Module, torch.Tensor, Any], Any]
Similarity = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
MODES = ("cascading", "independent")


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of maps of one shape -> float64, channels of ``(N, C, H, W)`` summed."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise TypeError(f"{name} must hold real values, got dtype {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    shapes = "(N, C, H, W) or (N, H, W)" if min_dim == 3 else "(N, C, H, W), (N, H, W) or (N, F)"
    if not (min_dim <= a.dim() <= 4) or a.numel() == 0:
        raise ValueError(f"a and b must be non-empty maps {shapes}, got shape {tuple(a.shape)}")
    out = []
    for name, t in (("a", a), ("b", b)):
        t = t.detach().to(torch.float64)
        if not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"{name} holds NaN or inf values (samples {bad}): every value must be finite")
        out.append(t.sum(1) if t.dim() == 4 else t)
    return out[0], out[1].to(out[0].device)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: Optional[float] = None, win_size: int = 7) -> torch.Tensor:
    """The structural similarity of each pair of maps, as scikit-image's
    ``structural_similarity`` defines it: a uniform ``win_size`` window, ``K1 = 0.01``,
    ``K2 = 0.03``, sample covariances, the mean over the windows that lie wholly inside the
    map.

    ``data_range=None`` (the default) first min-max scales each map to ``[0, 1]`` (a
    constant map becomes zeros) and uses ``data_range = 1``: the numbers equal
    ``structural_similarity(a01, b01, data_range=1.0)`` of the scaled maps, and they do
    not change when a map is multiplied by a positive number or shifted (a randomised
    model's maps have another scale). A number compares the maps as they are, with that
    range (``structural_similarity(a, b, data_range=...)``; Quantus's ``ssim`` uses the
    two maps' joint ``max - min``).

    Args:
        a, b: maps ``(N, C, H, W)`` or ``(N, H, W)`` of one shape; channels are summed.
        data_range: None, or the positive range of the maps' values.
        win_size: the odd side of the window, at most the maps' smaller side.

    Returns:
        float64 ``(N,)``, 1 for equal maps.
    """
    x, y = _check_pair(a, b, 3)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd int >= 3, got {win_size!r}")
    if win_size > min(x.shape[1:]):
        raise ValueError(f"win_size must be at most the maps' smaller side {min(x.shape[1:])}, got {win_size}")
    if data_range is None:
        x, y, r = unit_scale(x, (1, 2)), unit_scale(y, (1, 2)), 1.0
    else:
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not 0 < data_range < float("inf"):
            raise ValueError(f"data_range must be None or a positive number, got {data_range!r}")
        r = float(data_range)
    x, y = x[:, None], y[:, None]
    # the mean over a window lying wholly inside the map: skimage's filtered maps, cropped
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    cov_norm = win_size**2 / (win_size**2 - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``1 .. F`` of each row of ``x (N, F)``, tied values sharing their mean rank
    (SciPy's ``rankdata(method="average")``)."""
    n, f = x.shape
    v, order = x.sort(dim=1, stable=True)
    new = torch.ones_like(v, dtype=torch.bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    group = (new.cumsum(1) - 1 + torch.arange(n, device=x.device)[:, None] * f).flatten()
    pos = torch.arange(f, dtype=torch.float64, device=x.device).repeat(n)
    first = torch.full((n * f,), float(f), dtype=torch.float64, device=x.device).scatter_reduce(0, group, pos, "amin")
    last = torch.full((n * f,), -1.0, dtype=torch.float64, device=x.device).scatter_reduce(0, group, pos, "amax")
    mean_rank = ((first[group] + last[group]) / 2 + 1).view(n, f)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each pair of maps (``scipy.stats.spearmanr`` of the
    flattened maps): Pearson's correlation of their ranks, ties sharing their mean rank.

    Args:
        a, b: maps ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, F)`` of one shape, at least two
            values each; channels of ``(N, C, H, W)`` are summed.

    Returns:
        float64 ``(N,)`` in ``[-1, 1]``; NaN where a map is constant (no ranking), as SciPy.
    """
    x, y = _check_pair(a, b, 2)
    x, y = x.flatten(1), y.flatten(1)
    if x.shape[1] < 2:
        raise ValueError(f"a and b need at least two values per sample, got shape {tuple(a.shape)}")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
    denom = (rx.square().sum(1) * ry.square().sum(1)).sqrt()
    cov = (rx * ry).sum(1)
    return torch.where(denom > 0, cov / torch.where(denom > 0, denom, 1.0), torch.nan).clamp(-1, 1)


SIMILARITIES = {"ssim": ssim, "spearman": spearman}


@dataclass
class RandomisationResult:
    """What `model_randomisation` found.

    Attributes:
        layers: the randomised layers' names, in the order of the steps.
        scores: float64 ``(N, L)``: the similarity of each sample's map at step ``l`` (after
            ``layers[l]`` was randomised, with ``layers[:l]`` too when cascading) to its map
            from the original model.
        original: the original model's maps ``(N, K, H, W)``, float64.
        mode: "cascading" or "independent".
    """

    layers: list[str]
    scores: torch.Tensor
    original: torch.Tensor
    mode: str


def _own_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def default_layers(model: nn.Module) -> list[str]:
    """Every module that holds parameters of its own, from the output to the input
    (``named_modules`` in reverse: the order a model registers its layers in, reversed)."""
    return [name for name, m in reversed(list(model.named_modules())) if any(True for _ in m.parameters(recurse=False))]


def _check_layers(model: nn.Module, layers: Optional[Sequence[LayerSpec]]) -> list[tuple[str, nn.Module]]:
    if layers is None:
        names = default_layers(model)
        if not names:
            raise ValueError("model has no parameters to randomise")
        named = dict(model.named_modules())
        return [(n, named[n]) for n in names]
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved = resolve_layers(model, layers, arg="layers")
    seen: set[int] = set()
    for name, module in resolved:
        if id(module) in seen:
            raise ValueError(f"layers: {name!r} is listed twice")
        seen.add(id(module))
        if not any(True for _ in module.parameters()):
            raise ValueError(f"layers: {name!r} ({type(module).__name__}) holds no parameters to randomise")
    return resolved


def _layer_seed(seed: int, name: str) -> int:
    # a layer's random weights depend on the seed and its name only: both modes, and any
    # list of layers, randomise it identically
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@contextlib.contextmanager
def _seeded_rng(seed: int, devices: list[int]) -> Iterator[None]:
    """The global generators (CPU and the model's CUDA devices) seeded inside the block and
    given back their state afterwards: ``reset_parameters`` draws from them."""
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for d in devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def _randomise(module: nn.Module) -> None:
    """Re-initialise every module under ``module`` that holds tensors of its own: its
    ``reset_parameters()`` (BatchNorm's also resets the running statistics), else each of
    its parameters drawn from a normal distribution of mean 0 and the tensor's RMS."""
    for m in module.modules():
        if not _own_tensors(m):
            continue
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
            continue
        for p in m.parameters(recurse=False):
            rms = float(p.detach().double().square().mean().sqrt()) if p.numel() else 0.0
            p.normal_(0.0, rms if rms > 0 else 1.0)


class _Saved:
    """Copies of every parameter and buffer under the randomised layers (each tensor once),
    written back in place: the model keeps its own tensor objects."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]):
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.of_layer: list[list[int]] = []
        for _, module in layers:
            ids = []
            for t in (*module.parameters(), *module.buffers()):
                if id(t) not in self.copies:
                    self.copies[id(t)] = (t, t.detach().clone())
                ids.append(id(t))
            self.of_layer.append(ids)

    @torch.no_grad()
    def restore(self, layer: Optional[int] = None) -> None:
        ids = self.copies if layer is None else self.of_layer[layer]
        for i in ids:
            t, saved = self.copies[i]
            t.copy_(saved)


def _maps(out: Any, n: int, like: Optional[torch.Tensor], step: str) -> torch.Tensor:
    """``explain``'s result (a tensor, or an object with a ``maps`` tensor such as
    `CAMResult`) as float64 ``(N, K, H, W)``, checked."""
    maps = getattr(out, "maps", out)
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"explain must return the maps as a tensor (N, K, H, W), got {type(out).__name__} ({step})")
    if maps.dim() == 3:
        maps = maps[:, None]
    if maps.dim() != 4 or maps.shape[0] != n or maps.numel() == 0:
        raise ValueError(f"explain must return maps ({n}, K, H, W) or ({n}, H, W), got shape {tuple(maps.shape)} ({step})")
    if like is not None and maps.shape != like.shape:
        raise ValueError(
            f"explain must return maps of one shape, got {tuple(maps.shape)} ({step}) after {tuple(like.shape)} "
            "for the original model"
        )
    maps = maps.detach().to(torch.float64)
    if not bool(torch.isfinite(maps).all()):
        bad = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"explain returned NaN or inf maps for images {bad} ({step})")
    return maps


def _check_similarity(similarity: Similarity) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(similarity, str):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)} or a callable, got {similarity!r}")
        return SIMILARITIES[similarity]
    if not callable(similarity):
        raise TypeError(f"similarity must be one of {list(SIMILARITIES)} or a callable, got {type(similarity).__name__}")
    return similarity


def _score(similarity, original: torch.Tensor, maps: torch.Tensor, step: str) -> torch.Tensor:
    s = similarity(original, maps)
    n = original.shape[0]
    if not isinstance(s, torch.Tensor) or s.shape != (n,):
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"similarity must return one score per sample, shape ({n},), got {got} ({step})")
    return s.detach().to(torch.float64)


def model_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    explain: Explain,
    target: Target = None,
    *,
    mode: str = "cascading",
    layers: Optional[Sequence[LayerSpec]] = None,
    similarity: Similarity = "ssim",
    seed: int = 0,
    show_progress: bool = False,
) -> RandomisationResult:
    """The model-randomisation test of Adebayo et al. (2018): the similarity of each map to
    the original model's map as the model's layers are re-initialised.

    "cascading" re-initialises ``layers[0]``, then ``layers[0]`` and ``layers[1]``, and so on
    (by default from the output to the input); "independent" re-initialises one layer at a
    time, the others original. Explanations that depend on the learnt weights lose their
    similarity, the top layers first (Quantus's ``MPRT`` runs the cascading form on a deep
    copy of the model).

    Re-initialising a layer calls ``reset_parameters()`` of every module under it that holds
    tensors of its own (BatchNorm included: weight 1, bias 0, running statistics reset) or,
    where a module has none, draws its parameters from a normal distribution of mean 0 and
    standard deviation the tensor's RMS. The draws come from the global generators seeded
    from ``seed`` and the layer's name, inside ``torch.random.fork_rng``: the caller's
    random state is untouched, and a layer gets the same weights in both modes.

    The layers are changed in place; every parameter and buffer under them is copied first
    and written back afterwards, also when ``explain`` raises, so the model keeps its tensors
    (bit-equal values), its hooks and its ``training`` flags. It runs in eval mode.
    Gradients that ``explain`` leaves in ``.grad`` are not managed.

    Args:
        model: the model, an ``nn.Module``.
        inputs: images ``(N, C, H, W)`` as the model takes them.
        explain: the attribution method, ``explain(model, inputs, target) -> maps`` of shape
            ``(N, 1 or C, H, W)`` or ``(N, H, W)`` (or an object with a ``maps`` tensor,
            such as `CAMResult`), e.g.
            ``lambda m, x, t: interp_ext.GradCAM(m, "_blocks.15").attribute(x, t).maps``.
            The method must look the layers up on the model it is given.
        target: class per image (int, sequence, tensor), given to ``explain`` as an int64
            tensor ``(N,)``; None takes each image's top-1 class under the original model,
            so every map explains the same class.
        mode: "cascading" or "independent".
        layers: the layers to randomise (dotted names or modules), in the order of the
            steps; default `default_layers`: every module with parameters of its own, from
            the output to the input. An unknown name is a ValueError listing close matches.
        similarity: "ssim" (`ssim`, each map min-max scaled to [0, 1]), "spearman"
            (`spearman`) or a callable ``(original, maps) -> (N,)`` on float64 maps.
        seed: the seed of the re-initialisation.
        show_progress: a progress bar over the steps.

    Returns:
        `RandomisationResult`: the layer names, the scores ``(N, L)`` float64 and the
        original maps.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (its layers are re-initialised), got {type(model).__name__}")
    check_model_and_inputs(model, inputs)
    if not callable(explain):
        raise TypeError(f"explain must be a callable explain(model, inputs, target) -> maps, got {type(explain).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    score_fn = _check_similarity(similarity)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    chosen = _check_layers(model, layers)
    n = inputs.shape[0]
    target_t = normalize_target(target, n, inputs.device)
    devices = sorted({t.device.index or 0 for _, m in chosen for t in (*m.parameters(), *m.buffers()) if t.is_cuda})
    names = [name for name, _ in chosen]
    saved = _Saved(chosen)
    scores = torch.empty(n, len(chosen), dtype=torch.float64)
    with eval_mode(model):
        if target_t is None:
            with torch.no_grad():
                target_t = resolve_target(None, model_output(model(inputs)))
        try:
            original = _maps(explain(model, inputs, target_t), n, None, "the original model")
            for i, (name, module) in enumerate(tqdm(chosen, desc="model randomisation", unit="layer",
                                                    disable=not show_progress, leave=False)):
                if mode == "independent" and i > 0:
                    saved.restore(i - 1)
                with _seeded_rng(_layer_seed(seed, name), devices):
                    _randomise(module)
                step = f"with {name!r} randomised" if mode == "independent" else f"with the layers down to {name!r} randomised"
                maps = _maps(explain(model, inputs, target_t), n, original, step)
                scores[:, i] = _score(score_fn, original, maps, step).cpu()
        finally:
            saved.restore()
    return RandomisationResult(layers=names, scores=scores.to(inputs.device), original=original, mode=mode)
