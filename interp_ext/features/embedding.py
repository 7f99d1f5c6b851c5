"""2-D embeddings of features (scikit-learn PCA / t-SNE) and the thumbnail canvas
(images placed at their embedded positions)."""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .._extras import require


def embed(features: Union[torch.Tensor, np.ndarray], method: Literal["pca", "tsne"] = "pca", n_components: int = 2,
          *, seed: Optional[int] = 0, pca_before_tsne: Optional[int] = 50, **kwargs) -> np.ndarray:
    """Rows of ``features`` (flattened) -> ``(N, n_components)`` positions. ``"tsne"`` first
    reduces to ``pca_before_tsne`` dimensions with PCA (the usual practice for speed and
    noise); extra keyword arguments go to scikit-learn's estimator."""
    x = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float32)
    x = x.reshape(len(x), -1)
    if len(x) < 2:
        raise ValueError("embed needs at least 2 rows")
    if not isinstance(n_components, int) or n_components < 1 or (method == "pca" and n_components > min(x.shape)):
        raise ValueError(f"n_components must be >= 1 and, for PCA, <= min(rows, columns) = {min(x.shape)}, got {n_components!r}")
    PCA = require("sklearn.decomposition", "embed").PCA

    if method == "pca":
        return PCA(n_components=n_components, random_state=seed, **kwargs).fit_transform(x)
    if method == "tsne":
        TSNE = require("sklearn.manifold", "embed(method='tsne')").TSNE

        if pca_before_tsne and x.shape[1] > pca_before_tsne and len(x) > pca_before_tsne:
            x = PCA(n_components=pca_before_tsne, random_state=seed).fit_transform(x)
        perplexity = kwargs.pop("perplexity", min(30.0, (len(x) - 1) / 3))
        return TSNE(n_components=n_components, random_state=seed, perplexity=perplexity, init="pca", **kwargs).fit_transform(x)
    raise ValueError(f'method must be "pca" or "tsne", got {method!r}')


def embedding_plot(positions: np.ndarray, images: Sequence[Image.Image], *, canvas: int = 2000, thumb: int = 64,
                   background: str = "white") -> Image.Image:
    """Thumbnails pasted at their 2-D positions (scaled to the canvas, later images on
    top), Karpathy's t-SNE picture."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) != len(images):
        raise ValueError(f"positions must be (N, 2) for N = {len(images)} images, got {pos.shape}")
    lo, hi = pos.min(0), pos.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xy = ((pos - lo) / span * (canvas - thumb)).round().astype(int)
    out = Image.new("RGB", (canvas, canvas), background)
    for (x, y), img in zip(xy, images):
        t = img.convert("RGB").copy()
        t.thumbnail((thumb, thumb))
        out.paste(t, (int(x), int(canvas - thumb - y)))  # y up
    return out
