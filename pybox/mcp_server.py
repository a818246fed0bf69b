"""``pybox mcp``: an MCP server giving each MCP session a sandbox of its own.

An adapter, outside core: it needs the ``mcp`` extra (``pip install 'pybox[mcp]'``), is
imported only by ``pybox mcp``, and uses pybox's public API only. The tools are named
and shaped as ipybox's MCP server names them (``execute_ipython_cell``,
``install_package``, ``reset``, and ``upload_file`` / ``download_file``), so prompts
written for ipybox keep working.

How pybox's outcomes become MCP results:

- output: stdout, stderr and the text of results and displays, in order, as one text
  block (ANSI codes removed); past ``max_output_chars`` its first and last halves are
  kept with a ``[... N characters truncated ...]`` marker between;
- images (``Result.images``, pixel-capped by pybox) as PNG ``image`` content blocks;
- ``ExecutionError``: a tool error (``isError``) whose text is the output before the
  error followed by the traceback (without ANSI codes);
- ``ExecutionTimeout``: a tool error saying so, whether the kernel was interrupted
  (state kept) or restarted (state lost), with the output produced before the deadline;
  the next call works;
- a kernel or container that died: a tool error; the session's sandbox is removed and
  the next call starts a new one;
- any other pybox error (no engine, image missing, a path outside /app): a tool error
  carrying pybox's message.

Sessions: stdio serves one client per process, so one sandbox per process; streamable
HTTP keys sandboxes by the ``mcp-session-id`` header. A sandbox is started at a session's
first call that needs one and removed when the session ends (stdin closed; an HTTP
DELETE; the HTTP session idle past ``--idle-timeout``), when the server stops (SIGTERM,
SIGINT) or, after a SIGKILL, by pybox's reaper (at the next sandbox start of any pybox
process on this machine, or ``pybox cleanup``).
"""

from __future__ import annotations

import base64
import hmac
import io
import ipaddress
import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Protocol, Sequence

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent
from pydantic import Field

import pybox
from pybox.errors import strip_ansi

if TYPE_CHECKING:  # pragma: no cover
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: ipybox's defaults for ``execute_ipython_cell``.
DEFAULT_CELL_TIMEOUT = 120.0
DEFAULT_MAX_OUTPUT_CHARS = 5000
#: Seconds ``install_package`` gives pip.
INSTALL_TIMEOUT = 600.0
#: Seconds an HTTP session may stay idle before its sandbox is removed (the SDK's own
#: session idle timeout is set to the same value).
DEFAULT_IDLE_TIMEOUT = 1800.0
#: Environment variable holding the HTTP bearer token (instead of ``--token``).
TOKEN_ENV = "PYBOX_MCP_TOKEN"
SESSION_HEADER = "mcp-session-id"
STDIO_SESSION = "stdio"

Transport = Literal["stdio", "http"]


# -- where a session's sandbox comes from ------------------------------------------------


class SandboxSource(Protocol):
    """Hands out a started sandbox per session and takes it back when the session ends.
    Blocking; called from worker threads."""

    def acquire(self) -> pybox.Sandbox: ...

    def release(self, sandbox: pybox.Sandbox) -> None: ...

    def close(self) -> None:
        """The server stops: remove what the source holds besides the sessions' sandboxes."""


@dataclass
class FreshSandboxes:
    """A new sandbox per session, removed at its end."""

    options: pybox.SandboxOptions

    def acquire(self) -> pybox.Sandbox:
        return pybox.Sandbox(options=self.options).start()

    def release(self, sandbox: pybox.Sandbox) -> None:
        sandbox.close()

    def close(self) -> None:
        pass  # holds nothing but the sessions' sandboxes


class PooledSandboxes:
    """Sandboxes from a warm pool (``--pool N``): a session gets a started one at once;
    it is removed at the session's end (never handed to another) and the pool starts
    a replacement."""

    def __init__(self, options: pybox.SandboxOptions, size: int):
        self.pool = pybox.Pool(size=size, options=options).start()

    def acquire(self) -> pybox.Sandbox:
        return self.pool.acquire(timeout=self.pool.options.startup_timeout)

    def release(self, sandbox: pybox.Sandbox) -> None:
        self.pool.release(sandbox)

    def close(self) -> None:
        self.pool.close()


