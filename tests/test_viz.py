"""The pictures: the colormap table against exact interpolation of its anchors; the diverging map of signed maps."""
import numpy as np
import pytest
import torch

from interp_ext import viz


def test_colormap_table_is_within_one_level_of_the_exact_colours():
    v = np.random.default_rng(0).random((64, 64))
    got, exact = viz.colormap(v), viz._interpolate_anchors(v)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - exact.astype(int)).max() <= 1
    ends = viz.colormap(np.array([0.0, 1.0, -3.0, 7.0, np.nan]))
    assert (ends[[0, 2, 4]] == viz._ANCHORS[0]).all() and (ends[[1, 3]] == viz._ANCHORS[-1]).all()


def test_signed_maps_keep_negative_zero_and_positive_apart():
    from PIL import Image

    from interp_ext import viz

    heat = torch.zeros(8, 12)
    heat[:, :4] = -2.0
    heat[:, 8:] = 3.0
    grey = Image.new("RGB", (12, 8), (128, 128, 128))
    picture = np.asarray(viz.signed_overlay(grey, heat)).astype(int)
    neg, zero, pos = picture[0, 0], picture[0, 6], picture[0, 10]
    assert neg[2] > neg[0] and pos[0] > pos[2]  # blue against red
    assert abs(zero[0] - zero[2]) <= 2 and not np.array_equal(zero, neg) and not np.array_equal(zero, pos)
    # zero stays the centre colour whatever the scale; the scale is the map's magnitude
    assert np.array_equal(viz.diverging(np.zeros(3)), np.tile(viz.diverging(np.array([0.0])), (3, 1)))
    assert np.array_equal(viz.normalize_signed(heat * 10), viz.normalize_signed(heat))
    assert viz.normalize_signed(torch.zeros(4, 4)).max() == 0
    with pytest.raises(ValueError, match="heat must have the image's shape"):
        viz.signed_overlay(grey, torch.zeros(3, 3))
