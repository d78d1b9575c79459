"""roidask._docs: shared docstring fragments are substituted in every public docstring."""

from __future__ import annotations

import inspect

from helpers.api import public_objects


def test_no_public_docstring_shows_a_placeholder():
    objects = public_objects()
    assert "roidask.ops.binary_closing" in {name for name, _ in objects}
    unfilled = {
        name: [line.strip() for line in (inspect.getdoc(obj) or "").splitlines() if "%(" in line]
        for name, obj in objects
    }
    assert {name: lines for name, lines in unfilled.items() if lines} == {}
