"""The public API of interp_ext, found by walking the package.

One definition for two users: ``conf.py`` documents exactly these objects in the API
reference, and ``tests/test_docs.py`` requires a docstring of each of them.

- Public modules: ``interp_ext`` and every submodule with no name part starting with ``_``.
- A module's public names: its ``__all__``; without one, the classes and functions it
  defines (``obj.__module__`` is the module) whose names do not start with ``_``.
- A public class's public members: methods, class / static methods and properties whose
  names do not start with ``_`` (and ``__call__``), defined by the class or by a base
  class of interp_ext's; members of other bases (``nn.Module``, ``tuple`` ...) are theirs.
- Each object is documented once, at its canonical place: the module that defines it when
  that module is public and exports it, else the deepest public module that exports it.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

PACKAGE = "interp_ext"


@dataclass
class Entry:
    """One public class or function at its canonical place, and where else it is exported."""

    module: str
    name: str
    obj: Any
    members: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.obj)


def public_modules() -> list[str]:
    """Dotted names of the public modules, the package first, then in walk order."""
    pkg = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(pkg.__path__, PACKAGE + "."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def _documentable(obj: Any) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj) or (
        callable(obj) and not inspect.ismodule(obj) and hasattr(obj, "__wrapped__"))


def exported_names(mod: ModuleType) -> list[str]:
    """The module's public classes and functions, by the names it exports them under."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, o in vars(mod).items()
                 if not n.startswith("_") and _documentable(o) and getattr(o, "__module__", None) == mod.__name__]
    return [n for n in names if _documentable(getattr(mod, n))]


def _raw_member(cls: type, name: str) -> tuple[Optional[type], Any]:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass, vars(klass)[name]
    return None, None


def _function_of(member: Any) -> Any:
    if isinstance(member, property):
        return member.fget
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    return getattr(member, "func", member)  # functools.cached_property keeps .func


def _is_method_like(member: Any) -> bool:
    if isinstance(member, (property, classmethod, staticmethod)):
        return True
    if type(member).__name__ == "cached_property":
        return True
    return inspect.isfunction(member) or (callable(member) and hasattr(member, "__wrapped__"))


def _ours(klass: Optional[type]) -> bool:
    return klass is not None and (klass.__module__ or "").split(".")[0] == PACKAGE


def public_members(cls: type) -> list[str]:
    """Public methods and properties of ``cls`` defined by interp_ext classes (sorted)."""
    out = []
    for name in dir(cls):
        if name.startswith("_") and name != "__call__":
            continue
        klass, member = _raw_member(cls, name)
        if name in getattr(klass, "__dataclass_fields__", {}):
            continue  # a field (its default may be a function), described by the class
        if _ours(klass) and _is_method_like(member):
            out.append(name)
    return sorted(out)


def member_doc(cls: type, name: str) -> Optional[str]:
    """The member's docstring, its own or that of the member it overrides in a base class
    of interp_ext's (never one inherited from torch or the standard library)."""
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        member = vars(klass).get(name)
        if member is None:
            continue
        doc = getattr(_function_of(member), "__doc__", None)
        if doc and doc.strip():
            return inspect.cleandoc(doc)
    return None


def object_doc(obj: Any) -> Optional[str]:
    """The object's own docstring (a class's, not a base's)."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def collect() -> tuple[dict[str, ModuleType], list[Entry]]:
    """Every public module (by name) and every public class and function, once each."""
    modules = {name: importlib.import_module(name) for name in public_modules()}
    exports: dict[int, list[tuple[str, str]]] = {}
    objects: dict[int, Any] = {}
    position: dict[tuple[str, str], int] = {}  # order within a module: __all__'s, else definition order
    for mname, mod in modules.items():
        for i, n in enumerate(exported_names(mod)):
            obj = getattr(mod, n)
            exports.setdefault(id(obj), []).append((mname, n))
            objects[id(obj)] = obj
            position[(mname, n)] = i
    entries = []
    for key, places in exports.items():
        obj = objects[key]
        home = getattr(obj, "__module__", None)
        own = [p for p in places if p[0] == home and p[1] == getattr(obj, "__name__", None)]
        canonical = own[0] if own else max(places, key=lambda p: p[0].count("."))
        entry = Entry(canonical[0], canonical[1], obj)
        entry.also = [f"{m}.{n}" for m, n in places if (m, n) != canonical]
        if entry.is_class:
            entry.members = public_members(obj)
        entries.append(entry)
    order = {m: i for i, m in enumerate(modules)}
    entries.sort(key=lambda e: (order[e.module], position[(e.module, e.name)]))
    return modules, entries


def _relative(path: Optional[str]) -> str:
    """A source path relative to the checkout (the folder above the package)."""
    if not path or path == "?":
        return "?"
    root = Path(importlib.import_module(PACKAGE).__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return path


def missing_docstrings() -> list[str]:
    """``file: qualified name`` of every public module, class, function, method and
    property without a docstring."""
    modules, entries = collect()
    missing = []
    for name, mod in modules.items():
        if not object_doc(mod):
            missing.append(f"{_relative(getattr(mod, '__file__', None))}: {name} (module)")
    for e in entries:
        try:
            where = inspect.getsourcefile(inspect.unwrap(e.obj)) or "?"
        except TypeError:
            where = "?"
        where = _relative(where)
        if not object_doc(e.obj):
            missing.append(f"{where}: {e.qualname}")
        for m in e.members:
            if not member_doc(e.obj, m):
                klass, _ = _raw_member(e.obj, m)
                try:
                    src = inspect.getsourcefile(klass) or where
                except TypeError:
                    src = where
                missing.append(f"{_relative(src)}: {e.qualname}.{m}")
    return missing


if __name__ == "__main__":
    for line in missing_docstrings():
        print(line)
