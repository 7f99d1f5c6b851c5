"""SmoothGrad (Smilkov et al.): average an attribution over noisy copies of the input."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target
from .cam import CAM, _GradCAMBase

_SUPPORTED = ("Saliency, GuidedBackprop, Deconvolution, GuidedGradCAM, Occlusion, ShapleySampling, SmoothGrad "
              "or any method whose attribute(inputs, target=...) returns a tensor of the inputs' shape")


class SmoothGrad:
    """Noise-averaged attributions for any method with ``model`` and ``attribute``.

    Args:
        method: a method whose ``attribute`` returns input-shaped maps, e.g.
            ``Saliency(model)``, ``GuidedBackprop(model)``, ``GuidedGradCAM(model, layer)``,
            ``Occlusion(model)`` (its arguments as keywords of `attribute`). The CAM
            family (layer-resolution maps in a ``CAMResult``) is refused here.
        n_samples: noisy copies per input.
        stdev: standard deviation of the Gaussian noise. With ``relative=True`` (the
            paper's "noise level") it is a fraction of each sample's value range
            ``max - min``; with ``relative=False`` it is in input units (as Captum's
            ``NoiseTunnel``).
        batch_size: noisy copies evaluated per model call; bounds the memory used.
        seed: makes the noise reproducible. Copy ``k`` of the batch always gets the
            same noise for a given seed, whatever ``batch_size`` is.
        show_progress: a tqdm bar over the chunks.

    The model runs in eval mode (a model in train mode gets every module's flag back
    afterwards, also on an error).
    """

    def __init__(
        self,
        method: Any,
        n_samples: int = 25,
        stdev: float = 0.15,
        batch_size: int = 32,
        *,
        relative: bool = True,
        seed: Optional[int] = None,
        show_progress: bool = False,
    ):
        if isinstance(method, (_GradCAMBase, CAM)):
            raise TypeError(
                f"method: SmoothGrad averages input-shaped attributions ({_SUPPORTED}); got {type(method).__name__}, "
                "whose maps (a CAMResult) have the layer's resolution"
            )
        if not hasattr(method, "attribute") or not hasattr(method, "model"):
            raise TypeError(f"method must be an attribution method with .model and .attribute ({_SUPPORTED}), "
                            f"got {type(method).__name__}")
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if isinstance(stdev, bool) or not isinstance(stdev, (int, float)) or not (math.isfinite(stdev) and stdev >= 0):
            raise ValueError(f"stdev must be a finite number >= 0, got {stdev!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.method = method
        self.n_samples = n_samples
        self.stdev = float(stdev)
        self.batch_size = batch_size
        self.relative = relative
        self.seed = seed
        self.show_progress = show_progress

    @property
    def model(self):
        """The wrapped method's model."""
        return self.method.model

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Target = None, **kwargs: Any) -> torch.Tensor:
        """Mean of ``method.attribute`` over ``n_samples`` noisy copies of each input.

        ``target`` None means each sample's top-1 class on the clean input (not on the
        noisy copies). Extra keyword arguments go to ``method.attribute``.
        """
        check_inputs(inputs, model=self.model)
        target_t = normalize_target(target, inputs.shape[0], inputs.device)
        with torch.no_grad():
            target_t = resolve_target(target_t, model_output(self.model(inputs)))
        return self.noisy_mean(inputs, target_t, **kwargs)

    def noisy_mean(self, inputs: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """`attribute` for checked inputs and per-sample class indices already resolved and
        range-checked (the planner's entry: no clean forward pass of its own)."""
        n = inputs.shape[0]
        sigma = self._noise_scale(inputs)
        base_seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)).item())
        gen = torch.Generator(device=inputs.device)
        total = torch.zeros_like(inputs, dtype=torch.promote_types(inputs.dtype, torch.float32))
        copies = n * self.n_samples
        starts = range(0, copies, self.batch_size)
        for start in tqdm(starts, desc="SmoothGrad", unit="chunk", disable=not self.show_progress):
            ks = torch.arange(start, min(start + self.batch_size, copies), device=inputs.device)
            sample = ks // self.n_samples
            noisy = inputs[sample].detach().clone()
            for j, k in enumerate(ks.tolist()):
                gen.manual_seed(base_seed + k)
                noise = torch.randn(inputs.shape[1:], generator=gen, device=inputs.device, dtype=inputs.dtype)
                noisy[j] += noise * sigma[k // self.n_samples]
            attr = self.method.attribute(noisy, target=target[sample], **kwargs)
            if not isinstance(attr, torch.Tensor) or attr.shape != noisy.shape:
                got = tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr).__name__
                raise TypeError(f"method: {type(self.method).__name__}.attribute must return a tensor of the inputs' "
                                f"shape {tuple(noisy.shape)}, got {got}")
            total.index_add_(0, sample, attr.to(total.dtype))
        return (total / self.n_samples).to(inputs.dtype)

    def _noise_scale(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-sample noise standard deviation, shape (N,)."""
        n = inputs.shape[0]
        if not self.relative:
            return torch.full((n,), self.stdev, device=inputs.device, dtype=inputs.dtype)
        flat = inputs.detach().reshape(n, -1)
        return self.stdev * (flat.amax(dim=1) - flat.amin(dim=1))
