"""Fakes shared by the unit tests: a scripted kernel channel, a fake gateway, a fake
backend (the fixtures using them are in conftest.py).

No container engine, no network. A test builds a :class:`Rig` (a real ``Kernel``
wired to a :class:`ScriptedChannel` and a :class:`FakeGateway`), queues one script
per ``execute_request`` it will send, and lets the channel play each script from a
background thread, the way the real channel's reader thread delivers messages.

A script is a list of steps:

* a message dict (made with the builders below): routed, like the real reader does,
  by its parent ``msg_id`` to the registered sink, or to ``on_unrouted``. The
  placeholder parent :data:`PARENT` stands for the ``execute_request`` being played.
* ``Delay(seconds)``, ``WaitFor(event)``, ``Set(event)``: timing, deterministic with events.
* ``Unrouted(msg)``: hand ``msg`` to the kernel's ``on_unrouted`` (status ``restarting``).
* ``Close(error)``: the websocket ends: ``on_closed(error)`` and the channel is closed.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from pybox import hookimpl
from pybox.backend import ALL_FEATURES, Backend, ContainerState, Endpoint, LaunchPlan
from pybox.errors import ChannelError
from pybox.kernel import Kernel
from pybox.kernel.gateway import Gateway

#: Placeholder parent id: replaced by the msg_id of the execute_request being played.
PARENT = "<parent>"

#: Seconds a WaitFor step waits at most (a test that forgets to set its event must
#: not leave a thread behind forever).
WAIT_LIMIT = 10.0


# -- message builders ------------------------------------------------------------------


def msg(msg_type: str, content: dict[str, Any] | None = None, *, parent: str | None = PARENT,
        channel: str = "iopub") -> dict[str, Any]:
    """A Jupyter message as the gateway's JSON websocket protocol carries it."""
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "kernel-session",
                   "username": "kernel", "version": "5.3", "date": "2024-01-01T00:00:00Z"},
        "parent_header": {} if parent is None else {"msg_id": parent, "msg_type": "execute_request"},
        "metadata": {},
        "content": content or {},
        "channel": channel,
        "buffers": [],
    }


def status(state: str, *, parent: str | None = PARENT) -> dict[str, Any]:
    return msg("status", {"execution_state": state}, parent=parent)


def busy(**kw: Any) -> dict[str, Any]:
    return status("busy", **kw)


def idle(**kw: Any) -> dict[str, Any]:
    return status("idle", **kw)


def execute_input(code: str = "", count: int = 1, **kw: Any) -> dict[str, Any]:
    return msg("execute_input", {"code": code, "execution_count": count}, **kw)


def stdout(text: str, **kw: Any) -> dict[str, Any]:
    return msg("stream", {"name": "stdout", "text": text}, **kw)


def stderr(text: str, **kw: Any) -> dict[str, Any]:
    return msg("stream", {"name": "stderr", "text": text}, **kw)


def reply(status_: str = "ok", count: int = 1, **content: Any) -> dict[str, Any]:
    parent = content.pop("parent", PARENT)
    return msg("execute_reply", {"status": status_, "execution_count": count, **content},
               parent=parent, channel="shell")


def error(ename: str, evalue: str, traceback: list[str], **kw: Any) -> dict[str, Any]:
    return msg("error", {"ename": ename, "evalue": evalue, "traceback": traceback}, **kw)


