"""Localisation metrics: the pointing game and its energy form, against hand-computed cases,
a Euclidean distance transform and Quantus's ``PointingGame`` / ``AttributionLocalisation``."""
import warnings

import numpy as np
import pytest
import torch

from interp_ext.metrics import energy_pointing_game, pointing_game

quantus = pytest.importorskip("quantus")


def _quantus(metric, a: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """A Quantus localisation metric of one-channel maps and masks (N, 1, H, W); no model
    (its shape inference wants H and W larger than the 3 channels of ``x_batch``)."""
    n, _, h, w = a.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=None, x_batch=np.zeros((n, 3, h, w)), y_batch=np.zeros(n, dtype=int),
                     a_batch=a.numpy(), s_batch=masks.double().numpy(), channel_first=True)
    return np.asarray(out, dtype=np.float64)


def _random_masks(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Random blobs, each image's mask non-empty, (N, 1, H, W) bool."""
    masks = torch.rand(n, 1, h // 3 + 1, w // 3 + 1, generator=gen) > 0.6
    masks = masks.repeat_interleave(3, 2).repeat_interleave(3, 3)[:, :, :h, :w].clone()
    masks[:, 0, 0, 0] = True
    return masks


def test_pointing_game_by_hand():
    a = torch.zeros(2, 1, 4, 5)
    a[0, 0, 1, 2] = 3.0  # on the object
    a[1, 0, 3, 4] = 3.0  # off it
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[:, 0:2, 1:4] = True
    assert pointing_game(a, masks).tolist() == [True, False]
    assert pointing_game(a, masks).dtype == torch.bool
    # the same object as a box (x0, y0, x1, y1), x1 / y1 exclusive; a list of boxes too
    boxes = torch.tensor([[1, 0, 4, 2], [1, 0, 4, 2]])
    assert pointing_game(a, boxes).tolist() == [True, False]
    assert pointing_game(a, [[1, 0, 4, 2], [1, 0, 4, 2]]).tolist() == [True, False]
    assert pointing_game(a, torch.tensor([[1, 0, 2, 1], [4, 3, 5, 4]])).tolist() == [False, True]  # 1-pixel boxes
    # channels are summed: the second channel moves image 0's maximum off the object
    two = torch.cat([a, torch.zeros_like(a)], 1)
    two[0, 1, 3, 0] = 5.0
    assert pointing_game(two, masks).tolist() == [False, False]
    # (N, H, W) maps and 0/1 float masks (N, 1, H, W)
    assert pointing_game(a[:, 0], masks[:, None].float()).tolist() == [True, False]


def test_pointing_game_ties_any_maximal_pixel_counts():
    a = torch.zeros(3, 1, 4, 5)
    a[0, 0, 0, 0] = a[0, 0, 2, 2] = 1.0  # two maxima, only the last (row-major) on the object
    a[1, 0, 0, 0] = a[1, 0, 0, 1] = 1.0  # two maxima, both off it
    masks = torch.zeros(3, 1, 4, 5, dtype=torch.bool)
    masks[:, 0, 2, 2] = True
    # image 2: a constant map, every pixel maximal: a hit (Quantus's rule)
    assert pointing_game(a, masks).tolist() == [True, False, True]
    q = _quantus(quantus.PointingGame(disable_warnings=True), a.double(), masks)
    assert q.tolist() == [1.0, 0.0, 1.0]


def test_pointing_game_tolerance_by_hand():
    a = torch.zeros(1, 1, 12, 12)
    masks = torch.tensor([[2, 2, 5, 5]])  # x 2..4, y 2..4
    a[0, 0, 4, 8] = 1.0  # 4 pixels right of the box's last column
    assert [pointing_game(a, masks, tolerance=t).item() for t in (0, 3, 3.9, 4, 15)] == [False, False, False, True, True]
    a.zero_()
    a[0, 0, 7, 7] = 1.0  # (3, 3) off the box corner (4, 4): 4.243 pixels
    assert [pointing_game(a, masks, tolerance=t).item() for t in (4, 4.24, 4.25)] == [False, False, True]


def test_pointing_game_tolerance_is_the_euclidean_distance_to_the_object():
    from scipy.ndimage import distance_transform_edt

    gen = torch.Generator().manual_seed(1)
    n, h, w = 12, 23, 17
    a = torch.rand(n, 1, h, w, generator=gen, dtype=torch.float64)
    masks = torch.zeros(n, 1, h, w, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, h - 3, (1,), generator=gen).item(), torch.randint(0, w - 3, (1,), generator=gen).item()
        masks[i, 0, y : y + 3, x : x + 2] = True
    for tol in (0, 1, 2.5, 6, 15):
        got = pointing_game(a, masks, tolerance=tol)
        want = []
        for i in range(n):
            dist = distance_transform_edt(~masks[i, 0].numpy())  # to the nearest object pixel
            top = np.unravel_index(int(a[i, 0].argmax()), (h, w))
            want.append(bool(dist[top] <= tol))
        assert got.tolist() == want, tol


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("normalise", [True, False])
def test_pointing_game_matches_quantus(levels, normalise):
    gen = torch.Generator().manual_seed(2)
    n, h, w = 24, 14, 11
    a = torch.randn(n, 1, h, w, generator=gen, dtype=torch.float64)
    if levels is not None:  # a few values: many tied maxima
        a = (a * levels).round()
    masks = _random_masks(n, h, w, gen)
    ours = pointing_game(a, masks)
    q = _quantus(quantus.PointingGame(normalise=normalise, disable_warnings=True), a, masks)
    assert ours.tolist() == q.astype(bool).tolist()
    assert 0 < int(ours.sum()) < n  # both outcomes occur


def test_energy_pointing_game_by_hand():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 2.0], [3.0, -4.0]], [[-1.0, 0.0], [-2.0, 0.0]]])
    masks = torch.tensor([[[1, 1], [0, 0]]] * 3)
    got = energy_pointing_game(a, masks)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got[:2], torch.tensor([3 / 10, 2 / 5], dtype=torch.float64))
    assert torch.isnan(got[2])  # no positive mass: no share
    # a box covering the whole image holds all the energy
    assert energy_pointing_game(a[:2], torch.tensor([[0, 0, 2, 2]] * 2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("normalise", [True, False])
def test_energy_pointing_game_matches_quantus(normalise):
    gen = torch.Generator().manual_seed(3)
    n, h, w = 16, 13, 15
    a = torch.randn(n, 1, h, w, generator=gen, dtype=torch.float64) + 0.3
    masks = _random_masks(n, h, w, gen)
    clipped = quantus.AttributionLocalisation(abs=False, positive_attributions=True, normalise=normalise,
                                              disable_warnings=True)
    np.testing.assert_allclose(energy_pointing_game(a, masks).numpy(), _quantus(clipped, a, masks), rtol=1e-7)
    absolute = quantus.AttributionLocalisation(normalise=normalise, disable_warnings=True)  # Quantus's abs=True
    np.testing.assert_allclose(energy_pointing_game(a.abs(), masks).numpy(), _quantus(absolute, a, masks), rtol=1e-7)
    # a box is the mask it covers
    boxes = torch.tensor([[2, 1, 9, 7]] * n)
    box_masks = torch.zeros(n, 1, h, w, dtype=torch.bool)
    box_masks[:, :, 1:7, 2:9] = True
    torch.testing.assert_close(energy_pointing_game(a, boxes), energy_pointing_game(a, box_masks))
    assert pointing_game(a, boxes).tolist() == pointing_game(a, box_masks).tolist()


@pytest.mark.parametrize("fn", [pointing_game, energy_pointing_game])
def test_bad_inputs_are_named(fn):
    a = torch.rand(2, 1, 6, 5)
    masks = torch.ones(2, 1, 6, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match="attributions must be a torch.Tensor"):
        fn(a.numpy(), masks)
    with pytest.raises(ValueError, match=r"attributions must be non-empty maps \(N, C, H, W\) or \(N, H, W\)"):
        fn(a[:, 0, 0], masks)
    nan = a.clone()
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"attributions holds NaN or inf values \(images \[1\]\)"):
        fn(nan, masks)
    with pytest.raises(ValueError, match=r"masks must be masks \(2, 1, 6, 5\) or \(2, 6, 5\)"):
        fn(a, masks[:, :, :5])
    with pytest.raises(ValueError, match=r"masks must be masks"):
        fn(a, masks[:1])
    with pytest.raises(ValueError, match=r"masks must be masks"):
        fn(a, masks.expand(2, 3, 6, 5))
    with pytest.raises(ValueError, match=r"masks must hold only 0 and 1 \(or be bool\), images \[0\]"):
        fn(a, torch.where(torch.arange(2)[:, None, None, None] == 0, 0.5, 1.0).expand(2, 1, 6, 5))
    empty = masks.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"masks of images \[1\] cover no pixel"):
        fn(a, empty)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor"):
        fn(a, masks.numpy())
    # boxes (x0, y0, x1, y1) in a 5 wide, 6 high image
    with pytest.raises(ValueError, match=r"masks as boxes must have shape \(2, 4\)"):
        fn(a, torch.tensor([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match=r"masks: the boxes of images \[1\] .* leave the 6 x 5 image"):
        fn(a, torch.tensor([[0, 0, 5, 6], [0, 0, 6, 6]]))  # x1 = 6 > W
    with pytest.raises(ValueError, match=r"masks: the boxes of images \[0, 1\]"):
        fn(a, torch.tensor([[-1, 0, 2, 2], [3, 0, 3, 2]]))  # off the left edge; empty (x0 == x1)
    with pytest.raises(ValueError, match="whole pixel coordinates"):
        fn(a, torch.tensor([[0, 0, 2.5, 2], [0, 0, 2, 2]]))
    with pytest.raises(TypeError, match="masks as boxes must hold integer pixel coordinates"):
        fn(a, torch.ones(2, 4, dtype=torch.bool))


def test_bad_tolerance():
    a, masks = torch.rand(1, 1, 4, 4), torch.tensor([[0, 0, 2, 2]])
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance must be a finite number of pixels >= 0"):
            pointing_game(a, masks, tolerance=bad)
    with pytest.raises(TypeError, match="tolerance must be a number"):
        pointing_game(a, masks, tolerance="15")
