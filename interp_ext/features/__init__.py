"""What has the model learned: filter and activation pictures, layer activations of whole
datasets, exact nearest neighbours in feature space, 2-D embeddings."""
from .activations import activation_grid, capture, extract_features, filter_grid
from .embedding import embed, embedding_plot
from .neighbors import nearest_neighbors

__all__ = ["activation_grid", "capture", "embed", "embedding_plot", "extract_features", "filter_grid", "nearest_neighbors"]
