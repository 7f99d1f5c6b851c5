"""SmoothGrad (Smilkov et al.): average an attribution over noisy copies of the input."""
from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ._common import Target, check_inputs, normalize_target, resolve_target


class SmoothGrad:
    """Noise-averaged attributions for any method with ``model`` and ``attribute``.

    Args:
        method: e.g. ``Saliency(model)``, ``GuidedBackprop(model)``.
        n_samples: noisy copies per input.
        stdev: standard deviation of the Gaussian noise. With ``relative=True`` (the
            paper's "noise level") it is a fraction of each sample's value range
            ``max - min``; with ``relative=False`` it is in input units (as Captum's
            ``NoiseTunnel``).
        batch_size: noisy copies evaluated per model call; bounds the memory used.
        seed: makes the noise reproducible. Copy ``k`` of the batch always gets the
            same noise for a given seed, whatever ``batch_size`` is.
        show_progress: a tqdm bar over the chunks.
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
        if not hasattr(method, "attribute") or not hasattr(method, "model"):
            raise TypeError(f"method must be an attribution method with .model and .attribute, got {type(method).__name__}")
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        if not stdev >= 0:
            raise ValueError(f"stdev must be >= 0, got {stdev!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.method = method
        self.n_samples = n_samples
        self.stdev = float(stdev)
        self.batch_size = batch_size
        self.relative = relative
        self.seed = seed
        self.show_progress = show_progress

    def attribute(self, inputs: torch.Tensor, target: Target = None, **kwargs: Any) -> torch.Tensor:
        """Mean of ``method.attribute`` over ``n_samples`` noisy copies of each input.

        ``target`` None means each sample's top-1 class on the clean input (not on the
        noisy copies). Extra keyword arguments go to ``method.attribute``.
        """
        check_inputs(inputs)
        n = inputs.shape[0]
        target_t = normalize_target(target, n, inputs.device)
        with torch.no_grad():
            target_t = resolve_target(target_t, self.method.model(inputs))

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
            attr = self.method.attribute(noisy, target=target_t[sample], **kwargs)
            total.index_add_(0, sample, attr.to(total.dtype))
        return (total / self.n_samples).to(inputs.dtype)

    def _noise_scale(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-sample noise standard deviation, shape (N,)."""
        n = inputs.shape[0]
        if not self.relative:
            return torch.full((n,), self.stdev, device=inputs.device, dtype=inputs.dtype)
        flat = inputs.detach().reshape(n, -1)
        return self.stdev * (flat.amax(dim=1) - flat.amin(dim=1))
