from __future__ import annotations

from typing import Any

import torch

from . import _C


def build_info() -> dict[str, Any]:
    """How the native library was built.

    Keys: ``version`` (package), ``torch`` (torch version built against),
    ``cuda_compiled`` (CUDA kernels were compiled), ``cuda_version`` (str or None)
    and ``ops`` (the registered ``torch.ops.interp_ext`` operators, overloads included).
    """
    from . import __version__

    native = _C._native_build_info()
    prefix = "interp_ext::"
    ops = sorted(n[len(prefix):] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))
    return {
        "version": __version__,
        "torch": native["torch"],
        "cuda_compiled": bool(native["cuda_compiled"]),
        "cuda_version": native["cuda_version"],
        "ops": ops,
    }
