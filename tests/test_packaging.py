"""What an installed wheel promises: the torch it was built for is pinned and checked
before the native library loads; every optional dependency names the extra that installs
it, and the extras in pyproject.toml hold those packages; `interp-ext --version`."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import interp_ext
from interp_ext import _extras, _native, cli

REPO = Path(__file__).resolve().parent.parent


def test_a_torch_other_than_the_builds_is_refused_with_what_to_do():
    with pytest.raises(ImportError) as e:
        _native.check_torch(built="2.13")
    message = str(e.value)
    assert "built for torch 2.13.*" in message and torch.__version__ in message
    assert "pip install --force-reinstall --no-build-isolation interp_ext" in message
    _native.check_torch(built=_native.running_torch())  # the same minor version passes
    _native.check_torch(built=None)  # unknown: not checked


def test_the_import_checks_the_torch_the_library_records(monkeypatch):
    built = ".".join(interp_ext.build_info()["torch"].split("+")[0].split(".")[:2])
    _native.load()  # the torch it was built with: loads
    monkeypatch.setattr(_native, "running_torch", lambda: "1.0")
    with pytest.raises(ImportError, match=rf"built for torch {re.escape(built)}\.\*"):
        _native.load()


def test_a_library_that_does_not_load_says_what_to_do(monkeypatch):
    def broken(name):
        raise ImportError("_C.so: undefined symbol: _ZN5torch8autograd13_wrap_outputs")

    monkeypatch.setattr(_native.importlib, "import_module", broken)
    with pytest.raises(ImportError, match="native library did not load .*undefined symbol.*reinstall interp_ext"):
        _native.load()


def test_the_installed_metadata_pins_the_torch_the_library_was_built_with():
    from importlib import metadata

    try:
        metadata.requires("interp_ext")
    except metadata.PackageNotFoundError:
        pytest.skip("interp_ext runs from a checkout without metadata")
    built = interp_ext.build_info()["torch"]
    assert _native.built_for_torch() == ".".join(built.split("+")[0].split(".")[:2]) == _native.running_torch()


def test_every_optional_dependency_is_in_its_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, (extra, package) in _extras.EXTRAS.items():
        assert package in extras[extra], (module, extra)
    assert "torch" not in project.get("dependencies", []) and "dependencies" in project["dynamic"]
    # [demo] is complete: the bundled model and the photos
    assert "interp_ext[models]" in extras["demo"] and "scikit-learn" in extras["demo"]
    assert (REPO / "LICENSE").read_text().startswith("Apache License") and project["license"] == "Apache-2.0"
    assert (REPO / "interp_ext" / "py.typed").is_file()


@pytest.mark.parametrize("call, module, extra", [
    (lambda: interp_ext.models.imagenet_categories(), "torchvision.models", "models"),
    (lambda: interp_ext.models.load(), "efficientnet_lite_pytorch", "models"),
    (lambda: interp_ext.features.build_index(torch.randn(8, 4)), "faiss", "faiss"),
    (lambda: interp_ext.features.embed(torch.randn(8, 4), n_components=2), "sklearn.decomposition", "features"),
])
def test_a_missing_optional_package_names_its_extra(monkeypatch, call, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'interp_ext\[{extra}\]'"):
        call()


def test_the_demo_names_its_extra(monkeypatch, tmp_path):
    from interp_ext import demo

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'interp_ext\[demo\]'"):
        demo.main(["--out", str(tmp_path)])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"interp-ext {interp_ext.__version__} (torch {torch.__version__})")


def test_the_library_carries_no_debug_info():
    """Release builds link with --strip-debug (the library was 26 MB, 20 of them debug info)."""
    lib = Path(interp_ext._C.__file__)
    out = subprocess.run(["readelf", "-S", "--wide", str(lib)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("no readelf")
    assert ".debug_info" not in out.stdout, f"{lib.name}: {lib.stat().st_size / 1e6:.1f} MB with debug info"
