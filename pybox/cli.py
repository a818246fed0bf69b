"""The ``pybox`` command (also ``python -m pybox``)."""

from __future__ import annotations

import argparse
import sys

from pybox.errors import PyboxError


def _build(args: argparse.Namespace) -> int:
    from pybox.build import build_image

    ca_bundle: str | bool | None = True
    if args.no_ca_bundle:
        ca_bundle = None
    elif args.ca_bundle:
        ca_bundle = args.ca_bundle
    build_image(args.tag, backend=args.backend, base=args.base, ca_bundle=ca_bundle,
                dependencies=args.dependencies, progress=lambda line: print(line, flush=True))
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


def _backends(args: argparse.Namespace) -> int:
    from pybox.plugins import get_plugins, resolve_backend_name

    plugins = get_plugins()
    default = resolve_backend_name(None)
    for name, info in sorted(plugins.backends().items()):
        reachable, detail = _probe(name) if not args.no_probe else (None, "not probed")
        mark = {True: "reachable", False: "UNREACHABLE", None: "-"}[reachable]
        star = " (default)" if name == default else ""
        print(f"{name}{star}: {mark}")
        print(f"    from: {info.distribution or 'registered in-process'} (plugin {info.plugin!r})")
        if info.cls.description:
            print(f"    what: {info.cls.description}")
        if reachable is False:
            print(f"    why:  {detail}")
    for plugin, error in sorted(plugins.load_errors.items()):
        print(f"{plugin}: DISABLED: {error}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import os
    import shutil

    from pybox.build import REGISTRY_BASE
    from pybox.image_contract import DEFAULT_IMAGE
    from pybox.plugins import get_plugins, resolve_backend_name

    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        print(f"[{'ok' if ok else '!!'}] {what}")
        if not ok:
            problems += 1
            if fix:
                print(f"     fix: {fix}")

    report(sys.version_info >= (3, 10), f"Python {sys.version.split()[0]}", "pybox needs Python 3.10 or newer")
    plugins = get_plugins()
    name = resolve_backend_name(args.backend)
    for plugin, error in sorted(plugins.load_errors.items()):
        if plugin != name:
            print(f"[--] plugin {plugin} is disabled: {error}")
    if name not in plugins.backends() and name in plugins.load_errors:
        report(False, f"backend {name!r} is disabled: {plugins.load_errors[name]}",
               "install what it names, or pick another backend with PYBOX_BACKEND")
        return 1
    if name not in plugins.backends():
        report(False, f"backend {name!r} is not installed (installed: {', '.join(sorted(plugins.backends()))})",
               "pick one with PYBOX_BACKEND or install its plugin")
        return 1
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
            if not has_image:
                has_base = backend.image_exists(REGISTRY_BASE)
                if not has_base and shutil.which("debootstrap") is None:
                    print("     note: where no registry is reachable, pybox build makes its base with "
                          "debootstrap (apt-get install debootstrap, as root), or pass --base IMAGE")
        except PyboxError as exc:
            report(False, f"could not inspect image {args.image}: {exc}")
        finally:
            backend.close()
    for variable in ("DOCKER_HOST", "CONTAINER_HOST", "PYBOX_BACKEND"):
        if os.environ.get(variable):
            print(f"     {variable}={os.environ[variable]}")
    print("pybox is ready" if not problems else f"{problems} problem(s) found")
    return 0 if not problems else 1


def _cleanup(args: argparse.Namespace) -> int:
    from pybox.ownership import reap_orphans
    from pybox.plugins import get_plugins

    backend = get_plugins().backend(args.backend)()
    try:
        reaped = reap_orphans(backend)
    finally:
        backend.close()
    for container_id in reaped:
        print(f"removed {container_id[:12]} (its owner process is gone)")
    print(f"{len(reaped)} orphaned sandbox container(s) removed; containers of live processes were left alone")
    return 0


def parser() -> argparse.ArgumentParser:
    from pybox import __version__
    from pybox.image_contract import DEFAULT_IMAGE

    root = argparse.ArgumentParser(prog="pybox", description="Run Python code in sandboxed IPython kernels.")
    root.add_argument("--version", action="version", version=f"pybox {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the sandbox image")
    build.add_argument("-t", "--tag", default=DEFAULT_IMAGE, help=f"image name (default: {DEFAULT_IMAGE})")
    build.add_argument("-b", "--backend", default=None, help="backend to build with (default: PYBOX_BACKEND or docker)")
    build.add_argument("--base", default=None, help="base image (default: python:3.11-slim-bookworm, "
                       "or a debootstrap-made base where no registry is reachable)")
    build.add_argument("-d", "--dependencies", default=None, metavar="FILE",
                       help="requirements file of extra packages to install in the image")
    bundle = build.add_mutually_exclusive_group()
    bundle.add_argument("--ca-bundle", default=None, metavar="FILE",
                        help="CA bundle pip trusts during the build (default: PIP_CERT, "
                        "REQUESTS_CA_BUNDLE or SSL_CERT_FILE)")
    bundle.add_argument("--no-ca-bundle", action="store_true", help="use the base image's CA certificates only")
    build.set_defaults(func=_build)

    backends = commands.add_parser("backends", help="list installed backends, where they come from, "
                                   "and whether their engine answers")
    backends.add_argument("--no-probe", action="store_true", help="do not contact the engines")
    backends.set_defaults(func=_backends)

    doctor = commands.add_parser("doctor", help="explain what is missing on this machine and how to fix it")
    doctor.add_argument("-b", "--backend", default=None, help="backend to check (default: PYBOX_BACKEND or docker)")
    doctor.add_argument("--image", default=DEFAULT_IMAGE, help=f"image to look for (default: {DEFAULT_IMAGE})")
    doctor.set_defaults(func=_doctor)

    cleanup = commands.add_parser("cleanup", help="remove this host's sandbox containers whose owner process died")
    cleanup.add_argument("-b", "--backend", default=None, help="backend (default: PYBOX_BACKEND or docker)")
    cleanup.set_defaults(func=_cleanup)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
