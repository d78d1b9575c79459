"""roidask._docs: shared docstring fragments are substituted in every public docstring."""

from __future__ import annotations

import inspect
import re

from helpers.api import public_objects


def _documented_parameters(doc: str) -> list[str]:
    """The names a numpy-style docstring's ``Parameters`` (and ``Other Parameters``)
    section lists, in order (``a, b : int`` lists two; ``*args`` is ``args``)."""
    lines = doc.splitlines()
    names: list[str] = []
    section = None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()) and line.strip():
            section = line.strip()
            continue
        if re.fullmatch(r"-{3,}", line.strip()):
            continue
        if section in ("Parameters", "Other Parameters") and line and not line[0].isspace():
            head = line.split(" : ")[0].rstrip(":")
            names += [part.strip().lstrip("*") for part in head.split(",")]
    return names


def test_no_public_docstring_shows_a_placeholder():
    objects = public_objects()
    assert "roidask.ops.binary_closing" in {name for name, _ in objects}
    unfilled = {
        name: [line.strip() for line in (inspect.getdoc(obj) or "").splitlines() if "%(" in line]
        for name, obj in objects
    }
    assert {name: lines for name, lines in unfilled.items() if lines} == {}


def test_every_public_function_documents_its_parameters_in_order():
    """numpydoc: a ``Parameters`` section naming every parameter of the signature, in
    its order (none for a function without parameters)."""
    objects = public_objects()
    assert "roidask.runner.check_run" in {name for name, _ in objects}
    wrong = {}
    for name, obj in objects:
        if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
            continue  # classes (their fields are Attributes), properties, constants
        signature = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        documented = _documented_parameters(inspect.getdoc(obj) or "")
        if documented != signature:
            wrong[name] = {"signature": signature, "documented": documented}
    assert wrong == {}


def _parameter_entry(doc: str, name: str) -> str:
    """The entry of parameter ``name`` in a numpy-style docstring: its line and
    description, joined into one line."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} :"))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            break
        entry.append(line.strip())
    return " ".join(entry)


def test_what_a_function_reads_or_accepts_beyond_its_type_is_documented():
    """extract_signals computes a lazy mask_img when called, as labels_img; convert's
    labels may be None (no conditions)."""
    from roidask.io import convert
    from roidask.ops import extract_signals

    doc = inspect.getdoc(extract_signals) or ""
    for name in ("labels_img", "mask_img"):
        assert "Read when this function is called" in _parameter_entry(doc, name)
    labels = _parameter_entry(inspect.getdoc(convert) or "", "labels")
    assert labels.startswith("labels : path, list of paths, or None")
    assert '"unknown"' in labels
