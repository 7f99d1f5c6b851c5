"""Run Captum's own test files against ``interp_ext.compat.captum``.

The files are read at run time from a local mirror of Captum's repository (never copied
into this one), their ``from captum.attr... import <Class>`` lines are pointed at
``interp_ext.compat.captum`` (Captum's test helpers, ``captum.testing`` and the private
utilities some tests use, stay Captum's: the installed package), they are written to a
temporary folder and run by pytest in a subprocess. `run` returns each test's outcome.

    python tests/captum_harness.py            # run and print the outcomes
    python tests/captum_harness.py --captum   # the same files against Captum itself

Environment: ``CAPTUM_MIRROR`` (default ``/work/.mirror/pytorch+captum/repo``), a git
directory of https://github.com/pytorch/captum.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

MIRROR = os.environ.get("CAPTUM_MIRROR", "/work/.mirror/pytorch+captum/repo")
# Captum's main branch of 2025-10-02, after the installed 0.9.0's code was released: its
# tests use only what the installed captum.testing helpers provide.
COMMIT = "faac08773131888714b15709b28494ebeea7f6eb"
FILES = (
    "tests/attr/test_occlusion.py",
    "tests/attr/test_shapley.py",
    "tests/attr/test_saliency.py",
    "tests/attr/test_guided_backprop.py",
    "tests/attr/test_deconvolution.py",
    "tests/attr/test_guided_grad_cam.py",
    "tests/attr/test_integrated_gradients_basic.py",
    "tests/attr/test_input_x_gradient.py",
    "tests/attr/layer/test_grad_cam.py",
)
COMPAT = "interp_ext.compat.captum"

# from captum.attr._core.<...> import X  /  from captum.attr import (X, Y,)
_IMPORT = re.compile(r"^from (captum\.attr(?:\._core(?:\.[\w.]+)?)?) import (\([^)]*\)|[^\n]+)$", re.M)

# A stand-in for the `parameterized` package (only `parameterized.expand` of a list of
# values, as these files use it), written when the package is not installed.
_PARAMETERIZED_SHIM = '''\
import sys


class parameterized:
    @staticmethod
    def expand(values):
        def decorate(fn):
            namespace = sys._getframe(1).f_locals  # the class body being defined
            for i, value in enumerate(values):
                args = value if isinstance(value, tuple) else (value,)

                def case(self, _args=args):
                    return fn(self, *_args)

                case.__name__ = f"{fn.__name__}_{i}"
                namespace[case.__name__] = case
            return None

        return decorate
'''


def available() -> tuple[bool, str]:
    """Whether the mirror holds the pinned commit (else why not)."""
    if not Path(MIRROR).exists():
        return False, f"no Captum mirror at {MIRROR} (set CAPTUM_MIRROR to a git directory of pytorch/captum)"
    probe = subprocess.run(["git", f"--git-dir={MIRROR}", "cat-file", "-e", f"{COMMIT}^{{commit}}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"the Captum mirror at {MIRROR} lacks commit {COMMIT}"
    return True, ""


def rewrite(source: str) -> tuple[str, list[str]]:
    """Point the class imports from ``captum.attr`` at the compat module; returns the new
    source and the names rewritten. Private helpers (``_name``) stay Captum's."""
    names: list[str] = []

    def sub(match: re.Match) -> str:
        items = [s.strip() for s in match.group(2).strip("()").replace("\n", ",").split(",") if s.strip()]
        classes = [s for s in items if not s.split(" as ")[0].startswith("_")]
        helpers = [s for s in items if s.split(" as ")[0].startswith("_")]
        names.extend(classes)
        lines = []
        if classes:
            lines.append(f"from {COMPAT} import {', '.join(classes)}")
        if helpers:
            lines.append(f"from {match.group(1)} import {', '.join(helpers)}")
        return "\n".join(lines)

    return _IMPORT.sub(sub, source), names


def extract(dest: Path, against_captum: bool = False) -> list[Path]:
    """Write the rewritten test files (flat names, ``test_*.py``) into ``dest``."""
    out = []
    for path in FILES:
        source = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:{path}"], capture_output=True,
                                text=True, check=True).stdout
        if not against_captum:
            source, names = rewrite(source)
            if not names:
                raise RuntimeError(f"{path}: no captum.attr class import found to rewrite")
        name = "test_" + path[len("tests/attr/"):].replace("/", "_").replace("test_", "")
        target = dest / name
        target.write_text(source)
        out.append(target)
    try:
        import parameterized  # noqa: F401
    except ImportError:
        shim = dest / "_shim" / "parameterized"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text(_PARAMETERIZED_SHIM)
    return out


def run(against_captum: bool = False, timeout: float = 600) -> dict[str, tuple[str, str]]:
    """{"<file>::<test>": (outcome, message)} with outcome "passed", "failed" or "skipped"."""
    with tempfile.TemporaryDirectory(prefix="captum_suite_") as tmp:
        dest = Path(tmp)
        extract(dest, against_captum)
        env = dict(os.environ)
        shim = dest / "_shim"
        if shim.exists():
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)
        report = dest / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(dest),
               "-o", "addopts=", f"--junitxml={report}", str(dest)]
        proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        results: dict[str, tuple[str, str]] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            file = case.get("classname", "").split(".")[0] + ".py"
            key = f"{file}::{case.get('name')}"
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome, message = "failed", (child.get("message") or "")[:500]
                elif child.tag == "skipped":
                    outcome, message = "skipped", (child.get("message") or "")[:500]
            results[key] = (outcome, message)
        return results


if __name__ == "__main__":
    ok, why = available()
    if not ok:
        sys.exit(why)
    res = run(against_captum="--captum" in sys.argv)
    for key, (outcome, message) in sorted(res.items()):
        if outcome != "passed":
            print(f"{outcome:8s} {key}: {message}")
    counts = {o: sum(1 for v in res.values() if v[0] == o) for o in ("passed", "failed", "skipped")}
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
