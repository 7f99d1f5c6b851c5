#!/usr/bin/env bash
# Build the wheel from the committed sources (CPU-only, then with the CUDA sources when a
# toolkit is present), install each into a fresh venv outside the checkout with its [demo]
# extra, and run the README's examples there (tests/wheel_smoke.py). CI runs it after
# `make test`. WHEEL_CHECK_CUDA=0 skips the CUDA wheel.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
PYTHON_SYS=${PYTHON_SYS:-python3.11}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# a copy of the committed tree: the wheel build must not touch the checkout's build/ folder
git -C "$REPO" archive --format=tar HEAD | tar -x -C "$WORK" --one-top-level=src
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
"$PYTHON_SYS" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# the same pinned torch as the build, then the wheel's own requirements from its metadata
"$VPY" -m pip install -q "torch==$TORCH" "$(grep -E '^torchvision==' "$REPO/requirements-dev.txt")"
kinds=(cpu)
if [ "${WHEEL_CHECK_CUDA:-1}" != 0 ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then kinds+=(cuda); fi
for kind in "${kinds[@]}"; do
  echo "== wheel ($kind)"
  use_cuda=$([ "$kind" = cpu ] && echo 0 || echo 1)
  (cd "$WORK/src" && rm -rf build && USE_CUDA=$use_cuda "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$WORK/dist-$kind")
  wheel=$(ls "$WORK/dist-$kind"/interp_ext-*.whl)
  ls -la "$wheel"
  "$VPY" -m pip install -q --force-reinstall --no-deps "$wheel"
  "$VPY" -m pip install -q "$wheel[demo]"
  (cd "$WORK" && PATH="$WORK/venv/bin:$PATH" "$VPY" "$REPO/tests/wheel_smoke.py")
done
