"""A griffe extension for the documentation build (``mkdocs.yml``, ``tox -e docs``).

pybox's docstrings are plain text with reST-style ``literals`` and a few Sphinx roles
(``:class:`~pybox.Limits```). mkdocstrings renders the text as Markdown, where a role
would show as ``:class:~pybox.Limits``; this turns each role into a cross-reference to
the object's documented entry (``~`` shows the last name only, as in Sphinx) and a
reST literal-block marker (``text::``) into a plain colon. Attributes documented the
Sphinx way, by ``#:`` comment lines right above them, get those lines as docstring.
Under ``mkdocs build --strict`` a role naming an object that is not documented fails
the build.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([A-Za-z_][\w.]*)`")
_LITERAL_BLOCK = re.compile(r"(?<=[^\s:])::$", re.MULTILINE)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        _convert(pkg, loader)

    # griffe before 1.14 calls this one; converting twice changes nothing.
    def on_package_loaded(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        _convert(pkg, loader)


def _convert(obj: griffe.Object, loader: griffe.GriffeLoader) -> None:
    if obj.docstring is None and obj.is_attribute:
        comment = _comment_above(obj)
        if comment:
            obj.docstring = griffe.Docstring(comment, parent=obj)
    if obj.docstring is not None:
        text = _ROLE.sub(lambda match: _reference(obj, loader, match), obj.docstring.value)
        obj.docstring.value = _LITERAL_BLOCK.sub(":", text)
    for member in obj.members.values():
        if not member.is_alias:
            _convert(member, loader)  # type: ignore[arg-type]


def _comment_above(obj: griffe.Object) -> str:
    """The ``#:`` comment lines right above ``obj``'s first line, without the markers."""
    if obj.lineno is None or obj.filepath is None or isinstance(obj.filepath, list):
        return ""
    try:
        lines = obj.lines_collection[obj.filepath]
    except KeyError:
        return ""
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return "\n".join(found)


def _reference(obj: griffe.Object, loader: griffe.GriffeLoader, match: re.Match[str]) -> str:
    short, name = match.group(1) == "~", match.group(2)
    path = name
    if "." not in name:
        try:
            path = obj.resolve(name)
        except (griffe.NameResolutionError, KeyError):
            pass
    try:
        target = loader.modules_collection[path]
        if target.is_alias:
            path = target.final_target.path
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        pass
    shown = name.rsplit(".", 1)[-1] if short else name
    return f"[`{shown}`][{path}]"
