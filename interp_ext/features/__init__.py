"""What has the model learned: filter and activation pictures, layer activations of whole
datasets, receptive fields and maximally activating patches, exact nearest neighbours in
feature space (exact, or FAISS for large databases), saliency-seeded GrabCut segmentation,
2-D embeddings, TCAV. Functions that run the model run it in eval mode (BatchNorm's running
statistics, no Dropout); a model in train mode gets every module's ``training`` flag back
afterwards, also on an error."""
from .activations import activation_grid, capture, extract_features, filter_grid
from .embedding import embed, embedding_plot
from .index import FeatureIndex, build_index, recall_at_k
from .neighbors import nearest_neighbors, neighbors_grid
from .segmentation import saliency_segmentation
from .receptive_field import ReceptiveField, TopPatches, receptive_field, top_activating_patches
from .tcav import TCAV, LayerTCAV, train_cav

__all__ = [
    "FeatureIndex",
    "LayerTCAV",
    "ReceptiveField",
    "TCAV",
    "TopPatches",
    "activation_grid",
    "build_index",
    "capture",
    "embed",
    "embedding_plot",
    "extract_features",
    "filter_grid",
    "nearest_neighbors",
    "neighbors_grid",
    "recall_at_k",
    "receptive_field",
    "saliency_segmentation",
    "top_activating_patches",
    "train_cav",
]