def sandbox_source(options: pybox.SandboxOptions, pool: int = 0) -> SandboxSource:
    """Where sessions' sandboxes come from: a fresh sandbox each, or a warm pool of
    ``pool`` sandboxes."""
    return PooledSandboxes(options, pool) if pool else FreshSandboxes(options)


# -- turning pybox's outcomes into MCP content ------------------------------------------------


def truncate(text: str, max_chars: int) -> str:
    """``text`` whole if it fits, else its first and last halves of ``max_chars`` with a
    marker saying how much was left out between them."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    omitted = len(text) - head - tail
    marker = f"\n[... {omitted:,} characters truncated (max_output_chars={max_chars:,}) ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else "")


def output_text(result: pybox.Result) -> str:
    """stdout, stderr and the text of results and image-less displays, in order, without
    ANSI codes (the error's traceback is not included)."""
    pieces: list[str] = []
    for output in result.outputs:
        if isinstance(output, (pybox.Stdout, pybox.Stderr)):
            pieces.append(output.text)
        elif isinstance(output, pybox.DisplayData) and not output.has_image and output.text is not None:
            if pieces and not pieces[-1].endswith("\n"):
                pieces.append("\n")
            pieces.append(output.text + "\n")
    return strip_ansi("".join(pieces)).strip()


def png_content(image: Any) -> ImageContent:
    """A PIL image as an MCP image block (PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageContent(type="image", data=base64.b64encode(buffer.getvalue()).decode("ascii"),
                        mime_type="image/png")


def cell_result(result: pybox.Result | None, max_chars: int, error: str | None = None) -> CallToolResult:
    """The tool result of a cell: its text (truncated), its images, and ``error`` (a
    traceback or a timeout notice) after the output, which makes it a tool error."""
    text = output_text(result) if result is not None else ""
    if error:
        text = f"{text}\n\n{error}" if text else error
    content: list[ContentBlock] = [TextContent(type="text", text=truncate(text, max_chars))] if text else []
    if result is not None:
        content += [png_content(image) for image in result.images]
    return CallToolResult(content=content, is_error=error is not None)


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def error_text(error: pybox.ExecutionError) -> str:
    return strip_ansi(error.traceback) or str(error)


# -- sessions ---------------------------------------------------------------------------------


@dataclass
class Session:
    """One MCP session's sandbox (started at the first call that needs it)."""

    key: str
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    sandbox: pybox.Sandbox | None = None
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0


class SessionClosed(Exception):
    """The session ended while a call waited for its sandbox."""


@dataclass
class ServerSettings:
    """What ``pybox mcp`` was asked to serve, and how."""

    options: pybox.SandboxOptions = field(default_factory=pybox.SandboxOptions)
    transport: Transport = "stdio"
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/mcp"
    #: None: no token required (only with ``--no-token``).
    token: str | None = None
    #: Host directories ``upload_file`` / ``download_file`` may touch; none: no file tools.
    allowed_dirs: tuple[Path, ...] = ()
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Sandboxes kept started for new sessions (``--pool N``); 0: each session starts one.
    pool: int = 0


class PyboxMCP:
    """The MCP server: tools, sessions and their sandboxes."""

    def __init__(self, settings: ServerSettings, source: SandboxSource | None = None):
        self.settings = settings
        self.source = source if source is not None else sandbox_source(settings.options, settings.pool)
        self.sessions: dict[str, Session] = {}
        self._closed_keys: set[str] = set()
        self._lock = threading.Lock()
        self.mcp: MCPServer[Any] = MCPServer(
            "pybox", version=pybox.__version__,
            instructions="Runs Python code in a stateful IPython kernel inside a sandbox container (pybox). "
                         "State persists across execute_ipython_cell calls until reset; relative paths are "
                         "under /app, the kernel's working directory.")
        tools: list[Callable[..., Any]] = [self.execute_ipython_cell, self.install_package, self.reset]
        if settings.allowed_dirs:
            tools += [self.upload_file, self.download_file]
        for tool in tools:
            self.mcp.add_tool(tool, structured_output=False)

    # -- sessions -------------------------------------------------------------------

    def session_key(self, ctx: Context[Any, Any]) -> str:
        if self.settings.transport == "stdio":
            return STDIO_SESSION  # a stdio server serves one client
        key = (ctx.headers or {}).get(SESSION_HEADER)
        if not key:
            raise SessionClosed("pybox keeps a sandbox per MCP session: connect with a session (stateful "
                                "streamable HTTP, which sends the mcp-session-id header)")
        return key

    def session(self, key: str) -> Session:
        with self._lock:
            if key in self._closed_keys:
                raise SessionClosed(f"MCP session {key} has ended")
            found = self.sessions.get(key)
            if found is None:
                found = self.sessions[key] = Session(key)
            found.last_used = time.monotonic()
            return found

    async def started(self, session: Session) -> pybox.Sandbox:
        """The session's sandbox, started now if it has none (holds ``session.lock``)."""
        if session.sandbox is not None:
            return session.sandbox
        sandbox = await anyio.to_thread.run_sync(self.source.acquire)
        with self._lock:
            ended = session.key in self._closed_keys
            if not ended:
                session.sandbox = sandbox
        if ended:  # the session ended while the sandbox started
            await anyio.to_thread.run_sync(self.source.release, sandbox)
            raise SessionClosed(f"MCP session {session.key} has ended")
        log.info("session %s: sandbox %s started", session.key[:12], (sandbox.id or "")[:12])
        return sandbox

    def close_session(self, key: str) -> None:
        """Remove ``key``'s sandbox (blocking). Calls still running in it end with an error."""
        with self._lock:
            session = self.sessions.pop(key, None)
            self._closed_keys.add(key)
            sandbox = session.sandbox if session is not None else None
            if session is not None:
                session.sandbox = None
        if sandbox is not None:
            try:
                self.source.release(sandbox)
                log.info("session %s: sandbox %s removed", key[:12], (sandbox.id or "")[:12])
            except pybox.PyboxError as exc:
                log.warning("session %s: could not remove its sandbox: %s", key[:12], exc)

    def close_all(self) -> None:
        for key in list(self.sessions):
            self.close_session(key)
        self.source.close()  # a pool's sandboxes kept ready go too

    def idle_sessions(self, now: float) -> list[str]:
        with self._lock:
            return [key for key, s in self.sessions.items()
                    if not s.busy and now - s.last_used > self.settings.idle_timeout]

    def touch(self, key: str) -> None:
        with self._lock:
            if key in self.sessions:
                self.sessions[key].last_used = time.monotonic()

    async def _in_sandbox(self, ctx: Context[Any, Any], work: Callable[[pybox.Sandbox, Session], Any]) -> Any:
        """Run ``work(sandbox, session)`` (async) with the session's sandbox, one call at a time
        per session; pybox errors become tool errors."""
        try:
            session = self.session(self.session_key(ctx))
        except SessionClosed as exc:
            return tool_error(str(exc))
        async with session.lock:
            session.busy += 1
            try:
                sandbox = await self.started(session)
                return await work(sandbox, session)
            except (pybox.KernelDied, pybox.SandboxClosed, pybox.ChannelError) as exc:
                # The kernel or its container is gone: start afresh at the next call.
                await anyio.to_thread.run_sync(self._discard, session)
                return tool_error(f"{exc}\nThe sandbox was removed: the next call starts a new one "
                                  f"(variables and files are lost).")
            except SessionClosed as exc:
                return tool_error(str(exc))
            except pybox.PyboxError as exc:
                return tool_error(f"pybox: {exc}")
            finally:
                session.busy -= 1
                session.last_used = time.monotonic()

    def _discard(self, session: Session) -> None:
        sandbox, session.sandbox = session.sandbox, None
        if sandbox is not None:
            try:
                self.source.release(sandbox)
            except pybox.PyboxError as exc:
                log.warning("session %s: could not remove its broken sandbox: %s", session.key[:12], exc)

    # -- tools (names and parameters as ipybox's MCP server) -------------------------

    async def execute_ipython_cell(
        self,
        code: Annotated[str, Field(description="Python code to execute in the IPython kernel")],
        ctx: Context[Any, Any],
        timeout: Annotated[float, Field(description="Maximum execution time in seconds before kernel "
                                                    "interruption", gt=0)] = DEFAULT_CELL_TIMEOUT,
        max_output_chars: Annotated[int, Field(description="Maximum number of characters to return in output "
                                                           "(truncates if exceeded)", ge=100)
                                    ] = DEFAULT_MAX_OUTPUT_CHARS,
    ) -> CallToolResult:
        """Execute Python code in a stateful IPython kernel inside a sandbox container.

        State (variables, imports, definitions) persists across calls until reset(). Executions
        are sequential. Returns stdout, stderr and the value of the last expression as text and
        plots/images as image content; a raised exception is returned as an error with its
        traceback; past `timeout` the code is interrupted (error result) and the kernel stays
        usable. The working directory is /app.
        """
        meta = ctx.request_context.meta or {}
        wants_progress = meta.get("progress_token") is not None

        async def work(sandbox: pybox.Sandbox, session: Session) -> CallToolResult:
            execution = await anyio.to_thread.run_sync(sandbox.submit, code)
            try:
                if wants_progress:
                    report = _progress_reporter(ctx, max_output_chars)
                    result = await anyio.to_thread.run_sync(_streamed, execution, timeout, report,
                                                            abandon_on_cancel=True)
                else:
                    result = await anyio.to_thread.run_sync(lambda: execution.result(timeout, check=False),
                                                            abandon_on_cancel=True)
            except pybox.ExecutionTimeout as exc:
                return cell_result(exc.result, max_output_chars, error=f"{exc}")
            except anyio.get_cancelled_exc_class():
                execution.cancel()  # the client cancelled the call: interrupt the code
                raise
            if result.error is not None:
                return cell_result(result, max_output_chars, error=error_text(result.error))
            return cell_result(result, max_output_chars)

        result: CallToolResult = await self._in_sandbox(ctx, work)
        return result

    async def install_package(
        self,
        package_name: Annotated[str, Field(description="Package spec (name, name==version, or git+https://... URL)")],
        ctx: Context[Any, Any],
    ) -> CallToolResult:
        """Install a Python package via pip into the sandbox.

        Installed packages persist across reset() calls and are immediately importable.
        Supports version specifiers (e.g., "numpy>=1.20.0") and git URLs.
        Returns pip's output.
        """
        spec = package_name.strip()
        if not spec or spec.startswith("-") or "\n" in spec or "\0" in spec:
            return tool_error(f"package_name must be a package spec such as 'requests' or 'numpy>=1.20', "
                              f"not {package_name!r}")

        async def work(sandbox: pybox.Sandbox, session: Session) -> CallToolResult:
            result = await anyio.to_thread.run_sync(
                lambda: sandbox.run(pip_install_code(spec), timeout=INSTALL_TIMEOUT, check=False))
            if result.error is not None:
                return cell_result(result, 20_000, error=f"pip install {spec} failed: {result.error.evalue}")
            return cell_result(result, 20_000)

        result: CallToolResult = await self._in_sandbox(ctx, work)
        return result

    async def reset(self, ctx: Context[Any, Any]) -> CallToolResult:
        """Reset the IPython kernel to a clean state.

        Clears all variables, imports, and definitions. Installed packages and files in the
        sandbox persist.
        """
        async def work(sandbox: pybox.Sandbox, session: Session) -> CallToolResult:
            await anyio.to_thread.run_sync(sandbox.restart)
            return CallToolResult(content=[])

        try:
            key = self.session_key(ctx)
        except SessionClosed as exc:
            return tool_error(str(exc))
        session = self.sessions.get(key)
        if session is None or session.sandbox is None:
            return CallToolResult(content=[])  # nothing started: nothing to clear
        result: CallToolResult = await self._in_sandbox(ctx, work)
        return result

    async def upload_file(
        self,
        relpath: Annotated[str, Field(description="Path in the sandbox, relative to /app, where the file is put")],
        local_path: Annotated[str, Field(description="Absolute path of the file (or directory) on the host")],
        ctx: Context[Any, Any],
    ) -> CallToolResult:
        """Upload a file or directory from the host into the sandbox at /app/{relpath}.

        The host path must be inside one of the directories the server allows.
        """
        try:
            local = allowed_path(local_path, self.settings.allowed_dirs, must_exist=True)
        except PermissionError as exc:
            return tool_error(str(exc))

        async def work(sandbox: pybox.Sandbox, session: Session) -> CallToolResult:
            await anyio.to_thread.run_sync(sandbox.upload, local, relpath)
            return CallToolResult(content=[TextContent(type="text", text=f"uploaded {local} to {relpath}")])

        result: CallToolResult = await self._in_sandbox(ctx, work)
        return result

    async def download_file(
        self,
        relpath: Annotated[str, Field(description="Path in the sandbox, relative to /app, of the file to download")],
        local_path: Annotated[str, Field(description="Absolute path on the host where the file will be saved")],
        ctx: Context[Any, Any],
    ) -> CallToolResult:
        """Download a file or directory from the sandbox (/app/{relpath}) to the host.

        The host path must be inside one of the directories the server allows; missing
        parent directories are created.
        """
        try:
            local = allowed_path(local_path, self.settings.allowed_dirs, must_exist=False)
        except PermissionError as exc:
            return tool_error(str(exc))

        async def work(sandbox: pybox.Sandbox, session: Session) -> CallToolResult:
            local.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(sandbox.download, relpath, local)
            return CallToolResult(content=[TextContent(type="text", text=f"downloaded {relpath} to {local}")])

        result: CallToolResult = await self._in_sandbox(ctx, work)
        return result


def pip_install_code(spec: str) -> str:
    """Code that pip-installs ``spec`` in the kernel's environment, printing pip's output
    and raising when pip fails (leaving no names behind in the kernel)."""
    return (
        "def __pybox_pip(spec):\n"
        "    import subprocess, sys\n"
        "    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-input',\n"
        "                           '--disable-pip-version-check', spec], capture_output=True, text=True)\n"
        "    print(done.stdout + done.stderr, end='')\n"
        "    if done.returncode:\n"
        "        raise RuntimeError(f'pip exited with status {done.returncode}')\n"
        f"try:\n    __pybox_pip({spec!r})\nfinally:\n    del __pybox_pip\n"
    )


def allowed_path(path: str, allowed: Sequence[Path], must_exist: bool) -> Path:
    """``path`` resolved (links followed), if it lies in one of ``allowed``; else
    PermissionError naming them."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        raise PermissionError(f"local_path must be an absolute path, got {path!r}")
    resolved = candidate.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        roots = ", ".join(str(r) for r in allowed)
        raise PermissionError(f"local_path {path!r} is outside the directories this server allows ({roots})")
    if must_exist and not resolved.exists():
        raise PermissionError(f"local_path {path!r} does not exist")
    return resolved


def _progress_reporter(ctx: Context[Any, Any], max_chars: int) -> Callable[[str], None]:
    """A blocking callable (for a worker thread) sending each chunk as a progress
    notification; ``progress`` counts the characters streamed so far."""
    streamed = 0

    def report(chunk: str) -> None:
        nonlocal streamed
        streamed += len(chunk)
        anyio.from_thread.run(ctx.report_progress, float(streamed), None, truncate(strip_ansi(chunk), max_chars))

    return report


def _streamed(execution: pybox.Execution, timeout: float, report: Callable[[str], None]) -> pybox.Result:
    """Wait for ``execution``, reporting its text as it is produced."""
    for chunk in execution.stream(timeout):
        if chunk:
            report(chunk)
    return execution.result(check=False)


# -- HTTP: a bearer token and session ends ---------------------------------------------------


class HttpGuard:
    """ASGI middleware: refuses requests without the bearer token (401), and removes a
    session's sandbox when the client ends the session (DELETE)."""

    def __init__(self, app: ASGIApp, server: PyboxMCP, token: str | None):
        self.app = app
        self.server = server
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            await _unauthorized(send)
            return
        session = headers.get(SESSION_HEADER.encode(), b"").decode("latin-1")
        if session:
            self.server.touch(session)
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)
        if session and scope.get("method") == "DELETE" and status and status[0] < 400:
            await anyio.to_thread.run_sync(self.server.close_session, session)


