"""Forward-only perturbation CAMs: ScoreCAM (Wang et al.) and AblationCAM (Desai &
Ramaswamy). Channel weights come from batches of model calls under inference mode,
``batch_size`` copies per call (the memory bound); the map is the native CAM reduction
``sum_k w_k A_k`` (``ops.cam``) with its ReLU, resize and normalisation.

- ScoreCAM: every channel of the layer, upsampled to the input and min-max scaled,
  masks the image; the target's score of each masked image, softmax over the channels,
  is the channel's weight. Channels that are zero everywhere mask the image to zeros:
  their score is the score of a zero image, computed once, not once per channel.
- AblationCAM: each channel in turn is set to ``ablation_value`` at the layer; the weight
  is the relative drop of the target's score, ``(s - s_k) / s`` (``s - s_k`` where s is 0).
  The ablated copies replace the layer's output through a forward hook while the part
  of the network before the layer runs on ONE copy of the image per call: tensors that
  skip over the layer broadcast to the copies. A first check copy (not ablated) must
  reproduce the image's score, else (a model whose later layers cannot broadcast) every
  copy reruns the whole network, as pytorch-grad-cam does.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..layers import LayerCapture, LayerSpec
from ._common import Target, check_inputs, in_eval_mode, model_output, normalize_target, resolve_target
from ._suffix import graph_suffix
from .cam import CAMResult, LayerMethod, OutputSize, ScoreFn, _check_flag, cam_output_size, fuse_layer_maps, unit_scale

# score(outputs of B copies, (B,) index of the image each copy is of) -> (B,) target scores
CopyScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """``batch_size`` back if it is a positive int (a bool is not), else a ``ValueError``
    naming it as ``name``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name} must be a positive int (model calls of at most that many copies), got {batch_size!r}")
    return batch_size


def copy_scores(target: Union[Target, ScoreFn], target_t: Optional[torch.Tensor]) -> CopyScore:
    """The per-copy score of a target: the logit of each copy's image's class, or a user
    function of the model output (one score per row)."""
    if callable(target):
        def score(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            s = target(out)
            if not isinstance(s, torch.Tensor) or s.shape != (out.shape[0],):
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"target function must return one score per sample, shape ({out.shape[0]},), got {got}")
            return s
        return score
    return lambda out, rows: out.gather(1, target_t[rows][:, None])[:, 0]


