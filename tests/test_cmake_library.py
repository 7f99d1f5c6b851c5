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


def test_cmake_built_library_runs_an_op():
    if not Path(LIB).is_file():
        pytest.fail(f"the CMake build is missing: run `make cmake` (looked for {LIB})")
    # A fresh interpreter: the interp_ext package registers the same ops, which may
    # only be registered once per process.
    out = subprocess.run([sys.executable, "-c", SCRIPT, LIB], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[1.0, 0.0, 0.0, 0.0]", "[[[3.0]]]"]