def display(data: dict[str, Any], metadata: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return msg("display_data", {"data": data, "metadata": metadata or {}, "transient": {}}, **kw)


def execute_result(data: dict[str, Any], count: int = 1, **kw: Any) -> dict[str, Any]:
    return msg("execute_result", {"data": data, "metadata": {}, "execution_count": count}, **kw)


def ok_run(*outputs: dict[str, Any], count: int = 1) -> list[Any]:
    """The messages of a cell that runs fine: busy, input, outputs, reply, idle."""
    return [busy(), execute_input(count=count), *outputs, reply("ok", count), idle()]


KEYBOARD_INTERRUPT_TB = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mKeyboardInterrupt\x1b[0m                         Traceback (most recent call last)",
    "\x1b[0;31mKeyboardInterrupt\x1b[0m: ",
]


def interrupted_run() -> list[Any]:
    """What ipykernel sends when SIGINT stops the running cell."""
    return [
        error("KeyboardInterrupt", "", KEYBOARD_INTERRUPT_TB),
        reply("error", ename="KeyboardInterrupt", evalue="", traceback=KEYBOARD_INTERRUPT_TB),
        idle(),
    ]


def binary_frame(message: dict[str, Any], buffers: list[bytes]) -> bytes:
    """The gateway's binary framing, built by hand: uint32 count (JSON + buffers),
    uint32 offsets of each part, the JSON, then the raw buffers."""
    parts = [json.dumps(message).encode("utf-8"), *buffers]
    offsets = [4 * (1 + len(parts))]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{1 + len(parts)}I", len(parts), *offsets) + b"".join(parts)


def png_base64(size: tuple[int, int] = (7, 5), color: str = "red") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- script steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class WaitFor:
    event: threading.Event


@dataclass(frozen=True)
class Set:
    event: threading.Event


@dataclass(frozen=True)
class Unrouted:
    msg: dict[str, Any]


@dataclass(frozen=True)
class Close:
    error: BaseException | None = None


_CLOSE = object()


# -- the channel -----------------------------------------------------------------------


class ScriptedChannel:
    """Stands in for ``KernelChannel``: same constructor and methods, no websocket.

    Each ``execute_request`` sent takes the next queued script (``add_script``) and
    plays it in a player thread; messages go through one reader thread that routes
    them by parent id, like the real channel.
    """

    def __init__(self, url: str, token: str, *, on_unrouted=None, on_closed=None, name: str = "scripted"):
        self.url = url
        self.token = token
        self.name = name
        self._on_unrouted = on_unrouted
        self._on_closed = on_closed
        self._routes: dict[str, Any] = {}
        self._routes_lock = threading.Lock()
        self._scripts: list[list[Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.registered: list[str] = []
        self.unregistered: list[str] = []
        self.unrouted: list[dict[str, Any]] = []
        self.close_calls = 0
        self.closed = False
        self.send_error: BaseException | None = None  # raised by send(), as a dead socket would
        self._stopped = threading.Event()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._players: list[threading.Thread] = []
        self._reader = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._reader.start()

    # -- what Kernel calls --

    def register(self, msg_id: str, sink: Any) -> None:
        with self._routes_lock:
            self._routes[msg_id] = sink
        self.registered.append(msg_id)

    def unregister(self, msg_id: str) -> None:
        with self._routes_lock:
            self._routes.pop(msg_id, None)
        self.unregistered.append(msg_id)

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ChannelError(f"kernel channel {self.url} is closed")
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(message)
        if message["header"]["msg_type"] == "kernel_info_request":  # a nudge: iopub answers
            self.play([status("idle")], parent=message["header"]["msg_id"])
        if message["header"]["msg_type"] == "execute_request":
            if not self._scripts:
                raise AssertionError("execute_request sent but no script queued (add_script)")
            self.play(self._scripts.pop(0), parent=message["header"]["msg_id"])

    def close(self) -> None:
        self.close_calls += 1
        self.closed = True
        self._stopped.set()
        self._inbox.put(_CLOSE)

    # -- what tests call --

    def add_script(self, *steps: Any) -> None:
        """Queue the script played for the next execute_request sent."""
        self._scripts.append(list(steps))

    def play(self, steps: list[Any], parent: str) -> None:
        """Play ``steps`` now for the request ``parent`` (a gateway reaction uses this)."""
        player = threading.Thread(target=self._play, args=(list(steps), parent), daemon=True)
        self._players.append(player)
        player.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["header"]["msg_type"] == "execute_request"]

    @property
    def routes(self) -> list[str]:
        with self._routes_lock:
            return list(self._routes)

    # -- internals --

    def _play(self, steps: list[Any], parent: str) -> None:
        for step in steps:
            if self._stopped.is_set():
                return
            if isinstance(step, Delay):
                if self._stopped.wait(step.seconds):
                    return
            elif isinstance(step, WaitFor):
                deadline = time.monotonic() + WAIT_LIMIT
                while not step.event.wait(0.02):
                    if self._stopped.is_set() or time.monotonic() > deadline:
                        return
            elif isinstance(step, Set):
                step.event.set()
            elif isinstance(step, Unrouted):
                self._inbox.put(("unrouted", step.msg))
            elif isinstance(step, Close):
                self._inbox.put(("closed", step.error))
            else:
                self._inbox.put(("msg", _with_parent(step, parent)))

    def _read_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _CLOSE:
                return  # closed by the client: on_closed is not called (as KernelChannel)
            kind, payload = item
            if kind == "closed":
                self.closed = True
                self._stopped.set()
                if self._on_closed is not None:
                    self._on_closed(payload)
                return
            if kind == "unrouted":
                self._unrouted(payload)
                continue
            parent = (payload.get("parent_header") or {}).get("msg_id")
            with self._routes_lock:
                sink = self._routes.get(parent) if parent else None
            if sink is not None:
                sink.deliver(payload)
            else:
                self._unrouted(payload)

    def _unrouted(self, message: dict[str, Any]) -> None:
        self.unrouted.append(message)
        if self._on_unrouted is not None:
            self._on_unrouted(message)


def _with_parent(message: dict[str, Any], parent: str) -> dict[str, Any]:
    header = message.get("parent_header") or {}
    if header.get("msg_id") == PARENT:
        message = {**message, "parent_header": {**header, "msg_id": parent}}
    return message


# -- the gateway -----------------------------------------------------------------------


class FakeGateway:
    """The part of ``pybox.kernel.gateway.Gateway`` a Kernel uses; records every call.

    ``on_interrupt`` / ``on_restart`` (callables taking the kernel id) script the
    kernel's reaction; by default an interrupt does nothing (code ignoring SIGINT).
    ``specs`` are the kernelspecs it lists (the image's: python3 and bash).
    """

    certificate = None  # plain ws:// as a local sandbox's

    def __init__(self, token: str = "secret-token", base_url: str = "http://127.0.0.1:1"):
        self.token = token
        self.base_url = base_url
        self.calls: list[tuple[str, str]] = []
        self.on_interrupt: Callable[[str], None] | None = None
        self.on_restart: Callable[[str], None] | None = None
        self.delete_error: BaseException | None = None
        self.connect_error: BaseException | None = None  # raised when the kernel opens a websocket
        self.gone = False  # kernel_exists() says no
        self.closed = False
        self.specs: dict[str, dict[str, Any]] = {
            "python3": {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                        "display_name": "Python 3 (ipykernel)", "language": "python"},
            "bash": {"argv": ["/opt/pybox/bin/python", "-m", "bash_kernel", "-f", "{connection_file}"],
                     "display_name": "Bash", "language": "bash"},
        }

    def ws_url(self, kernel_id: str) -> str:
        return f"ws://fake-gateway/api/kernels/{kernel_id}/channels"

    def kernelspecs(self) -> dict[str, dict[str, Any]]:
        self.calls.append(("kernelspecs", ""))
        return {name: dict(spec) for name, spec in self.specs.items()}

    kernelspec = Gateway.kernelspec  # the real lookup, over the fake's kernelspecs()

    def create_kernel(self, name: str | None = None, env: dict[str, str] | None = None) -> str:
        self.calls.append(("create", name or ""))
        return uuid.uuid4().hex

    def kernel_exists(self, kernel_id: str) -> bool:
        self.calls.append(("exists", kernel_id))
        return not self.gone

    def interrupt_kernel(self, kernel_id: str) -> None:
        self.calls.append(("interrupt", kernel_id))
        if self.on_interrupt is not None:
            self.on_interrupt(kernel_id)

    def restart_kernel(self, kernel_id: str) -> None:
        self.calls.append(("restart", kernel_id))
        if self.on_restart is not None:
            self.on_restart(kernel_id)

    def delete_kernel(self, kernel_id: str) -> None:
        self.calls.append(("delete", kernel_id))
        if self.delete_error is not None:
            raise self.delete_error

    def close(self) -> None:
        self.calls.append(("close", ""))
        self.closed = True

    def count(self, what: str) -> int:
        return sum(1 for call, _ in self.calls if call == what)


# -- the rig ---------------------------------------------------------------------------


@dataclass
class Rig:
    """A real Kernel with a scripted channel and a fake gateway. ``channels`` are all
    the channels the kernel opened (it opens a new one after one closed); they share
    one script queue, so ``add_script`` works across a reconnection."""

    kernel: Kernel
    channel: ScriptedChannel
    gateway: FakeGateway
    channels: list[ScriptedChannel] = field(default_factory=list)

    @property
    def latest(self) -> ScriptedChannel:
        return self.channels[-1] if self.channels else self.channel

    def add_script(self, *steps: Any) -> None:
        self.channel.add_script(*steps)

    def react_to_interrupt(self, *steps: Any) -> None:
        """On interrupt, play ``steps`` (default: KeyboardInterrupt + idle) for the
        latest execute_request, as a kernel that honours SIGINT does."""
        script = list(steps) or interrupted_run()

        def react(kernel_id: str) -> None:
            self.channel.play(script, parent=self.channel.requests[-1]["header"]["msg_id"])

        self.gateway.on_interrupt = react


# -- a backend -------------------------------------------------------------------------


class FakeBackend(Backend):
    """A container backend that starts nothing; records calls on the class (a
    Sandbox makes its own instance)."""

    name = "fake"
    description = "records calls, starts nothing"
    features = ALL_FEATURES
    instances: list[FakeBackend] = []
    state = ContainerState(running=True, status="running")

    def __init__(self):
        self.calls: list[tuple] = []
        self.plans: list[LaunchPlan] = []
        type(self).instances.append(self)

    def start(self, plan):
        self.plans.append(plan)
        self.calls.append(("start",))
        return "c0ffee" * 10

    def endpoint(self, container_id, plan):
        return Endpoint("127.0.0.1", 49999)

    def inspect(self, container_id):
        self.calls.append(("inspect", container_id))
        return type(self).state

    def logs(self, container_id, tail=50):
        return "gateway: boom\n"

    def remove(self, container_id):
        self.calls.append(("remove", container_id))

    def list_containers(self, labels):
        return []

    def put_archive(self, container_id, path, data):
        raise NotImplementedError

    def get_archive(self, container_id, path):
        raise NotImplementedError

    def image_exists(self, image):
        return True

    def ping(self):
        pass

    def close(self):
        self.calls.append(("close",))


class FakeBackendPlugin:
    """An in-process plugin registering FakeBackend (or whatever it is given)."""

    def __init__(self, *classes):
        self.classes = classes or (FakeBackend,)

    @hookimpl
    def pybox_register_backends(self, register):
        for cls in self.classes:
            register(cls)
