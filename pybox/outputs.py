"""Typed outputs of an execution and the aggregated :class:`Result`.

``Execution.events()`` yields these as they arrive; ``Result`` is what they add up to.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from pybox.errors import ExecutionError

#: MIME types decoded into PIL images.
IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def decode_image(bundle: dict[str, Any]) -> Image | None:
    """The first image in a MIME bundle as a PIL image, or None when it has none."""
    for mime in IMAGE_MIME_TYPES:
        payload = bundle.get(mime)
        if isinstance(payload, str):
            from PIL import Image as PILImage  # imported on first image: pillow is slow to import

            image = PILImage.open(io.BytesIO(base64.b64decode(payload)))
            image.load()
            return image
    return None


@dataclass(frozen=True)
class Stdout:
    """Text the code wrote to stdout."""

    text: str


@dataclass(frozen=True)
class Stderr:
    """Text the code wrote to stderr."""

    text: str


@dataclass(frozen=True)
class DisplayData:
    """A rich output (``display(...)``, a plot): ``data`` is its MIME bundle."""

    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        value = self.data.get("text/plain")
        return value if isinstance(value, str) else None

    @property
    def image(self) -> Image | None:
        """The bundle's image as a PIL image (decoded on each access), or None."""
        return decode_image(self.data)

    @property
    def has_image(self) -> bool:
        return any(mime in self.data for mime in IMAGE_MIME_TYPES)


@dataclass(frozen=True)
class ExecuteResult(DisplayData):
    """The value of the cell's last expression (``Out[n]``)."""

    execution_count: int | None = None


@dataclass(frozen=True)
class ErrorOutput:
    """An exception raised by the code; ``traceback`` has no ANSI colour codes."""

    ename: str
    evalue: str
    traceback: str


Output = Union[Stdout, Stderr, DisplayData, ExecuteResult, ErrorOutput]


class Result:
    """What an execution produced.

    ``text`` is stdout plus the text/plain of results and of displays that carry no
    image, stripped (as ipybox); ``stdout`` and ``stderr`` are unstripped; ``images``
    are PIL images; ``data`` the MIME bundles of displays and results in order.
    """

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.execution_count: int | None = None
        self.duration: float = 0.0
        self.error: ExecutionError | None = None
        self.images: list[Image] = []
        self.data: list[dict[str, Any]] = []
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._text: list[str] = []

    def add(self, output: Output) -> None:
        self.outputs.append(output)
        if isinstance(output, Stdout):
            self._stdout.append(output.text)
            self._text.append(output.text)
        elif isinstance(output, Stderr):
            self._stderr.append(output.text)
        elif isinstance(output, DisplayData):
            self.data.append(output.data)
            image = decode_image(output.data)
            if image is not None:
                self.images.append(image)
            elif output.text is not None:
                # Results carry no trailing newline; keep them on their own line.
                if self._text and not self._text[-1].endswith("\n"):
                    self._text.append("\n")
                self._text.append(output.text + "\n")

    @property
    def stdout(self) -> str:
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    @property
    def text(self) -> str:
        return "".join(self._text).strip()

    def __repr__(self) -> str:
        text = self.text
        shown = text if len(text) <= 60 else text[:57] + "..."
        extra = f", images={len(self.images)}" if self.images else ""
        err = f", error={self.error.ename}" if self.error else ""
        return f"Result(text={shown!r}{extra}{err}, duration={self.duration:.3f})"
