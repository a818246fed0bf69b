"""A pybox sandbox as the sandbox backend of LangChain deep agents::

    from deepagents import create_deep_agent
    from pybox.integrations.deepagents import PyboxSandbox

    with PyboxSandbox() as backend:
        agent = create_deep_agent(model=model, backend=backend)
        agent.invoke({"messages": [{"role": "user", "content": "..."}]})

``PyboxSandbox`` is a deepagents ``BaseSandbox`` (their ``SandboxBackendProtocol``): it
implements ``execute``, ``upload_files``, ``download_files`` and ``id``; deepagents builds
``ls``, ``read``, ``write``, ``edit``, ``grep`` and ``glob`` on those. It uses pybox's
public API only (``pip install 'pybox[deepagents]'``).

How it maps the protocol:

- **Commands** (``execute``) run as ``bash -c COMMAND`` in a subprocess started by a cell
  of the sandbox's default Python kernel, as the sandbox user, in the kernel's working
  directory (/app), with stdin closed and stdout and stderr combined in one output, as
  produced. ``exit_code`` is the command's (128+N for a signal). Output past
  ``max_output_bytes`` is cut (``truncated=True``, with a note).
- **Timeouts**: ``timeout`` seconds (the backend's ``timeout`` when None, no limit when
  0): the command's whole process group is killed, the output so far is kept and
  ``exit_code`` is 124 with a note, as deepagents' local shell does. Background processes
  of a command that finished in time are left running. Should the kernel itself stop
  answering, pybox interrupts it ``grace`` seconds later (same answer).
- **Files**: the bytes travel through pybox's ``Sandbox.upload`` / ``Sandbox.download``
  (streamed tar archives; downloads checked as hostile: nothing is written outside their
  target, their size capped), staged in ``/app/.pybox-transfer/``; a kernel cell moves
  them from or to their paths as the sandbox user, so any absolute path the sandbox user
  can write or read works, with that user's permissions. Errors per file, as the protocol
  wants: ``file_not_found``, ``permission_denied``, ``is_directory`` (also when uploading
  onto a directory, which is never replaced), ``invalid_path`` (a relative path, a NUL
  byte, a link as the target of an upload, a file where a directory should be); a file
  larger than ``max_download_bytes``, a non-regular file or a failed transfer get an
  error message of their own.
- **Failures of the sandbox**: a kernel that dies while a command runs is an
  ``ExecuteResponse`` saying so (``exit_code`` None); a closed sandbox or an engine that
  does not answer raises its ``pybox.PyboxError`` from ``execute`` (the agent cannot fix
  it) and is the error of every file in a transfer.
- **Images**: deepagents moves images as files (``read_file`` of a PNG returns it
  base64-encoded, up to deepagents' own size cap); nothing here decodes them.

The sandbox user is not root: paths such as ``/large_tool_results`` that deepagents'
middleware writes at ``/`` are refused (``permission_denied``). Route them to /app with
``CompositeBackend(default=backend, routes={}, artifacts_root="/app")``.
"""

from __future__ import annotations

import base64
import inspect
import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from deepagents.backends.protocol import (
        INVALID_PATH,
        ExecuteResponse,
        FileDownloadResponse,
        FileUploadResponse,
    )
    from deepagents.backends.sandbox import BaseSandbox
except ModuleNotFoundError as exc:  # name the extra, as pybox's backends do
    raise ModuleNotFoundError(f"pybox.integrations.deepagents needs deepagents: pip install 'pybox[deepagents]' "
                              f"({exc})", name=exc.name) from exc

from pybox import ExecutionTimeout, InvalidArgument, KernelDied, PyboxError, Result, Sandbox

__all__ = ["DEFAULT_EXECUTE_TIMEOUT", "PyboxSandbox"]

#: Seconds a command may run when ``execute`` is given no timeout (deepagents' default).
DEFAULT_EXECUTE_TIMEOUT = 120
#: Where transfers are staged in the sandbox (under /app, where pybox copies files).
STAGING = ".pybox-transfer"
_MARKER = "__pybox_deepagents__ "  # starts the line of JSON a cell answers with


