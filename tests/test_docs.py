"""roidask._docs: shared docstring fragments are substituted in every public docstring."""

from __future__ import annotations

import inspect

import roidask


def _public_objects():
    """(name, object) for every public name of roidask and of its subpackages' ``__all__``,
    with the public methods and properties of public classes."""
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
    return sorted(found.values(), key=lambda item: item[0])


def test_no_public_docstring_shows_a_placeholder():
    objects = _public_objects()
    assert "roidask.ops.binary_closing" in {name for name, _ in objects}
    unfilled = {
        name: [line.strip() for line in (inspect.getdoc(obj) or "").splitlines() if "%(" in line]
        for name, obj in objects
    }
    assert {name: lines for name, lines in unfilled.items() if lines} == {}
