"""The ``pybox`` command (also ``python -m pybox``)."""

from __future__ import annotations

import argparse
import sys

from pybox.errors import PyboxError


def _build(args: argparse.Namespace) -> int:
    from pybox.build import build_image

    ca_bundle: object = True
    if args.no_ca_bundle:
        ca_bundle = None
    elif args.ca_bundle:
        ca_bundle = args.ca_bundle
    build_image(args.tag, backend=args.backend, base=args.base, ca_bundle=ca_bundle,
                dependencies=args.dependencies, progress=lambda line: print(line, flush=True))
    return 0


def parser() -> argparse.ArgumentParser:
    from pybox.sandbox import DEFAULT_IMAGE

    root = argparse.ArgumentParser(prog="pybox", description="Run Python code in sandboxed IPython kernels.")
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
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PyboxError as exc:
        print(f"pybox {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
