"""Argument handling shared by every attribution method: inputs, targets, gradients."""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Union

import torch
from torch import nn

Target = Union[None, int, Sequence[int], torch.Tensor]


def check_inputs(inputs: torch.Tensor, *, name: str = "inputs", min_dim: int = 2) -> None:
    """Reject what no method can attribute, before the model runs."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < min_dim:
        raise ValueError(f"{name} must be batched with at least {min_dim} dimensions (N, ...), got shape {tuple(inputs.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(inputs.shape)}")
    if torch.isnan(inputs).any():
        raise ValueError(f"{name} contains NaN")


def normalize_target(target: Target, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    """An int, a sequence or a tensor -> a (batch,) int64 tensor on `device`; None stays
    None (top-1, resolved once the logits exist). Range is checked by `resolve_target`."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints or an integer tensor, got bool")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
        if target.dim() == 0:
            return target.to(device=device, dtype=torch.long).expand(batch).clone()
        if target.dim() != 1 or target.shape[0] != batch:
            raise ValueError(f"target must have one class per sample, shape ({batch},), got {tuple(target.shape)}")
        return target.to(device=device, dtype=torch.long)
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if len(target) != batch or not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise ValueError(f"target must list one int class per sample ({batch}), got {list(target)!r}")
        return torch.tensor(list(target), dtype=torch.long, device=device)
    raise TypeError(f"target must be None, an int, a sequence of ints or an integer tensor, got {type(target).__name__}")


def resolve_target(target: Optional[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Validate the model output and turn `target` into per-sample class indices."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return (N, num_classes) scores, got shape {tuple(logits.shape)}")
    if target is None:
        return logits.detach().argmax(dim=1)
    check_index_range(target, logits.shape[1])
    return target


def check_index_range(t: torch.Tensor, limit: int, name: str = "target", what: Optional[str] = None) -> None:
    """Every value of `t` in [0, limit), else a ValueError naming the argument and the
    out-of-range values (`what`: where the limit comes from)."""
    bad = (t < 0) | (t >= limit)
    if bad.any():
        raise ValueError(f"{name} must be in [0, {limit}) for {what or f'a model with {limit} outputs'}, got {t[bad].tolist()}")


def input_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Target,
    context: contextlib.AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[target] / d inputs for every sample, and the logits.

    Asks autograd for the input gradient only (no weight gradients, parameters'
    `.grad` untouched). `context` wraps the forward pass (e.g. a rectifier mode).
    """
    check_inputs(inputs)
    target_t = normalize_target(target, inputs.shape[0], inputs.device)
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad(), (context or contextlib.nullcontext()):
        logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a tensor of scores, got {type(logits).__name__}")
    idx = resolve_target(target_t, logits)
    score = logits.gather(1, idx[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad, logits.detach()
