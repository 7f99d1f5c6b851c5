"""Loading the native library (``interp_ext._C``), which registers ``torch.ops.interp_ext``.

The library links against torch's C++ symbols, which change between torch's minor
versions: under another torch it fails to load with an "undefined symbol" error, or
loads and misbehaves. The wheel pins the torch it was built with (``torch==X.Y.*`` in its
metadata); this checks the running torch against that pin first, and turns a failed load
into an error that says what to do.
"""
from __future__ import annotations

import importlib
import re
from typing import Optional

import torch

_REBUILD = ("reinstall interp_ext against this torch (pip install --force-reinstall --no-build-isolation "
            "interp_ext, or `make build` in a checkout)")


def built_for_torch() -> Optional[str]:
    """The torch minor version ``X.Y`` the installed package requires, from its metadata;
    None when the package runs from a checkout without metadata."""
    from importlib import metadata

    try:
        requirements = metadata.requires("interp_ext") or []
    except metadata.PackageNotFoundError:
        return None
    for req in requirements:
        m = re.fullmatch(r"torch\s*==\s*(\d+\.\d+)\.\*", req.split(";")[0].strip())
        if m:
            return m.group(1)
    return None


def running_torch() -> str:
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def check_torch(built: Optional[str] = None) -> None:
    """An ImportError before the library loads when the running torch is not the minor
    version it was built for."""
    built = built if built is not None else built_for_torch()
    if built is not None and built != running_torch():
        raise ImportError(f"interp_ext was built for torch {built}.*, but torch {torch.__version__} is installed: "
                          f"install torch=={built}.* or {_REBUILD}")


def load() -> None:
    check_torch()
    try:
        importlib.import_module("interp_ext._C")
    except ImportError as e:
        built = built_for_torch()
        which = f"built for torch {built}.*" if built else "built for another torch, or not built"
        raise ImportError(f"interp_ext's native library did not load ({e}); it was {which} and torch "
                          f"{torch.__version__} is installed: {_REBUILD}") from e
