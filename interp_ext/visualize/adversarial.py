"""Adversarial images in pixel space ([0, 1] RGB; the model's normalisation is applied
inside): FGSM and PGD (L-inf, targeted or not), fooling images (Szegedy et al.: iterate
until the model predicts a chosen wrong class) and universal perturbations
(Moosavi-Dezfooli et al., DeepFool steps)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..attr._common import check_index_range, in_eval_mode
from ._common import ModelLike, Preprocessed, indices_per_image, pixel_images, preprocessed

Labels = Union[int, Sequence[int], torch.Tensor]


def _loss_grad(pre: Preprocessed, x: torch.Tensor, y: torch.Tensor, targeted: bool,
               check_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the per-image cross-entropy, signed so that ascending it attacks, and the
    logits. ``check_labels``: check ``y`` against the class count first (once per attack is
    enough: the check reads the device; an out-of-range label would fail on it)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = pre.model(pre.to_model(x))
        if check_labels:
            check_index_range(y, logits.shape[1], "labels")
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad, logits.detach()


@in_eval_mode
def fgsm(model: ModelLike, images: torch.Tensor, labels: Labels, epsilon: float, *, targeted: bool = False,
         mean=None, std=None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al.): one L-inf step of size ``epsilon``
    away from ``labels`` (or, ``targeted=True``, towards them). Returns adversarial
    images in [0, 1]."""
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    pre = preprocessed(model, mean, std)
    x = pixel_images(images, pre)
    grad, _ = _loss_grad(pre, x, indices_per_image(labels, len(x), "labels", x.device), targeted)
    return (x + epsilon * grad.sign()).clamp(0, 1)


@in_eval_mode
def pgd(model: ModelLike, images: torch.Tensor, labels: Labels, epsilon: float, *, step_size: Optional[float] = None,
        steps: int = 10, targeted: bool = False, random_start: bool = True, seed: Optional[int] = 0,
        mean=None, std=None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.) in the L-inf ball of radius ``epsilon``
    around each image: ``steps`` sign steps of ``step_size`` (default 2.5 epsilon / steps),
    from a uniform random start if ``random_start``; untargeted (away from ``labels``) or
    targeted (towards them)."""
    if epsilon < 0 or steps < 1:
        raise ValueError(f"epsilon must be >= 0 and steps >= 1, got {epsilon}, {steps}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0 (or None for 2.5 epsilon / steps), got {step_size}")
    pre = preprocessed(model, mean, std)
    x0 = pixel_images(images, pre)
    y = indices_per_image(labels, len(x0), "labels", x0.device)
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    x = x0.clone()
    if random_start:
        gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
        x = (x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1).to(x0.device) * epsilon).clamp(0, 1)
    for step in range(steps):
        grad, _ = _loss_grad(pre, x, y, targeted, check_labels=step == 0)
        x = torch.min(torch.max(x + alpha * grad.sign(), x0 - epsilon), x0 + epsilon).clamp(0, 1)
    return x


@dataclass
class FoolingResult:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    fooled: torch.Tensor  # (N,) bool: the model predicts the target class
    steps: torch.Tensor  # (N,) steps taken until fooled (max_steps if never)
    linf: torch.Tensor  # (N,) L-inf size of the perturbation, pixel units
    l2: torch.Tensor  # (N,) L2 size


@in_eval_mode
def fooling_image(model: ModelLike, images: torch.Tensor, target_class: Labels, *, step_size: float = 1 / 255,
                  max_steps: int = 100, mean=None, std=None, show_progress: bool = False) -> FoolingResult:
    """Change each image by small sign steps of the target class's score gradient until
    the model predicts ``target_class`` (each image stops changing once it does). Reports
    the steps taken and the perturbation's L-inf and L2 size."""
    if step_size <= 0 or max_steps < 1:
        raise ValueError(f"step_size must be > 0 and max_steps >= 1, got {step_size}, {max_steps}")
    pre = preprocessed(model, mean, std)
    x0 = pixel_images(images, pre)
    y = indices_per_image(target_class, len(x0), "target_class", x0.device)
    x = x0.clone()
    steps = torch.full((len(x0),), max_steps, dtype=torch.long, device=x0.device)
    done = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    for step in tqdm(range(max_steps + 1), desc="fooling", disable=not show_progress):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = pre.model(pre.to_model(xg))
            if step == 0:  # once: the check reads the device
                check_index_range(y, logits.shape[1], "target_class")
            (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xg)
        newly = (logits.argmax(1) == y) & ~done
        steps[newly] = step
        done |= newly
        if bool(done.all()) or step == max_steps:
            break
        x = torch.where(done.view(-1, 1, 1, 1), x, (x + step_size * grad.sign()).clamp(0, 1))
    delta = (x - x0).flatten(1)
    return FoolingResult(x.detach(), done, steps, delta.abs().amax(1), delta.norm(dim=1))


