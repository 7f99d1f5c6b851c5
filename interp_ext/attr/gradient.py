"""Gradient methods: saliency (Simonyan et al.), guided backprop (Springenberg et al.)
and deconvnet (Zeiler & Fergus)."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._common import Target, check_inputs, input_gradients
from .rectifiers import RectifierMode


class Saliency:
    """Gradient of the target score with respect to the input.

    The model runs in eval mode (BatchNorm's running statistics, no Dropout); a model in
    train mode gets every module's ``training`` flag back afterwards, also on an error.
    Inputs must be finite and in the model's dtype; the model must return one tensor.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None, abs: bool = True) -> torch.Tensor:
        """Input-shaped gradients (their absolute value when ``abs``) for a batch.

        ``target``: None (each sample's top-1 class), an int, or one class per sample.
        """
        grad, _ = input_gradients(self.model, inputs, target)
        return grad.abs() if abs else grad

    def saliency_map(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The Simonyan et al. map: ``max_c |gradient|``, shape ``(N, H, W)``."""
        check_inputs(inputs, min_dim=4, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        grad, _ = input_gradients(self.model, inputs, target)
        return ops.saliency_reduce(grad)


class _RectifierRuleMethod:
    rule: str

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Input-shaped attributions for a batch.

        ``target``: None (each sample's top-1 class), an int, or one class per sample.
        The model is not modified; rectifiers are rerouted only during the forward, which
        runs in eval mode (every module's flag restored afterwards).
        """
        grad, _ = input_gradients(self.model, inputs, target, RectifierMode(self.rule))
        return grad


class GuidedBackprop(_RectifierRuleMethod):
    """Guided backpropagation: at every rectifier pass only positive gradients of
    active units. Works for every spelling of ReLU and ReLU6 (see ``RectifierMode``)."""

    rule = "guided"


class Deconvolution(_RectifierRuleMethod):
    """Zeiler & Fergus deconvnet: at every rectifier, rectify the gradient itself."""

    rule = "deconvnet"
