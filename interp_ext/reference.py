"""Pure-PyTorch versions of every native op: the test oracle and the benchmark baseline.

Written for clarity, not speed; each mirrors the definition in the op's docstring.
"""
from __future__ import annotations

from typing import Optional

import torch


def guided_relu_backward(
    grad_output: torch.Tensor, x: torch.Tensor, upper: Optional[float] = None, rule: str = "guided"
) -> torch.Tensor:
    """``g * (0 < x < upper) * (g > 0)`` (guided) or ``g * (g > 0)`` (deconvnet)."""
    g = grad_output
    if rule == "deconvnet":
        return g * (g > 0)
    active = x > 0
    if upper is not None:
        # a saturated unit holds upper as the forward's clamp rounds it: to the compute type
        # (float32, float64 for float64), then to x's dtype (bfloat16 3.3 -> 3.296875)
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        saturated = torch.tensor(upper, dtype=compute, device=x.device).to(x.dtype)
        active = active & (x < saturated)
    return g * active * (g > 0)


def guided_relu_backward_where(grad_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same guided rule spelled with ``torch.where`` (a benchmark baseline)."""
    return torch.where((x > 0) & (grad_output > 0), grad_output, torch.zeros_like(grad_output))


def saliency_reduce(grad: torch.Tensor) -> torch.Tensor:
    """Simonyan et al.: ``max_c |grad|`` over the channel dimension of (N, C, H, W)."""
    return grad.abs().amax(dim=1)


GRADCAM_VARIANTS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) with F.interpolate's align_corners=False sampling
    (source = (dst + 0.5) * in / out - 0.5, clamped at 0), written as lerps so equal
    neighbours give exactly their value: a constant map stays exactly constant."""

    def taps(n_in: int, n_out: int):
        src = ((torch.arange(n_out, dtype=x.dtype, device=x.device) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        i0 = src.long()
        return i0, (i0 + 1).clamp(max=n_in - 1), src - i0

    y0, y1, ly = taps(x.shape[2], size[0])
    x0, x1, lx = taps(x.shape[3], size[1])

    def along_x(rows):
        return rows[..., x0] + lx * (rows[..., x1] - rows[..., x0])

    top, bottom = along_x(x[:, :, y0, :]), along_x(x[:, :, y1, :])
    return top + ly[:, None] * (bottom - top)


def _finish_cam(cam: torch.Tensor, relu: bool, output_size, normalize: bool) -> torch.Tensor:
    """ReLU, bilinear upsampling (align_corners=False) and per-sample min-max to [0, 1]
    computed on the upsampled map; a constant map becomes all zeros."""
    if relu:
        cam = cam.clamp(min=0)
    if output_size is not None:
        cam = resize_bilinear(cam, tuple(output_size))
    if normalize:
        flat = cam.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        span = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1, 1)
        cam = torch.where(span > 0, (cam - lo) / torch.where(span > 0, span, 1), torch.zeros_like(cam))
    return cam


def gradcam(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    variant: str = "gradcam",
    relu: bool = True,
    output_size=None,
    normalize: bool = True,
) -> torch.Tensor:
    """Class activation maps (N, 1, H, W) from a layer's activations A and the gradients
    G of the target score with respect to them, both (N, K, h, w).

    - gradcam (Selvaraju et al.): w_k = mean_ij G_kij; map = sum_k w_k A_k
    - gradcam++ (Chattopadhyay et al.): alpha = G^2 / (2 G^2 + sum_ab A_kab G^3) (0 where
      the denominator is 0); w_k = sum_ij relu(G_kij) alpha_kij
    - xgradcam (Fu et al.): w_k = sum_ij G_kij A_kij / sum_ij A_kij (0 where the sum is 0)
    - layercam (Jiang et al.): map = sum_k relu(G_k) * A_k, element-wise
    - hirescam (Draelos & Carin): map = sum_k G_k * A_k, element-wise

    Computed in float32 (float64 for float64 inputs), returned in the input dtype.
    """
    acc = torch.promote_types(activations.dtype, torch.float32)
    A, G = activations.to(acc), gradients.to(acc)
    if variant == "gradcam":
        cam = (G.mean((2, 3), keepdim=True) * A).sum(1, keepdim=True)
    elif variant == "gradcam++":
        g2 = G * G
        denom = 2 * g2 + A.sum((2, 3), keepdim=True) * g2 * G
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1), torch.zeros_like(G))
        w = (G.clamp(min=0) * alpha).sum((2, 3), keepdim=True)
        cam = (w * A).sum(1, keepdim=True)
    elif variant == "xgradcam":
        s = A.sum((2, 3), keepdim=True)
        w = torch.where(s != 0, (G * A).sum((2, 3), keepdim=True) / torch.where(s != 0, s, 1), torch.zeros_like(s))
        cam = (w * A).sum(1, keepdim=True)
    elif variant == "layercam":
        cam = (G.clamp(min=0) * A).sum(1, keepdim=True)
    elif variant == "hirescam":
        cam = (G * A).sum(1, keepdim=True)
    else:
        raise ValueError(f"variant must be one of {GRADCAM_VARIANTS}, got {variant!r}")
    return _finish_cam(cam, relu, output_size, normalize).to(activations.dtype)