async def _unauthorized(send: Send) -> None:
    body = b'{"error": "unauthorized", "error_description": "a bearer token is required (pybox mcp --token)"}'
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- running ------------------------------------------------------------------------------


def serve(settings: ServerSettings, source: SandboxSource | None = None) -> None:
    """Serve until the client leaves (stdio) or SIGTERM / SIGINT; then remove every
    sandbox (and, after a signal, end by it as the default handler would)."""
    server = PyboxMCP(settings, source)
    received: list[int] = []
    try:
        if settings.transport == "stdio":
            anyio.run(_serve_stdio, server)
        else:
            # uvicorn handles the signals while it runs (a graceful shutdown), then puts the
            # handlers it found back and raises the signal again: these record it, so that
            # the sandboxes are removed before the process ends by it.
            handled = (signal.SIGTERM, signal.SIGINT)
            previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                        for signum in handled}
            try:
                anyio.run(_serve_http, server)
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
    finally:
        server.close_all()
    if received:
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])


async def _serve_stdio(server: PyboxMCP) -> None:
    async with anyio.create_task_group() as group:
        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    # The stdin reader sits in a thread no cancellation reaches: remove the
                    # sandboxes now, then end by the signal as the default handler would.
                    log.info("signal %d: removing the sandboxes and stopping", signum)
                    await anyio.to_thread.run_sync(server.close_all)
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

        group.start_soon(stop_on_signal)
        await server.mcp.run_stdio_async()
        group.cancel_scope.cancel()


