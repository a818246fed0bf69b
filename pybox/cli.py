"""The ``pybox`` command (also ``python -m pybox``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pybox.errors import InvalidArgument, PyboxError


def _build(args: argparse.Namespace) -> int:
    from pybox.build import build_image

    ca_bundle: str | bool | None = True
    if args.no_ca_bundle:
        ca_bundle = None
    elif args.ca_bundle:
        ca_bundle = args.ca_bundle

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    build_image(args.tag, backend=args.backend, base=args.base, ca_bundle=ca_bundle,
                dependencies=args.dependencies, kernels=args.kernels or (), progress=progress)
    if args.quiet:
        print(args.tag)
    return 0


def _probe(name: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Whether backend ``name``'s engine answers, and what it said; never hangs."""
    import threading

    from pybox.plugins import get_plugins

    outcome: list[tuple[bool, str]] = []

    def ping() -> None:
        try:
            backend = get_plugins().backend(name)()
            try:
                backend.ping()
            finally:
                backend.close()
            outcome.append((True, "engine answers"))
        except PyboxError as exc:
            outcome.append((False, str(exc)))
        except Exception as exc:  # a third-party backend leaking a raw error is itself a finding
            outcome.append((False, f"{type(exc).__name__}: {exc} (the backend leaked a non-pybox error)"))

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else (False, f"no answer within {timeout:g} s")


def _emit(args: argparse.Namespace, data: dict[str, Any], text: list[str]) -> None:
    """Print ``data`` as JSON with --json, else the human-readable lines."""
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for line in text:
            print(line)


def _backends(args: argparse.Namespace) -> int:
    from pybox.plugins import get_plugins, resolve_backend_name

    plugins = get_plugins()
    default = resolve_backend_name(None)
    found: list[dict[str, Any]] = []
    text: list[str] = []
    for name, info in sorted(plugins.backends().items()):
        reachable, detail = _probe(name) if not args.no_probe else (None, "not probed")
        found.append({"name": name, "default": name == default, "reachable": reachable, "detail": detail,
                      "distribution": info.distribution, "plugin": info.plugin,
                      "description": info.cls.description, "features": sorted(info.cls.features)})
        mark = {True: "reachable", False: "UNREACHABLE", None: "-"}[reachable]
        text.append(f"{name}{' (default)' if name == default else ''}: {mark}")
        text.append(f"    from: {info.distribution or 'registered in-process'} (plugin {info.plugin!r})")
        if info.cls.description:
            text.append(f"    what: {info.cls.description}")
        if reachable is False:
            text.append(f"    why:  {detail}")
    disabled = [{"plugin": plugin, "reason": error} for plugin, error in sorted(plugins.load_errors.items())]
    text += [f"{d['plugin']}: DISABLED: {d['reason']}" for d in disabled]
    # With probing, no engine answering is a failure (scripts check `pybox backends`).
    ok = bool(found) and (args.no_probe or any(b["reachable"] for b in found))
    if not ok:
        text.append("no backend's engine answers" if found else "no backend is installed")
    _emit(args, {"backends": found, "disabled": disabled, "ok": ok}, text)
    return 0 if ok else 1


def _doctor(args: argparse.Namespace) -> int:
    import shutil

    from pybox.build import REGISTRY_BASE
    from pybox.image_contract import DEFAULT_IMAGE
    from pybox.plugins import get_plugins, resolve_backend_name

    checks: list[dict[str, Any]] = []
    notes: list[str] = []

    def report(ok: bool, what: str, fix: str = "") -> None:
        checks.append({"ok": ok, "what": what, "fix": "" if ok else fix})

    def finish() -> int:
        problems = sum(1 for c in checks if not c["ok"])
        environment = {v: os.environ[v] for v in ("DOCKER_HOST", "CONTAINER_HOST", "PYBOX_BACKEND")
                       if os.environ.get(v)}
        text = [f"[{'ok' if c['ok'] else '!!'}] {c['what']}" + (f"\n     fix: {c['fix']}" if c["fix"] else "")
                for c in checks] + [f"     {note}" for note in notes]
        text += [f"     {k}={v}" for k, v in environment.items()]
        text.append("pybox is ready" if not problems else f"{problems} problem(s) found")
        _emit(args, {"ready": not problems, "checks": checks, "notes": notes, "environment": environment}, text)
        return 0 if not problems else 1

    report(sys.version_info >= (3, 10), f"Python {sys.version.split()[0]}", "pybox needs Python 3.10 or newer")
    plugins = get_plugins()
    name = resolve_backend_name(args.backend)
    for plugin, error in sorted(plugins.load_errors.items()):
        if plugin != name:
            notes.append(f"plugin {plugin} is disabled: {error}")
    if name not in plugins.backends():
        if name in plugins.load_errors:
            report(False, f"backend {name!r} is disabled: {plugins.load_errors[name]}",
                   "install what it names, or pick another backend with PYBOX_BACKEND")
        else:
            report(False, f"backend {name!r} is not installed (installed: {', '.join(sorted(plugins.backends()))})",
                   "pick one with PYBOX_BACKEND or install its plugin")
        return finish()
    reachable, detail = _probe(name)
    report(reachable, f"backend {name!r}: {detail}",
           "start the engine, or pick another backend with PYBOX_BACKEND (`pybox backends` lists them)")
    if reachable:
        backend = plugins.backend(name)()
        try:
            has_image = backend.image_exists(args.image)
            report(has_image, f"image {args.image} on {name}",
                   f"build it: pybox build --backend {name}" + ("" if args.image == DEFAULT_IMAGE
                                                                else f" --tag {args.image}"))
            if has_image:
                _doctor_image_protocol(backend, args.image, name, report)
            if not has_image and not backend.image_exists(REGISTRY_BASE) and shutil.which("debootstrap") is None:
                notes.append("where no registry is reachable, pybox build makes its base with debootstrap "
                             "(apt-get install debootstrap, as root), or pass --base IMAGE")
        except PyboxError as exc:
            report(False, f"could not inspect image {args.image}: {exc}")
        finally:
            backend.close()
    return finish()


