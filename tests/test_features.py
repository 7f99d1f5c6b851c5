"""interp_ext.features: chunked k-NN vs scikit-learn, capture / extract_features, filter and
activation grids, embeddings and the thumbnail canvas."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from interp_ext import features


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("query_chunk, database_chunk", [(7, 10), (1000, 1000), (1, 3)])
def test_chunked_knn_equals_sklearn(metric, query_chunk, database_chunk):
    sklearn = pytest.importorskip("sklearn.neighbors")
    gen = torch.Generator().manual_seed(0)
    db = torch.randn(103, 4, 3, 3, generator=gen, dtype=torch.float64)  # flattened to 36
    q = torch.randn(23, 4, 3, 3, generator=gen, dtype=torch.float64)
    d, i = features.nearest_neighbors(q, db, 5, metric, query_chunk=query_chunk, database_chunk=database_chunk)
    nn_ = sklearn.NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean" if metric == "l2" else "cosine")
    want_d, want_i = nn_.fit(db.flatten(1).numpy()).kneighbors(q.flatten(1).numpy())
    assert d.shape == i.shape == (23, 5)
    assert np.array_equal(i.numpy(), want_i)
    np.testing.assert_allclose(d.numpy(), want_d, rtol=1e-9, atol=1e-9)
    assert (d[:, 1:] >= d[:, :-1]).all()  # nearest first


def test_knn_finds_the_item_itself_and_checks_arguments():
    db = torch.randn(50, 8)
    d, i = features.nearest_neighbors(db[[3, 17]], db, 1, database_chunk=7)
    assert i[:, 0].tolist() == [3, 17] and torch.allclose(d, torch.zeros_like(d), atol=1e-3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 50\]"):
        features.nearest_neighbors(db[:2], db, 51)
    with pytest.raises(ValueError, match="same size per row"):
        features.nearest_neighbors(torch.randn(2, 7), db, 1)
    with pytest.raises(ValueError, match='metric must be "l2" or "cosine"'):
        features.nearest_neighbors(db[:2], db, 1, "manhattan")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_capture_returns_the_layers_and_removes_its_hooks():
    model, x = _net(), torch.randn(2, 3, 16, 16)
    got = features.capture(model, ["1", model[2]], x)
    assert set(got) == {"1", "2"}
    torch.testing.assert_close(got["1"], model[1](model[0](x)))
    assert got["2"].shape == (2, 4, 7, 7)
    assert all(not m._forward_hooks for m in model.modules())


def test_extract_features_in_batches_and_into_a_memmap(tmp_path):
    model = _net()
    data = [(torch.randn(3, 16, 16), i) for i in range(11)]  # (input, label) items
    want = features.capture(model, "3", torch.stack([d[0] for d in data]))["3"]
    got = features.extract_features(model, "3", data, batch_size=4)
    torch.testing.assert_close(got, want)
    path = tmp_path / "feats.npy"
    mm = features.extract_features(model, "3", [d[0] for d in data], batch_size=3, out=path)
    assert isinstance(mm, np.memmap) and mm.shape == (11, 4, 7, 7)
    np.testing.assert_allclose(np.load(path), want.numpy(), rtol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="dataset is empty"):
        features.extract_features(model, "3", [])


def test_filter_grid_first_layer_and_deeper_layer():
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18(weights=None)
    rgb = features.filter_grid(resnet)  # conv1: 64 x 3 x 7 x 7 -> 8 x 8 RGB tiles
    assert rgb.mode == "RGB" and rgb.size == (8 * (7 * 4 + 1) + 1,) * 2
    tile = np.asarray(rgb)[1 : 1 + 28, 1 : 1 + 28]
    assert tile.min() == 0 and tile.max() == 255  # normalised per filter
    alex_like = nn.Conv2d(3, 96, 11, stride=4)
    assert features.filter_grid(alex_like, max_filters=96).size == (10 * (11 * 4 + 1) + 1, 10 * (11 * 4 + 1) + 1)
    deep = features.filter_grid(resnet, "layer1.0.conv1", max_filters=4, max_channels=5, scale=2)
    assert deep.mode == "L" and deep.size == (5 * (3 * 2 + 1) + 1, 4 * (3 * 2 + 1) + 1)
    with pytest.raises(ValueError, match="needs a Conv2d"):
        features.filter_grid(resnet, "fc")


def test_activation_grid():
    img = features.activation_grid(torch.randn(10, 5, 6), columns=5, scale=1, padding=0)
    assert img.mode == "L" and img.size == (5 * 6, 2 * 5)
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        features.activation_grid(torch.randn(1, 10, 5, 6))


def test_embeddings_and_canvas():
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = torch.randn(40, 3, 4, 4)
    pos = features.embed(x, "pca")
    want = decomposition.PCA(n_components=2, random_state=0).fit_transform(x.flatten(1).numpy())
    np.testing.assert_allclose(pos, want, rtol=1e-4, atol=1e-4)
    t1, t2 = features.embed(x, "tsne", seed=1), features.embed(x, "tsne", seed=1)
    assert t1.shape == (40, 2) and np.allclose(t1, t2)
    # two far-apart clusters land in opposite corners of the canvas
    pts = np.array([[0.0, 0.0], [10.0, 10.0]])
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    canvas = np.asarray(features.embedding_plot(pts, [red, blue], canvas=200, thumb=32))
    assert tuple(canvas[190, 5]) == (255, 0, 0) and tuple(canvas[5, 190]) == (0, 0, 255)
    with pytest.raises(ValueError, match=r"positions must be \(N, 2\)"):
        features.embedding_plot(pts, [red])
