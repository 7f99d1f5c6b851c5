"""Scores of attribution maps: faithfulness curves (pixel flipping, region perturbation,
selectivity, RISE's deletion and insertion), localisation (the pointing game and its
energy-based form) and the model-randomisation sanity check (Adebayo et al.) with its
similarities, SSIM and Spearman's rank correlation."""
from .faithfulness import deletion, insertion, pixel_flipping, region_perturbation, selectivity
from .localisation import energy_pointing_game, pointing_game
from .sanity import RandomisationResult, model_randomisation, spearman, ssim

__all__ = [
    "RandomisationResult",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "model_randomisation",
    "pixel_flipping",
    "pointing_game",
    "region_perturbation",
    "selectivity",
    "spearman",
    "ssim",
]
