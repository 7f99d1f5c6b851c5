"""Build of the interp_ext native library (see README "Build switches").

CUDAExtension when nvcc and a CUDA build of torch are present (or FORCE_CUDA=1),
else CppExtension. USE_CUDA=0 forces a CPU-only build; DEBUG=1 builds -O0 -g (release
builds carry no debug info). INTERP_EXT_NO_NATIVE=1 installs the Python package without
building the library: `make build` then builds it in place with ``build_ext --inplace``
and a persistent ninja folder (build/), so touching one source rebuilds only that file.

The wheel requires the torch minor version it was built against: the library links
against torch's C++ symbols, which change between minor versions.
"""
import glob
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "false", "no", "off")


def cuda_toolkit_root() -> str | None:
    """The real toolkit root. torch guesses the folder above `nvcc`, which is wrong
    when nvcc is a wrapper or link in a general bin/ (as /usr/local/bin/nvcc here)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    candidates = [str(Path(nvcc).resolve().parent.parent)] if nvcc else []
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in candidates:
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return os.path.abspath(root)
    return None


def pip_cuda_include_dirs() -> list[str]:
    """Headers such as cusparse.h, which ATen/cuda/CUDAContext.h pulls in, may only
    live in the pip wheels' nvidia/cu*/include folders."""
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


USE_CUDA = env_flag("USE_CUDA")
FORCE_CUDA = env_flag("FORCE_CUDA")
DEBUG = bool(env_flag("DEBUG"))

cuda_root = cuda_toolkit_root() if USE_CUDA is not False else None
if cuda_root:
    os.environ["CUDA_HOME"] = cuda_root  # before cpp_extension reads it at import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if USE_CUDA is False:
    with_cuda = False
elif FORCE_CUDA:
    with_cuda = True
    if not cuda_root:
        sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root")
else:
    with_cuda = cuda_root is not None and torch.version.cuda is not None

if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # the H100/H200 we test on

TORCH_RELEASE = torch.__version__.split("+")[0]
TORCH_REQUIREMENT = "torch=={}.{}.*".format(*TORCH_RELEASE.split(".")[:2])

opt = ["-O0", "-g"] if DEBUG else ["-O3"]
cxx_flags = opt + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
nvcc_flags = (["-O0", "-g", "-G"] if DEBUG else ["-O3"]) + ["--expt-relaxed-constexpr", "-lineinfo"]
sources = ["csrc/interp_ext.cpp", *sorted(glob.glob("csrc/autograd/*.cpp")), *sorted(glob.glob("csrc/cpu/*.cpp"))]
define_macros = []
include_dirs = [str(ROOT / "csrc")]
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("WITH_CUDA", None))
    include_dirs += pip_cuda_include_dirs()

Extension = CUDAExtension if with_cuda else CppExtension
ext = Extension(
    name="interp_ext._C",
    sources=sources,
    include_dirs=include_dirs,
    define_macros=define_macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
    extra_link_args=["-fopenmp"] + (["-g"] if DEBUG else ["-Wl,--strip-debug"]),
)
build_native = not env_flag("INTERP_EXT_NO_NATIVE")

setup(
    name="interp_ext",
    version="0.1.0",
    packages=find_packages(include=["interp_ext", "interp_ext.*"]),
    package_data={"interp_ext": ["py.typed"]},
    install_requires=[TORCH_REQUIREMENT, "numpy", "pillow", "tqdm"],
    ext_modules=[ext] if build_native else [],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
)
