"""The README documents every hook and the public names it promises."""

import inspect
from pathlib import Path

from pybox import hookspecs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def hooks():
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("pybox_")]


def test_there_are_hooks():
    assert "pybox_register_backends" in hooks()


def test_every_hook_is_documented_in_the_readme_section_on_writing_a_backend():
    section = README.split("## Writing a backend", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in hooks() if f"`{name}(" not in section]
    assert not missing, f"hooks not documented in README's 'Writing a backend': {missing}"


def test_every_hook_has_a_docstring():
    for name in hooks():
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
