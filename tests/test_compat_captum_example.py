"""A script written for Captum (tests/captum_harness_example.py) runs unchanged on
interp_ext.compat.captum but for its import line, and prints the same numbers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().with_name("captum_harness_example.py")
IMPORT = "from captum.attr import "
BLOCK_CAPTUM = "import sys; sys.modules['captum'] = None\n"  # the compat run must not touch Captum


def _run(source: str) -> dict:
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_captum_script_runs_with_only_the_import_changed():
    pytest.importorskip("captum.attr")
    source = SCRIPT.read_text()
    assert source.count(IMPORT) == 1
    ported = source.replace(IMPORT, "from interp_ext.compat.captum import ")
    theirs, ours = _run(source), _run(BLOCK_CAPTUM + ported)
    assert theirs.keys() == ours.keys()
    for key in theirs:
        torch.testing.assert_close(torch.tensor(ours[key]), torch.tensor(theirs[key]), rtol=1e-5, atol=1e-6, msg=key)
