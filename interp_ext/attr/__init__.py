"""Attribution methods: one file per family."""
from .gradient import Deconvolution, GuidedBackprop, Saliency
from .smoothgrad import SmoothGrad

__all__ = ["Deconvolution", "GuidedBackprop", "Saliency", "SmoothGrad"]
