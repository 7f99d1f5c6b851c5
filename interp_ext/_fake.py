"""Fake (meta) kernels for every op: shapes and the same checks, with the same
messages as the native kernels, so ``torch.compile`` and FakeTensor tracing work."""
from __future__ import annotations

from typing import Optional

import torch

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_floating(op: str, arg: str, t: torch.Tensor) -> None:
    torch._check(
        t.dtype in _FLOATS,
        lambda: f"{op}: {arg} must be a floating-point tensor (float32, float64, float16 or bfloat16), got {t.dtype}",
    )


def _check_rule(op: str, rule: str) -> None:
    torch._check(rule in ("guided", "deconvnet"), lambda: f'{op}: rule must be "guided" or "deconvnet", got "{rule}"')


def _check_upper(op: str, upper: Optional[float]) -> None:
    torch._check(
        upper is None or upper > 0,
        lambda: f"{op}: upper must be positive (the rectifier clamps to [0, upper]), got {upper}",
    )


def _check_backward_args(grad_output: torch.Tensor, x: torch.Tensor, upper, rule) -> None:
    op = "guided_relu_backward"
    _check_floating(op, "grad_output", grad_output)
    _check_floating(op, "x", x)
    torch._check(
        grad_output.shape == x.shape,
        lambda: f"{op}: grad_output and x must have the same shape, got {list(grad_output.shape)} and {list(x.shape)}",
    )
    torch._check(
        grad_output.dtype == x.dtype,
        lambda: f"{op}: grad_output and x must have the same dtype, got {grad_output.dtype} and {x.dtype}",
    )
    _check_rule(op, rule)
    _check_upper(op, upper)


@torch.library.register_fake("interp_ext::guided_relu")
def _guided_relu_fake(x, upper=None, rule="guided"):
    _check_floating("guided_relu", "x", x)
    _check_rule("guided_relu", rule)
    _check_upper("guided_relu", upper)
    return torch.empty_like(x)


@torch.library.register_fake("interp_ext::guided_relu_")
def _guided_relu_inplace_fake(x, upper=None, rule="guided"):
    _check_floating("guided_relu_", "x", x)
    _check_rule("guided_relu_", rule)
    _check_upper("guided_relu_", upper)


@torch.library.register_fake("interp_ext::guided_relu_backward")
def _guided_relu_backward_fake(grad_output, x, upper=None, rule="guided"):
    _check_backward_args(grad_output, x, upper, rule)
    return torch.empty_like(grad_output)  # as the kernels: grad_output's layout when dense, else contiguous


@torch.library.register_fake("interp_ext::guided_relu_backward.out")
def _guided_relu_backward_out_fake(grad_output, x, upper=None, rule="guided", *, out):
    _check_backward_args(grad_output, x, upper, rule)
    torch._check(
        out.shape == grad_output.shape,
        lambda: f"guided_relu_backward: out must have shape {list(grad_output.shape)}, got {list(out.shape)}",
    )
    torch._check(
        out.dtype == grad_output.dtype,
        lambda: f"guided_relu_backward: out must have dtype {grad_output.dtype}, got {out.dtype}",
    )


@torch.library.register_fake("interp_ext::saliency_reduce")
def _saliency_reduce_fake(grad):
    _check_floating("saliency_reduce", "grad", grad)
    torch._check(grad.dim() == 4, lambda: f"saliency_reduce: grad must be 4-D (N, C, H, W), got shape {list(grad.shape)}")
    torch._check(
        grad.shape[1] > 0, lambda: f"saliency_reduce: grad must have at least one channel, got shape {list(grad.shape)}"
    )
    return grad.new_empty((grad.shape[0], grad.shape[2], grad.shape[3]))


_CAM_VARIANTS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def _check_feature_map(op: str, arg: str, t: torch.Tensor) -> None:
    _check_floating(op, arg, t)
    torch._check(t.dim() == 4, lambda: f"{op}: {arg} must be 4-D (N, K, h, w), got shape {list(t.shape)}")
    torch._check(t.shape[2] > 0 and t.shape[3] > 0, lambda: f"{op}: {arg} must have a non-empty spatial size, got shape {list(t.shape)}")


