#!/usr/bin/env bash
# The one prepared GPU run (device machine: its own torch, nvcc and ninja).
# Builds against that torch in place (nothing installed), runs the CUDA tests,
# compute-sanitizer on a small case and the benchmarks, and writes logs + JSON
# to $OUT (default ./gpu_out).
#   bash scripts/gpu_check.sh            # everything
#   QUICK=1 bash scripts/gpu_check.sh    # short benchmark runs
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
step() { echo "=== $1 ($(date +%T))"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  step "test-only wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step "build (in place, against this machine's torch)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! FORCE_CUDA=1 $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
$PY -c "import interp_ext, json; print(json.dumps(interp_ext.build_info()))" | tee "$OUT/build_info.json"

step "CUDA tests + op tests (one file at a time; full logs in \$OUT)"
for f in tests/test_cuda.py tests/test_gradcam_op.py tests/test_occlusion_op.py tests/test_shapley.py tests/test_blur.py tests/test_tv.py tests/test_regularize.py tests/test_guided_relu.py tests/test_gradient_methods.py tests/test_cam_methods.py; do
  log="$OUT/pytest_$(basename "$f" .py).log"
  $PY -X faulthandler -m pytest -v -p no:cacheprovider -p no:logging "$f" > "$log" 2>&1 || status=1
  tail -1 "$log"
  # a crash: the test that was running and the frames inside our code
  grep -E "FAILED|Fatal Python error|File \".*(tests|interp_ext)/" "$log" | head -15
done

step "compute-sanitizer (memcheck, small case)"
cat > /tmp/sanitize_case.py <<'PYEOF'
import torch, interp_ext
from interp_ext import ops
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for n in (1, 7, 4099):
        g = torch.randn(n, device="cuda", dtype=dtype); x = torch.randn(n, device="cuda", dtype=dtype) * 4
        ops.guided_relu_backward(g, x); ops.guided_relu_backward(g[1:], x[1:], 6.0, "deconvnet")
        ops.guided_relu_backward(g, x, out=torch.empty_like(g))
    ops.saliency_reduce(torch.randn(2, 3, 17, 9, device="cuda", dtype=dtype))
    a = torch.randn(3, 40, 7, 5, device="cuda", dtype=dtype).relu(); g = torch.randn_like(a)
    for variant in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"):
        ops.gradcam(a, g, variant=variant, output_size=(33, 21))
    ops.gradcam(torch.randn(2, 3, 120, 120, device="cuda", dtype=dtype), torch.randn(2, 3, 120, 120, device="cuda", dtype=dtype))
    ops.cam(a, torch.randn(10, 40, device="cuda", dtype=dtype), torch.tensor([0, 3, 9], device="cuda"), output_size=(8, 8))
    img = torch.randn(2, 3, 11, 13, device="cuda", dtype=dtype)
    p = ops.occlusion_window_count((3, 11, 13), (2, 4, 5), (1, 3, 4))
    ops.occlusion_batch(img, torch.zeros(1, 3, 11, 13, device="cuda", dtype=dtype), (2, 4, 5), (1, 3, 4), 0, p)
    ops.occlusion_accumulate(torch.randn(2, p, device="cuda", dtype=dtype), (3, 11, 13), (2, 4, 5), (1, 3, 4))
    ops.occlusion_batch_at(img, torch.zeros(2, 3, 11, 13, device="cuda", dtype=dtype), (2, 4, 5), (1, 3, 4),
                           torch.randint(0, p, (4, 2), device="cuda"))
    mask = torch.randint(0, 5, (2, 1, 11, 13), device="cuda")
    ops.feature_batch(img, torch.zeros(2, 3, 11, 13, device="cuda", dtype=dtype), mask, torch.rand(3, 5, device="cuda") > 0.5)
    for k in (5, 4, 41):  # tiled, even, two-pass
        blur_x = torch.randn(2, 3, 37, 70, device="cuda", dtype=dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        taps = torch.rand(2, k, device="cuda", dtype=acc)
        for pad in ("reflect", "replicate", "zeros"):
            ops.separable_filter(blur_x, taps, taps[:1], pad)
            ops.separable_filter(blur_x, taps, taps[:1], pad, out=torch.empty_like(blur_x))
            torch.ops.interp_ext.separable_filter_backward(blur_x, taps, taps[:1], pad)
    ops.total_variation(img, 1.5); torch.ops.interp_ext.total_variation_backward(torch.ones(2, device="cuda", dtype=dtype), img, 1.5)
    src = torch.randn(3, 5, 23, 17, device="cuda", dtype=dtype); k = 70
    sample = torch.randint(0, 3, (k,), device="cuda"); origin = torch.randint(-9, 25, (k, 2), device="cuda")
    patch = torch.randn(k, 5, 6, 4, device="cuda", dtype=dtype); porigin = torch.randint(-5, 22, (k, 2), device="cuda")
    ops.patch_splice(src, sample, origin, (11, 9), float("-inf"), patch, porigin)
    ops.patch_splice(src, sample, origin, (0, 9)); ops.patch_splice(src, sample[:0], origin[:0], (3, 3))
    ops.patch_splice(src, sample, origin, (11, 9), 0.0, patch, porigin, out=torch.empty(k, 5, 9, 11, device="cuda", dtype=dtype).transpose(2, 3))
    reg = img.clone(); ops.regularize_step_(reg, torch.randn_like(reg), 0.5, decay=0.1, grad_percentile=10.0,
                                            norm_percentile=20.0, contribution_percentile=20.0)
# launch-geometry edges: grid y past 65535 (loops), windows beyond the border, a huge stride
a = torch.rand(65537, 2, 1, 1, device="cuda"); ops.gradcam(a, a, variant="gradcam++")
ops.total_variation(torch.randn(700, 100, 1, 2, device="cuda"))
ops.separable_filter(torch.randn(1, 1, 2_100_000, 1, device="cuda"), torch.rand(1, 3, device="cuda"), torch.rand(1, 1, device="cuda"))
img = torch.randn(2, 3, 8, 8, device="cuda")
for window, stride in (((3, 2, 2), (3, 5, 5)), ((1, 1, 2), (1, 1, 2**62))):
    p = ops.occlusion_window_count((3, 8, 8), window, stride)
    ops.occlusion_batch(img, torch.zeros_like(img[:1]), window, stride, 0, p)
    ops.occlusion_accumulate(torch.randn(2, p, device="cuda"), (3, 8, 8), window, stride)
torch.cuda.synchronize(); print("sanitizer case done")
PYEOF
PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 $PY /tmp/sanitize_case.py \
  > "$OUT/sanitizer.log" 2>&1; rc=$?
tail -5 "$OUT/sanitizer.log"; [ $rc -eq 0 ] || { echo "SANITIZER rc=$rc"; status=1; }

step "benchmarks"
if [ -z "${SKIP_BENCH:-}" ]; then
  for b in benchmarks/bench_guided_relu.py benchmarks/bench_gradcam.py benchmarks/bench_blur.py; do
    $PY "$b" --device cuda --out "$OUT" ${QUICK:+--quick} 2>&1 | grep -v Warning || status=1
  done
  # incremental occlusion vs full re-inference vs Captum on the card (stride 16 only: the time budget)
  $PY benchmarks/bench_occlusion.py --incremental --device cuda --strides 16 ${QUICK:+--models resnet18} --out "$OUT" \
    2>&1 | grep -v Warning || status=1
  # patch_splice against a same-size copy (the issue asks for within 2x)
  $PY - > "$OUT/patch_splice_vs_copy.json" <<'PYEOF' || status=1
import json, torch
from interp_ext import ops
src = torch.randn(1, 64, 112, 112, device="cuda"); k = 256
sample = torch.zeros(k, dtype=torch.long, device="cuda"); origin = torch.randint(-2, 100, (k, 2), device="cuda")
patch = torch.randn(k, 64, 16, 16, device="cuda"); porigin = origin + 1
out = torch.empty(k, 64, 19, 19, device="cuda")
def ms(fn, reps=50):
    fn(); torch.cuda.synchronize(); a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); [fn() for _ in range(reps)]; b.record(); torch.cuda.synchronize(); return a.elapsed_time(b) / reps
splice = ms(lambda: ops.patch_splice(src, sample, origin, (19, 19), 0.0, patch, porigin, out=out))
same = torch.randn_like(out)
copy = ms(lambda: out.copy_(same))
print(json.dumps({"device": torch.cuda.get_device_name(), "patch_splice_ms": splice, "same_size_copy_ms": copy,
                  "ratio": splice / copy}))
PYEOF
  cat "$OUT/patch_splice_vs_copy.json"
  # the metrics on the card: images/s beside Quantus given device="cuda" (same curves)
  $PY benchmarks/bench_metrics.py --device cuda ${QUICK:+--quick} --out "$OUT" 2>&1 | grep -v Warning || status=1
fi

step "done, status $status"
exit $status
