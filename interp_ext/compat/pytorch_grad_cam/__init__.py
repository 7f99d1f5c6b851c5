"""pytorch-grad-cam's API on interp_ext: change ``from pytorch_grad_cam import GradCAM`` to
``from interp_ext.compat.pytorch_grad_cam import GradCAM`` (and
``pytorch_grad_cam.utils.model_targets`` / ``.utils.image`` likewise).

Same constructor (``model=``, ``target_layers=``, ``reshape_transform=``), same call
(``cam(input_tensor=, targets=, aug_smooth=, eigen_smooth=)`` -> float32 NumPy
``(N, H, W)`` in [0, 1]), same numbers within float rounding (see ``_cams`` for what is
computed where, the tolerances and the few differences on purpose). Never imports
pytorch-grad-cam or OpenCV.
"""
from . import utils  # noqa: F401
from ._cams import (AblationCAM, BaseCAM, EigenCAM, EigenGradCAM, FullGrad, GradCAM, GradCAMElementWise,
                    GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM)

__all__ = ["AblationCAM", "BaseCAM", "EigenCAM", "EigenGradCAM", "FullGrad", "GradCAM", "GradCAMElementWise",
           "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM"]
