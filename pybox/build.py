"""Build the sandbox image (``pybox build``).

The base is a registry image (``python:3.11-slim-bookworm``) where it can be pulled;
otherwise a Debian base made with debootstrap and imported into the engine
(``images/bootstrap-base.sh``). The image is labelled with pybox's version and image
protocol (``pybox.image_contract``) and tagged with the version as well as ``tag``.
pip inside the build trusts the CA bundle pip is configured with here (PIP_CERT,
REQUESTS_CA_BUNDLE, SSL_CERT_FILE) unless told otherwise: TLS-intercepting proxies
need it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from pybox import __version__
from pybox.backend import Backend
from pybox.errors import BackendError, ImagePullError, InvalidArgument, UnsupportedOperation
from pybox.image_contract import DEFAULT_IMAGE, VERSION_BUILD_ARG, images_dir
from pybox.plugins import get_plugins
from pybox.pull import pull

#: Base image used where a registry is reachable.
REGISTRY_BASE = "python:3.11-slim-bookworm"
#: Base image made with debootstrap where none is.
BOOTSTRAP_BASE = "pybox-base:bookworm"
#: Environment variables naming the CA bundle pip and requests use, in order.
CA_BUNDLE_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")

Progress = Callable[[str], None]

# A requirement pip understands, kept to what needs no quoting in the image's shell: a
# name, extras, version specifiers (no URLs, markers or spaces).
_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
    r"(?:(?:===|~=|==|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+(?:,(?:===|~=|==|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+)*)?"
)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ARGUMENT = re.compile(r"[A-Za-z0-9._=/-]+")


class KernelPackage(NamedTuple):
    """A kernel ``pybox build --kernel`` adds: the pip requirement, and the command
    (``python -m MODULE ARG...``, run with ``--sys-prefix``) that registers its
    kernelspec, empty when the package's wheel ships the kernelspec itself."""

    requirement: str
    install: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> KernelPackage:
        """From ``REQUIREMENT[:INSTALL_MODULE [ARG...]]``, e.g. ``bash_kernel==0.10.0:bash_kernel.install``
        or ``"metakernel_python:metakernel_python install"``; InvalidArgument if malformed."""
        if not isinstance(text, str):
            raise InvalidArgument(f"a kernel must be given as a str, not {type(text).__name__}")
        requirement, colon, install = text.strip().partition(":")
        if not _REQUIREMENT.fullmatch(requirement):
            raise InvalidArgument(
                f"kernel {text!r}: {requirement!r} is not a package requirement (a PyPI name, optionally "
                "with [extras] and version specifiers such as ==1.0; no URLs or spaces)")
        words = tuple(install.split())
        if colon and not words:
            raise InvalidArgument(f"kernel {text!r}: nothing after ':' (the module that installs its kernelspec)")
        if words and not _MODULE.fullmatch(words[0]):
            raise InvalidArgument(f"kernel {text!r}: {words[0]!r} is not a Python module name")
        for word in words[1:]:
            if not _ARGUMENT.fullmatch(word):
                raise InvalidArgument(f"kernel {text!r}: argument {word!r} may only have letters, digits and ._=/-")
        return cls(requirement, words)

    def line(self) -> str:
        """Its line in the build context's extra-kernels.txt (read by the Dockerfile)."""
        return " ".join((self.requirement, *self.install))


def kernels_file(kernels: Sequence[str | KernelPackage]) -> str:
    """The content of extra-kernels.txt for ``kernels`` (each checked)."""
    if isinstance(kernels, str):
        raise InvalidArgument("kernels must be a list of REQUIREMENT[:INSTALL_MODULE] strings, not one str")
    packages = [k if isinstance(k, KernelPackage) else KernelPackage.parse(k) for k in kernels]
    return "".join(package.line() + "\n" for package in packages)


