"""Large databases: approximate neighbour search over FAISS (optional dependency
``faiss-cpu``), with the same ``(distances, indices)`` answer as `nearest_neighbors`."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .._extras import require
from .neighbors import Metric


class FeatureIndex:
    """A FAISS index of database features; ``search(query, k)`` -> ``(distances, indices)``,
    each ``(Q, k)`` float32 / int64 tensors, nearest first; distances Euclidean ("l2") or
    1 - cosine similarity ("cosine"), as `nearest_neighbors` gives them."""

    def __init__(self, index, metric: Metric, size: int):
        self.index, self.metric, self.size = index, metric, size

    def _prepare(self, features: torch.Tensor) -> np.ndarray:
        x = features.detach().float().flatten(1).cpu().numpy()
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def search(self, query_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest database rows of each query.

        ``query_features`` (Q, ...): flattened per row to the database's feature size
        (any device and floating dtype; searched as float32 on the CPU). ``k``: in
        ``[1, database size]``, else a ``ValueError``. Returns ``(distances, indices)``,
        both (Q, k), float32 and int64 CPU tensors, nearest first; distances are
        Euclidean ("l2") or 1 - cosine similarity ("cosine"). An ``"ivfpq"`` index searches
        only ``nprobe`` cells, so its answer is approximate (`recall_at_k` measures it),
        and where those cells hold fewer than ``k`` rows FAISS pads with index -1."""
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}] (the database size), got {k}")
        d, i = self.index.search(self._prepare(query_features), k)
        d = np.sqrt(np.maximum(d, 0)) if self.metric == "l2" else 1 - d
        return torch.from_numpy(d.astype(np.float32)), torch.from_numpy(i.astype(np.int64))


def build_index(database_features: torch.Tensor, kind: Literal["flat", "ivfpq"] = "flat", metric: Metric = "l2", *,
                nlist: int = 100, m: int = 8, nbits: int = 8, nprobe: int = 8, seed: int = 0) -> FeatureIndex:
    """Index ``(N, ...)`` features (flattened per row). ``"flat"``: exact search; ``"ivfpq"``:
    an inverted file of ``nlist`` k-means cells with product-quantised codes (``m``
    sub-vectors of ``nbits`` bits; the feature size must be divisible by ``m``), searching
    ``nprobe`` cells: memory and time for databases far beyond the exact search."""
    faiss = require("faiss", "build_index")
    if metric not in ("l2", "cosine"):
        raise ValueError(f'metric must be "l2" or "cosine", got {metric!r}')
    n = database_features.shape[0]
    dim = int(np.prod(database_features.shape[1:]))
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlat(dim, faiss_metric)
    elif kind == "ivfpq":
        if dim % m:
            raise ValueError(f"ivfpq: the feature size {dim} must be divisible by m = {m}")
        if n < nlist:
            raise ValueError(f"ivfpq: needs at least nlist = {nlist} database rows to train, got {n}")
        quantizer = faiss.IndexFlat(dim, faiss_metric)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss_metric)
        index.cp.seed = seed
        index.nprobe = nprobe
    else:
        raise ValueError(f'kind must be "flat" or "ivfpq", got {kind!r}')
    wrapped = FeatureIndex(index, metric, n)
    data = wrapped._prepare(database_features)
    if not index.is_trained:
        index.train(data)
    index.add(data)
    return wrapped


def recall_at_k(approx_indices: torch.Tensor, exact_indices: torch.Tensor) -> float:
    """Fraction of the exact k nearest neighbours that the approximate search also returned."""
    if approx_indices.dim() != 2 or approx_indices.shape[0] != exact_indices.shape[0]:
        raise ValueError(f"approx_indices must be (Q, k') with the exact search's {exact_indices.shape[0]} rows, "
                         f"got {tuple(approx_indices.shape)}")
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_indices, exact_indices))
    return hits / exact_indices.numel()