class PyboxSandbox(BaseSandbox):
    """deepagents' sandbox backend on a pybox sandbox.

    ``sandbox``: a :class:`pybox.Sandbox` to use (its default kernel runs the
    commands); the caller keeps it and closes it. Without it, one is made from
    ``sandbox_options`` (the arguments of ``pybox.Sandbox``: ``image=``, ``backend=``,
    ``limits=``, ``network=``...) and closed by :meth:`close` or on leaving ``with``.

    ``timeout``: seconds a command may run when ``execute`` is given none (0: no
    limit). ``max_output_bytes``: bytes of a command's output returned.
    ``max_download_bytes``: the largest file ``download_files`` returns. ``grace``:
    seconds past a command's timeout before pybox interrupts the kernel running it.
    """

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        *,
        timeout: float = DEFAULT_EXECUTE_TIMEOUT,
        max_output_bytes: int = 100_000,
        max_download_bytes: int = 64 * 1024 * 1024,
        grace: float = 10.0,
        **sandbox_options: Any,
    ) -> None:
        if sandbox is not None and sandbox_options:
            raise InvalidArgument(f"give either sandbox= or options for a new sandbox, not both "
                                  f"(got {sorted(sandbox_options)})")
        self.timeout = _seconds(timeout, "timeout")
        self.max_output_bytes = _positive_int(max_output_bytes, "max_output_bytes")
        self.max_download_bytes = _positive_int(max_download_bytes, "max_download_bytes")
        self.grace = _seconds(grace, "grace")
        self.owns_sandbox = sandbox is None
        self.sandbox: Sandbox = Sandbox(**sandbox_options) if sandbox is None else sandbox
        # The answer travels base64-encoded through the kernel's stdout, which pybox caps
        # at the sandbox's max_output: it must fit.
        needed = (self.max_output_bytes + 2) // 3 * 4 + 1000
        if self.sandbox.max_output is not None and needed > self.sandbox.max_output:
            raise InvalidArgument(f"max_output_bytes={self.max_output_bytes} needs a sandbox with max_output of at "
                                  f"least {needed} characters; it has {self.sandbox.max_output}")
        try:
            self.sandbox.start()
        except BaseException:
            self.close()
            raise

    @property
    def id(self) -> str:
        """The sandbox's container id."""
        return str(self.sandbox.id)

    def close(self) -> None:
        """Close the sandbox when this backend made it (idempotent)."""
        if self.owns_sandbox:
            self.sandbox.close()

    def __enter__(self) -> PyboxSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the protocol ----------------------------------------------------------------------

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        """Run ``command`` with bash in the sandbox (see the module's docstring)."""
        if not isinstance(command, str) or not command.strip():
            return ExecuteResponse(output="Error: Command must be a non-empty string.", exit_code=1)
        seconds = self.timeout if timeout is None else _seconds(timeout, "timeout")
        limit = seconds or None
        call = f"{_EXECUTE_IN_SANDBOX.__name__}({command!r}, {limit!r}, {self.max_output_bytes!r})"
        try:
            result = self._run_cell(_EXECUTE_IN_SANDBOX, call, None if limit is None else limit + self.grace)
        except ExecutionTimeout:
            return ExecuteResponse(output=f"Error: Command timed out after {seconds:g} seconds (the sandbox's kernel "
                                          f"had to be interrupted).", exit_code=124)
        except KernelDied as exc:
            return ExecuteResponse(output=f"Error: the sandbox's kernel died while running the command: {exc.reason}",
                                   exit_code=None)
        answer = _answer(result)
        if not isinstance(answer, dict):
            return ExecuteResponse(output=f"Error: the command did not run: {_failure(result)}", exit_code=None)
        output, exit_code = answer.get("output"), answer.get("exit_code")
        truncated, timed_out = answer.get("truncated") is True, answer.get("timed_out") is True
        if not isinstance(output, str) or not (exit_code is None or _is_int(exit_code)):
            return ExecuteResponse(output="Error: the sandbox answered the command with something unreadable",
                                   exit_code=None)
        text = base64.b64decode(output).decode("utf-8", errors="replace")
        if truncated:
            text += f"\n\n... Output truncated at {self.max_output_bytes} bytes."
        if timed_out:
            note = f"Error: Command timed out after {seconds:g} seconds."
            text = f"{text}\n\n{note}" if text else note
            exit_code = 124
        return ExecuteResponse(output=text, exit_code=exit_code, truncated=truncated)

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Write each ``(path, content)`` in the sandbox (parents created), each with
        its own error."""
        errors: dict[int, str | None] = {}
        batch = uuid.uuid4().hex
        staged: list[tuple[str, str]] = []  # (name in the batch, path)
        with tempfile.TemporaryDirectory(prefix="pybox-upload-") as local:
            folder = Path(local, batch)
            folder.mkdir()
            for index, (path, content) in enumerate(files):
                if _bad_path(path):
                    errors[index] = INVALID_PATH
                elif not isinstance(content, (bytes, bytearray, memoryview)):
                    errors[index] = f"content must be bytes, not {type(content).__name__}"
                else:
                    (folder / str(index)).write_bytes(content)
                    staged.append((str(index), path))
            if staged:
                try:
                    self.sandbox.upload(folder, f"{STAGING}/{batch}")
                    call = f"{_PLACE_IN_SANDBOX.__name__}({f'/app/{STAGING}/{batch}'!r}, {staged!r})"
                    placed = self._file_answer(_PLACE_IN_SANDBOX, call, staged)
                except PyboxError as exc:
                    placed = {name: f"upload failed: {exc}" for name, _ in staged}
                errors.update((int(name), error) for name, error in placed.items())
        return [FileUploadResponse(path=path, error=errors.get(index)) for index, (path, _) in enumerate(files)]

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """The content of each file, each with its own error."""
        errors: dict[int, str | None] = {index: INVALID_PATH for index, path in enumerate(paths) if _bad_path(path)}
        contents: dict[int, bytes] = {}
        wanted = [(str(index), path) for index, path in enumerate(paths) if index not in errors]
        if wanted:
            batch = uuid.uuid4().hex
            staging = f"/app/{STAGING}/{batch}"
            try:
                call = f"{_STAGE_IN_SANDBOX.__name__}({staging!r}, {wanted!r}, {self.max_download_bytes!r})"
                staged = self._file_answer(_STAGE_IN_SANDBOX, call, wanted)
                ready = [name for name, error in staged.items() if error is None]
                if ready:
                    contents.update(self._fetch(f"{STAGING}/{batch}", ready, staged))
            except PyboxError as exc:
                staged = {name: f"download failed: {exc}" for name, _ in wanted}
            finally:
                self._remove_staging(staging)
            errors.update((int(name), error) for name, error in staged.items())
        return [FileDownloadResponse(path=path, content=contents.get(index), error=errors.get(index))
                for index, path in enumerate(paths)]

    # -- helpers ---------------------------------------------------------------------------

    def _run_cell(self, function: Any, call: str, timeout: float | None) -> Result:
        """Run ``function``'s source and ``call`` in the default kernel, leaving nothing
        in its namespace."""
        source, names = _SOURCES[function.__name__]
        code = f"{source}\ntry:\n    {call}\nfinally:\n    del {', '.join(names)}\n"
        return self.sandbox.run(code, timeout=timeout, check=False)

    def _file_answer(self, function: Any, call: str, items: Sequence[tuple[str, str]]) -> dict[str, str | None]:
        """The per-item errors a file cell answers (every item failing when it answers
        nothing usable)."""
        try:
            result = self._run_cell(function, call, max(float(self.timeout), 60.0) + self.grace)
        except (ExecutionTimeout, KernelDied) as exc:
            return {name: f"the sandbox did not finish the transfer: {exc}" for name, _ in items}
        answer = _answer(result)
        if not isinstance(answer, dict):
            return {name: f"the sandbox did not finish the transfer: {_failure(result)}" for name, _ in items}
        return {name: _error_code(answer.get(name, "no answer for this file")) for name, _ in items}

    def _fetch(self, remote: str, names: list[str], staged: dict[str, str | None]) -> dict[int, bytes]:
        """Download the staged files; a file that did not arrive gets an error in ``staged``."""
        contents: dict[int, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="pybox-download-") as local:
            target = Path(local, "batch")
            self.sandbox.download(remote, target, max_bytes=len(names) * (self.max_download_bytes + 1024) + 65536)
            for name in names:
                file = target / name
                if file.is_symlink() or not file.is_file() or file.stat().st_size > self.max_download_bytes:
                    staged[name] = "the sandbox sent something else than the file"
                else:
                    contents[int(name)] = file.read_bytes()
        return contents

    def _remove_staging(self, staging: str) -> None:
        try:
            self._run_cell(_UNSTAGE_IN_SANDBOX, f"{_UNSTAGE_IN_SANDBOX.__name__}({staging!r})", 60)
        except PyboxError:
            pass  # only a leftover in the sandbox's /app/.pybox-transfer


# -- what runs in the sandbox (sent as source; everything it needs is imported inside) -----------


def __pybox_execute(command: str, timeout: float | None, cap: int) -> None:
    import base64
    import json
    import os
    import signal
    import subprocess
    import tempfile

    timed_out = False
    with tempfile.TemporaryFile() as out:
        # A file, not a pipe: background processes keeping it open cannot hold us up.
        process = subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also when pybox interrupts the kernel
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        out.seek(0)
        data = out.read(cap + 1)
    code = process.returncode
    print("__pybox_deepagents__", json.dumps({
        "output": base64.b64encode(data[:cap]).decode(), "exit_code": 128 - code if code < 0 else code,
        "truncated": len(data) > cap, "timed_out": timed_out}))


def __pybox_classify(exc: Exception) -> str:
    import errno

    if isinstance(exc, FileNotFoundError):
        return "file_not_found"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "invalid_path"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, IsADirectoryError):
        return "is_directory"
    if isinstance(exc, (NotADirectoryError, FileExistsError, ValueError)):
        return "invalid_path"
    return f"{type(exc).__name__}: {exc}"


def __pybox_unstage(staging: str) -> None:
    import os
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(staging))  # when no other transfer uses it
    except OSError:
        pass


def __pybox_place(staging: str, items: list[tuple[str, str]]) -> None:
    import json
    import os
    import shutil

    errors: dict[str, str | None] = {}
    try:
        for name, path in items:
            try:
                if os.path.isdir(path):  # never replaced by a file
                    raise IsADirectoryError(path)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as target, open(os.path.join(staging, name), "rb") as source:
                    shutil.copyfileobj(source, target)
                errors[name] = None
            except Exception as exc:
                errors[name] = __pybox_classify(exc)
    finally:
        __pybox_unstage(staging)
    print("__pybox_deepagents__", json.dumps(errors))


def __pybox_stage(staging: str, items: list[tuple[str, str]], cap: int) -> None:
    import json
    import os
    import stat

    errors: dict[str, str | None] = {}
    os.makedirs(staging)
    for name, path in items:
        try:
            # O_NONBLOCK: a fifo must not hang the kernel
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as source:
                mode = os.fstat(source.fileno()).st_mode
                if stat.S_ISDIR(mode):
                    raise IsADirectoryError(path)
                if not stat.S_ISREG(mode):
                    errors[name] = "not a regular file"
                    continue
                data = source.read(cap + 1)  # the cap keeps /proc and growing files bounded
            if len(data) > cap:
                errors[name] = f"the file is larger than {cap} bytes (max_download_bytes)"
                continue
            with open(os.path.join(staging, name), "wb") as target:
                target.write(data)
            errors[name] = None
        except Exception as exc:
            errors[name] = __pybox_classify(exc)
    print("__pybox_deepagents__", json.dumps(errors))


_EXECUTE_IN_SANDBOX = __pybox_execute
_PLACE_IN_SANDBOX = __pybox_place
_STAGE_IN_SANDBOX = __pybox_stage
_UNSTAGE_IN_SANDBOX = __pybox_unstage


def _cell(*functions: Callable[..., object]) -> tuple[str, list[str]]:
    """A cell's source and the names it defines (deleted after the call)."""
    return "\n".join(inspect.getsource(function) for function in functions), [f.__name__ for f in functions]


