"""Loading the native library (``interp_ext._C``), which registers ``torch.ops.interp_ext``.

The library links against torch's C++ symbols, which change between torch's minor
versions: under another torch it fails to load with an "undefined symbol" error, or
loads and misbehaves. The wheel pins the torch it was built with (``torch==X.Y.*`` in its
metadata) and the library records it; after loading it, the running torch is checked
against that record, and a failed load becomes an error that says what to do.
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


def check_torch(built: Optional[str]) -> None:
    """An ImportError when the running torch is not the minor version ``built`` (None:
    unknown, not checked)."""
    if built is not None and built != running_torch():
        raise ImportError(f"interp_ext was built for torch {built}.*, but torch {torch.__version__} is installed: "
                          f"install torch=={built}.* or {_REBUILD}")


def load() -> None:
    """Load the library, then check the torch it records having been built with (the
    metadata is read only when the load fails: it costs ~40 ms at every import)."""
    try:
        native = importlib.import_module("interp_ext._C")
    except ImportError as e:
        built = built_for_torch()
        which = f"built for torch {built}.*" if built else "built for another torch, or not built"
        raise ImportError(f"interp_ext's native library did not load ({e}); it was {which} and torch "
                          f"{torch.__version__} is installed: {_REBUILD}") from e
    check_torch(".".join(native._native_build_info()["torch"].split("+")[0].split(".")[:2]))