def _deepfool_step(pre: Preprocessed, x: torch.Tensor, label: torch.Tensor, candidates: int, overshoot: float) -> torch.Tensor:
    """The smallest L2 step that, to first order, moves each image across its nearest
    decision boundary among the top `candidates` classes (DeepFool)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = pre.model(pre.to_model(xg))
        top = logits.topk(candidates, dim=1).indices
        others = [top[:, k] for k in range(candidates)]
        f_label = logits.gather(1, label[:, None])[:, 0]
        grad_label = torch.autograd.grad(f_label.sum(), xg, retain_graph=True)[0]
        best_ratio = torch.full((len(x),), float("inf"), device=x.device)
        best_step = torch.zeros_like(x)
        for k, cls in enumerate(others):
            f_k = logits.gather(1, cls[:, None])[:, 0]
            grad_k = torch.autograd.grad(f_k.sum(), xg, retain_graph=k < candidates - 1)[0]
            w = (grad_k - grad_label).flatten(1)
            gap = (f_k - f_label).detach()
            ratio = gap.abs() / (w.norm(dim=1) + 1e-12)
            valid = (cls != label) & (ratio < best_ratio)
            step = ((gap.abs() + 1e-4) / (w.norm(dim=1) ** 2 + 1e-12))[:, None] * w
            best_ratio = torch.where(valid, ratio, best_ratio)
            best_step = torch.where(valid.view(-1, 1, 1, 1), step.view_as(x), best_step)
    return (1 + overshoot) * best_step


@dataclass
class UniversalResult:
    perturbation: torch.Tensor  # (3, H, W), pixel units, L-inf <= max_norm
    fooling_rate: float  # on the images it was computed on
    passes: int


@in_eval_mode
def fooling_rate(model: ModelLike, images: torch.Tensor, perturbation: torch.Tensor, *, batch_size: int = 32,
                 mean=None, std=None) -> float:
    """Fraction of images whose top-1 class changes when the perturbation is added."""
    pre = preprocessed(model, mean, std)
    x = pixel_images(images, pre)
    if not isinstance(perturbation, torch.Tensor) or perturbation.shape not in (x.shape[1:], (1, *x.shape[1:])):
        raise ValueError(f"perturbation must be (3, H, W) like the images {tuple(x.shape[1:])}, "
                         f"got {getattr(perturbation, 'shape', type(perturbation).__name__)}")
    changed = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            b = x[i : i + batch_size]
            clean = pre.model(pre.to_model(b)).argmax(1)
            adv = pre.model(pre.to_model((b + perturbation.to(b.device)).clamp(0, 1))).argmax(1)
            changed += int((clean != adv).sum())
    return changed / max(1, len(x))


@in_eval_mode
def universal_perturbation(model: ModelLike, images: torch.Tensor, max_norm: float = 10 / 255, *,
                           target_rate: float = 0.8, max_passes: int = 5, candidates: int = 10,
                           overshoot: float = 0.02, deepfool_steps: int = 10, mean=None, std=None,
                           show_progress: bool = False) -> UniversalResult:
    """Moosavi-Dezfooli et al.: one perturbation v (L-inf <= ``max_norm``) that changes the
    prediction of most images. Passes over the images; for each one that v does not yet
    fool, DeepFool finds the minimal extra step that does, v is updated and projected
    back onto the L-inf ball. Stops when the fooling rate reaches ``target_rate`` or after
    ``max_passes``."""
    if max_norm <= 0 or not 0 < target_rate <= 1:
        raise ValueError(f"max_norm must be > 0 and target_rate in (0, 1], got {max_norm}, {target_rate}")
    if max_passes < 1 or candidates < 2 or deepfool_steps < 1 or overshoot < 0:
        raise ValueError("need max_passes >= 1, candidates >= 2 (the label and at least one other class), "
                         f"deepfool_steps >= 1 and overshoot >= 0; got {max_passes}, {candidates}, {deepfool_steps}, {overshoot}")
    pre = preprocessed(model, mean, std)
    x = pixel_images(images, pre)
    v = torch.zeros_like(x[0])
    with torch.no_grad():
        logits = pre.model(pre.to_model(x))
    if candidates > logits.shape[1]:
        raise ValueError(f"candidates must be at most the model's {logits.shape[1]} classes, got {candidates}")
    clean = logits.argmax(1)
    rate, passes = 0.0, 0
    for passes in range(1, max_passes + 1):
        for i in tqdm(torch.randperm(len(x), generator=torch.Generator().manual_seed(passes)).tolist(),
                      desc=f"universal perturbation, pass {passes}", disable=not show_progress):
            xi, yi = x[i : i + 1], clean[i : i + 1]
            with torch.no_grad():
                fooled = pre.model(pre.to_model((xi + v).clamp(0, 1))).argmax(1) != yi
            if bool(fooled):
                continue
            delta = torch.zeros_like(xi)
            for _ in range(deepfool_steps):
                adv = (xi + v + delta).clamp(0, 1)
                with torch.no_grad():
                    if bool(pre.model(pre.to_model(adv)).argmax(1) != yi):
                        break
                delta = delta + _deepfool_step(pre, adv, yi, candidates, overshoot)
            v = (v + delta[0]).clamp(-max_norm, max_norm)
        rate = fooling_rate(pre.model, x, v, mean=pre.mean.flatten().tolist(), std=pre.std.flatten().tolist())
        if rate >= target_rate:
            break
    return UniversalResult(v.detach(), rate, passes)