def masked_input_scores(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, acts: torch.Tensor,
                        score: CopyScore, *, batch_size: int, align_corners: bool = False, eps: Optional[float] = None,
                        show_progress: bool = False, desc: str = "ScoreCAM",
                        memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """ScoreCAM's scores ``(N, K)``: ``score(model(x[n] * mask_nk))`` for every image n and
    channel k of ``acts (N, K, h, w)``, the mask being the channel bilinearly upsampled to
    the input (``align_corners``) and min-max scaled (`unit_scale` with ``eps``). Model
    calls of at most ``batch_size`` masked images (across images), under inference mode;
    all-zero channels share one call on a zero image. ``memory_format``: the layout of the
    masked batches."""
    n, c, hh, ww = x.shape
    k = acts.shape[1]
    with torch.inference_mode():
        scores = torch.empty(n, k, dtype=torch.float32, device=x.device)
        dead = (acts == 0).flatten(2).all(2)  # (N, K): the mask is exactly zero
        if bool(dead.any()):
            zero = torch.zeros(1, c, hh, ww, dtype=x.dtype, device=x.device).contiguous(memory_format=memory_format)
            out0 = model_output(model(zero))
            s0 = score(out0.expand(n, *out0.shape[1:]), torch.arange(n, device=x.device)).float()
            scores.copy_(s0[:, None].expand(n, k))
        todo = (~dead).nonzero()  # (P, 2): (image, channel), image-major
        buf = None
        starts = range(0, todo.shape[0], batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not show_progress):
            pairs = todo[start : start + batch_size]
            b = pairs.shape[0]
            if buf is None or buf.shape[0] < b:
                buf = torch.empty(min(batch_size, todo.shape[0]), c, hh, ww, dtype=x.dtype,
                                  device=x.device).contiguous(memory_format=memory_format)
            rows, chans = pairs[:, 0], pairs[:, 1]
            masks = F.interpolate(acts[rows, chans][None].float(), size=(hh, ww), mode="bilinear",
                                  align_corners=align_corners)[0]
            masks = unit_scale(masks, (1, 2), eps).to(x.dtype)
            # one broadcast multiply per run of copies of the same image (no gathered copy of x)
            bounds = [0, *((rows[1:] != rows[:-1]).nonzero()[:, 0] + 1).tolist(), b]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                torch.mul(x[int(rows[lo])][None], masks[lo:hi, None], out=buf[lo:hi])
            out = model_output(model(buf[:b]))
            scores[rows, chans] = score(out, rows).float()
    return scores


AblationValues = Callable[[int, torch.Tensor], torch.Tensor]


class _LayerReused(RuntimeError):
    pass


class _NotOneRowPerCopy(RuntimeError):
    pass


def ablation_scores(model: nn.Module, layer: tuple[str, nn.Module], x: torch.Tensor, acts: torch.Tensor,
                    base: torch.Tensor, score: CopyScore, *, batch_size: int,
                    values: Union[float, AblationValues] = 0.0, show_progress: bool = False,
                    desc: str = "AblationCAM") -> torch.Tensor:
    """AblationCAM's scores ``(N, K)``: the target score with channel k of image n's layer
    output ``acts (N, K, h, w)`` set to ``values`` (a number, or ``values(n, channels)`` ->
    one value per channel). ``base`` (N,): the unablated scores. At most ``batch_size``
    copies per model call, under inference mode.

    How the copies run, the first that reproduces ``base`` on an unablated check copy (in
    the first batch): the network after the layer only (`interp_ext.attr._suffix`: the
    traced graph cut at the layer, the values crossing the cut computed once per image);
    else the model on ONE copy of the image with a forward hook replacing the layer's
    output by the copies (tensors from before the layer broadcast); else the whole model
    on every copy (what pytorch-grad-cam does)."""
    name, module = layer
    n, k = acts.shape[:2]

    def rows(img: int, b: int) -> torch.Tensor:
        return torch.full((b,), img, dtype=torch.long, device=x.device)

    def checked(out, b: int):
        out = model_output(out)
        if out.shape[0] != b:
            raise _NotOneRowPerCopy("the model's output does not have one row per ablated copy")
        return out

    def graph_runner():
        cut = graph_suffix(model, name, x[:1])
        if cut is None:
            return None
        crossing: dict[int, list] = {}

        def run(img: int, batch: torch.Tensor) -> torch.Tensor:
            if img not in crossing:
                crossing.clear()
                crossing[img] = cut.prefix(x[img : img + 1])
            out = checked(cut.run(batch, crossing[img]), batch.shape[0])
            return score(out, rows(img, batch.shape[0])).float()
        return run

    def hook_runner(suffix_only: bool):
        def run(img: int, batch: torch.Tensor) -> torch.Tensor:
            calls = [0]

            def hook(mod, args, output):
                calls[0] += 1
                return batch if calls[0] == 1 else output

            b = batch.shape[0]
            xin = x[img : img + 1] if suffix_only else x[img : img + 1].expand(b, *x.shape[1:]).contiguous()
            handle = module.register_forward_hook(hook)
            try:
                out = model(xin)
            finally:
                handle.remove()
            if calls[0] != 1:
                raise _LayerReused(f"target_layer {name!r} ran {calls[0]} times in one forward; pick a layer used once")
            return score(checked(out, b), rows(img, b)).float()
        return run

    def ablated(img: int, chans: torch.Tensor, check: bool) -> torch.Tensor:
        b = chans.shape[0]
        batch = acts[img : img + 1].expand(b + int(check), *acts.shape[1:]).clone()
        v = values(img, chans) if callable(values) else torch.full((b,), float(values), device=acts.device)
        batch[torch.arange(b, device=acts.device), chans] = v.to(batch.dtype)[:, None, None]
        return batch

    def choose(img: int, batch: torch.Tensor):
        """(runner, its scores of `batch`): the first way whose check copy gives the score."""
        tol = 1e-5 * max(1.0, float(base[img].abs()))
        for make in (graph_runner, lambda: hook_runner(True)):
            run = make()
            if run is None:
                continue
            try:
                got = run(img, batch)
            except _LayerReused:
                raise
            except RuntimeError:  # e.g. a tensor from before the layer joined by torch.cat
                continue
            if bool(torch.allclose(got[-1], base[img].float(), rtol=1e-4, atol=tol)):
                return run, got
        run = hook_runner(False)
        return run, run(img, batch)

    scores = torch.empty(n, k, dtype=torch.float32, device=x.device)
    runner = None
    with torch.inference_mode():
        bar = tqdm(total=n * k, desc=desc, unit="channel", disable=not show_progress)
        for img in range(n):
            start = 0
            while start < k:
                check = runner is None
                if check and batch_size == 1:  # the check copy in a call of its own
                    runner, _ = choose(img, acts[img : img + 1].clone())
                    check = False
                b = min(batch_size - int(check), k - start)
                chans = torch.arange(start, start + b, device=x.device)
                batch = ablated(img, chans, check)
                if check:
                    runner, got = choose(img, batch)
                    got = got[:b]
                else:
                    got = runner(img, batch)
                scores[img, start : start + b] = got
                start += b
                bar.update(b)
        bar.close()
    return scores


def ablation_weights(base: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """``(s - s_k) / s`` per image and channel; ``s - s_k`` where ``s`` is 0."""
    base = base.float()[:, None]
    drop = base - ablated
    return torch.where(base != 0, drop / torch.where(base != 0, base, torch.ones_like(base)), drop)


class _PerturbationCAM(LayerMethod):

    def _weights(self, x, acts, layer, logits, score, batch_size, show_progress) -> torch.Tensor:
        raise NotImplementedError

    @in_eval_mode
    def attribute(self, inputs: torch.Tensor, target: Union[Target, ScoreFn] = None, output_size: OutputSize = "input",
                  normalize: bool = True, relu: bool = True, batch_size: int = 32,
                  show_progress: bool = False) -> CAMResult:
        """Maps ``(N, 1, H, W)`` for a batch; ``target``, ``output_size``, ``normalize``,
        ``relu`` and several layers as `GradCAM.attribute` (a target function is applied to
        the output of every perturbed copy: one score per row). ``batch_size``: copies per
        model call, the memory bound. ``show_progress``: a tqdm bar. Forward only, under
        inference mode; the model runs in eval mode (its flags restored afterwards)."""
        check_inputs(inputs, model=self.model)
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
        size = cam_output_size(output_size, inputs)
        _check_flag(relu, "relu")
        _check_flag(normalize, "normalize")
        _check_flag(show_progress, "show_progress")
        check_batch_size(batch_size)
        target_t = None if callable(target) else normalize_target(target, inputs.shape[0], inputs.device)
        x = inputs.detach()
        with LayerCapture(self.layers, require_map=True, detach=True) as cap, torch.inference_mode():
            logits = model_output(self.model(x))
            acts = cap.get()
        if not callable(target):
            target_t = resolve_target(target_t, logits)
        score = copy_scores(target, target_t)
        maps = []
        for layer, a in zip(self.layers, acts):
            w = self._weights(x, a, layer, logits, score, batch_size, show_progress)
            with torch.inference_mode():
                maps.append(weighted_map(a, w, relu, size, normalize))
        with torch.inference_mode():
            fused = fuse_layer_maps(maps, size, normalize)
        return CAMResult(fused.clone(), logits.clone(), {name: m.clone() for (name, _), m in zip(self.layers, maps)})


def weighted_map(acts: torch.Tensor, weights: torch.Tensor, relu: bool, size, normalize: bool) -> torch.Tensor:
    """``sum_k w[n, k] A[n, k]`` finished like the other CAMs, by the native CAM op."""
    idx = torch.arange(acts.shape[0], device=acts.device)
    return ops.cam(acts.contiguous(), weights.to(acts.dtype).contiguous(), idx, relu=relu, output_size=size,
                   normalize=normalize)


class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al.): channel weights from the target's score of the image masked
    by each upsampled, [0, 1]-scaled channel (softmax over the channels). ``N * K`` model
    calls' worth of copies (K: the layer's channels), in batches of ``batch_size``.
    The masks are upsampled with ``align_corners=False`` (the authors' code);
    ``interp_ext.compat.pytorch_grad_cam.ScoreCAM`` uses pytorch-grad-cam's
    ``align_corners=True`` and 1e-8 epsilon."""

    def _weights(self, x, acts, layer, logits, score, batch_size, show_progress):
        s = masked_input_scores(self.model, x, acts, score, batch_size=batch_size, show_progress=show_progress)
        return torch.softmax(s, dim=1)


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy): channel weights from the relative drop of the
    target's score when the channel is set to ``ablation_value`` (0: the paper's) at the
    layer. Only the network after the layer runs per ablated copy (see the module
    docstring)."""

    def __init__(self, model: nn.Module, target_layer: Union[LayerSpec, Sequence[LayerSpec]],
                 ablation_value: float = 0.0):
        super().__init__(model, target_layer)
        if isinstance(ablation_value, bool) or not isinstance(ablation_value, (int, float)):
            raise TypeError(f"ablation_value must be a number, got {type(ablation_value).__name__}")
        if not torch.isfinite(torch.tensor(float(ablation_value))):
            raise ValueError(f"ablation_value must be finite, got {ablation_value!r}")
        self.ablation_value = float(ablation_value)

    def _weights(self, x, acts, layer, logits, score, batch_size, show_progress):
        n = x.shape[0]
        with torch.inference_mode():
            base = score(logits, torch.arange(n, device=x.device)).float()
        s = ablation_scores(self.model, layer, x, acts, base, score, batch_size=batch_size,
                            values=self.ablation_value, show_progress=show_progress)
        return ablation_weights(base, s)
