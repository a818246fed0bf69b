"""How much memory a hostile gateway can make a pybox client hold.

    python benchmarks/hostile_memory.py

A fake hostile gateway (a websocket server on 127.0.0.1, in a child process so that
its own memory is not counted; tests/unit/wsserver.py) answers each execution of a
real ``pybox.Kernel`` with an attack. For each, the client's resident memory is
measured before the attack and at its peak during it (Linux: VmHWM, reset through
/proc/self/clear_refs; else a 1 ms sampler), and compared with the limit that is
meant to bound it:

a) one websocket message announcing 300 MB, payload sent in full
   (limit: pybox.kernel.channel.MAX_MESSAGE_BYTES, 64 MiB);
a2) one 60 MB stdout message, under that cap: accepted, and kept to max_output
   (the default, 1,000,000 characters);
b) 100,000 small stream messages for one execution that nobody reads until it ends
   (limit: the Result's max_output, 1,000,000 characters, and MAX_KEPT_OUTPUTS);
b2) the same with an ``events()`` consumer that takes one output and stops reading
   (limit: pybox.kernel.execution.LIVE_BUFFER_LIMIT, 16 MiB, after which the reader
   waits LIVE_STALL_SECONDS and leaves the consumer behind);
c) an image bomb: display_data with a 2.5 MB PNG announcing 50,000 x 50,000 pixels
   (2.5 GB decoded), then ``Result.images``, ``repr(result)``, ``DisplayData.image``
   (limit: pybox.outputs.MAX_IMAGE_PIXELS, 50 megapixels = 200 MB as RGBA);
c2) an image just under that cap (7,000 x 7,000 RGBA), decoded: the cap's own cost.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

MB = 1_000_000


# -- the hostile gateway (child process) ----------------------------------------------------


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def big_png(side: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 20, 30, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def serve(pipe) -> None:  # runs in the child
    from wsserver import TEXT, ScriptedKernel, WsServer, frame_bytes, kmsg, normal_run

    bomb = base64.b64encode(png_bomb(50_000, 50_000)).decode()
    under_cap = base64.b64encode(big_png(7_000)).decode()

    def begin(conn, parent):
        conn.send_msg(kmsg("status", {"execution_state": "busy"}, parent))

    def end(conn, parent):
        for message in normal_run(parent, "end")[2:]:
            conn.send_msg(message)

    def huge_message(conn, parent):
        begin(conn, parent)
        size = 300 * MB
        try:
            conn.raw(frame_bytes(TEXT, b"", length=size))
            chunk = b"x" * MB
            for _ in range(size // MB):
                conn.raw(chunk)
        except OSError:
            pass  # pybox closed the connection after the header, as it should

    def sixty_mb(conn, parent):
        begin(conn, parent)
        conn.send_msg(kmsg("stream", {"name": "stdout", "text": "y" * (60 * MB)}, parent))
        end(conn, parent)

    def small_messages(conn, parent):
        begin(conn, parent)
        for i in range(100_000):
            conn.send_msg(kmsg("stream", {"name": "stdout", "text": f"line {i:06d}\n"}, parent))
        end(conn, parent)

    def image(payload):
        def react(conn, parent):
            begin(conn, parent)
            conn.send_msg(kmsg("display_data", {"data": {"image/png": payload, "text/plain": "<img>"},
                                                "metadata": {}}, parent))
            end(conn, parent)
        return react

    reactions = {"a": huge_message, "a2": sixty_mb, "b": small_messages, "b2": small_messages,
                 "c": image(bomb), "c2": image(under_cap)}
    script = ScriptedKernel()

    def on_message(conn, message):
        code = message.get("content", {}).get("code")
        if message["header"]["msg_type"] == "execute_request" and code in reactions:
            script.queue(reactions[code])
        script(conn, message)

    server = WsServer(on_message=on_message)
    pipe.send(server.port)
    pipe.recv()  # until the parent is done


# -- measuring (the client) -----------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Peak:
    """Peak RSS during a block: VmHWM after a reset, or a 1 ms sampler."""

    def __enter__(self) -> Peak:
        import gc

        gc.collect()
        self.before = rss()
        self.exact = reset_hwm()
        self.peak = self.before
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        mark = hwm() if self.exact else None
        self.peak = max(self.peak, mark or 0)
        self.growth = self.peak - self.before


def report(label: str, growth: int, limit: int, what: str, detail: str) -> bool:
    ok = growth < 2 * limit
    print(f"{label:<4} peak growth {growth / MB:8.1f} MB  vs 2 x {what} = {2 * limit / MB:7.1f} MB  "
          f"[{'ok' if ok else 'OVER'}]  {detail}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()

    import pybox
    from pybox import ChannelError, DisplayData
    from pybox.kernel import channel, execution
    from pybox.kernel.gateway import Gateway
    from pybox.options import DEFAULT_MAX_OUTPUT
    from pybox.outputs import MAX_IMAGE_PIXELS, MAX_KEPT_OUTPUTS

    parent_end, child_end = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(child_end,), daemon=True)
    server.start()
    port = parent_end.recv()
    gateway = Gateway("127.0.0.1", port, "token")
    kernel = pybox.Kernel(gateway, "k1", delete_on_close=False)
    results = []
    print(f"pybox {pybox.__version__}; client pid {os.getpid()}, hostile gateway pid {server.pid}; "
          f"peak by {'VmHWM' if reset_hwm() else '1 ms sampling'}")
    try:
        kernel.run("warm up", timeout=30)

        with Peak() as peak:
            try:
                kernel.run("a", timeout=60)
                detail = "accepted?!"
            except ChannelError as exc:
                detail = f"refused: {str(exc)[:90]}..."
        results.append(report("a", peak.growth, channel.MAX_MESSAGE_BYTES, "MAX_MESSAGE_BYTES", detail))

        with Peak() as peak:
            result = kernel.run("a2", timeout=120)
        results.append(report("a2", peak.growth, channel.MAX_MESSAGE_BYTES, "MAX_MESSAGE_BYTES",
                              f"accepted; Result keeps {len(result.stdout):,} characters, truncated "
                              f"{result.truncated:,}"))
        del result

        with Peak() as peak:
            execution_b = kernel.submit("b")
            result = execution_b.result(timeout=300)
        kept = len(result.entries_since(0))
        results.append(report("b", peak.growth, DEFAULT_MAX_OUTPUT * 4 + MAX_KEPT_OUTPUTS * 300,
                              "Result bound (max_output x 4 B + MAX_KEPT_OUTPUTS x 300 B)",
                              f"{kept:,} outputs kept of 100,002; stdout {len(result.stdout):,} characters"))
        del result, execution_b

        with Peak() as peak:
            execution_b2 = kernel.submit("b2")
            events = execution_b2.events(timeout=300)
            next(events)  # and then nobody reads
            result = execution_b2.result(timeout=300)
        results.append(report("b2", peak.growth, execution.LIVE_BUFFER_LIMIT, "LIVE_BUFFER_LIMIT",
                              f"done with a stalled consumer; stdout kept {len(result.stdout):,} characters"))
        del result, events, execution_b2

        with Peak() as peak:
            result = kernel.run("c", timeout=120)
            images = result.images
            text = repr(result)
            (display,) = [o for o in result.outputs if isinstance(o, DisplayData)]
            single = display.image
            assert images == [] and single is None and "images=1" in text, (images, text)
        results.append(report("c", peak.growth, MAX_IMAGE_PIXELS * 4, "MAX_IMAGE_PIXELS x 4 B",
                              "50,000 x 50,000 PNG refused from its header; Result.images == []"))
        del result, images

        with Peak() as peak:
            result = kernel.run("c2", timeout=120)
            (image,) = result.images
        results.append(report("c2", peak.growth, MAX_IMAGE_PIXELS * 4, "MAX_IMAGE_PIXELS x 4 B",
                              f"{image.size[0]} x {image.size[1]} {image.mode} decoded"))
        del result, image
    finally:
        kernel.close()
        parent_end.send("done")
        server.join(5)
    print(json.dumps({"all_within_twice_the_limit": all(results)}))


if __name__ == "__main__":
    main()
