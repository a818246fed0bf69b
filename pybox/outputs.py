"""Typed outputs of an execution and the aggregated :class:`Result`.

``Execution.events()`` yields these as they arrive; ``Result`` is what they add up to.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from pybox.errors import ExecutionError

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image


#: MIME types decoded into PIL images.
IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}

#: The most pixels pybox decodes in one image. Checked from the image's header before
#: anything is decompressed (a small PNG can announce gigapixels); larger images are
#: refused: kept as data (``Result.data``), left out of ``images``, with a warning.
#: 50 megapixels is 200 MB decoded as RGBA. PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS``,
#: process-wide) is left as it is.
MAX_IMAGE_PIXELS = 50_000_000
#: The most pixels ``Result.images`` decodes for one result, all images together.
MAX_RESULT_IMAGE_PIXELS = 100_000_000
#: Characters of image data (base64) a Result with ``max_output`` keeps, all images
#: together (about 12 MB of PNG); images are not counted against ``max_output``, which
#: bounds text. A display past it is left out whole, counted as omitted display data.
MAX_RESULT_IMAGE_CHARS = 16_000_000
#: The most outputs a Result with ``max_output`` keeps (half at the head, half at the
#: tail, as for characters): each costs ~200 bytes however little it holds.
MAX_KEPT_OUTPUTS = 10_000

log = logging.getLogger(__name__)


class ImageRefused(ValueError):
    """An image pybox will not decode (too many pixels, not an image of its type,
    broken data); ``reason`` says which."""

    def __init__(self, mime: str, reason: str):
        self.mime = mime
        self.reason = reason
        super().__init__(f"{mime} refused: {reason}")


def decode_image(bundle: dict[str, Any], max_pixels: int | None = None) -> Image | None:
    """The first image in a MIME bundle as a PIL image, or None when it has none or it
    is refused (logged as a warning; see ``MAX_IMAGE_PIXELS``). Never raises."""
    try:
        return open_image(bundle, max_pixels)
    except ImageRefused as exc:
        log.warning("pybox: an image output was not decoded: %s", exc)
        return None


def open_image(bundle: dict[str, Any], max_pixels: int | None = None) -> Image | None:
    """As ``decode_image``, raising ImageRefused instead of logging."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    for mime in IMAGE_MIME_TYPES:
        payload = bundle.get(mime)
        if isinstance(payload, str):
            return _open_image(mime, payload, limit)
    return None


