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
    d, i = features.nearest_neighbors(db[:0], db, 4)  # no queries: empty answers, not an error
    assert d.shape == i.shape == (0, 4) and i.dtype == torch.long
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


# ---- receptive fields and top patches -------------------------------------------------------


def _linearised(model):
    """The same geometry with every path linear and dense: ReLUs -> identity, max pools ->
    average pools, so a gradient reaches every pixel of the receptive field."""
    import copy

    m = copy.deepcopy(model)
    for name, child in list(m.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(child, attr, nn.Identity())
            elif isinstance(sub, nn.MaxPool2d):
                setattr(child, attr, nn.AvgPool2d(sub.kernel_size, sub.stride, sub.padding))
    return m.eval()


def _probe_box(model, layer, size, y, x):
    """Bounding box of the input pixels with a non-zero gradient of output (y, x)."""
    inp = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = features.capture(model.double(), layer, inp.detach())  # shape only
    act = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: act.setdefault("o", o))
    model(inp)
    handle.remove()
    act["o"][0, :, y, x].sum().backward()
    nz = inp.grad[0].abs().sum(0).nonzero()
    return int(nz[:, 0].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].min()), int(nz[:, 1].max()) + 1


def _vgg_like():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 6, 5, dilation=2, padding=4), nn.ReLU()).eval()


@pytest.mark.parametrize("kind, layer, size", [("vgg", "9", 40), ("vgg", "4", 24), ("resnet", "layer2", 64),
                                               ("resnet", "layer1.1", 48), ("resnet", "maxpool", 32)])
