"""The API reference: every public module, class, function, method and property has a
docstring. That the Sphinx build runs without a warning is checked once, by `make docs`
(-W: any warning fails it), which .ci/run runs after `make test`; not again in here.

"Public" is what docs/api/public_api.py walks: the modules without a ``_`` name part, their
``__all__`` (or the classes and functions they define), and the classes' public methods
and properties, those inherited from interp_ext's private bases included.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api"
sys.path.insert(0, str(DOCS))

import public_api  # noqa: E402


@pytest.fixture(scope="module")
def api():
    return public_api.collect()


def test_every_public_object_has_a_docstring():
    missing = public_api.missing_docstrings()
    if missing:
        pytest.fail(f"{len(missing)} public objects without a docstring:\n" + "\n".join(missing), pytrace=False)


def test_the_walk_sees_the_api(api):
    modules, entries = api
    by_name = {e.qualname: e for e in entries}
    for module in ("interp_ext", "interp_ext.attr", "interp_ext.ops", "interp_ext.models", "interp_ext.features",
                   "interp_ext.visualize", "interp_ext.compat.captum", "interp_ext.compat.pytorch_grad_cam",
                   "interp_ext.engine", "interp_ext.layers"):
        assert module in modules
    assert not any(part.startswith("_") for m in modules for part in m.split(".")[1:])
    # documented where defined; the packages that re-export it link there
    gradcam = by_name["interp_ext.attr.cam.GradCAM"]
    assert {"interp_ext.GradCAM", "interp_ext.attr.GradCAM"} <= set(gradcam.also)
    assert "attribute" in gradcam.members  # inherited from a private base: still checked
    # defined in a private module: documented at the public package exporting it
    assert "interp_ext.compat.captum.Saliency" in by_name
    assert "interp_ext.build_info" in by_name
    for name in ("interp_ext.attr.cam.CAM", "interp_ext.attr.cam.GuidedGradCAM",
                 "interp_ext.features.index.FeatureIndex"):
        assert by_name[name].members, name
    assert "interp_ext.models.center_crop" in by_name
    # each object once
    assert len({id(e.obj) for e in entries}) == len(entries)


def test_inherited_docstrings_count_only_from_our_classes():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x

    Plain.__module__ = "interp_ext.fake_for_test"
    assert public_api.public_members(Plain) == ["forward"]  # nn.Module's own members are torch's
    assert public_api.member_doc(Plain, "forward") is None  # nn.Module.forward's docstring is not ours

    class Base:
        def run(self):
            """Run."""

    class Child(Base):
        def run(self):
            pass

    Base.__module__ = Child.__module__ = "interp_ext.fake_for_test"
    assert public_api.member_doc(Child, "run") == "Run."
