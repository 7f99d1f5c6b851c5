"""Attribution methods: one file per family."""
from .cam import CAM, CAMResult, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM, LayerCAM, XGradCAM
from .eigen_cam import EigenCAM, EigenGradCAM
from .fullgrad import FullGrad
from .gradient import Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients, Saliency
from .occlusion import Occlusion
from .score_cam import AblationCAM, ScoreCAM
from .shapley import ShapleySampling, grid_feature_mask
from .smoothgrad import SmoothGrad

__all__ = [
    "AblationCAM",
    "CAM",
    "CAMResult",
    "Deconvolution",
    "EigenCAM",
    "EigenGradCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "Saliency",
    "ScoreCAM",
    "ShapleySampling",
    "SmoothGrad",
    "XGradCAM",
    "grid_feature_mask",
]