def cam(
    features: torch.Tensor,
    fc_weight: torch.Tensor,
    class_idx: torch.Tensor,
    relu: bool = True,
    output_size=None,
    normalize: bool = True,
) -> torch.Tensor:
    """Zhou et al. CAM: map_n = sum_k fc_weight[class_idx[n], k] * features[n, k]."""
    acc = torch.promote_types(features.dtype, torch.float32)
    w = fc_weight.to(acc)[class_idx]  # (N, K)
    m = (w[:, :, None, None] * features.to(acc)).sum(1, keepdim=True)
    return _finish_cam(m, relu, output_size, normalize).to(features.dtype)


def occlusion_counts(shape, window, stride) -> tuple[int, ...]:
    """Windows per dimension, as Captum counts them: ceil((D - w) / s) + 1; the last
    window may hang over the border and is clipped."""
    return tuple(-(-(d - w) // s) + 1 for d, w, s in zip(shape, window, stride))


def occlusion_window_mask(shape, window, stride, index: int) -> torch.Tensor:
    """Boolean (C, H, W) mask of window `index` (row-major over the window grid)."""
    counts = occlusion_counts(shape, window, stride)
    mask = torch.zeros(shape, dtype=torch.bool)
    starts = []
    for c in reversed(counts):
        starts.append(index % c)
        index //= c
    sl = tuple(slice(j * s, j * s + w) for j, s, w in zip(reversed(starts), stride, window))
    mask[sl] = True
    return mask


def occlusion_batch(x: torch.Tensor, baseline: torch.Tensor, window, stride, start: int, count: int) -> torch.Tensor:
    """(count * N, C, H, W): for each window start..start+count-1 (window-major), every
    image of x (N, C, H, W) with that window replaced by the baseline (broadcast to x)."""
    base = baseline.expand_as(x)
    out = []
    for p in range(start, start + count):
        m = occlusion_window_mask(x.shape[1:], window, stride, p).to(x.device)
        out.append(torch.where(m, base, x))
    return torch.cat(out) if out else x.new_empty((0, *x.shape[1:]))


def occlusion_batch_at(x: torch.Tensor, baseline: torch.Tensor, window, stride, windows: torch.Tensor) -> torch.Tensor:
    """(count * N, C, H, W): copy j of image n has window windows[j, n] replaced."""
    base = baseline.expand_as(x)
    out = []
    for row in windows.tolist():
        for n, p in enumerate(row):
            m = occlusion_window_mask(x.shape[1:], window, stride, p).to(x.device)
            out.append(torch.where(m, base[n], x[n]))
    return torch.stack(out) if out else x.new_empty((0, *x.shape[1:]))


def occlusion_accumulate(diffs: torch.Tensor, shape, window, stride) -> torch.Tensor:
    """(N, C, H, W): each element's mean of diffs[:, p] over the windows p covering it
    (0 where none does, e.g. stride > window)."""
    n, p_total = diffs.shape
    total = torch.zeros((n, *shape), dtype=torch.float64)
    cover = torch.zeros(shape, dtype=torch.float64)
    for p in range(p_total):
        m = occlusion_window_mask(shape, window, stride, p).double()
        total += diffs[:, p].double().view(-1, 1, 1, 1).cpu() * m
        cover += m
    out = torch.where(cover > 0, total / cover.clamp(min=1), torch.zeros_like(total))
    return out.to(diffs.dtype).to(diffs.device)


def feature_batch(x: torch.Tensor, baseline: torch.Tensor, feature_mask: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B * N, C, H, W), copy-major: copy b of image n keeps x where present[b, id] for the
    element's feature id, the baseline elsewhere."""
    n = x.shape[0]
    ids = feature_mask.expand(n, *x.shape[1:])
    base = baseline.expand_as(x)
    return torch.cat([torch.where(row[ids], x, base) for row in present]) if len(present) else x.new_empty((0, *x.shape[1:]))


def patch_splice(src, sample, origin, size, pad_value=0.0, patch=None, patch_origin=None) -> torch.Tensor:
    """Per-element definition of ops.patch_splice, by coordinates."""
    n, c, hh, ww = src.shape
    h, w = size
    ys = origin[:, 0, None] + torch.arange(h, device=src.device)  # (K, h) map rows
    xs = origin[:, 1, None] + torch.arange(w, device=src.device)  # (K, w)
    yy, xx = ys[:, :, None].expand(-1, h, w), xs[:, None, :].expand(-1, h, w)
    in_map = (yy >= 0) & (yy < hh) & (xx >= 0) & (xx < ww)
    k = torch.arange(sample.shape[0], device=src.device)[:, None, None].expand(-1, h, w)
    out = src[sample[k], :, yy.clamp(0, hh - 1), xx.clamp(0, ww - 1)]  # (K, h, w, C)
    if patch is not None:
        ph, pw = patch.shape[2:]
        py, px = yy - patch_origin[:, 0, None, None], xx - patch_origin[:, 1, None, None]
        in_patch = (py >= 0) & (py < ph) & (px >= 0) & (px < pw) & in_map
        spliced = patch[k, :, py.clamp(0, max(ph - 1, 0)), px.clamp(0, max(pw - 1, 0))] if ph and pw else out
        out = torch.where(in_patch[..., None], spliced, out)
    out = torch.where(in_map[..., None], out, torch.full((), pad_value, dtype=src.dtype, device=src.device))
    return out.permute(0, 3, 1, 2).contiguous()


def border_indices(n: int, left: int, right: int, padding: str) -> torch.Tensor:
    """Input coordinate of each position of an axis padded by (left, right); -1 = zero."""
    j = torch.arange(-left, n + right)
    if padding == "zeros":
        return torch.where((j >= 0) & (j < n), j, torch.full_like(j, -1))
    if padding == "replicate" or n == 1:
        return j.clamp(0, n - 1)
    period = 2 * (n - 1)
    j = j % period
    return torch.where(j < n, j, period - j)


def separable_filter(x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor, padding: str = "reflect") -> torch.Tensor:
    """Pad by index (reflect / replicate / zeros, any width), then two 1-D correlations
    with per-sample taps, in float64."""
    n, c, h, w = x.shape
    out = x.double()
    for axis, taps, size in ((2, taps_h, h), (3, taps_w, w)):
        k = taps.shape[1]
        idx = border_indices(size, (k - 1) // 2, k // 2, padding).to(x.device)
        padded = out.index_select(axis, idx.clamp(min=0))
        mask = (idx >= 0).double().view([-1 if d == axis else 1 for d in range(4)])
        padded = padded * mask
        t = taps.double().expand(n, k)
        acc = torch.zeros_like(out)
        for i in range(k):
            part = padded.narrow(axis, i, size)
            acc += t[:, i].view(n, 1, 1, 1) * part
        out = acc
    return out.to(x.dtype)


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """(N,): sum over channels and pixels of (dx^2 + dy^2)^(beta/2), forward differences
    that would leave the image taken as 0."""
    dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    s = dx * dx + dy * dy
    terms = s if beta == 2 else torch.where(s > 0, s.clamp(min=torch.finfo(s.dtype).tiny) ** (beta / 2), torch.zeros_like(s))
    return terms.sum(dim=(1, 2, 3))


def regularize_step(x: torch.Tensor, grad: torch.Tensor, lr: float, decay: float = 0.0, grad_percentile: float = 0.0,
                    norm_percentile: float = 0.0, contribution_percentile: float = 0.0,
                    dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """The Yosinski et al. step, out of place, in the op's order (see
    `interp_ext.ops.regularize_step_`), computed in ``dtype`` (float64: the oracle; None:
    x's dtype, the eager baseline)."""
    n = x.shape[0]
    x, grad = x.to(dtype or x.dtype), grad.to(dtype or x.dtype)

    def pct(values, p):
        v = values.flatten(1)  # (not reshape(n, -1): ambiguous for an empty batch)
        if p <= 0 or v.numel() == 0:
            return torch.zeros(n, dtype=v.dtype, device=v.device)
        return torch.quantile(v, p / 100, dim=1)

    g = torch.where(grad.abs() >= pct(grad.abs(), grad_percentile).view(n, 1, 1, 1), grad, torch.zeros_like(grad))
    v = (x + lr * g) * (1 - decay)
    norms = v.square().sum(1).sqrt()
    contrib = (v * grad).abs().sum(1)
    keep = (norms >= pct(norms, norm_percentile).view(n, 1, 1)) & (contrib >= pct(contrib, contribution_percentile).view(n, 1, 1))
    return torch.where(keep[:, None], v, torch.zeros_like(v))
