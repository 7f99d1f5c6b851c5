"""Attribution methods: one file per family."""
from .cam import CAM, CAMResult, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM, LayerCAM, XGradCAM
from .gradient import Deconvolution, GuidedBackprop, Saliency
from .occlusion import Occlusion
from .shapley import ShapleySampling, grid_feature_mask
from .smoothgrad import SmoothGrad

__all__ = [
    "CAM",
    "CAMResult",
    "Deconvolution",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "Occlusion",
    "Saliency",
    "ShapleySampling",
    "SmoothGrad",
    "XGradCAM",
    "grid_feature_mask",
]
