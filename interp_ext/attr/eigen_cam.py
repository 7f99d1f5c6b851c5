"""EigenCAM (Muhammad & Yeasin) and EigenGradCAM: the first principal component of a
layer's (gradient-weighted) activations, on the device, batched.

Per sample the ``(K, h, w)`` tensor is read as ``h * w`` points in ``K`` dimensions,
centred (each channel minus its mean over the pixels) and projected on its first right
singular vector: a ``(h, w)`` map. A singular vector's sign is arbitrary (LAPACK
implementations and devices pick differently: torch's and NumPy's disagree on about a
quarter of random matrices), and after the ReLU the two signs give different maps, so the
map is oriented here to have its largest magnitude positive (the sign correction of
Seg-Eigen-CAM, Chung & Ying 2025: the salient extreme is the positive one). On the
bundled model and a photo of a flower this puts the blossom positive at each of the last
four layers; the orientation "correlates positively with the channel sum" got it wrong
at ``_blocks.15``, whose output (no ReLU) is mostly negative on the blossom.
``interp_ext.compat.pytorch_grad_cam`` keeps NumPy's sign instead, to give
pytorch-grad-cam's numbers.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from ..layers import LayerCapture
from ._common import Target, check_inputs, in_eval_mode, model_output
from .cam import CAMResult, LayerMethod, OutputSize, ScoreFn, _check_flag, cam_output_size, finish_map, fuse_layer_maps


def principal_component_maps(x: torch.Tensor) -> torch.Tensor:
    """``(N, K, h, w)`` -> ``(N, 1, h, w)``: each sample's pixels (centred per channel)
    projected on their first principal direction, oriented so that the largest magnitude
    is positive (see the module docstring). Computed in float32 (float64 for float64
    input) by ``torch.linalg.svd`` on the tensor's device; returned in its dtype."""
    if x.dim() != 4:
        raise ValueError(f"principal_component_maps takes (N, K, h, w) maps, got shape {tuple(x.shape)}")
    n, k, h, w = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    pts = x.to(acc).reshape(n, k, h * w).transpose(1, 2)  # (N, hw, K)
    pts = pts - pts.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(pts, full_matrices=False)
    v = vh[:, 0, :]  # (N, K)
    proj = torch.bmm(pts, v[:, :, None])[..., 0]  # (N, hw)
    sign = torch.where(proj.amin(1).abs() > proj.amax(1).abs(), -1.0, 1.0).to(acc)
    return (proj * sign[:, None]).reshape(n, 1, h, w).to(x.dtype)


class EigenCAM(LayerMethod):
    """EigenCAM: the first principal component of the target layer's activations. Class
    agnostic (no target, no backward): one forward in inference mode."""

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, output_size: OutputSize = "input", normalize: bool = True,
                  relu: bool = True) -> CAMResult:
        """Maps ``(N, 1, H, W)`` for a batch; ``output_size``, ``normalize``, ``relu`` and
        several layers as `GradCAM.attribute`. The model runs in eval mode (its flags
        restored afterwards)."""
        check_inputs(inputs, model=self.model)
        size = cam_output_size(output_size, inputs)
        _check_flag(relu, "relu")
        _check_flag(normalize, "normalize")
        with LayerCapture(self.layers, require_map=True, detach=True) as cap, torch.inference_mode():
            logits = model_output(self.model(inputs))
            acts = cap.get()
            maps = eigen_maps(acts, size, normalize, relu)
            fused = fuse_layer_maps(maps, size, normalize)
        return CAMResult(fused.clone(), logits.clone(), {name: m.clone() for (name, _), m in zip(self.layers, maps)})


class EigenGradCAM(LayerMethod):
    """EigenGradCAM: the first principal component of gradients x activations at the
    target layer (class discriminative). One forward and one backward to the layer."""

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Union[Target, ScoreFn] = None, output_size: OutputSize = "input",
                  normalize: bool = True, relu: bool = True) -> CAMResult:
        """Maps ``(N, 1, H, W)`` for a batch; arguments as `GradCAM.attribute`."""
        size, logits, acts, grads = self._layer_gradients(inputs, target, output_size, normalize, relu)
        maps = eigen_grad_maps(acts, grads, size, normalize, relu)
        return CAMResult(fuse_layer_maps(maps, size, normalize), logits,
                         {name: m for (name, _), m in zip(self.layers, maps)})


def eigen_grad_maps(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], size, normalize: bool = True,
                    relu: bool = True) -> list[torch.Tensor]:
    """EigenGradCAM's per-layer maps from each layer's activations and gradients (the
    planner shares this with the class)."""
    return [finish_map(principal_component_maps(g * a), relu, size, normalize) for a, g in zip(acts, grads)]


def eigen_maps(acts: Sequence[torch.Tensor], size, normalize: bool = True, relu: bool = True) -> list[torch.Tensor]:
    """EigenCAM's per-layer maps from each layer's activations."""
    return [finish_map(principal_component_maps(a), relu, size, normalize) for a in acts]
