"""Targets: callables on ONE sample's model output returning the score to explain,
pytorch-grad-cam's ``utils.model_targets``. The CAM classes call ``target(output[i])``
for sample i; a target on a 2-D batch output works too, as theirs do.

The CAM classes recognise `ClassifierOutputTarget` and score a whole batch with one
gather; any other callable (pytorch-grad-cam's own targets included) is called per
sample (per perturbed copy for ScoreCAM / AblationCAM).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _pick(output: torch.Tensor, index):
    return output[index] if output.dim() == 1 else output[:, index]


class ClassifierOutputTarget:
    """The raw score (logit) of class ``category``."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """``model_output[category]`` of one sample's (classes,) output; ``[:, category]``,
        shape (N,), of a 2-D batch."""
        return _pick(model_output, self.category)

    def __repr__(self) -> str:
        return f"ClassifierOutputTarget({self.category!r})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of class ``category`` (over the last dimension)."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The probability of ``category``: a scalar for one sample, (N,) for a batch."""
        return _pick(torch.softmax(model_output, dim=-1), self.category)


class ClassifierOutputReST:
    """The logit of ``category`` minus the cross-entropy loss of that class (pre- and
    post-softmax together)."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The score of ``category``: a scalar for one sample's (classes,) output, (N,) for a
        batch."""
        batched = model_output.dim() > 1
        out = model_output if batched else model_output[None]
        labels = torch.full((out.shape[0],), self.category, dtype=torch.long, device=out.device)
        s = out[:, self.category] - F.cross_entropy(out, labels, reduction="none")
        return s if batched else s[0]


class BinaryClassifierOutputTarget:
    """A single-output binary classifier: the output for ``category`` 1, its negation for 0."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """``model_output`` for ``category`` 1, ``-model_output`` otherwise (same shape)."""
        return model_output * (1 if self.category == 1 else -1)


class SoftmaxOutputTarget:
    """All softmax probabilities (for methods that take a vector, such as EigenCAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The softmax over the last dimension, of the output's shape."""
        return torch.softmax(model_output, dim=-1)


class RawScoresOutputTarget:
    """The raw output itself (for methods that take no gradient, such as EigenCAM)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """``model_output`` unchanged."""
        return model_output


class SemanticSegmentationTarget:
    """A segmentation model's ``(classes, H, W)`` output: the sum of class ``category``'s
    scores over the pixels of ``mask`` (an ``(H, W)`` NumPy array or tensor)."""

    def __init__(self, category: int, mask):
        self.category = category
        self.mask = torch.from_numpy(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """A scalar: class ``category``'s scores of a (classes, H, W) output summed over
        ``mask`` (moved to the output's device)."""
        return (model_output[self.category, :, :] * self.mask.to(model_output.device)).sum()