def test_receptive_field_equals_a_gradient_probe(kind, layer, size):
    if kind == "vgg":
        model = _vgg_like()
    else:
        torchvision = pytest.importorskip("torchvision")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
    rf = features.receptive_field(model, layer, size)
    lin = _linearised(model).double()
    with torch.no_grad():
        h, w = features.capture(lin, layer, torch.zeros(1, 3, size, size, dtype=torch.float64))[layer].shape[2:]
    for y, x in {(0, 0), (h // 2, w // 2), (h - 1, w - 1), (0, w - 1)}:
        assert rf.box(y, x) == _probe_box(lin, layer, size, y, x), (y, x)


def test_receptive_field_of_the_bundled_model_and_errors():
    from interp_ext import models

    bundled = models.load()
    rf = features.receptive_field(bundled.model, "_conv_stem", 224)
    assert (rf.rows.jump, rf.rows.size) == (2, 3)
    deep = features.receptive_field(bundled.model, "_blocks.15", 224)
    assert deep.rows.jump == 32 and deep.rows.size > 200
    with pytest.raises(ValueError, match="no fixed receptive field"):
        features.receptive_field(bundled.model, "_fc", 224)


def test_streaming_top_k_equals_top_k_of_all_activations():
    model = _vgg_like()
    torch.manual_seed(1)
    images = [torch.rand(3, 24, 24) for _ in range(13)]
    # the convolution before the ReLU: no ties among the top values (a dead ReLU channel is all zeros)
    res = features.top_activating_patches(model, "5", [0, 3, 5], images, k=4, batch_size=5)
    acts = features.capture(model, "5", torch.stack(images))["5"]  # (13, 6, 12, 12)
    for row, c in enumerate([0, 3, 5]):
        flat = acts[:, c].flatten()
        top = flat.topk(4)
        torch.testing.assert_close(res.values[row], top.values)
        assert res.image_indices[row].tolist() == (top.indices // 144).tolist()
        assert res.positions[row].tolist() == [[int(i % 144) // 12, int(i % 144) % 12] for i in top.indices]
    rf = features.receptive_field(model, "5", 24)
    y0, y1, x0, x1 = res.boxes[0, 0].tolist()
    assert (y0, y1, x0, x1) == rf.box(*res.positions[0, 0].tolist())
    assert res.patches[0][0].shape == (3, y1 - y0, x1 - x0)
    assert torch.equal(res.patches[0][0], images[int(res.image_indices[0, 0])][:, y0:y1, x0:x1])
    grid = res.grid(size=16, padding=1)
    assert grid.size == (4 * 17 + 1, 3 * 17 + 1)


# ---- TCAV -----------------------------------------------------------------------------------


class Planted(nn.Module):
    """A class logit that depends on a known direction v of the "feat" layer's output
    (plus a quadratic term along u, orthogonal to v, so gradients vary per example)."""

    def __init__(self, v, u):
        super().__init__()
        self.feat = nn.Identity()
        self.v, self.u = v, u

    def forward(self, x):
        a = self.feat(x).flatten(1)
        logit = a @ self.v + 0.5 * (a @ self.u) ** 2
        return torch.stack([logit, -logit], 1)


def test_tcav_planted_concept_scores_near_one_and_is_significant():
    pytest.importorskip("scipy")
    gen = torch.Generator().manual_seed(0)
    d = 3 * 4 * 4
    v = torch.randn(d, generator=gen)
    v /= v.norm()
    u = torch.randn(d, generator=gen)
    u -= (u @ v) * v
    u /= u.norm()
    model = Planted(v, u).eval()
    noise = lambda n: torch.randn(n, 3, 4, 4, generator=gen)
    concept = noise(40) + 3 * v.view(1, 3, 4, 4)  # the concept: activations along v
    randoms = [noise(40) for _ in range(6)]
    class_inputs = noise(60)
    passes = []
    model.register_forward_pre_hook(lambda m, args: passes.append(len(args[0])))
    res = features.TCAV(model, "feat", batch_size=16).interpret(class_inputs, 0, concept, randoms)["feat"]
    assert res.score > 0.95 and res.significant and res.cav_accuracy > 0.9
    # activations of the concept and the 6 random sets (3 batches each), then the class
    # inputs' gradients once (4 batches), shared by the concept and the random CAVs
    assert len(passes) == 7 * 3 + 4 and sum(passes) == 7 * 40 + 60
    with pytest.raises(ValueError, match=r"target must be in \[0, 2\)"):
        features.TCAV(model, "feat").interpret(class_inputs, 2, concept, randoms)
    # a random "concept" is not significant
    fake = features.TCAV(model, "feat").interpret(class_inputs, 0, noise(40), randoms)["feat"]
    assert not fake.significant
    assert 0 < np.mean(fake.random_scores) < 1


def test_tcav_directional_derivatives_are_batched_gradients():
    model = _vgg_like()
    x = torch.randn(5, 3, 16, 16)
    tcav = features.TCAV(model, "4", batch_size=2)
    cav = np.random.default_rng(0).standard_normal(4 * 8 * 8)
    got = tcav.scores("4", x, lambda out: out.sum((1, 2, 3)), [cav])[0]
    with torch.no_grad():
        a = model[:5](x)
    a.requires_grad_(True)
    (g,) = torch.autograd.grad(model[5:](a).sum(), a)
    want = float((g.flatten(1).numpy() @ cav > 0).mean())
    assert got == want


# ---- large databases, neighbour pictures, GrabCut ----------------------------------------------


def _clustered(n, d, centres=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=gen) * 4
    return c[torch.randint(0, centres, (n,), generator=gen)] + torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_index_equals_exact_search(metric):
    pytest.importorskip("faiss")
    db, q = _clustered(500, 32), _clustered(20, 32, seed=1)
    d, i = features.build_index(db, "flat", metric).search(q, 5)
    want_d, want_i = features.nearest_neighbors(q, db, 5, metric)
    assert torch.equal(i, want_i)
    torch.testing.assert_close(d, want_d, rtol=1e-4, atol=1e-4)


def test_ivfpq_recall_against_exact_search():
    pytest.importorskip("faiss")
    db, q = _clustered(4000, 32), _clustered(50, 32, seed=1)
    exact = features.nearest_neighbors(q, db, 10)[1]
    index = features.build_index(db, "ivfpq", nlist=32, m=8, nbits=8, nprobe=8)
    d, i = index.search(q, 10)
    assert d.shape == i.shape == (50, 10) and (d[:, 1:] >= d[:, :-1] - 1e-4).all()
    assert features.recall_at_k(i, exact) > 0.5
    assert features.recall_at_k(exact, exact) == 1.0
    with pytest.raises(ValueError, match="divisible by m"):
        features.build_index(db[:, :30], "ivfpq", m=8)


def test_neighbors_grid_layout():
    imgs = torch.rand(6, 3, 10, 10)
    grid = features.neighbors_grid(imgs[:2], imgs, torch.tensor([[0, 3, 4], [1, 5, 2]]), size=20, padding=2)
    assert grid.size == (4 * 22 + 2 * 2 + 2, 2 * 22 + 2)


def test_grabcut_from_a_rough_saliency_map():
    pytest.importorskip("cv2")
    gen = torch.Generator().manual_seed(0)
    h = w = 96
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = ((yy - 40) ** 2 + (xx - 52) ** 2) < 22**2
    image = torch.stack([disc * 0.85 + 0.05, 0.2 + 0.1 * torch.rand(h, w, generator=gen), (~disc) * 0.8 + 0.1]).float()
    rough = ((yy - 44) ** 2 + (xx - 48) ** 2 < 26**2).float()  # shifted, too big: a saliency map's imprecision
    from interp_ext import ops

    saliency = ops.gaussian_blur(rough[None, None], 6.0)[0, 0]
    mask, overlay = features.saliency_segmentation(image, saliency)
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.9 and overlay.size == (w, h)
    with pytest.raises(ValueError, match="constant"):
        features.saliency_segmentation(image, torch.zeros(h, w))


_DB, _Q, _IMGS = torch.randn(50, 8), torch.randn(4, 8), torch.rand(6, 3, 16, 16)
_NET = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))


@pytest.mark.parametrize("call, match", [
    (lambda: features.nearest_neighbors(_Q, _DB * float("nan"), 3), "database_features must be finite"),
    (lambda: features.nearest_neighbors(_Q.clone().index_fill_(0, torch.tensor([1]), float("inf")), _DB, 3),
     "query_features must be finite"),
    (lambda: features.embed(_DB, "pca", 0), r"n_components must be >= 1"),
    (lambda: features.embed(_DB, "pca", 9), r"min\(rows, columns\) = 8"),
    (lambda: features.receptive_field(_NET, "2", 0), "input_size and channels must be positive"),
    (lambda: features.neighbors_grid(_IMGS[:2], _IMGS, torch.tensor([[0, 99], [1, 2]])), "must index the 6 database images"),
    (lambda: features.neighbors_grid(_IMGS[:2], _IMGS, torch.tensor([[0, 1]])), r"a row per query image \(2\)"),
    (lambda: features.recall_at_k(torch.zeros(3, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long)),
     "the exact search's 4 rows"),
    (lambda: features.top_activating_patches(_NET, "0", [-1], list(_IMGS), k=2), r"channels must be ints >= 0"),
    (lambda: features.top_activating_patches(_NET, "0", [0], [], k=2), "dataset is empty"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