def _cam_output(op: str, features: torch.Tensor, output_size) -> torch.Tensor:
    if output_size is None:
        size = (features.shape[2], features.shape[3])
    else:
        torch._check(
            len(output_size) == 2 and output_size[0] > 0 and output_size[1] > 0,
            lambda: f"{op}: output_size must be two positive ints (H, W), got {len(output_size)} values",
        )
        size = tuple(output_size)
    return features.new_empty((features.shape[0], 1, *size))


@torch.library.register_fake("interp_ext::gradcam")
def _gradcam_fake(activations, gradients, variant="gradcam", relu=True, output_size=None, normalize=True):
    _check_feature_map("gradcam", "activations", activations)
    _check_feature_map("gradcam", "gradients", gradients)
    torch._check(
        activations.shape == gradients.shape,
        lambda: f"gradcam: activations and gradients must have the same shape, got {list(activations.shape)} and {list(gradients.shape)}",
    )
    torch._check(
        activations.dtype == gradients.dtype,
        lambda: f"gradcam: activations and gradients must have the same dtype, got {activations.dtype} and {gradients.dtype}",
    )
    torch._check(
        variant in _CAM_VARIANTS,
        lambda: "gradcam: variant must be one of " + ", ".join(f'"{v}"' for v in _CAM_VARIANTS) + f', got "{variant}"',
    )
    return _cam_output("gradcam", activations, output_size)


@torch.library.register_fake("interp_ext::cam")
def _cam_fake(features, fc_weight, class_idx, relu=True, output_size=None, normalize=True):
    _check_feature_map("cam", "features", features)
    _check_floating("cam", "fc_weight", fc_weight)
    torch._check(
        fc_weight.dim() == 2 and fc_weight.shape[1] == features.shape[1],
        lambda: f"cam: fc_weight must be (num_classes, K) with K = features.size(1) = {features.shape[1]}, got shape {list(fc_weight.shape)}",
    )
    torch._check(class_idx.dtype == torch.int64, lambda: f"cam: class_idx must be an int64 tensor, got {class_idx.dtype}")
    torch._check(
        class_idx.dim() == 1 and class_idx.shape[0] == features.shape[0],
        lambda: f"cam: class_idx must have one class per sample, shape ({features.shape[0]}), got {list(class_idx.shape)}",
    )
    return _cam_output("cam", features, output_size)


def _check_windows(op: str, shape, window, stride) -> int:
    torch._check(len(window) == 3, lambda: f"{op}: window must have 3 values (C, H, W), got {len(window)}")
    torch._check(len(stride) == 3, lambda: f"{op}: stride must have 3 values (C, H, W), got {len(stride)}")
    total = 1
    for d, w, s, name in zip(shape, window, stride, "CHW"):
        torch._check(0 < w <= d, lambda: f"{op}: window {name} = {w} must be in [1, {d}] (the input size)")
        torch._check(s > 0, lambda: f"{op}: stride {name} must be positive, got {s}")
        total *= (d - w + s - 1) // s + 1
    return total


@torch.library.register_fake("interp_ext::occlusion_batch")
def _occlusion_batch_fake(x, baseline, window, stride, start, count):
    _check_floating("occlusion_batch", "x", x)
    torch._check(x.dim() == 4, lambda: f"occlusion_batch: x must be (N, C, H, W), got shape {list(x.shape)}")
    total = _check_windows("occlusion_batch", x.shape[1:], window, stride)
    torch._check(
        0 <= start <= total and 0 <= count <= total - start,
        lambda: f"occlusion_batch: windows start = {start}, count = {count} are out of range: there are {total} windows",
    )
    return x.new_empty((count * x.shape[0], *x.shape[1:]))


@torch.library.register_fake("interp_ext::occlusion_batch.out")
def _occlusion_batch_out_fake(x, baseline, window, stride, start, count, *, out):
    want = _occlusion_batch_fake(x, baseline, window, stride, start, count)
    torch._check(out.shape == want.shape, lambda: f"occlusion_batch: out must be (count * N, C, H, W) = {tuple(want.shape)}, got {list(out.shape)}")


@torch.library.register_fake("interp_ext::occlusion_batch_at")
def _occlusion_batch_at_fake(x, baseline, window, stride, windows):
    _check_floating("occlusion_batch_at", "x", x)
    torch._check(x.dim() == 4, lambda: f"occlusion_batch_at: x must be (N, C, H, W), got shape {list(x.shape)}")
    _check_windows("occlusion_batch_at", x.shape[1:], window, stride)
    torch._check(
        windows.dtype == torch.int64 and windows.dim() == 2 and windows.shape[1] == x.shape[0],
        lambda: f"occlusion_batch_at: windows must be an int64 (count, N) tensor with N = {x.shape[0]} "
        f"(one window per copy and image), got {windows.dtype} of shape {list(windows.shape)}",
    )
    return x.new_empty((windows.shape[0] * x.shape[0], *x.shape[1:]))