def _doctor_image_protocol(backend: Any, image: str, name: str, report: Any) -> None:
    """Report whether ``image`` was built for this pybox's image protocol (skipped for
    backends that cannot read image labels)."""
    from pybox.errors import IncompatibleImage, UnsupportedOperation
    from pybox.image_contract import DEFAULT_IMAGE, IMAGE_PROTOCOL
    from pybox.pull import check_image_labels

    try:
        labels = backend.image_labels(image)
    except UnsupportedOperation:
        return
    try:
        check_image_labels(image, labels or {})
    except IncompatibleImage as exc:
        report(False, f"image {image} is not built for image protocol {IMAGE_PROTOCOL}: {exc}",
               f"rebuild it: pybox build --backend {name}" + ("" if image == DEFAULT_IMAGE else f" --tag {image}"))
        return
    report(True, f"image {image} speaks image protocol {IMAGE_PROTOCOL}")


def _cleanup(args: argparse.Namespace) -> int:
    from pybox.ownership import reap_orphans
    from pybox.plugins import get_plugins

    older_than = None if args.older_than is None else _duration(args.older_than)
    backend = get_plugins().backend(args.backend)()
    try:
        reaped = reap_orphans(backend, dry_run=args.dry_run, older_than=older_than, owner=args.owner)
    finally:
        backend.close()
    verb = "would remove" if args.dry_run else "removed"
    text = [f"{verb} {container_id[:12]}" for container_id in reaped]
    kept = ("containers of live owners were left alone" if older_than is not None or args.owner
            else "containers of live owners, and of owners that cannot be judged from here (another machine or "
                 "pid namespace), were left alone: remove those with --older-than or --owner")
    text.append(f"{len(reaped)} orphaned sandbox container(s) {verb}; {kept}")
    _emit(args, {"dry_run": args.dry_run, "orphans": reaped}, text)
    return 0


def _duration(text: str, flag: str = "--older-than") -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h``, ``1d``."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise InvalidArgument(f"{flag} must be a duration such as 90s, 30m, 2h or 1d, not {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# -- pybox mcp ---------------------------------------------------------------------------------

MCP_EXTRA_HINT = "pybox mcp needs the MCP SDK: pip install 'pybox[mcp]'"


def parse_env_flag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE); a bare ``KEY`` takes this process's value."""
    key, sep, value = text.partition("=")
    if not key:
        raise InvalidArgument(f"--env must be KEY=VALUE or KEY, not {text!r}")
    if not sep:
        if key not in os.environ:
            raise InvalidArgument(f"--env {key}: no value given and {key} is not set in this environment")
        value = os.environ[key]
    return key, value


def parse_bind_flag(text: str) -> tuple[str, str]:
    """``HOST_PATH:SANDBOX_PATH`` -> (HOST_PATH, SANDBOX_PATH); the sandbox path is
    relative to /app (or absolute under it). The last colon splits."""
    host, sep, target = text.rpartition(":")
    if not sep or not host or not target:
        raise InvalidArgument(f"--bind must be HOST_PATH:SANDBOX_PATH (e.g. ./data:data), not {text!r}")
    return host, target


def parse_network_flag(text: str) -> str | tuple[str, ...]:
    """``default``, ``open``, ``none`` or a comma-separated allowlist."""
    text = text.strip()
    if text in ("default", "open", "none"):
        return text
    entries = tuple(entry.strip() for entry in text.split(",") if entry.strip())
    if not entries:
        raise InvalidArgument(f"--network must be default, open, none or a comma-separated list of "
                              f"addresses, CIDRs and domains, not {text!r}")
    return entries


