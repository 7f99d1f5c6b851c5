"""Model loading: the bundled model, torchvision architectures from local weights, images."""
import numpy as np
import pytest
import torch
from PIL import Image

from interp_ext import models


def test_bundled_model_is_ready_to_use():
    loaded = models.load()
    assert not loaded.model.training
    assert len(loaded.categories) == 1000 and loaded.categories[985] == "daisy"
    x = loaded.preprocess(Image.new("RGB", (300, 200), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # (x - 0.5) / 0.5
    torch.testing.assert_close(loaded.denormalize(x)[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_torchvision_architecture_from_local_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    loaded = models.load("resnet18", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x))
    assert loaded.mean == (0.485, 0.456, 0.406)


def test_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean resnet18"):
        models.load("resnet81", weights=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="needs a local state-dict file"):
        models.load("resnet18")
    with pytest.raises(FileNotFoundError, match="weights: no such file"):
        models.load("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="bundled weights"):
        models.load("efficientnet_lite0", weights=tmp_path / "x.pth")


def test_images_of_every_kind_become_rgb(tmp_path):
    gray = Image.new("L", (40, 30), 128)
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 0))
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(path)
    for im in (gray, rgba, path, np.zeros((30, 40), dtype=np.uint8), np.zeros((30, 40, 4), dtype=np.uint8)):
        assert models.load_image(im).mode == "RGB"
    with pytest.raises(TypeError, match="uint8"):
        models.load_image(np.zeros((4, 4), dtype=np.float32))
