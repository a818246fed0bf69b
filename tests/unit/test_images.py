"""Hostile images are data, not exceptions: a pixel cap checked from the header before
anything is decoded, broken bytes refused, and freeact's log written whatever came."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import zlib

import pytest
from fakes import display, execute_result, ok_run, png_base64, stdout

from pybox import DisplayData, Result
from pybox import outputs as outputs_module
from pybox.freeact import CodeExecutor, ExecutionLog, Workspace
from pybox.outputs import ImageRefused, decode_image, open_image


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG announcing width x height; only ``rows`` rows of real data (all
    of them by default), compressed: a few hundred KB can inflate to gigabytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def pil_bytes(size, fmt, mode="RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    at = jpeg.index(b"\xff\xc0") + 5  # SOF0: length(2) precision(1) height(2) width(2)
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def test_a_normal_png_is_decoded():
    image = decode_image({"image/png": png_base64((7, 5))})
    assert image is not None and image.size == (7, 5)


def test_a_png_bomb_is_refused_from_its_header_before_anything_is_inflated(monkeypatch, caplog):
    bomb = png_bomb(100_000, 100_000, rows=10)  # announces 10 gigapixels
    opened = []
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(1))
    with pytest.raises(ImageRefused, match="10,000,000,000 pixels"):
        open_image({"image/png": b64(bomb)})
    assert opened == []  # PIL never saw it
    with caplog.at_level(logging.WARNING, logger="pybox.outputs"):
        assert decode_image({"image/png": b64(bomb)}) is None
    assert "MAX_IMAGE_PIXELS" in caplog.text


def test_the_cap_is_a_module_constant(monkeypatch):
    monkeypatch.setattr(outputs_module, "MAX_IMAGE_PIXELS", 100)
    assert decode_image({"image/png": png_base64((10, 10))}) is not None
    assert decode_image({"image/png": png_base64((10, 11))}) is None


@pytest.mark.parametrize("size", [(8000, 8000), (60000, 60000)])  # under PIL's own limit, and past twice it
def test_a_jpeg_announcing_too_many_pixels_is_refused_before_load(size):
    jpeg = with_jpeg_size(pil_bytes((8, 8), "JPEG"), *size)
    with pytest.raises(ImageRefused):
        open_image({"image/jpeg": b64(jpeg)})
    assert decode_image({"image/jpeg": b64(jpeg)}) is None


def test_a_gif_announcing_too_many_pixels_is_refused():
    gif = bytearray(pil_bytes((4, 4), "GIF", "P"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    with pytest.raises(ImageRefused, match="announces"):
        open_image({"image/gif": b64(bytes(gif))})


@pytest.mark.parametrize("payload", [
    "!!!! not base64 !!!!",
    "é" * 10,  # not ASCII
    b64(b"not an image at all"),
    b64(pil_bytes((4, 4), "JPEG")),  # a JPEG under image/png
    b64(pil_bytes((40, 40), "PNG")[:60]),  # truncated
    b64(png_bomb(10, 10)[:-20] + b"\x00" * 20),  # broken CRCs and end
    "",
])
def test_broken_image_data_is_refused_not_raised(payload):
    with pytest.raises(ImageRefused):
        open_image({"image/png": payload})
    assert decode_image({"image/png": payload}) is None
    assert DisplayData({"image/png": payload}).image is None


def test_result_images_skip_refused_ones_and_keep_them_as_data(monkeypatch):
    monkeypatch.setattr(outputs_module, "MAX_RESULT_IMAGE_PIXELS", 150)
    result = Result()
    result.add(DisplayData({"image/png": png_base64((10, 10))}))
    result.add(DisplayData({"image/png": b64(png_bomb(100_000, 100_000, rows=1)), "text/plain": "bomb"}))
    result.add(DisplayData({"image/png": "garbage"}))
    result.add(DisplayData({"image/png": png_base64((10, 10))}))  # past the per-result budget
    result.add(DisplayData({"image/png": png_base64((2, 2))}))
    assert [image.size for image in result.images] == [(10, 10), (2, 2)]
    assert len(result.data) == 5
    assert "images=5" in repr(result)  # repr counts images, decodes nothing


def test_repr_never_decodes(monkeypatch):
    result = Result()
    result.add(DisplayData({"image/png": b64(png_bomb(100_000, 100_000, rows=1))}))
    monkeypatch.setattr(outputs_module, "open_image", lambda *a, **k: pytest.fail("repr decoded an image"))
    assert "images=1" in repr(result)


def test_many_tiny_outputs_are_bounded_by_count(monkeypatch):
    monkeypatch.setattr(outputs_module, "MAX_KEPT_OUTPUTS", 100)
    result = Result(max_output=1_000_000)
    for i in range(10_000):
        result.add(outputs_module.Stdout(f"{i}\n"))
    assert len(result.entries_since(0)) <= 100
    assert result.stdout.startswith("0\n1\n") and result.stdout.endswith("9998\n9999\n")
    assert result.truncated > 0 and "omitted" in result.stdout


# -- freeact: the execution log is always written -----------------------------------------


@pytest.fixture
def executor(rig, tmp_path):
    rig.add_script(*ok_run())  # the executor's start-up code
    log = ExecutionLog(tmp_path / "log.jsonl")
    return CodeExecutor(rig.kernel, Workspace(tmp_path / "ws"), "alice", log), log


def test_freeact_records_an_execution_whose_images_are_hostile(rig, executor):
    code_executor, log = executor
    cmyk = b64(pil_bytes((3, 3), "JPEG", "CMYK"))
    rig.add_script(*ok_run(
        stdout("lone surrogate: \ud800 and text\n"),
        display({"image/png": b64(png_bomb(100_000, 100_000, rows=1)), "text/plain": "bomb"}),
        display({"image/png": "garbage"}),
        display({"image/jpeg": cmyk}),
        display({"image/png": png_base64((5, 5))}),
        execute_result({"text/plain": "'value'", "application/json": {"nested": [1, {"a": None}]}}),
    ))
    result = code_executor.run("hostile()")
    assert len(result.image_paths) == 2 and all(p.exists() for p in result.image_paths)  # CMYK converted
    (record,) = [r for r in log.records() if r["code"] == "hostile()"]
    assert record["outputs"]["stdout"] == "lone surrogate: \ud800 and text\n"
    assert record["outputs"]["images"] == [str(p) for p in result.image_paths]
    assert record["error"] is None
    json.loads(log.path.read_text().splitlines()[-1])


def test_freeact_records_even_when_the_kernel_fails(rig, executor):
    code_executor, log = executor
    rig.add_script(*ok_run(stdout("x")))
    rig.channel.send_error = None
    from pybox import ChannelError

    rig.channel.send_error = ChannelError("the websocket broke")
    with pytest.raises(ChannelError):
        code_executor.run("lost()")
    (record,) = [r for r in log.records() if r["code"] == "lost()"]
    assert record["error"]["ename"] == "NoResult"


def test_execution_log_writes_what_json_and_utf8_cannot_hold(tmp_path):
    log = ExecutionLog(tmp_path / "log.jsonl")
    log.append({"text": "\udcff", "odd": {1, 2}, "bytes": b"\x00"})
    (record,) = log.records()
    assert record["text"] == "\udcff" and record["odd"] == "{1, 2}" and record["bytes"] == "b'\\x00'"


def test_images_have_their_own_budget_not_max_output(monkeypatch):
    big = "A" * 3_000_000  # a 2.2 MB PNG's base64: kept although max_output is 1,000,000
    result = Result(max_output=1_000_000)
    result.add(DisplayData({"image/png": big, "text/plain": "<Figure>"}))
    assert result.data[0]["image/png"] is big and result.truncated == 0
    monkeypatch.setattr(outputs_module, "MAX_RESULT_IMAGE_CHARS", 5_000_000)
    result.add(DisplayData({"image/png": big, "text/plain": "<Figure 2>"}))  # past the image budget
    assert len(result.data) == 1 and result.truncated == 3_000_000 + len("<Figure 2>")
    assert "characters of display data omitted" in result.stdout
