"""The documentation's page on writing a backend documents every hook."""

import inspect
from pathlib import Path

from pybox import hookspecs

WRITING_A_BACKEND = (Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md").read_text()


def hooks():
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("pybox_")]


def test_there_are_hooks():
    assert "pybox_register_backends" in hooks()


def test_every_hook_is_documented_in_the_page_on_writing_a_backend():
    missing = [name for name in hooks() if f"`{name}(" not in WRITING_A_BACKEND]
    assert not missing, f"hooks not documented in docs/writing-a-backend.md: {missing}"


def test_every_hook_has_a_docstring():
    for name in hooks():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
