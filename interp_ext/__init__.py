"""interp_ext: native C++/CUDA kernels for fast CNN interpretability.

``import interp_ext`` loads the native library, which registers the operators in
``torch.ops.interp_ext``; the typed wrappers live in :mod:`interp_ext.ops`.
"""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _native

_native.load()  # first of ours: registers torch.ops.interp_ext (checks the torch it needs)
from . import _C  # noqa: E402,F401
from . import _fake  # noqa: F401
from . import ops
from ._build import build_info
from . import attr
from .attr import *  # noqa: F401,F403  (the methods, listed in attr.__all__)
from . import features, metrics, visualize
from .engine import Explainer, Explanation

__version__ = "0.1.0"

__all__ = [*attr.__all__, "Explainer", "Explanation", "__version__", "build_info", "features", "metrics", "ops", "visualize"]
