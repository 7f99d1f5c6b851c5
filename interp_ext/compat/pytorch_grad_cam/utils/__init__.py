"""pytorch-grad-cam's ``utils``: ``model_targets`` (what a CAM explains) and ``image``
(overlays and pre/post-processing), without OpenCV."""
from . import image, model_targets  # noqa: F401