@torch.library.register_fake("interp_ext::occlusion_batch_at.out")
def _occlusion_batch_at_out_fake(x, baseline, window, stride, windows, *, out):
    want = _occlusion_batch_at_fake(x, baseline, window, stride, windows)
    torch._check(out.shape == want.shape, lambda: f"occlusion_batch: out must be (count * N, C, H, W) = {tuple(want.shape)}, got {list(out.shape)}")


@torch.library.register_fake("interp_ext::occlusion_accumulate")
def _occlusion_accumulate_fake(diffs, shape, window, stride):
    _check_floating("occlusion_accumulate", "diffs", diffs)
    total = _check_windows("occlusion_accumulate", shape, window, stride)
    torch._check(
        diffs.dim() == 2 and diffs.shape[1] == total,
        lambda: f"occlusion_accumulate: diffs must be (N, {total}) (one score difference per window), got {list(diffs.shape)}",
    )
    return diffs.new_empty((diffs.shape[0], *shape))


@torch.library.register_fake("interp_ext::feature_batch")
def _feature_batch_fake(x, baseline, feature_mask, present):
    _check_floating("feature_batch", "x", x)
    torch._check(x.dim() == 4, lambda: f"feature_batch: x must be (N, C, H, W), got shape {list(x.shape)}")
    torch._check(
        feature_mask.dtype == torch.int64,
        lambda: f"feature_batch: feature_mask must be an int64 tensor, got {feature_mask.dtype}",
    )
    torch._check(
        feature_mask.dim() == 4 and feature_mask.shape[0] in (1, x.shape[0]) and feature_mask.shape[1] in (1, x.shape[1])
        and feature_mask.shape[2:] == x.shape[2:],
        lambda: f"feature_batch: feature_mask must be (1 or N, 1 or C, H, W) for x of shape {list(x.shape)}, got {list(feature_mask.shape)}",
    )
    torch._check(
        present.dtype == torch.bool and present.dim() == 2,
        lambda: f"feature_batch: present must be a bool (B, F) tensor (which features each copy keeps), got {present.dtype} of shape {list(present.shape)}",
    )
    return x.new_empty((present.shape[0] * x.shape[0], *x.shape[1:]))


@torch.library.register_fake("interp_ext::feature_batch.out")
def _feature_batch_out_fake(x, baseline, feature_mask, present, *, out):
    want = _feature_batch_fake(x, baseline, feature_mask, present)
    torch._check(out.shape == want.shape, lambda: f"feature_batch: out must be (B * N, C, H, W) = {tuple(want.shape)}, got {list(out.shape)}")


def _separable_filter_fake_checks(op, x, taps_h, taps_w, padding):
    _check_floating(op, "x", x)
    torch._check(x.dim() == 4, lambda: f"{op}: x must be (N, C, H, W), got shape {list(x.shape)}")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    for name, t in (("taps_h", taps_h), ("taps_w", taps_w)):
        torch._check(
            t.dim() == 2 and t.shape[0] in (1, x.shape[0]) and t.shape[1] >= 1,
            lambda: f"{op}: {name} must be (1 or N, k) with N = {x.shape[0]} and k >= 1, got {list(t.shape)}",
        )
        torch._check(t.dtype == compute, lambda: f"{op}: {name} must be {compute} for x of dtype {x.dtype}, got {t.dtype}")
    torch._check(
        padding in ("reflect", "replicate", "zeros"),
        lambda: f'{op}: padding must be "reflect", "replicate" or "zeros", got "{padding}"',
    )
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("interp_ext::separable_filter")
def _separable_filter_fake(x, taps_h, taps_w, padding="reflect"):
    return _separable_filter_fake_checks("separable_filter", x, taps_h, taps_w, padding)


