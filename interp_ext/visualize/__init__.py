"""Feature visualisation: class visualisation and intermediate features by regularised
gradient ascent, DeepDream, feature inversion, fooling images, FGSM / PGD and universal
perturbations. Everything runs batched on the model's device. The model runs in eval mode
(BatchNorm's running statistics, no Dropout); a model in train mode gets every module's
``training`` flag back afterwards, also on an error."""
from ._common import AscentResult
from .adversarial import FoolingResult, UniversalResult, fgsm, fooling_image, fooling_rate, pgd, universal_perturbation
from .ascent import class_visualization, deep_dream
from .inversion import InversionResult, invert_features

__all__ = [
    "AscentResult",
    "FoolingResult",
    "InversionResult",
    "UniversalResult",
    "class_visualization",
    "deep_dream",
    "fgsm",
    "fooling_image",
    "fooling_rate",
    "invert_features",
    "pgd",
    "universal_perturbation",
]
