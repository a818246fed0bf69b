"""Typed outputs of an execution and the aggregated :class:`Result`.

``Execution.events()`` yields these as they arrive; ``Result`` is what they add up to.
"""

from __future__ import annotations

import base64
import io
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from pybox.errors import ExecutionError

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image


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


def output_size(output: Output) -> int:
    """Characters an output counts against ``max_output``."""
    if isinstance(output, (Stdout, Stderr)):
        return len(output.text)
    if isinstance(output, DisplayData):
        return sum(len(v) if isinstance(v, str) else len(str(v)) for v in output.data.values())
    if isinstance(output, ErrorOutput):
        return len(output.traceback)
    return 0


def _stream_name(output: Output) -> str:
    return "stdout" if isinstance(output, Stdout) else "stderr" if isinstance(output, Stderr) else "display"


class Result:
    """What an execution produced.

    ``text`` is stdout plus the text/plain of results and of displays that carry no
    image, stripped (as ipybox); ``stdout`` and ``stderr`` are unstripped; ``images``
    are PIL images; ``data`` the MIME bundles of displays and results in order.

    With ``max_output`` (characters), only the first and the last half of that much
    output are kept, with a marker where the middle was (``truncated`` counts what was
    left out), so memory stays bounded whatever the code prints.
    """

    def __init__(self, max_output: int | None = None) -> None:
        self.max_output = max_output
        self.execution_count: int | None = None
        self.duration: float = 0.0
        self.error: ExecutionError | None = None
        self.omitted: dict[str, int] = {"stdout": 0, "stderr": 0, "display": 0}
        self._head: list[tuple[int, Output]] = []
        self._tail: deque[tuple[int, Output]] = deque()
        self._head_closed = False
        self._head_size = 0
        self._tail_size = 0
        self._next_seq = 0
        self._cache: dict[str, Any] = {}
        self._images: dict[int, Image | None] = {}  # decoded once, by output sequence number

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def add(self, output: Output) -> int:
        """Keep ``output`` (or what the limit allows of it); return its sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        self._cache.clear()
        if self.max_output is None:
            self._head.append((seq, output))
            return seq
        half = self.max_output // 2
        size = output_size(output)
        if not self._head_closed and self._head_size + size <= half:
            self._head.append((seq, output))
            self._head_size += size
            return seq
        if not self._head_closed and isinstance(output, (Stdout, Stderr)) and self._head_size < half:
            cut = half - self._head_size
            self._head.append((seq, type(output)(output.text[:cut])))
            output = type(output)(output.text[cut:])
            size -= cut
        self._head_closed = True
        self._head_size = half
        self._tail.append((seq, output))
        self._tail_size += size
        limit = self.max_output - half
        while self._tail_size > limit:
            first_seq, first = self._tail[0]
            first_size = output_size(first)
            excess = self._tail_size - limit
            if isinstance(first, (Stdout, Stderr)) and first_size > excess:
                self._tail[0] = (first_seq, type(first)(first.text[excess:]))
                self._tail_size -= excess
                self.omitted[_stream_name(first)] += excess
            else:
                self._tail.popleft()
                self._tail_size -= first_size
                self.omitted[_stream_name(first)] += first_size
        return seq

    def since(self, seq: int) -> list[Output]:
        """Kept outputs with sequence number ``seq`` or later, in order."""
        return [o for s, o in self._head if s >= seq] + [o for s, o in self._tail if s >= seq]

    @property
    def truncated(self) -> int:
        """Characters of output left out by ``max_output`` (0: nothing)."""
        return sum(self.omitted.values())

    def _markers(self) -> list[Output]:
        markers: list[Output] = []
        for name, count in self.omitted.items():
            if count:
                what = "of display data" if name == "display" else f"of {name}"
                text = f"\n[... pybox: {count:,} characters {what} omitted (max_output={self.max_output:,}) ...]\n"
                markers.append(Stderr(text) if name == "stderr" else Stdout(text))
        return markers

    @property
    def outputs(self) -> list[Output]:
        """Every kept output in order; a truncation marker where the middle was left out."""
        if "outputs" not in self._cache:
            self._cache["outputs"] = [o for _, o in self._head] + self._markers() + [o for _, o in self._tail]
        outputs: list[Output] = self._cache["outputs"]
        return outputs

    @property
    def stdout(self) -> str:
        return "".join(o.text for o in self.outputs if isinstance(o, Stdout))

    @property
    def stderr(self) -> str:
        return "".join(o.text for o in self.outputs if isinstance(o, Stderr))

    @property
    def data(self) -> list[dict[str, Any]]:
        return [o.data for o in self.outputs if isinstance(o, DisplayData)]

    @property
    def images(self) -> list[Image]:
        found = []
        for seq, output in list(self._head) + list(self._tail):
            if isinstance(output, DisplayData) and output.has_image:
                if seq not in self._images:
                    self._images[seq] = decode_image(output.data)
                image = self._images[seq]
                if image is not None:
                    found.append(image)
        return found

    @property
    def text(self) -> str:
        pieces: list[str] = []
        for output in self.outputs:
            if isinstance(output, Stdout):
                pieces.append(output.text)
            elif isinstance(output, DisplayData) and not output.has_image and output.text is not None:
                # Results carry no trailing newline; keep them on their own line.
                if pieces and not pieces[-1].endswith("\n"):
                    pieces.append("\n")
                pieces.append(output.text + "\n")
        return "".join(pieces).strip()

    def __repr__(self) -> str:
        text = self.text
        shown = text if len(text) <= 60 else text[:57] + "..."
        extra = f", images={len(self.images)}" if self.images else ""
        err = f", error={self.error.ename}" if self.error else ""
        cut = f", truncated={self.truncated}" if self.truncated else ""
        return f"Result(text={shown!r}{extra}{err}{cut}, duration={self.duration:.3f})"
