"""Every native CPU kernel's boundary cases under AddressSanitizer + UBSan.

`make sanitize` (and `make test`) build the CPU kernels with -fsanitize=address,undefined
into build-asan/ and run tests/sanitizer_cases.py against that library in a fresh
python with libasan preloaded: an out-of-bounds access or undefined behaviour aborts it
with the sanitizer's report, which this test shows.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = os.environ.get("INTERP_EXT_SANITIZE_LIB", str(ROOT / "build-asan" / "libinterp_ext_ops.so"))


def _runtime(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    if out.returncode != 0 or not os.path.isabs(path):
        pytest.fail(f"gcc does not know {name}: the sanitizer build needs GCC's sanitizer runtimes")
    return path


def test_boundary_cases_are_clean_under_asan_and_ubsan():
    if not Path(LIB).is_file():
        pytest.fail(f"the sanitizer build is missing: run `make sanitize-build` (looked for {LIB})")
    # libstdc++ preloaded too: ASan resolves the real __cxa_throw when it starts, and
    # torch's errors are C++ exceptions
    env = dict(os.environ, LD_PRELOAD=f"{_runtime('libasan.so')} {_runtime('libstdc++.so')}",
               # python and torch are not instrumented: their leaks and allocator quirks are not ours
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sanitizer_cases.py"), LIB], capture_output=True,
                         text=True, env=env, timeout=900)
    report = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, report
    assert "AddressSanitizer" not in out.stderr and "runtime error:" not in out.stderr, report
    assert out.stdout.startswith("ok: "), report