def mcp_sandbox_options(args: argparse.Namespace) -> Any:
    """The SandboxOptions ``pybox mcp``'s flags ask for (checked by SandboxOptions)."""
    from pybox.options import SandboxOptions
    from pybox.spec import Limits

    limits = Limits()
    limits = Limits(memory=args.memory if args.memory is not None else limits.memory,
                    cpus=args.cpus if args.cpus is not None else limits.cpus,
                    pids=args.pids if args.pids is not None else limits.pids)
    return SandboxOptions(image=args.image, backend=args.backend,
                          binds=dict(parse_bind_flag(b) for b in args.bind or ()),  # type: ignore[arg-type]
                          env=dict(parse_env_flag(e) for e in args.env or ()),
                          limits=limits, read_only=args.read_only, network=parse_network_flag(args.network))


def _mcp(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from pybox import mcp_server
    except ImportError as exc:
        if exc.name is not None and (exc.name == "mcp" or exc.name.startswith("mcp.")):
            print(f"{MCP_EXTRA_HINT} (import failed: {exc})", file=sys.stderr)
            return 1
        raise
    options = mcp_sandbox_options(args)
    allowed = []
    for directory in args.allowed_dirs or ():
        path = Path(directory).expanduser().resolve()
        if not path.is_dir():
            raise InvalidArgument(f"--allowed-dir {directory!r} is not a directory")
        allowed.append(path)
    settings = mcp_server.ServerSettings(options=options, transport=args.transport, host=args.host,
                                         port=args.port, path=args.path, allowed_dirs=tuple(allowed),
                                         idle_timeout=_duration(args.idle_timeout, "--idle-timeout"),
                                         pool=args.pool)
    if args.pool < 0:
        raise InvalidArgument(f"--pool must be 0 (no pool) or a number of sandboxes, got {args.pool}")
    if args.transport == "http":
        if not mcp_server.is_loopback(args.host) and not args.allow_remote:
            raise InvalidArgument(f"--host {args.host} is not a loopback address: anyone who can reach it could "
                                  f"run code in your sandboxes with the token; pass --allow-remote to bind it anyway")
        if allowed and not mcp_server.is_loopback(args.host):
            raise InvalidArgument("--allowed-dir is for clients on this machine: the file tools read and write "
                                  "this machine's files, so they are offered on loopback binds only")
        generated = False
        if not args.no_token:
            settings.token = args.token or mcp_server.default_token()
            if settings.token is None:
                settings.token, generated = mcp_server.new_token(), True
        mcp_server.announce_http(settings, generated)
    mcp_server.serve(settings)
    return 0


def parser() -> argparse.ArgumentParser:
    from pybox import __version__
    from pybox.image_contract import DEFAULT_IMAGE

    root = argparse.ArgumentParser(prog="pybox", description="Run Python code in sandboxed IPython kernels.")
    root.add_argument("--version", action="version", version=f"pybox {__version__}")
    loudness = root.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="log what pybox does to stderr (-vv: debug)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="errors only")
    commands = root.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the sandbox image")
    build.add_argument("-t", "--tag", default=DEFAULT_IMAGE, help=f"image name (default: {DEFAULT_IMAGE})")
    build.add_argument("-b", "--backend", default=None, help="backend to build with (default: PYBOX_BACKEND or docker)")
    build.add_argument("--base", default=None, help="base image (default: python:3.11-slim-bookworm, "
                       "or a debootstrap-made base where no registry is reachable)")
    build.add_argument("-d", "--dependencies", default=None, metavar="FILE",
                       help="requirements file of extra packages to install in the image")
    build.add_argument("-k", "--kernel", action="append", dest="kernels", metavar="REQUIREMENT[:INSTALL_MODULE]",
                       help="add a Jupyter kernel (repeatable; the image always has python3 and bash): "
                       "pip-install REQUIREMENT (a name, optionally [extras] and a version, e.g. "
                       "bash_kernel==0.10.0) and register its kernelspec in the image's venv with "
                       "`python -m INSTALL_MODULE --sys-prefix` (e.g. bash_kernel.install; quote "
                       "'pkg:module install' to pass arguments); without INSTALL_MODULE the package "
                       "must ship its kernelspec. Use it with Sandbox.kernel(name=KERNELSPEC_NAME)")
    bundle = build.add_mutually_exclusive_group()
    bundle.add_argument("--ca-bundle", default=None, metavar="FILE",
                        help="CA bundle pip trusts during the build (default: PIP_CERT, "
                        "REQUESTS_CA_BUNDLE or SSL_CERT_FILE)")
    bundle.add_argument("--no-ca-bundle", action="store_true", help="use the base image's CA certificates only")
    build.add_argument("-q", "--quiet", action="store_true", dest="quiet_build",
                       help="no build output; print the tag when done")
    build.set_defaults(func=_build)

    backends = commands.add_parser("backends", help="list installed backends, where they come from, "
                                   "and whether their engine answers")
    backends.add_argument("--no-probe", action="store_true", help="do not contact the engines")
    backends.add_argument("--json", action="store_true", help="machine-readable output")
    backends.set_defaults(func=_backends)

    doctor = commands.add_parser("doctor", help="explain what is missing on this machine and how to fix it")
    doctor.add_argument("-b", "--backend", default=None, help="backend to check (default: PYBOX_BACKEND or docker)")
    doctor.add_argument("--image", default=DEFAULT_IMAGE, help=f"image to look for (default: {DEFAULT_IMAGE})")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_doctor)

    cleanup = commands.add_parser("cleanup", help="remove sandbox containers whose owner process died")
    cleanup.add_argument("-b", "--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    cleanup.add_argument("-n", "--dry-run", action="store_true", help="list the orphans, remove nothing")
    cleanup.add_argument("--older-than", default=None, metavar="DURATION",
                         help="also remove containers whose owner cannot be judged from here (another machine "
                              "or pid namespace) made longer ago than DURATION (90s, 30m, 2h, 1d)")
    cleanup.add_argument("--owner", default=None, metavar="HOST[:PID]|SESSION",
                         help="also remove such containers of this owner (host name, host:pid, or pybox session)")
    cleanup.add_argument("--json", action="store_true", help="machine-readable output")
    cleanup.set_defaults(func=_cleanup)

    mcp = commands.add_parser("mcp", help="serve a sandbox per MCP session to MCP clients (needs pybox[mcp])",
                              description="An MCP server with ipybox's tools (execute_ipython_cell, "
                              "install_package, reset; upload_file/download_file with --allowed-dir), one "
                              "sandbox per MCP session. stdio by default; --transport http serves streamable "
                              "HTTP on loopback with a bearer token.")
    mcp.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                     help="stdio (default; the client starts pybox mcp) or streamable HTTP")
    mcp.add_argument("-b", "--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    mcp.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default: {DEFAULT_IMAGE})")
    mcp.add_argument("--network", default="default", metavar="POLICY",
                     help="default (public internet only), open, none, or a comma-separated allowlist of "
                          "addresses, CIDRs and domains")
    mcp.add_argument("--memory", default=None, help="memory limit such as 512m or 2g (default: 2g)")
    mcp.add_argument("--cpus", type=float, default=None, help="CPU limit in cores, e.g. 1.5 (default: none)")
    mcp.add_argument("--pids", type=int, default=None, help="process limit (default: 1024)")
    mcp.add_argument("--bind", action="append", metavar="HOST_PATH:SANDBOX_PATH",
                     help="bind-mount a host path into the sandbox, under /app (repeatable)")
    mcp.add_argument("--env", action="append", metavar="KEY[=VALUE]",
                     help="environment variable of the sandbox; a bare KEY passes this process's value "
                          "(repeatable)")
    mcp.add_argument("--read-only", action="store_true", help="read-only root filesystem (/app stays writable)")
    mcp.add_argument("--pool", type=int, default=0, metavar="N",
                     help="keep N sandboxes started, so that a new session gets one at once (default: 0)")
    mcp.add_argument("--allowed-dir", action="append", dest="allowed_dirs", metavar="DIR",
                     help="offer upload_file/download_file, confined to this host directory (repeatable)")
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default: 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8000, help="HTTP: port (default: 8000)")
    mcp.add_argument("--path", default="/mcp", help="HTTP: endpoint path (default: /mcp)")
    mcp.add_argument("--token", default=None, help="HTTP: bearer token clients must send (default: "
                     "PYBOX_MCP_TOKEN, else one is generated and printed to stderr)")
    mcp.add_argument("--no-token", action="store_true", help="HTTP: require no token (anyone who can reach "
                     "the port runs code in your sandboxes)")
    mcp.add_argument("--allow-remote", action="store_true", help="HTTP: allow binding a non-loopback address")
    mcp.add_argument("--idle-timeout", default="30m", metavar="DURATION",
                     help="HTTP: remove a session's sandbox after it is idle this long (default: 30m)")
    mcp.set_defaults(func=_mcp)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.quiet = args.quiet or getattr(args, "quiet_build", False)
    level = logging.ERROR if args.quiet else {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="pybox: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger("pybox").setLevel(level)
    try:
        code: int = args.func(args)
        return code
    except PyboxError as exc:
        print(f"pybox {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