async def _serve_http(server: PyboxMCP) -> None:
    import uvicorn

    settings = server.settings
    app = server.mcp.streamable_http_app(streamable_http_path=settings.path, host=settings.host,
                                         session_idle_timeout=settings.idle_timeout)
    guarded = HttpGuard(app, server, settings.token)
    # Open streams (a session's GET stream) are cut after 5 s of a shutdown.
    config = uvicorn.Config(guarded, host=settings.host, port=settings.port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)
    async with anyio.create_task_group() as group:
        async def sweep_idle() -> None:
            while True:
                await anyio.sleep(min(30.0, settings.idle_timeout / 4))
                for key in server.idle_sessions(time.monotonic()):
                    log.info("session %s idle: removing its sandbox", key[:12])
                    await anyio.to_thread.run_sync(server.close_session, key)

        group.start_soon(sweep_idle)
        await uvicorn.Server(config).serve()
        group.cancel_scope.cancel()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def announce_http(settings: ServerSettings, generated: bool) -> None:
    """Tell the operator (stderr) where the server listens and, if generated, its token."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"pybox mcp: streamable HTTP on http://{host}:{settings.port}{settings.path}", file=sys.stderr)
    if settings.token is None:
        print("pybox mcp: no token required (--no-token)", file=sys.stderr)
    elif generated:
        print(f"pybox mcp: token (send 'Authorization: Bearer TOKEN'; set {TOKEN_ENV} to choose it): "
              f"{settings.token}", file=sys.stderr)
    sys.stderr.flush()


def default_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
