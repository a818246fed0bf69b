"""smolagents' ``CodeAgent`` running its code in a pybox sandbox::

    from smolagents import CodeAgent
    from pybox.integrations.smolagents import PyboxExecutor

    with CodeAgent(tools=[], model=model, executor=PyboxExecutor()) as agent:
        agent.run("What is the 20th Fibonacci number?")

``PyboxExecutor`` is one of smolagents' remote executors (``RemotePythonExecutor``, like
its E2B, Docker and Modal executors): every code step runs in the sandbox's default
IPython kernel, so variables, imports and files persist from step to step. It talks to
the sandbox through pybox's public API only (``pip install 'pybox[smolagents]'``).

What the agent sees:

- **Logs**: stdout and stderr of the step, interleaved as produced (pybox's
  ``max_output`` truncation marker included when the step printed too much).
- **Output**: the value of the step's last expression: a PIL image when it is an image,
  else its ``text/plain``. Images the step only displays (``display(img)``, plots) are
  not sent to the model; they are in ``executor.last_result.images`` for a step callback.
- **Errors**: an exception in the step becomes smolagents' ``AgentError`` carrying the
  logs and the traceback (no ANSI colours): the agent sees it and goes on with the next
  step, the kernel's state intact.
- **Timeouts**: a step running past ``timeout`` seconds is interrupted (pybox restarts the
  kernel when an interrupt is not enough) and becomes an ``AgentError`` saying so and
  whether the variables survived.
- **Final answer**: ``final_answer(x)`` raises smolagents' ``FinalAnswerException`` in the
  kernel; its value comes back JSON-encoded (smolagents' safe format) and is decoded
  here. An image in it is decoded within pybox's pixel caps. Pickle is never accepted:
  the sandbox writes that value, and unpickling it would run its code on the host.
- A failing sandbox (closed, engine gone) raises its ``pybox.PyboxError``; smolagents
  reports it to the agent as an execution error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

try:
    from smolagents.local_python_executor import CodeOutput
    from smolagents.monitoring import AgentLogger, LogLevel
    from smolagents.remote_executors import RemotePythonExecutor
    from smolagents.serialization import SafeSerializer
    from smolagents.utils import AgentError
except ModuleNotFoundError as exc:  # name the extra, as pybox's backends do
    raise ModuleNotFoundError(f"pybox.integrations.smolagents needs smolagents: pip install 'pybox[smolagents]' "
                              f"({exc})", name=exc.name) from exc

from pybox import (
    DEFAULT_TIMEOUT,
    DisplayData,
    ExecuteResult,
    ExecutionTimeout,
    InvalidArgument,
    KernelDied,
    Result,
    Sandbox,
    Stderr,
    Stdout,
)

__all__ = ["INSTALL_TIMEOUT", "PyboxExecutor"]

#: Seconds a pip install in the sandbox may take (at least; a longer step ``timeout`` wins).
INSTALL_TIMEOUT = 600.0

# A failed install raises (an AgentError here); smolagents' `!pip install` lets it pass unnoticed.
_PIP_INSTALL = """\
import subprocess as __pybox_subprocess, sys as __pybox_sys
__pybox_pip = __pybox_subprocess.run([__pybox_sys.executable, "-m", "pip", "install", "--quiet", *{packages!r}],
                                     capture_output=True, text=True)
print(__pybox_pip.stdout + __pybox_pip.stderr, end="")
if __pybox_pip.returncode:
    raise RuntimeError(f"pip install {packages_text} failed with exit code {{__pybox_pip.returncode}}")