_SOURCES = {
    __pybox_execute.__name__: _cell(__pybox_execute),
    __pybox_place.__name__: _cell(__pybox_classify, __pybox_unstage, __pybox_place),
    __pybox_unstage.__name__: _cell(__pybox_unstage),
    __pybox_stage.__name__: _cell(__pybox_classify, __pybox_stage),
}
_ERROR_CODES = {"file_not_found", "permission_denied", "is_directory", "invalid_path"}


def _answer(result: Result) -> Any:
    """The JSON a cell printed after the marker (None when it printed none)."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_MARKER):
            try:
                return json.loads(line[len(_MARKER):])
            except ValueError:
                return None
    return None


def _failure(result: Result) -> str:
    error = result.error
    return f"{error.ename}: {error.evalue}" if error is not None else "the sandbox sent no answer"


def _error_code(value: object) -> str | None:
    """A file error the sandbox answered: one of the protocol's codes or a short message."""
    if value is None or (isinstance(value, str) and value in _ERROR_CODES):
        return value
    return str(value)[:500]


def _bad_path(path: object) -> bool:
    return not isinstance(path, str) or not path.startswith("/") or "\0" in path


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidArgument(f"{name} must be a number of seconds, 0 or more, got {value!r}")
    return value


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive whole number, got {value!r}")
    return value
