// The one place that declares every interp_ext operator schema, plus the Python
// module shim that reports how the library was built.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <string>

namespace interp_ext {
#ifdef WITH_CUDA
std::string cuda_runtime_version();  // defined in cuda/guided_relu_kernel.cu
#endif
}  // namespace interp_ext

TORCH_LIBRARY(interp_ext, m) {
  // Forward is relu(x), or clamp(x, 0, upper); the backward applies `rule`
  // ("guided" or "deconvnet") through guided_relu_backward.
  m.def("guided_relu(Tensor x, float? upper=None, str rule=\"guided\") -> Tensor");
  // In-place form (relu_ / ReLU(inplace=True) spellings): rectifies x itself, with
  // the same backward; its autograd lives in csrc/autograd/guided_relu_inplace.cpp.
  m.def("guided_relu_(Tensor(a!) x, float? upper=None, str rule=\"guided\") -> ()");
  // grad_output * (0 < x < upper) * (grad_output > 0) for "guided"; grad_output *
  // (grad_output > 0) for "deconvnet". `x` may be the forward input or output.
  m.def("guided_relu_backward(Tensor grad_output, Tensor x, float? upper=None, str rule=\"guided\") -> Tensor");
  // Writes into `out` (any layout; may be grad_output itself). Returns nothing, as
  // torch.library requires of mutating custom ops so torch.compile can functionalise it.
  m.def(
      "guided_relu_backward.out(Tensor grad_output, Tensor x, float? upper=None, str rule=\"guided\", *, "
      "Tensor(a!) out) -> ()");
  // Class activation maps (N, 1, H, W) from a layer's activations and the target's
  // gradients, both (N, K, h, w): variant "gradcam", "gradcam++", "xgradcam", "layercam"
  // or "hirescam"; then ReLU, bilinear resize to output_size (align_corners=False) and
  // per-sample min-max normalisation on the resized map. Inference only.
  m.def(
      "gradcam(Tensor activations, Tensor gradients, str variant=\"gradcam\", bool relu=True, "
      "int[]? output_size=None, bool normalize=True) -> Tensor");
  // Zhou et al. CAM: sum_k fc_weight[class_idx[n], k] * features[n, k], same finishing.
  m.def(
      "cam(Tensor features, Tensor fc_weight, Tensor class_idx, bool relu=True, int[]? output_size=None, "
      "bool normalize=True) -> Tensor");
  // Occlusion (Zeiler & Fergus), windows counted and clipped as Captum does. Builds
  // (count * N, C, H, W): windows start..start+count-1 (window-major) of every image of
  // x (N, C, H, W) replaced by the baseline (1 or N, C, H, W). Inference only.
  m.def("occlusion_batch(Tensor x, Tensor baseline, int[] window, int[] stride, int start, int count) -> Tensor");
  // The same into a reused contiguous buffer (on CPU a fresh output costs page faults).
  m.def(
      "occlusion_batch.out(Tensor x, Tensor baseline, int[] window, int[] stride, int start, int count, *, "
      "Tensor(a!) out) -> ()");
  // The same with a window per copy and image: windows (count, N) int64; copy j of image
  // n occludes window windows[j, n] (coarse-to-fine occlusion refines different windows
  // per image).
  m.def("occlusion_batch_at(Tensor x, Tensor baseline, int[] window, int[] stride, Tensor windows) -> Tensor");
  m.def(
      "occlusion_batch_at.out(Tensor x, Tensor baseline, int[] window, int[] stride, Tensor windows, *, "
      "Tensor(a!) out) -> ()");
  // Per-window score differences (N, P) -> per-element mean over the covering windows,
  // (N, C, H, W), 0 where no window covers an element. Inference only.
  m.def("occlusion_accumulate(Tensor diffs, int[] shape, int[] window, int[] stride) -> Tensor");
  // Feature subsets (Shapley sampling): (B * N, C, H, W), copy-major; copy b of image n
  // keeps x where present[b, feature_mask[n, c, h, w]] and takes the baseline elsewhere.
  // feature_mask: int64 (1 or N, 1 or C, H, W), ids in [0, F); present: bool (B, F).
  m.def("feature_batch(Tensor x, Tensor baseline, Tensor feature_mask, Tensor present) -> Tensor");
  m.def(
      "feature_batch.out(Tensor x, Tensor baseline, Tensor feature_mask, Tensor present, *, Tensor(a!) out) -> ()");
  // Separable filter (Gaussian blur): x (N, C, H, W) filtered along H by taps_h and
  // along W by taps_w, each (1 or N, k) (per-sample taps allowed) in the compute type
  // (float64 for float64 x, else float32); output i reads input i + t - (k-1)/2 with the
  // border read as "reflect" (no edge repeat), "replicate" or "zeros".
  m.def("separable_filter(Tensor x, Tensor taps_h, Tensor taps_w, str padding=\"reflect\") -> Tensor");
  // Into a buffer of x's shape and dtype (reused across calls; it may be x itself).
  m.def(
      "separable_filter.out(Tensor x, Tensor taps_h, Tensor taps_w, str padding=\"reflect\", *, Tensor(a!) out) "
      "-> ()");
  // Its exact adjoint (the gradient with respect to x), borders included.
  m.def("separable_filter_backward(Tensor grad, Tensor taps_h, Tensor taps_w, str padding=\"reflect\") -> Tensor");
  // Total variation (Mahendran & Vedaldi) per sample, (N,): sum over channels and pixels
  // of ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2), differences leaving the image
  // taken as 0; and its gradient for an incoming (N,) gradient.
  m.def("total_variation(Tensor x, float beta=2.0) -> Tensor");
  m.def("total_variation_backward(Tensor grad, Tensor x, float beta=2.0) -> Tensor");
  // Yosinski et al. regularised ascent step, in place on x (N, C, H, W): zero the
  // entries of grad below its per-sample grad_percentile (of |grad|), x = (x + lr * grad)
  // * (1 - decay), then zero the pixels whose norm over channels is below the
  // norm_percentile or whose contribution sum_c |x * grad| is below the
  // contribution_percentile of their sample. Percentiles in [0, 100); 0 disables.
  m.def(
      "regularize_step_(Tensor(a!) x, Tensor grad, float lr, float decay=0.0, float grad_percentile=0.0, "
      "float norm_percentile=0.0, float contribution_percentile=0.0) -> ()");
  // Incremental occlusion's read boxes: (K, C, h, w), output k the box of src[sample[k]]
  // (N, C, H, W) whose top-left map coordinate is origin[k] (int64 (K, 2), may lie outside
  // the map), pad_value outside the map, and patch[k] (K, C, ph, pw) spliced in at
  // patch_origin[k] where it overlaps the box. Inference only.
  m.def(
      "patch_splice(Tensor src, Tensor sample, Tensor origin, int[] size, float pad_value=0.0, Tensor? patch=None, "
      "Tensor? patch_origin=None) -> Tensor");
  // The same into `out` (K, C, h, w), any layout, sharing no memory with src or patch.
  m.def(
      "patch_splice.out(Tensor src, Tensor sample, Tensor origin, int[] size, float pad_value=0.0, Tensor? patch=None, "
      "Tensor? patch_origin=None, *, Tensor(a!) out) -> ()");
  // Simonyan et al. saliency map: max over channels of |grad|, (N, C, H, W) -> (N, H, W).
  m.def("saliency_reduce(Tensor grad) -> Tensor");
}

