"""The CMake build of the same library loads into plain torch and runs an op."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIB = os.environ.get("INTERP_EXT_CMAKE_LIB", str(Path(__file__).resolve().parents[1] / "build-cmake" / "libinterp_ext_ops.so"))

SCRIPT = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
g = torch.tensor([1.0, -1.0, 2.0, 3.0])
x = torch.tensor([1.0, 1.0, -1.0, 7.0])
print(torch.ops.interp_ext.guided_relu_backward(g, x, 6.0, "guided").tolist())
print(torch.ops.interp_ext.saliency_reduce(torch.tensor([[[[1.0]], [[-3.0]]]])).tolist())
"""


CPU_ONLY_SCRIPT = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("interp_ext::"))
assert names, "no interp_ext ops registered"
# No GPU is needed to reach the CUDA kernel: redispatch straight to the CUDA key.
cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
for name in names:
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
try:
    torch.ops.interp_ext.guided_relu_backward.default.redispatch(cuda, torch.ones(3), torch.ones(3), None, "guided")
except RuntimeError as e:
    print(e)
else:
    print("no error")
"""


def run_fresh(script: str, lib: str) -> str:
    if not Path(lib).is_file():
        pytest.fail(f"the CMake build is missing: run `make cmake` (looked for {lib})")
    # A fresh interpreter: the interp_ext package registers the same ops, which may
    # only be registered once per process.
    out = subprocess.run([sys.executable, "-c", script, lib], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cmake_built_library_runs_an_op():
    assert run_fresh(SCRIPT, LIB).split("\n")[:2] == ["[1.0, 0.0, 0.0, 0.0]", "[[[3.0]]]"]


def test_cpu_only_build_tells_cuda_users_how_to_rebuild():
    message = run_fresh(CPU_ONLY_SCRIPT, LIB.replace("libinterp_ext_ops.so", "libinterp_ext_ops_cpu.so"))
    assert "interp_ext::guided_relu_backward: interp_ext was built without CUDA kernels" in message
    assert "FORCE_CUDA=1 pip install --no-build-isolation -e ." in message
