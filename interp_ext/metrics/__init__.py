"""Scores of attribution maps: faithfulness curves (pixel flipping, region perturbation,
selectivity, RISE's deletion and insertion), localisation (the pointing game and its
energy-based form) and the model-randomisation sanity check."""
from .faithfulness import deletion, insertion, pixel_flipping, region_perturbation, selectivity

__all__ = ["deletion", "insertion", "pixel_flipping", "region_perturbation", "selectivity"]