#ifndef WITH_CUDA
// A CPU-only build still claims the CUDA key so that a CUDA tensor gets an error
// that says how to fix it, not the dispatcher's generic "could not run" message.
namespace {
void cuda_not_compiled(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(),
              ": interp_ext was built without CUDA kernels, so it cannot run on CUDA tensors. "
              "Rebuild with CUDA: install the CUDA toolkit (nvcc), set CUDA_HOME to its root, then run "
              "`FORCE_CUDA=1 pip install --no-build-isolation -e .` in the interp_ext checkout.");
}
}  // namespace

TORCH_LIBRARY_IMPL(interp_ext, CUDA, m) {
  for (const char* name : {"guided_relu", "guided_relu_", "guided_relu_backward", "guided_relu_backward.out",
                           "saliency_reduce", "gradcam", "cam", "occlusion_batch",
                           "occlusion_batch.out", "occlusion_batch_at", "occlusion_batch_at.out",
                           "occlusion_accumulate", "feature_batch",
                           "feature_batch.out", "separable_filter", "separable_filter.out", "separable_filter_backward",
                           "total_variation", "total_variation_backward", "regularize_step_", "patch_splice", "patch_splice.out"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&cuda_not_compiled>());
  }
}
#endif

#ifndef INTERP_EXT_NO_PYTHON
#include <torch/csrc/utils/pybind.h>
#include <torch/version.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "interp_ext native library: the operators live in torch.ops.interp_ext";
  m.def("_native_build_info", [] {
    pybind11::dict info;
    info["torch"] = TORCH_VERSION;
#ifdef WITH_CUDA
    info["cuda_compiled"] = true;
    info["cuda_version"] = interp_ext::cuda_runtime_version();
#else
    info["cuda_compiled"] = false;
    info["cuda_version"] = pybind11::none();
#endif
    return info;
  });
}
#endif