@torch.library.register_fake("interp_ext::separable_filter.out")
def _separable_filter_out_fake(x, taps_h, taps_w, padding="reflect", *, out):
    _separable_filter_fake_checks("separable_filter", x, taps_h, taps_w, padding)
    torch._check(
        out.shape == x.shape and out.dtype == x.dtype,
        lambda: f"separable_filter: out must have shape {list(x.shape)} and dtype {x.dtype}, got {list(out.shape)} {out.dtype}",
    )


@torch.library.register_fake("interp_ext::separable_filter_backward")
def _separable_filter_backward_fake(grad, taps_h, taps_w, padding="reflect"):
    return _separable_filter_fake_checks("separable_filter_backward", grad, taps_h, taps_w, padding)


def _tv_checks(op, x, beta):
    _check_floating(op, "x", x)
    torch._check(x.dim() == 4, lambda: f"{op}: x must be (N, C, H, W), got shape {list(x.shape)}")
    torch._check(beta > 0 and beta != float("inf"), lambda: f"{op}: beta must be positive, got {beta:g}")


@torch.library.register_fake("interp_ext::total_variation")
def _total_variation_fake(x, beta=2.0):
    _tv_checks("total_variation", x, beta)
    return x.new_empty((x.shape[0],))


@torch.library.register_fake("interp_ext::total_variation_backward")
def _total_variation_backward_fake(grad, x, beta=2.0):
    _tv_checks("total_variation_backward", x, beta)
    torch._check(
        grad.dim() == 1 and grad.shape[0] == x.shape[0],
        lambda: f"total_variation_backward: grad must be (N,) = ({x.shape[0]},), got {list(grad.shape)}",
    )
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("interp_ext::regularize_step_")
def _regularize_step_fake(x, grad, lr, decay=0.0, grad_percentile=0.0, norm_percentile=0.0, contribution_percentile=0.0):
    _check_floating("regularize_step_", "x", x)
    torch._check(x.dim() == 4, lambda: f"regularize_step_: x must be (N, C, H, W), got shape {list(x.shape)}")
    torch._check(grad.shape == x.shape, lambda: f"regularize_step_: grad must have x's shape, dtype and device, got {list(grad.shape)}")
    return None


@torch.library.register_fake("interp_ext::patch_splice")
def _patch_splice_fake(src, sample, origin, size, pad_value=0.0, patch=None, patch_origin=None):
    op = "patch_splice"
    _check_floating(op, "src", src)
    torch._check(src.dim() == 4, lambda: f"{op}: src must be (N, C, H, W), got shape {list(src.shape)}")
    torch._check(
        sample.dtype == torch.int64 and sample.dim() == 1,
        lambda: f"{op}: sample must be an int64 (K,) tensor (the src image of each output), got {sample.dtype} of shape {list(sample.shape)}",
    )
    k = sample.shape[0]
    for arg, t in (("origin", origin), ("patch_origin", patch_origin)):
        if t is not None:
            torch._check(
                t.dtype == torch.int64 and t.dim() == 2 and t.shape[0] == k and t.shape[1] == 2,
                lambda: f"{op}: {arg} must be an int64 (K, 2) tensor of (row, column) with K = {k}, got {t.dtype} of shape {list(t.shape)}",
            )
    torch._check(
        len(size) == 2 and size[0] >= 0 and size[1] >= 0,
        lambda: f"{op}: size must be two non-negative ints (h, w), got {list(size)}",
    )
    torch._check((patch is None) == (patch_origin is None), lambda: f"{op}: patch and patch_origin must be given together")
    if patch is not None:
        torch._check(
            patch.dtype == src.dtype and patch.device == src.device,
            lambda: f"{op}: patch must have src's dtype and device, got {patch.dtype} on {patch.device}",
        )
        torch._check(
            patch.dim() == 4 and patch.shape[0] == k and patch.shape[1] == src.shape[1],
            lambda: f"{op}: patch must be (K, C, ph, pw) with K = {k} and C = {src.shape[1]}, got shape {list(patch.shape)}",
        )
    return src.new_empty((k, src.shape[1], size[0], size[1]))


@torch.library.register_fake("interp_ext::patch_splice.out")
def _patch_splice_out_fake(src, sample, origin, size, pad_value=0.0, patch=None, patch_origin=None, *, out):
    want = _patch_splice_fake(src, sample, origin, size, pad_value, patch, patch_origin)
    torch._check(
        out.shape == want.shape,
        lambda: f"patch_splice: out must be (K, C, h, w) = {tuple(want.shape)}, got {list(out.shape)}",
    )