def image_pixels(raw: bytes) -> int | None:
    """Pixels a PNG or GIF announces in its header (None for other formats)."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return int(width) * int(height)
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        width, height = struct.unpack("<HH", raw[6:10])
        return int(width) * int(height)
    return None


def _open_image(mime: str, payload: str, limit: int) -> Image:
    try:
        raw = base64.b64decode(payload)
    except (binascii.Error, ValueError) as exc:
        raise ImageRefused(mime, f"not base64 ({exc})") from None
    announced = image_pixels(raw)
    if announced is not None and announced > limit:
        raise ImageRefused(mime, f"its header announces {announced:,} pixels, more than {limit:,} "
                                 "(pybox.outputs.MAX_IMAGE_PIXELS)")
    from PIL import Image as PILImage  # imported on first image: pillow is slow to import

    image = None
    try:
        # Lazy: reads the header only. PIL raises its own DecompressionBombError past
        # twice its process-wide limit; anything it raises on hostile bytes is a refusal.
        image = PILImage.open(io.BytesIO(raw), formats=[_PIL_FORMATS[mime]])
        width, height = image.size
        if width * height > limit:
            raise ImageRefused(mime, f"{width}x{height} is {width * height:,} pixels, more than {limit:,} "
                                     "(pybox.outputs.MAX_IMAGE_PIXELS)")
        image.load()
    except ImageRefused:
        if image is not None:
            image.close()
        raise
    except Exception as exc:  # PIL's errors on broken data are many (OSError, SyntaxError, ValueError...)
        if image is not None:
            image.close()
        raise ImageRefused(mime, f"{type(exc).__name__}: {exc}") from None
    return image


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
        """The bundle's image as a PIL image (decoded on each access), or None (also
        when it is refused: see ``MAX_IMAGE_PIXELS``)."""
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
    """Characters an output counts against ``max_output``: all but image data (images
    have their own budget, ``MAX_RESULT_IMAGE_CHARS``)."""
    if isinstance(output, (Stdout, Stderr)):
        return len(output.text)
    if isinstance(output, DisplayData):
        return sum(len(v) if isinstance(v, str) else len(str(v))
                   for k, v in output.data.items() if not _is_image_data(k, v))
    if isinstance(output, ErrorOutput):
        return len(output.traceback)
    return 0


def image_size(output: Output) -> int:
    """Characters of image data (base64) an output carries."""
    if not isinstance(output, DisplayData):
        return 0
    return sum(len(v) for k, v in output.data.items() if _is_image_data(k, v))


def _is_image_data(mime: str, value: object) -> bool:
    return mime in IMAGE_MIME_TYPES and isinstance(value, str)


def _stream_name(output: Output) -> str:
    return "stdout" if isinstance(output, Stdout) else "stderr" if isinstance(output, Stderr) else "display"


class Result:
    """What an execution produced.

    ``text`` is stdout plus the text/plain of results and of displays that carry no
    image, stripped (as ipybox); ``stdout`` and ``stderr`` are unstripped; ``images``
    are PIL images; ``data`` the MIME bundles of displays and results in order.

    With ``max_output`` (characters), only the first and the last half of that much
    output are kept, with a marker where the middle was (``truncated`` counts what was
    left out), so memory stays bounded whatever the code prints: at most
    ``MAX_KEPT_OUTPUTS`` outputs are kept too (a flood of tiny outputs costs per
    output, not per character). Image data is not counted in ``max_output`` but has
    its own budget, ``MAX_RESULT_IMAGE_CHARS``. ``images`` decodes at most
    ``MAX_IMAGE_PIXELS`` per image and ``MAX_RESULT_IMAGE_PIXELS`` in all; a refused
    image stays in ``data``.

    Not thread-safe: while an execution runs its Result is filled by the channel's
    reader under the execution's lock; once the execution is done it no longer changes.
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
        self._image_pixels = 0  # decoded so far, against MAX_RESULT_IMAGE_PIXELS
        self._image_chars = 0  # image data kept, against MAX_RESULT_IMAGE_CHARS

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
        images = image_size(output)
        if images:
            if self._image_chars + images > MAX_RESULT_IMAGE_CHARS:
                self.omitted["display"] += size + images
                return seq
            self._image_chars += images
        half_count = MAX_KEPT_OUTPUTS // 2
        if len(self._head) >= half_count:
            self._head_closed = True
        if not self._head_closed and self._head_size + size <= half:
            self._head.append((seq, output))
            self._head_size += size
            return seq
        limit = self.max_output - half
        cut = 0
        if not self._head_closed and isinstance(output, (Stdout, Stderr)) and self._head_size < half:
            cut = half - self._head_size
            self._head.append((seq, type(output)(output.text[:cut])))
        if isinstance(output, (Stdout, Stderr)) and size - cut > limit:
            # Only its last `limit` characters can stay: copy no more than that.
            skip = size - limit
            self.omitted[_stream_name(output)] += skip - cut
            output = type(output)(output.text[skip:])
            size = limit
        elif cut and isinstance(output, (Stdout, Stderr)):
            output = type(output)(output.text[cut:])
            size -= cut
        self._head_closed = True
        self._head_size = half
        self._tail.append((seq, output))
        self._tail_size += size
        while self._tail_size > limit or len(self._tail) > half_count:
            first_seq, first = self._tail[0]
            first_size = output_size(first)
            excess = self._tail_size - limit
            if isinstance(first, (Stdout, Stderr)) and first_size > excess > 0 and len(self._tail) <= half_count:
                self._tail[0] = (first_seq, type(first)(first.text[excess:]))
                self._tail_size -= excess
                self.omitted[_stream_name(first)] += excess
            else:
                self._tail.popleft()
                self._tail_size -= first_size
                dropped_images = image_size(first)
                self._image_chars -= dropped_images
                self.omitted[_stream_name(first)] += first_size + dropped_images
        return seq

    def since(self, seq: int) -> list[Output]:
        """Kept outputs with sequence number ``seq`` or later, in order."""
        return [o for _, o in self.entries_since(seq)]

    def entries_since(self, seq: int) -> list[tuple[int, Output]]:
        """(sequence number, output) of the kept outputs from ``seq`` on, in order (an
        output split between head and tail appears twice, with one number)."""
        return [(s, o) for s, o in self._head if s >= seq] + [(s, o) for s, o in self._tail if s >= seq]

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
        """The images of the kept displays, decoded once. An image pybox refuses (too
        many pixels, broken data; logged) is left out and stays in ``data``."""
        found = []
        for seq, output in list(self._head) + list(self._tail):
            if isinstance(output, DisplayData) and output.has_image:
                if seq not in self._images:
                    budget = MAX_RESULT_IMAGE_PIXELS - self._image_pixels
                    image = decode_image(output.data, max_pixels=min(MAX_IMAGE_PIXELS, budget))
                    if image is not None:
                        self._image_pixels += image.size[0] * image.size[1]
                    self._images[seq] = image
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
        # Counted, not decoded: repr stays cheap and cannot fail on hostile image bytes.
        shown_images = sum(1 for o in self.outputs if isinstance(o, DisplayData) and o.has_image)
        extra = f", images={shown_images}" if shown_images else ""
        err = f", error={self.error.ename}" if self.error else ""
        cut = f", truncated={self.truncated}" if self.truncated else ""
        return f"Result(text={shown!r}{extra}{err}{cut}, duration={self.duration:.3f})"
