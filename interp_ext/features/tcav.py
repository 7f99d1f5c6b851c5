"""TCAV (Kim et al.): concept activation vectors as linear classifiers on a layer's
activations, TCAV scores from batched directional derivatives, and significance against
random concepts by a two-sided t-test."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._extras import require
from ..attr._common import in_eval_mode
from ..layers import LayerCapture, resolve_layers
from .activations import capture

Target = Union[int, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class LayerTCAV:
    """The result for one layer."""

    layer: str
    score: float  # mean TCAV score of the concept over its CAVs (one per random set)
    scores: list[float]  # per random set
    random_scores: list[float]  # random-vs-random CAVs: the null distribution
    p_value: float  # two-sided t-test, concept scores vs random scores
    cav_accuracy: float  # mean held-in accuracy of the concept CAVs

    @property
    def significant(self) -> bool:
        """Whether the concept's scores differ from the random ones at the 5% level
        (``p_value < 0.05``)."""
        return self.p_value < 0.05


def _acts(model: nn.Module, layer: str, inputs: torch.Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([capture(model, layer, inputs[i : i + batch_size])[layer].flatten(1).float().cpu().numpy()
                           for i in range(0, len(inputs), batch_size)])


def train_cav(positive: np.ndarray, negative: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """A unit vector pointing from `negative` to `positive` activations: the normal of a
    linear classifier (scikit-learn logistic regression) separating them, and its accuracy."""
    LogisticRegression = require("sklearn.linear_model", "train_cav").LogisticRegression

    x = np.concatenate([positive, negative])
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)
    w = clf.coef_[0]
    return w / (np.linalg.norm(w) + 1e-12), float(clf.score(x, y))


def _positive_fractions(grads: np.ndarray, cavs: Sequence[np.ndarray]) -> list[float]:
    """Per CAV, the fraction of rows of `grads` (layer gradients) with a positive
    directional derivative along it: the TCAV score."""
    return [float((grads @ cav > 0).mean()) for cav in cavs]


class TCAV:
    """``TCAV(model, layers).interpret(class_inputs, target, concept_inputs, random_inputs)``.

    ``target``: a class index (its logit) or a function of the model output giving one
    score per sample. The directional derivatives of the target along each CAV come from
    one backward pass per batch (gradients of the layer output for the whole batch). The
    model runs in eval mode, every module's flag restored afterwards."""

    def __init__(self, model: nn.Module, layers: Union[str, Sequence[str]], batch_size: int = 32):
        self.model = model
        self.layers = [name for name, _ in resolve_layers(model, layers)]
        self.batch_size = batch_size

    def _layer_gradients(self, layer: str, inputs: torch.Tensor, target: Target) -> np.ndarray:
        (_, module), = resolve_layers(self.model, layer)
        grads = []
        for i in range(0, len(inputs), self.batch_size):
            x = inputs[i : i + self.batch_size]
            # autograd starts at the layer: the backward stops there, nothing before it is recorded
            with LayerCapture([(layer, module)], start_autograd=True, arg="layers") as cap, torch.no_grad():
                out = self.model(x)
                (act,) = cap.get()
            if isinstance(target, int) and not 0 <= target < out.shape[1]:
                raise ValueError(f"target must be in [0, {out.shape[1]}) (the model's outputs), got {target}")
            with torch.enable_grad():
                score = out[:, target] if isinstance(target, int) else target(out)
                (g,) = torch.autograd.grad(score.sum(), act)
            grads.append(g.flatten(1).float().cpu().numpy())
        return np.concatenate(grads)

    @in_eval_mode
    def scores(self, layer: str, class_inputs: torch.Tensor, target: Target, cavs: Sequence[np.ndarray]) -> list[float]:
        """Fraction of class inputs whose directional derivative along each CAV is positive."""
        return _positive_fractions(self._layer_gradients(layer, class_inputs, target), cavs)

    @in_eval_mode
    def interpret(self, class_inputs: torch.Tensor, target: Target, concept_inputs: torch.Tensor,
                  random_inputs: Sequence[torch.Tensor], seed: int = 0) -> dict[str, LayerTCAV]:
        """Per layer: the concept's TCAV score with one CAV per random set (concept vs that
        set), the null distribution from CAVs of each random set against the next, and the
        two-sided t-test p-value between the two."""
        if len(random_inputs) < 2:
            raise ValueError("random_inputs: give at least 2 random sets (the t-test needs a null distribution)")
        ttest_ind = require("scipy.stats", "TCAV's t-test").ttest_ind

        results = {}
        for layer in self.layers:
            concept = _acts(self.model, layer, concept_inputs, self.batch_size)
            randoms = [_acts(self.model, layer, r, self.batch_size) for r in random_inputs]
            concept_cavs = [train_cav(concept, r, seed) for r in randoms]
            random_cavs = [train_cav(randoms[i], randoms[(i + 1) % len(randoms)], seed) for i in range(len(randoms))]
            grads = self._layer_gradients(layer, class_inputs, target)  # once for both sets of CAVs
            s_concept = _positive_fractions(grads, [c for c, _ in concept_cavs])
            s_random = _positive_fractions(grads, [c for c, _ in random_cavs])
            if np.std(s_concept) == 0 and np.std(s_random) == 0:
                p = 1.0 if np.mean(s_concept) == np.mean(s_random) else 0.0
            else:
                with warnings.catch_warnings():  # identical scores (e.g. all 1.0) make scipy warn about precision
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p = float(ttest_ind(s_concept, s_random).pvalue)
            results[layer] = LayerTCAV(layer, float(np.mean(s_concept)), s_concept, s_random, p,
                                       float(np.mean([a for _, a in concept_cavs])))
        return results
