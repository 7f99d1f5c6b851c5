"""Shapley value sampling (Strumbelj & Kononenko) over a feature mask, on the native
feature-subset batch op: memory bounded by ``perturbations_per_eval``."""
from __future__ import annotations

import itertools
from typing import Any, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target
from .occlusion import _baseline, _expand_args

# "all" enumerates F! permutations; beyond this it is no longer a sensible request.
MAX_EXHAUSTIVE_FEATURES = 8


def grid_feature_mask(height: int, width: int, patch: Union[int, tuple[int, int]]) -> torch.Tensor:
    """An (H, W) int64 mask of square (or (ph, pw)) patches numbered row-major; edge
    patches are clipped. The usual feature mask for Shapley sampling of images."""
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    if ph <= 0 or pw <= 0:
        raise ValueError(f"patch must be positive, got {patch!r}")
    cols = -(-width // pw)
    rows = torch.arange(height).div(ph, rounding_mode="floor")[:, None]
    return rows * cols + torch.arange(width).div(pw, rounding_mode="floor")[None, :]


def _feature_mask(feature_mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(H, W) or (1 or N, 1 or C, H, W) integer ids -> int64 (1 or N, 1 or C, H, W) on the
    inputs' device."""
    n, c, h, w = inputs.shape
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(f"feature_mask must be an integer tensor, got {type(feature_mask).__name__}")
    if feature_mask.is_floating_point() or feature_mask.is_complex() or feature_mask.dtype == torch.bool:
        raise TypeError(f"feature_mask must be an integer tensor, got dtype {feature_mask.dtype}")
    m = feature_mask
    if m.dim() == 2:
        m = m[None, None]
    if not (m.dim() == 4 and m.shape[0] in (1, n) and m.shape[1] in (1, c) and m.shape[2:] == (h, w)):
        raise ValueError(
            f"feature_mask must be (H, W) = {(h, w)} or (1 or N, 1 or C, H, W) for inputs of shape "
            f"{tuple(inputs.shape)}, got {tuple(feature_mask.shape)}"
        )
    if m.numel() and m.min() < 0:
        raise ValueError("feature_mask ids must be non-negative")
    return m.to(device=inputs.device, dtype=torch.long).contiguous()


def _permutations(permutations, n_samples: int, num_features: int, seed: Optional[int]) -> torch.Tensor:
    """(S, F) int64 permutations of range(F)."""
    if isinstance(permutations, str):
        if permutations != "all":
            raise ValueError(f'permutations must be None, "all" or an (S, F) tensor, got {permutations!r}')
        if num_features > MAX_EXHAUSTIVE_FEATURES:
            raise ValueError(
                f'permutations="all" enumerates F! orders; F = {num_features} > {MAX_EXHAUSTIVE_FEATURES} '
                "is too many: sample with n_samples instead"
            )
        return torch.tensor(list(itertools.permutations(range(num_features))), dtype=torch.long)
    if permutations is not None:
        p = torch.as_tensor(permutations)
        if p.dim() != 2 or p.shape[1] != num_features or p.shape[0] == 0:
            raise ValueError(f"permutations must be (S, F) with F = {num_features} features, got shape {tuple(p.shape)}")
        if not torch.equal(p.sort(dim=1).values.cpu(), torch.arange(num_features).expand_as(p)):
            raise ValueError(f"every row of permutations must be a permutation of 0..{num_features - 1}")
        return p.long().cpu()
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    # Without a seed the global generator draws, one randperm per sample as Captum does,
    # so that the same torch.manual_seed gives Captum's permutations.
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_features, generator=gen) for _ in range(n_samples)])


