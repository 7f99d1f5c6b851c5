"""The pictures: the colormap table against exact interpolation of its anchors."""
import numpy as np

from interp_ext import viz


def test_colormap_table_is_within_one_level_of_the_exact_colours():
    v = np.random.default_rng(0).random((64, 64))
    got, exact = viz.colormap(v), viz._interpolate_anchors(v)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - exact.astype(int)).max() <= 1
    ends = viz.colormap(np.array([0.0, 1.0, -3.0, 7.0, np.nan]))
    assert (ends[[0, 2, 4]] == viz._ANCHORS[0]).all() and (ends[[1, 3]] == viz._ANCHORS[-1]).all()
