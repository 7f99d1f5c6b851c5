"""What has the model learned: filter and activation pictures, layer activations of whole
datasets, receptive fields and maximally activating patches, exact nearest neighbours in
feature space, 2-D embeddings, TCAV."""
from .activations import activation_grid, capture, extract_features, filter_grid
from .embedding import embed, embedding_plot
from .neighbors import nearest_neighbors
from .receptive_field import ReceptiveField, TopPatches, receptive_field, top_activating_patches
from .tcav import TCAV, LayerTCAV, train_cav

__all__ = [
    "LayerTCAV",
    "ReceptiveField",
    "TCAV",
    "TopPatches",
    "activation_grid",
    "capture",
    "embed",
    "embedding_plot",
    "extract_features",
    "filter_grid",
    "nearest_neighbors",
    "receptive_field",
    "top_activating_patches",
    "train_cav",
]
