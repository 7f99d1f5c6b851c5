"""Exact k-nearest neighbours on the device, in chunks: never the full Q x M distance
matrix in memory at once."""
from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["l2", "cosine"]


def _as_matrix(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
        raise ValueError(f"{name} must be a floating-point (N, ...) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if not bool(torch.isfinite(t).all()):  # a NaN would rank arbitrarily; scikit-learn refuses it too
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return t.flatten(1)


def nearest_neighbors(
    query_features: torch.Tensor,
    database_features: torch.Tensor,
    k: int,
    metric: Metric = "l2",
    *,
    query_chunk: int = 1024,
    database_chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database rows of every query row: ``(distances, indices)``, each
    ``(Q, k)``, nearest first. ``metric``: ``"l2"`` (Euclidean distance) or ``"cosine"``
    (1 - cosine similarity), as scikit-learn's ``NearestNeighbors``. Features of any shape
    are flattened per row. Work runs on the query's device in blocks of
    ``query_chunk x database_chunk`` distances, keeping a running top-k per query."""
    q = _as_matrix("query_features", query_features)
    db = _as_matrix("database_features", database_features).to(device=q.device, dtype=q.dtype)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query and database features must have the same size per row, got {q.shape[1]} and {db.shape[1]}")
    if not isinstance(k, int) or not 1 <= k <= db.shape[0]:
        raise ValueError(f"k must be in [1, {db.shape[0]}] (the database size), got {k!r}")
    if metric not in ("l2", "cosine"):
        raise ValueError(f'metric must be "l2" or "cosine", got {metric!r}')
    if query_chunk < 1 or database_chunk < 1:
        raise ValueError("query_chunk and database_chunk must be positive")
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        db = db / db.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # Rank by ||d||^2 - 2 q.d (l2) or -q.d (cosine): one fused matmul per block, into one
    # reused buffer (a fresh 30 MB block per step costs its page faults on a CPU); the
    # block's own top k, merged with the running top k (2k candidates per query); the
    # per-query constant and the square root are applied to the k survivors only.
    db_sq = db.square().sum(1)
    buffer = torch.empty(min(query_chunk, q.shape[0]) * min(database_chunk, db.shape[0]), dtype=q.dtype, device=q.device)
    all_d, all_i = [], []
    for qs in range(0, q.shape[0], query_chunk):
        qc = q[qs : qs + query_chunk]
        best_d = torch.empty((qc.shape[0], 0), dtype=q.dtype, device=q.device)
        best_i = torch.empty((qc.shape[0], 0), dtype=torch.long, device=q.device)
        for ds in range(0, db.shape[0], database_chunk):
            block = db[ds : ds + database_chunk]
            d = buffer[: qc.shape[0] * block.shape[0]].view(qc.shape[0], block.shape[0])
            if metric == "l2":
                torch.addmm(db_sq[ds : ds + database_chunk].unsqueeze(0), qc, block.t(), alpha=-2, out=d)
            else:
                torch.mm(qc, block.t(), out=d).neg_()
            top = d.topk(min(k, block.shape[0]), dim=1, largest=False, sorted=False)
            cand_d, cand_i = torch.cat([best_d, top.values], 1), torch.cat([best_i, top.indices + ds], 1)
            keep = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False, sorted=True)
            best_d, best_i = keep.values, cand_i.gather(1, keep.indices)
        if metric == "l2":
            all_d.append((best_d + qc.square().sum(1, keepdim=True)).clamp_min(0).sqrt())
        else:
            all_d.append(1 + best_d)
        all_i.append(best_i)
    if not all_d:  # no queries
        return torch.empty((0, k), dtype=q.dtype, device=q.device), torch.empty((0, k), dtype=torch.long, device=q.device)
    return torch.cat(all_d), torch.cat(all_i)


def neighbors_grid(query_images: torch.Tensor, database_images: torch.Tensor, indices: torch.Tensor, *,
                   size: int = 96, padding: int = 4):
    """One row per query: the query image, a gap, then its neighbours nearest first.
    Images are (N, 3, H, W) in [0, 1]."""
    from PIL import Image

    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.shape[0] != len(query_images):
        raise ValueError(f"indices must be (Q, k) with a row per query image ({len(query_images)}), "
                         f"got {getattr(indices, 'shape', type(indices).__name__)}")
    if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < len(database_images):
        raise ValueError(f"indices must index the {len(database_images)} database images, "
                         f"got values in [{int(indices.min())}, {int(indices.max())}]")
    k = indices.shape[1]
    width = (k + 1) * (size + padding) + 2 * padding + padding
    canvas = Image.new("RGB", (width, len(query_images) * (size + padding) + padding), "white")

    def tile(img):
        arr = (img.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr).resize((size, size), Image.BILINEAR)

    for r, (q, row) in enumerate(zip(query_images, indices.tolist())):
        y = padding + r * (size + padding)
        canvas.paste(tile(q), (padding, y))
        for c, j in enumerate(row):
            canvas.paste(tile(database_images[j]), (3 * padding + (c + 1) * (size + padding), y))
    return canvas