class ShapleySampling:
    """Shapley values of groups of input elements (features), estimated by sampling
    orders in which the features are switched from the baseline to the input.

    Each sampled permutation adds the features one at a time and credits each with the
    change of the target score it causes, so the attributions of one permutation sum to
    ``f(x) - f(baseline)`` exactly (efficiency); the estimate is their mean over the
    permutations. Same arguments and numbers as Captum's ``ShapleyValueSampling`` for
    image batches (given the same permutations: the same ``torch.manual_seed``). The
    model runs in eval mode (a model in train mode gets every module's flag back
    afterwards, also on an error).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    @in_eval_mode
    def attribute(
        self,
        inputs: torch.Tensor,
        feature_mask: torch.Tensor,
        n_samples: int = 25,
        baselines: Union[float, torch.Tensor] = 0,
        target: Target = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 64,
        permutations: Union[None, str, torch.Tensor] = None,
        seed: Optional[int] = None,
        show_progress: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        """Input-shaped attributions (every element carries its feature's value), or
        ``(N, F)`` per-feature values with ``return_features=True``.

        ``feature_mask``: integer ids ``(H, W)`` or ``(1 or N, 1 or C, H, W)`` (e.g.
        `grid_feature_mask` or superpixels); F = max id + 1. ``permutations``: None
        (``n_samples`` random orders, from ``seed`` or the global generator), ``"all"``
        (every order: exact Shapley values, F <= 8) or an ``(S, F)`` tensor of orders.
        ``perturbations_per_eval``: copies of each image per model call; memory is
        bounded by it.
        """
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        n, c, h, w = inputs.shape
        mask = _feature_mask(feature_mask, inputs)
        num_features = int(mask.max()) + 1
        perms = _permutations(permutations, n_samples, num_features, seed).to(inputs.device)
        base = _baseline(baselines, inputs)
        target_t = normalize_target(target, n, inputs.device)
        x = inputs.detach().contiguous()
        samples = perms.shape[0]
        # rank[s, f]: the step at which permutation s adds feature f; after step k the
        # present features are those with rank < k. Steps 0 (baseline) and F (input) are
        # the same for every permutation and evaluated once.
        rank = perms.argsort(dim=1)
        inner = num_features - 1
        total = samples * inner

        with torch.inference_mode():  # forward only: no autograd records, no version counters
            clean = model_output(self.model(x, *_expand_args(additional_forward_args, n, 1)))
            idx = resolve_target(target_t, clean)
            scores = torch.empty(n, samples, num_features + 1, dtype=torch.float64, device=x.device)
            scores[:, :, num_features] = clean.gather(1, idx[:, None]).double()
            empty = model_output(self.model(base.expand(n, c, h, w).contiguous(), *_expand_args(additional_forward_args, n, 1)))
            scores[:, :, 0] = empty.gather(1, idx[:, None]).double()
            inner_scores = torch.empty(n, total, dtype=torch.float64, device=x.device)
            buffer = torch.empty((min(perturbations_per_eval, max(total, 1)) * n, c, h, w), dtype=x.dtype, device=x.device)
            starts = range(0, total, perturbations_per_eval)
            for start in tqdm(starts, desc="Shapley sampling", unit="chunk", disable=not show_progress):
                count = min(perturbations_per_eval, total - start)
                j = torch.arange(start, start + count, device=x.device)
                present = rank[j // inner] < (j % inner + 1)[:, None]
                batch = ops.feature_batch(x, base, mask, present, out=buffer[: count * n])  # copy-major
                out = model_output(self.model(batch, *_expand_args(additional_forward_args, n, count)))
                inner_scores[:, start : start + count] = out.gather(1, idx.repeat(count)[:, None]).view(count, n).t().double()
            scores[:, :, 1:num_features] = inner_scores.view(n, samples, inner)
            gains = scores[:, :, 1:] - scores[:, :, :-1]  # (N, S, F): gain of the feature added at each step
            per_feature = torch.zeros(n, num_features, dtype=torch.float64, device=x.device)
            per_feature.scatter_add_(1, perms.reshape(1, -1).expand(n, -1), gains.reshape(n, -1))
            per_feature /= samples
        per_feature = per_feature.clone()  # outside inference mode: an ordinary tensor for the caller
        if return_features:
            return per_feature.to(inputs.dtype)
        ids = mask.expand(n, c, h, w).reshape(n, -1)
        return per_feature.gather(1, ids).view(n, c, h, w).to(inputs.dtype)