del __pybox_subprocess, __pybox_sys, __pybox_pip
"""


class PyboxExecutor(RemotePythonExecutor):
    """smolagents' executor running each code step in a pybox sandbox.

    ``sandbox``: a started or unstarted :class:`pybox.Sandbox` to use (its default
    kernel); the caller keeps it and closes it. Without it, one is made from
    ``sandbox_options`` (``image=``, ``backend=``, ``limits=``, ``network=``...: the
    arguments of ``pybox.Sandbox``) and closed by :meth:`cleanup`, which ``CodeAgent``
    calls on exit from ``with`` or its own ``cleanup()``.

    ``additional_imports``: packages pip-installs in the sandbox at once (an ``AgentError``
    when pip fails). ``logger``: smolagents' ``AgentLogger`` (default: level INFO).
    ``timeout``: seconds one code step may run (None: no limit). ``allow_pickle`` exists
    for smolagents' signature and must stay False.
    """

    def __init__(
        self,
        additional_imports: Sequence[str] = (),
        logger: AgentLogger | None = None,
        allow_pickle: bool = False,
        *,
        sandbox: Sandbox | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        **sandbox_options: Any,
    ) -> None:
        if allow_pickle:
            raise InvalidArgument("allow_pickle=True is refused: the sandbox writes the final answer, and "
                                  "unpickling it would run the sandbox's code on the host")
        if isinstance(additional_imports, str) or not all(isinstance(p, str) for p in additional_imports):
            raise InvalidArgument(f"additional_imports must be a list of package names, got {additional_imports!r}")
        if sandbox is not None and sandbox_options:
            raise InvalidArgument(f"give either sandbox= or options for a new sandbox, not both "
                                  f"(got {sorted(sandbox_options)})")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise InvalidArgument(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        super().__init__(list(additional_imports), logger or AgentLogger(level=LogLevel.INFO), allow_pickle=False)
        self.timeout = timeout
        self.owns_sandbox = sandbox is None
        self.sandbox: Sandbox = Sandbox(**sandbox_options) if sandbox is None else sandbox
        #: The pybox Result of the last code step (None before the first): its ``images``,
        #: ``data`` and ``stderr`` hold what the agent's observation leaves out.
        self.last_result: Result | None = None
        try:
            self.sandbox.start()
            self.installed_packages = self.install_packages(list(additional_imports))
        except BaseException:
            self.cleanup()
            raise
        self.logger.log(f"pybox sandbox {self.sandbox.id} is running", level=LogLevel.INFO)

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run one code step in the sandbox's default kernel (see the module's docstring
        for what comes back)."""
        return self._run(code, self.timeout)

    def _run(self, code: str, timeout: float | None) -> CodeOutput:
        try:
            result = self.sandbox.run(code, timeout=timeout, check=False)
        except ExecutionTimeout as exc:
            self.last_result = exc.result
            state = ("the kernel was restarted: its variables and imports are lost" if exc.restarted
                     else "the kernel was interrupted; its variables are kept")
            raise AgentError(_after(exc.result, f"Code execution timed out after {exc.timeout:g} seconds ({state})."),
                             self.logger) from exc
        except KernelDied as exc:
            if exc.result is not None:
                self.last_result = exc.result
            raise AgentError(_after(exc.result, f"The sandbox's Python kernel died ({exc.reason}): its variables "
                                                "and imports are lost."), self.logger) from exc
        self.last_result = result
        logs = _logs(result)
        error = result.error
        if error is not None:
            if error.ename == self.FINAL_ANSWER_EXCEPTION:
                return CodeOutput(output=self._decode_final_answer(error.evalue), logs=logs, is_final_answer=True)
            raise AgentError(_after(result, "Executing code yielded an error:\n"
                                            f"{error.traceback or f'{error.ename}: {error.evalue}'}"), self.logger)
        return CodeOutput(output=_last_value(result), logs=logs, is_final_answer=False)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """pip-install ``additional_imports`` in the sandbox; an ``AgentError`` when pip
        fails (smolagents' own ``!pip install`` ignores failures)."""
        if additional_imports:
            code = _PIP_INSTALL.format(packages=list(additional_imports), packages_text=" ".join(additional_imports))
            output = self._run(code, max(self.timeout or 0, INSTALL_TIMEOUT))
            self.logger.log(output.logs)
        return additional_imports

    def cleanup(self) -> None:
        """Close the sandbox when this executor made it (idempotent)."""
        if self.owns_sandbox and not self.sandbox.closed:
            self.logger.log(f"Closing pybox sandbox {self.sandbox.id}", level=LogLevel.INFO)
            self.sandbox.close()

    def delete(self) -> None:
        """As smolagents' other executors: the same as :meth:`cleanup`."""
        self.cleanup()

    def _decode_final_answer(self, encoded: str) -> Any:
        """The value of ``final_answer(...)``: smolagents' "safe:" JSON, images decoded
        within pybox's caps. Anything else (pickle, broken data) is an AgentError."""
        if not encoded.startswith("safe:"):
            raise AgentError(f"the final answer came back in a form pybox does not decode "
                             f"({encoded[:40]!r}...): only smolagents' safe JSON format is accepted", self.logger)
        try:
            return SafeSerializer.from_json_safe(_decode_images(json.loads(encoded[len("safe:"):])))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise AgentError(f"the final answer could not be decoded: {type(exc).__name__}: {exc}",
                             self.logger) from exc


def _logs(result: Result) -> str:
    """stdout and stderr in the order they were produced."""
    return "".join(output.text for output in result.outputs if isinstance(output, (Stdout, Stderr)))


def _after(result: Result | None, message: str) -> str:
    """``message`` after the step's logs (as smolagents' other executors put it)."""
    logs = _logs(result) if result is not None else ""
    return f"{logs}\n{message}" if logs else message


def _last_value(result: Result) -> Any:
    """The step's last expression: its image, else its text/plain, else None."""
    for output in reversed(result.outputs):
        if isinstance(output, ExecuteResult):
            image = output.image if output.has_image else None
            return image if image is not None else output.text
    return None


def _decode_images(value: Any) -> Any:
    """``value`` (decoded JSON) with smolagents' encoded PIL images replaced by images
    decoded by pybox (pixel caps checked before decompressing; refused ones fail)."""
    if isinstance(value, list):
        return [_decode_images(item) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("__type__") == "PIL.Image":
        data = value.get("data")
        if not isinstance(data, str):
            raise ValueError("an image in the final answer has no base64 data")
        image = DisplayData({"image/png": data}).image  # smolagents encodes them as PNG
        if image is None:
            raise ValueError("an image in the final answer was refused (not an image, or more pixels than "
                             "pybox decodes; see the 'pybox' log)")
        return image
    return {key: _decode_images(item) for key, item in value.items()}

