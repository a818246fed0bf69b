"""tools/check_import_cycles.py, on small packages written into tmp_path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_import_cycles.py"


def load_script():
    spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = load_script()


def make_package(root: Path, files: dict[str, str]) -> Path:
    """Write files (paths relative to root, e.g. "pkg/sub/mod.py") and return root/pkg."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / next(iter(files)).split("/")[0]


def edges(package: Path) -> set[tuple[str, str]]:
    _, graph = checker.build_graph(package)
    return {(importer, imported) for importer, targets in graph.items() for imported in targets}


def check(package: Path, capsys) -> tuple[int, str]:
    status = checker.main([str(package)])
    return status, capsys.readouterr().out


def test_a_module_level_cycle_is_found(tmp_path, capsys):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg.b import thing\n",
        "pkg/b.py": "import pkg.a\nthing = 1\n",
    })
    status, out = check(package, capsys)
    assert status == 1
    assert "pkg.a -> pkg.b -> pkg.a" in out
    assert f"pkg.a -> pkg.b: {package / 'a.py'}:2" in out
    assert f"pkg.b -> pkg.a: {package / 'b.py'}:1" in out


def test_a_cycle_under_type_checking_is_found(tmp_path, capsys):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import B\n",
        "pkg/b.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.a import A
            class B: ...
            """,
    })
    status, out = check(package, capsys)
    assert status == 1
    assert "pkg.a -> pkg.b -> pkg.a" in out
    assert f"{package / 'b.py'}:3 (TYPE_CHECKING)" in out


def test_a_cycle_through_a_function_level_import_is_found(tmp_path, capsys):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": """\
            def late():
                from pkg.a import name
                return name
            """,
    })
    status, out = check(package, capsys)
    assert status == 1
    assert "pkg.a -> pkg.b -> pkg.a" in out
    assert f"{package / 'b.py'}:2 (function)" in out


def test_a_module_importing_itself_is_a_cycle(tmp_path, capsys):
    package = make_package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "def f():\n    from pkg import a\n"})
    status, out = check(package, capsys)
    assert status == 1
    assert "pkg.a -> pkg.a" in out


def test_relative_imports_are_resolved(tmp_path):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "from .sub import mod\n",
        "pkg/top.py": "",
        "pkg/sub/__init__.py": "from . import mod\nfrom .. import top\n",
        "pkg/sub/mod.py": "from .other import x\nfrom ..top import y\nfrom . import helper\n",
        "pkg/sub/other.py": "x = 1\n",
        "pkg/sub/helper.py": "",
    })
    assert edges(package) == {
        ("pkg", "pkg.sub.mod"),
        ("pkg.sub", "pkg.sub.mod"),
        ("pkg.sub", "pkg.top"),
        ("pkg.sub.mod", "pkg.sub.other"),
        ("pkg.sub.mod", "pkg.top"),
        ("pkg.sub.mod", "pkg.sub.helper"),
    }


def test_from_package_import_submodule_resolves_to_the_submodule(tmp_path):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/mod.py": "",
        "pkg/user.py": "from pkg import sub, VERSION\nfrom pkg.sub import mod\n",
    })
    assert edges(package) == {("pkg.user", "pkg.sub"), ("pkg.user", "pkg"), ("pkg.user", "pkg.sub.mod")}


def test_an_acyclic_package_is_clean(tmp_path, capsys):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "from pkg.api import run\n",
        "pkg/api.py": "from pkg.core import engine\nfrom pkg.util import helper\nimport json\n",
        "pkg/core/__init__.py": "",
        "pkg/core/engine.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.types import Kind\n",
        "pkg/types.py": "Kind = int\n",
        "pkg/util.py": "def helper():\n    import pkg.core.engine\n",
    })
    status, out = check(package, capsys)
    assert status == 0, out
    assert out == f"no import cycles among 6 modules in {package}/\n"


def test_the_parent_package_init_is_not_counted(tmp_path, capsys):
    # Importing pkg.sub.leaf runs pkg/sub/__init__.py, which imports pkg.sub.user:
    # a real cycle at run time, but not one conventional cycle checkers report.
    package = make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from pkg.sub.user import run\n",
        "pkg/sub/leaf.py": "",
        "pkg/sub/user.py": "import pkg.sub.leaf\nfrom pkg.sub import leaf\n",
    })
    assert edges(package) == {("pkg.sub", "pkg.sub.user"), ("pkg.sub.user", "pkg.sub.leaf")}
    assert check(package, capsys)[0] == 0


def test_imports_from_outside_the_package_are_ignored(tmp_path, capsys):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "import os\nfrom collections import abc\nimport other.pkg\n",
        "pkg/a.py": "import pkgx\nfrom pkgx import a\n",
    })
    assert edges(package) == set()


def test_an_import_of_a_module_that_is_not_in_the_tree_is_warned_about(tmp_path):
    package = make_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ns/sub.py": "",
        "pkg/a.py": "import pkg.ns\nfrom pkg.ns import sub\n\ndef f():\n    from pkg.moved import thing\n",
        "pkg/b.py": "from .gone import x\nimport pkg.ns.gone\n",
    })
    warnings: list[str] = []
    checker.build_graph(package, warn=warnings.append)
    assert sorted(warnings) == [
        f"{package / 'a.py'}:5 (function): imports pkg.moved, which is no module in {package}/ (not counted)",
        f"{package / 'b.py'}:1: imports pkg.gone, which is no module in {package}/ (not counted)",
        f"{package / 'b.py'}:2: imports pkg.ns.gone, which is no module in {package}/ (not counted)",
    ]


def test_the_command_line(tmp_path):
    clean = make_package(tmp_path / "clean", {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": ""})
    cyclic = make_package(tmp_path / "cyclic", {"pkg/__init__.py": "from pkg import a\n", "pkg/a.py": "import pkg\n"})

    def run(*args: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path)

    result = run(clean)
    assert (result.returncode, result.stdout) == (0, "no import cycles among 3 modules in clean/pkg/\n")
    result = run(clean, cyclic)
    assert result.returncode == 1
    assert "pkg -> pkg.a -> pkg" in result.stdout
    assert "cyclic/pkg/__init__.py:1" in result.stdout
    assert run(tmp_path / "missing").returncode == 2


@pytest.mark.parametrize("source", ["def broken(:\n"])
def test_a_file_that_does_not_parse_is_an_error(tmp_path, capsys, source):
    package = make_package(tmp_path, {"pkg/__init__.py": "", "pkg/bad.py": source})
    assert checker.main([str(package)]) == 2
    assert "bad.py" in capsys.readouterr().err
