"""Sphinx configuration of the API reference (``make docs``).

The pages are written at build time from the package itself (``public_api.py``), one per
public module, into ``generated/`` (git-ignored): every public class, function, method and
property appears once, at its canonical place, and a module that re-exports it links there.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # the checkout, for an uninstalled build

import interp_ext  # noqa: E402  (the native library must be built: `make docs` builds it)
import public_api  # noqa: E402

project = "interp_ext"
author = "The interp_ext developers"
release = version = interp_ext.__version__
copyright = "the interp_ext developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
default_role = "py:obj"  # `name` in a docstring links where it names a documented object
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
html_theme = "alabaster"
html_title = f"interp_ext {release} API reference"
html_static_path: list[str] = []


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def _page(module: str, entries: list, reexports: list) -> str:
    lines = [_title(module), f".. automodule:: {module}\n"]
    if reexports:
        refs = ", ".join(f":py:obj:`{name} <{target}>`" for name, target in reexports)
        lines.append(f"Also exported here: {refs}.\n")
    for e in entries:
        if e.is_class:
            lines.append(f".. autoclass:: {e.qualname}")
            if e.members:
                lines.append(f"   :members: {', '.join(e.members)}")
        else:
            lines.append(f".. autofunction:: {e.qualname}")
        lines.append("")
    return "\n".join(lines)


def write_pages(out: Path) -> list[str]:
    """One page per public module under ``out``, rewritten only where its text changed
    (stale pages of modules that no longer exist are removed). Returns the module names."""
    modules, entries = public_api.collect()
    out.mkdir(exist_ok=True)
    wanted = set()
    for module in modules:
        own = [e for e in entries if e.module == module]
        reexports = sorted((a.rsplit(".", 1)[1], e.qualname) for e in entries for a in e.also
                           if a.rsplit(".", 1)[0] == module)
        path = out / f"{module}.rst"
        text = _page(module, own, reexports)
        wanted.add(path.name)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    return list(modules)


write_pages(HERE / "generated")
