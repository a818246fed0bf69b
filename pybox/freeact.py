"""freeact's execution environment on pybox: a workspace of skills and images on the
host, a per-key executor in a sandbox, and a log of every execution.

An adapter, not core: it uses pybox's public API only, and is imported on its own::

    from pybox.freeact import execution_environment

    with execution_environment(workspace="workspace", key="alice") as (sandbox, kernel, log):
        result = kernel.run("print('hi')")      # an ExecutorResult: a Result plus image_paths

Workspace layout on the host (bind-mounted parts in brackets)::

    workspace/
      skills/shared/          [/app/skills/shared]   importable by every key
      skills/private/<key>/   [/app/skills/private]  the key's working directory, importable
      images/<key>/           images of the key's executions, as PNG
      logs/<key>.jsonl        the execution log
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pybox.errors import InvalidArgument
from pybox.image_contract import SANDBOX_GID, SANDBOX_UID
from pybox.kernel import DEFAULT_TIMEOUT, Kernel
from pybox.outputs import Result
from pybox.sandbox import Sandbox

__all__ = [
    "CodeExecutor",
    "ExecutionEnvironment",
    "ExecutionLog",
    "ExecutorResult",
    "Workspace",
    "execution_environment",
    "load_env_file",
    "startup_code_for",
]

log = logging.getLogger(__name__)

_log = logging.getLogger(__name__)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SKILLS_IN_SANDBOX = "/app/skills"


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key) or key in (".", ".."):
        raise InvalidArgument(f"executor key must be 1-64 letters, digits, '_', '-' or '.', got {key!r}")
    return key


class Workspace:
    """Skills and images of one or more executors, on the host under ``path``."""

    def __init__(self, path: str | os.PathLike[str] = "workspace"):
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise InvalidArgument(f"workspace path must be a non-empty path, got {path!r}")
        self.path = Path(path).expanduser().absolute()

    @property
    def shared_skills_path(self) -> Path:
        return self.path / "skills" / "shared"

    def private_skills_path(self, key: str) -> Path:
        return self.path / "skills" / "private" / _check_key(key)

    def images_path(self, key: str) -> Path:
        return self.path / "images" / _check_key(key)

    def log_path(self, key: str) -> Path:
        return self.path / "logs" / f"{_check_key(key)}.jsonl"

    def create(self, key: str) -> None:
        """Make the directories of the workspace and of ``key``. The mounted ones are
        made writable for the sandbox's user (uid 1000) and nobody else: handed over when
        we are root, granted to that uid alone by an ACL otherwise (``setfacl``); never
        opened to all."""
        for directory in (self.images_path(key), self.log_path(key).parent):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (self.shared_skills_path, self.private_skills_path(key)):
            directory.mkdir(parents=True, exist_ok=True)
            _make_writable_for_sandbox(directory)

    def binds(self, key: str) -> dict[str, str]:
        """Sandbox binds for ``key``: the shared skills, and ``key``'s own private skills
        only (another key's are not in its sandbox)."""
        return {
            str(self.shared_skills_path): f"{SKILLS_IN_SANDBOX}/shared",
            str(self.private_skills_path(key)): f"{SKILLS_IN_SANDBOX}/private/{_check_key(key)}",
        }

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"


class ExecutionLog:
    """Append-only JSON lines: one record per execution (code, outputs, error, duration)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line. Values JSON cannot hold are written as their
        ``repr``; text UTF-8 cannot hold (lone surrogates from the kernel) as JSON escapes."""
        line = json.dumps(record, ensure_ascii=False, default=repr)
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:
            data = json.dumps(record, ensure_ascii=True, default=repr).encode("ascii")
        with self._lock, open(self.path, "ab") as handle:
            handle.write(data + b"\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


@dataclass
class ExecutorResult:
    """What ``CodeExecutor.run`` returns: the execution's :class:`pybox.Result` and the
    paths its images were saved to. Result's attributes read through (``r.text``)."""

    result: Result
    image_paths: list[Path] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name == "result":  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.result, name)


class CodeExecutor:
    """A kernel working for one key: its working directory is the key's private skills
    directory, shared and private skills are importable (and reloaded when edited),
    images go to ``workspace/images/<key>/`` and every run goes to the log."""

    def __init__(self, kernel: Kernel, workspace: Workspace, key: str, log: ExecutionLog | None = None):
        self.kernel = kernel
        self.workspace = workspace
        self.key = _check_key(key)
        self.log = log
        workspace.create(key)
        kernel.set_startup_code(startup_code_for(key))

    @property
    def working_dir(self) -> str:
        return f"{SKILLS_IN_SANDBOX}/private/{self.key}"

    def run(self, code: str, timeout: float | None = DEFAULT_TIMEOUT, check: bool = True) -> ExecutorResult:
        """Run ``code``; images are saved as PNG (their paths in ``image_paths``). The
        execution log gets its record whatever the output held (images pybox refuses
        to decode are left out of ``images``, and logged)."""
        started = time.time()
        execution_id = uuid.uuid4().hex[:12]
        result: Result | None = None
        paths: list[Path] = []
        try:
            result = self.kernel.run(code, timeout=timeout, check=False)
            paths = self._save_images(execution_id, result)
        finally:
            self._record(execution_id, code, started, result, paths)
        if check and result.error is not None:
            raise result.error
        return ExecutorResult(result, paths)

    def _save_images(self, execution_id: str, result: Result) -> list[Path]:
        paths = []
        for number, image in enumerate(result.images):
            path = self.workspace.images_path(self.key) / f"{execution_id}-{number}.png"
            try:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
                    image = image.convert("RGBA")  # e.g. a CMYK JPEG: PNG cannot hold it as is
                image.save(path, format="PNG")
            except (OSError, ValueError) as exc:
                _log.warning("freeact: image %d of execution %s not saved: %s", number, execution_id, exc)
                continue
            paths.append(path)
        return paths

    def _record(self, execution_id: str, code: str, started: float, result: Result | None,
                paths: list[Path]) -> None:
        if self.log is None:
            return
        record: dict[str, Any] = {"id": execution_id, "key": self.key, "time": started, "code": code}
        try:
            if result is None:
                record.update(outputs=None, error={"ename": "NoResult", "evalue": "the execution did not finish"},
                              duration=time.time() - started)
            else:
                error = result.error
                record.update(
                    outputs={"text": result.text, "stdout": result.stdout, "stderr": result.stderr,
                             "images": [str(path) for path in paths]},
                    error=None if error is None else {"ename": error.ename, "evalue": error.evalue,
                                                      "traceback": error.traceback},
                    duration=result.duration,
                )
        except Exception as exc:  # the record is written whatever the output held
            record.update(outputs=None, error={"ename": "RecordError", "evalue": f"{type(exc).__name__}: {exc}"},
                          duration=time.time() - started)
        self.log.append(record)


def _make_writable_for_sandbox(directory: Path) -> None:
    if directory.stat().st_uid == SANDBOX_UID:
        return
    if os.geteuid() == 0:
        os.chown(directory, SANDBOX_UID, SANDBOX_GID)
        return
    setfacl = shutil.which("setfacl")
    if setfacl is not None:
        grant = f"u:{SANDBOX_UID}:rwx"
        done = subprocess.run([setfacl, "-m", f"{grant},d:{grant}", str(directory)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        reason = done.stderr.strip()
    else:
        reason = "setfacl (package acl) is not installed"
    log.warning("the sandbox user (uid %d) cannot write %s: not root, and no ACL could be set (%s); skills "
                "written by the sandbox will fail there", SANDBOX_UID, directory, reason)


def startup_code_for(key: str) -> str:
    workdir = f"{SKILLS_IN_SANDBOX}/private/{_check_key(key)}"
    return (
        "%load_ext autoreload\n"
        "%autoreload 2\n"
        "import os as _pybox_os, sys as _pybox_sys\n"
        f"_pybox_os.makedirs({workdir!r}, exist_ok=True)\n"
        f"_pybox_os.chdir({workdir!r})\n"
        f"for _pybox_path in ({SKILLS_IN_SANDBOX + '/shared'!r}, {workdir!r}):\n"
        "    if _pybox_path not in _pybox_sys.path:\n"
        "        _pybox_sys.path.insert(0, _pybox_path)\n"
        "del _pybox_os, _pybox_sys, _pybox_path\n"
    )


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Variables of a ``.env`` file, read by python-dotenv as freeact reads them
    (``export``, comments, quoting, ``${VAR}`` expansion); a line that is not
    ``KEY=value`` raises InvalidArgument naming it. Needs ``pip install 'pybox[freeact]'``."""
    try:
        from dotenv import dotenv_values
        from dotenv.parser import parse_stream
    except ImportError as exc:
        raise InvalidArgument(f"reading {path} needs python-dotenv: pip install 'pybox[freeact]'") from exc
    with open(path, encoding="utf-8") as handle:
        for binding in parse_stream(handle):
            if binding.error:
                raise InvalidArgument(f"{path}:{binding.original.line}: not a KEY=value line: "
                                      f"{binding.original.string.strip()!r}")
    return {key: value for key, value in dotenv_values(path, encoding="utf-8").items() if value is not None}


class ExecutionEnvironment(NamedTuple):
    sandbox: Sandbox
    kernel: CodeExecutor
    log: ExecutionLog


@contextlib.contextmanager
def execution_environment(
    workspace: str | os.PathLike[str] | Workspace = "workspace",
    key: str = "default",
    *,
    image: str | None = None,
    backend: str | None = None,
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> Iterator[ExecutionEnvironment]:
    """A sandbox with the workspace's skills mounted, a CodeExecutor for ``key`` and
    its execution log; everything is cleaned up on exit. Variables of ``env_file`` (only
    when given: a ``.env`` in the current directory is not read unless named) and ``env``
    (which wins) are passed to the container."""
    space = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    _check_key(key)
    space.create(key)
    variables: dict[str, str] = {}
    if env_file is not None:
        if not Path(env_file).is_file():
            raise InvalidArgument(f"env_file {str(env_file)!r} is not a file")
        variables.update(load_env_file(env_file))
    variables.update(env or {})
    log = ExecutionLog(log_file or space.log_path(key))
    with Sandbox(image=image, backend=backend, binds=space.binds(key), env=variables) as sandbox:
        executor = CodeExecutor(sandbox.default_kernel, space, key, log)
        yield ExecutionEnvironment(sandbox, executor, log)
