"""Nearest neighbours: the chunked exact search vs scikit-learn's brute force and FAISS
(flat and IVF-PQ, with recall@k against the exact answer) on a large synthetic database;
and feature-space vs raw-pixel neighbours on augmented crops of the sample photos
(precision@k of "same source photo", the lecture's contrast).

    python benchmarks/bench_neighbors.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from interp_ext import features, models  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def search_rows(n: int, d: int, q: int, k: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(200, d, generator=gen) * 3
    db = centres[torch.randint(0, 200, (n,), generator=gen)] + torch.randn(n, d, generator=gen)
    queries = centres[torch.randint(0, 200, (q,), generator=gen)] + torch.randn(q, d, generator=gen)
    (exact_d, exact_i), t_exact = timed(lambda: features.nearest_neighbors(queries, db, k))
    rows = [{"method": "interp_ext exact (chunked)", "database": n, "dim": d, "queries": q, "k": k, "seconds": t_exact,
             "recall_at_k": 1.0}]
    try:
        from sklearn.neighbors import NearestNeighbors

        nn_ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(db.numpy())
        (_, sk_i), t = timed(lambda: nn_.kneighbors(queries.numpy()))
        rows.append({"method": "scikit-learn brute", "seconds": t, "recall_at_k": features.recall_at_k(torch.from_numpy(sk_i), exact_i)})
    except ImportError:
        pass
    try:
        import faiss  # noqa: F401

        for kind, kw in (("flat", {}), ("ivfpq", {"nlist": 256, "m": 16, "nbits": 8, "nprobe": 16})):
            index, t_build = timed(lambda: features.build_index(db, kind, **kw))
            (_, i), t = timed(lambda: index.search(queries, k))
            rows.append({"method": f"FAISS {kind}", "build_seconds": t_build, "seconds": t,
                         "recall_at_k": features.recall_at_k(i, exact_i)})
    except ImportError:
        pass
    for r in rows:
        r.update({"database": n, "dim": d, "queries": q, "k": k})
        print(f"{r['method']}: {r['seconds'] * 1e3:.1f} ms, recall@{k} {r['recall_at_k']:.3f}", flush=True)
    return rows


def pixel_vs_feature_rows(crops_per_photo: int, k: int) -> list[dict]:
    """Augmented crops of the two sample photos: do a crop's k nearest neighbours come from
    the same photo, in raw pixels vs in the bundled model's penultimate features?"""
    from sklearn.datasets import load_sample_image

    loaded = models.load()
    gen = torch.Generator().manual_seed(0)
    images, labels = [], []
    for label, name in enumerate(("china.jpg", "flower.jpg")):
        photo = models.to_unit_tensor(loaded.crop(load_sample_image(name)))
        for _ in range(crops_per_photo):
            s = int(torch.randint(96, 224, (1,), generator=gen))
            y, x = (int(v) for v in torch.randint(0, 224 - s + 1, (2,), generator=gen))
            c = F.interpolate(photo[None, :, y : y + s, x : x + s], size=(112, 112), mode="bilinear", align_corners=False)[0]
            if torch.rand(1, generator=gen) < 0.5:
                c = c.flip(2)
            c = (c * (0.6 + 0.8 * torch.rand(1, generator=gen)) + 0.2 * (torch.rand(3, 1, 1, generator=gen) - 0.5)).clamp(0, 1)
            images.append(c)
            labels.append(label)
    x = torch.stack(images)
    y = torch.tensor(labels)
    feats = features.extract_features(loaded.model, "_conv_head", [loaded.normalize(i) for i in x], batch_size=32)
    feats = feats.mean((2, 3))
    rows = []
    for space, data in (("raw pixels", x), ("features (_conv_head, pooled)", feats)):
        _, idx = features.nearest_neighbors(data, data, k + 1)
        same = (y[idx[:, 1:]] == y[:, None]).float().mean().item()  # the first neighbour is the item itself
        rows.append({"space": space, "images": len(x), "k": k, "precision_at_k": same})
        print(f"{space}: precision@{k} of the same photo {same:.3f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    search = search_rows(20_000 if args.quick else 200_000, 128, 100 if args.quick else 1000, 10)
    contrast = pixel_vs_feature_rows(20 if args.quick else 100, 5)
    payload = {"machine": common.machine("cpu"), "search": search, "pixels_vs_features": contrast}
    md = "\n\n".join([
        f"### Nearest neighbours, {payload['machine']['cpu']}, 1 thread",
        common.md_table(search, ["method", "database", "dim", "queries", "k", "build_seconds", "seconds", "recall_at_k"]),
        "### Raw pixels vs features (augmented crops of the two sample photos)",
        common.md_table(contrast, ["space", "images", "k", "precision_at_k"]),
    ])
    path = common.write("neighbors", payload, md + "\n", args.out)
    print(f"wrote {path} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