def default_ca_bundle() -> Path | None:
    """The CA bundle pip is configured with here, if any."""
    for variable in CA_BUNDLE_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    backend: str | None = None,
    base: str | None = None,
    ca_bundle: str | os.PathLike[str] | None | bool = True,
    dependencies: str | os.PathLike[str] | None = None,
    kernels: Sequence[str | KernelPackage] = (),
    progress: Progress = print,
) -> str:
    """Build the sandbox image as ``tag`` and return the base it was built from.

    ``ca_bundle``: True picks the one pip is configured with, a path uses that file,
    False/None uses none. ``dependencies``: a requirements file of extra packages.
    ``kernels``: more Jupyter kernels, each ``REQUIREMENT[:INSTALL_MODULE [ARG...]]``
    (see :class:`KernelPackage`); the image always has ``python3`` and ``bash``.
    """
    extra_kernels = kernels_file(kernels)
    if ca_bundle is True:
        bundle = default_ca_bundle()
    elif ca_bundle in (False, None):
        bundle = None
    else:
        bundle = Path(ca_bundle).expanduser()  # type: ignore[arg-type]
        if not bundle.is_file():
            raise InvalidArgument(f"CA bundle {str(ca_bundle)!r} is not a file")
    extra = Path(dependencies).expanduser() if dependencies else None
    if extra is not None and not extra.is_file():
        raise InvalidArgument(f"dependencies file {str(dependencies)!r} is not a file")

    engine = get_plugins().backend(backend)()
    try:
        engine.ping()
        if type(engine).build_image is Backend.build_image:  # refused before a base is made or pulled
            hint = engine.unsupported_hints.get("build") or (
                "build the image with a backend that builds (docker, podman), then copy it to this engine")
            raise UnsupportedOperation(f"the {engine.name} backend cannot build images: {hint}")
        if base is None:
            base = _choose_base(engine, progress)
        elif not engine.image_exists(base):
            progress(f"pybox build: pulling {base}")
            try:
                pull(engine, base)  # ImagePullError names the registry and what it answered
            except UnsupportedOperation as exc:
                raise BackendError(f"base image {base!r} is not on the engine, and the {engine.name} backend "
                                   f"cannot pull images: pull it with the engine's own tools") from exc
        progress(f"pybox build: building {tag} from {base}"
                 + (f" (pip trusts {bundle})" if bundle else ""))
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pybox-build-") as tmp:
            context = Path(tmp)
            for item in (images_dir() / "sandbox").iterdir():
                if item.is_file():
                    shutil.copy2(item, context / item.name)
            (context / "ca-bundle.crt").write_bytes(bundle.read_bytes() if bundle else b"")
            (context / "extra-requirements.txt").write_text(extra.read_text() if extra else "")
            (context / "extra-kernels.txt").write_text(extra_kernels)
            engine.build_image(context, tag, {"BASE_IMAGE": base, VERSION_BUILD_ARG: __version__}, progress)
        also = ""
        versioned = version_tag(tag)
        if versioned != tag:
            try:
                engine.tag_image(tag, versioned)
                also = f" (also tagged {versioned})"
            except UnsupportedOperation:
                also = f" (not tagged {versioned}: the {engine.name} backend cannot tag images)"
        progress(f"pybox build: {tag} built in {time.monotonic() - started:.0f} s{also}")
        return base
    finally:
        engine.close()


def version_tag(tag: str) -> str:
    """``tag``'s repository with pybox's version as the tag: ``pybox:latest`` -> ``pybox:0.2.0``."""
    name = tag.split("@", 1)[0]
    colon = name.rfind(":")
    repository = name[:colon] if colon > name.rfind("/") else name
    return f"{repository}:{__version__}"


def _choose_base(engine: Backend, progress: Progress) -> str:
    if engine.image_exists(REGISTRY_BASE):
        return REGISTRY_BASE
    progress(f"pybox build: pulling {REGISTRY_BASE}")
    try:
        pull(engine, REGISTRY_BASE)
        return REGISTRY_BASE
    except ImagePullError as exc:
        why = f"{REGISTRY_BASE} cannot be pulled ({exc.reason}: {exc.detail})"
    except UnsupportedOperation:
        why = f"the {engine.name} backend cannot pull {REGISTRY_BASE}"
    if engine.image_exists(BOOTSTRAP_BASE):
        progress(f"pybox build: {why}; using {BOOTSTRAP_BASE} made earlier with debootstrap")
        return BOOTSTRAP_BASE
    progress(f"pybox build: {why}; making {BOOTSTRAP_BASE} with debootstrap (about a minute)")
    bootstrap_base(engine, BOOTSTRAP_BASE, progress)
    return BOOTSTRAP_BASE


def bootstrap_base(engine: Backend, tag: str, progress: Progress) -> None:
    """Make a Debian bookworm base with Python by debootstrap and import it as ``tag``."""
    if shutil.which("debootstrap") is None:
        raise BackendError(
            f"{REGISTRY_BASE} cannot be pulled and debootstrap is not installed: install it "
            "(apt-get install debootstrap) or pass --base with an image the engine has"
        )
    if os.geteuid() != 0:
        raise BackendError(f"{REGISTRY_BASE} cannot be pulled and debootstrap needs root: run "
                           "`pybox build` as root once, or pass --base with an image the engine has")
    script = images_dir() / "bootstrap-base.sh"
    with tempfile.TemporaryDirectory(prefix="pybox-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        process = subprocess.Popen(["bash", str(script), str(tar)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            progress("debootstrap: " + line.rstrip())
        if process.wait() != 0:
            raise BackendError(f"debootstrap failed (exit code {process.returncode}); see its output above")
        progress(f"pybox build: importing {tag}")
        engine.import_image(tar, tag)
