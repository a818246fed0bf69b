"""The sandbox image's internals table (images/sandbox/pybox_internals.py) agrees with
requirements.txt and the Dockerfile runs it; no engine or image packages needed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[2] / "images" / "sandbox"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def internals():
    spec = importlib.util.spec_from_file_location("pybox_internals", SANDBOX / "pybox_internals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the tables; the checks run only as __main__
    return module


@pytest.fixture(scope="module")
def requirements() -> dict[str, str]:
    """Requirement name -> its specifier ('==1.2' or '' when unpinned)."""
    found = {}
    for line in (SANDBOX / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", line)
            assert match, f"unparsed requirements.txt line {line!r}"
            found[normalize(match[1])] = match[2].replace(" ", "")
    return found


def test_every_package_of_the_table_has_a_pin(internals):
    assert internals.INTERNALS
    assert {item.package for item in internals.INTERNALS} <= set(internals.PINS)


def test_requirements_pin_exactly_the_verified_versions(internals, requirements):
    for package, version in internals.PINS.items():
        assert requirements.get(normalize(package)) == f"=={version}", (
            f"requirements.txt must pin {package}=={version} (the version pybox_internals.py was "
            f"verified against), has {requirements.get(normalize(package))!r}")


def test_rows_are_well_formed(internals):
    for item in internals.INTERNALS:
        assert re.fullmatch(r"[A-Za-z_][\w.]*", item.module), item
        assert re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", item.path), item
        assert (SANDBOX / item.used_by).is_file(), item
        assert item.why.strip(), item
    rows = [(item.module, item.path) for item in internals.INTERNALS]
    assert len(rows) == len(set(rows)), "duplicate rows"


def test_dockerfile_copies_and_runs_the_check():
    dockerfile = (SANDBOX / "Dockerfile").read_text()
    assert re.search(r"^COPY\b[^\n]*\bpybox_internals\.py\b", dockerfile, re.MULTILINE)
    runs = re.findall(r"^RUN\b(?:[^\n]*\\\n)*[^\n]*", dockerfile, re.MULTILINE)
    checking = [run for run in runs if re.search(r"/opt/pybox/bin/python \S*pybox_internals\.py", run)]
    assert checking, "no RUN executes pybox_internals.py with the image's python"
    # after the packages are installed (the requirements and the extra ones)
    assert dockerfile.index(checking[0]) > dockerfile.index("-r /tmp/pybox-build/extra-requirements.txt")
