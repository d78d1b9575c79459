"""roidask's public API: every public name of roidask, of its subpackages' ``__all__`` and
of :data:`MORE_MODULES`."""

from __future__ import annotations

import inspect
from importlib import import_module

import roidask

#: Public modules outside ``roidask.__all__``'s subpackages whose ``__all__`` is API too.
MORE_MODULES = ("roidask.runner",)


def public_objects() -> list[tuple[str, object]]:
    """(name, object) for every public name of roidask and of its subpackages' ``__all__``,
    with the public methods and properties of public classes, sorted by name."""
    found: dict[int, tuple[str, object]] = {}

    def add(name: str, obj: object) -> None:
        if id(obj) in found:
            return
        found[id(obj)] = (name, obj)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, classmethod | staticmethod):
                    value = value.__func__
                if inspect.isfunction(value) or isinstance(value, property):
                    add(f"{name}.{attr}", value)

    for name in roidask.__all__:
        obj = getattr(roidask, name)
        if inspect.ismodule(obj):
            for sub in getattr(obj, "__all__", ()):
                add(f"roidask.{name}.{sub}", getattr(obj, sub))
        else:
            add(f"roidask.{name}", obj)
    for module_name in MORE_MODULES:
        module = import_module(module_name)
        for sub in module.__all__:
            add(f"{module_name}.{sub}", getattr(module, sub))
    return sorted(found.values(), key=lambda item: item[0])
