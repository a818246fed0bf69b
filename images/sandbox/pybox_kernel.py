"""pybox's kernel stdout/stderr and shell, selected in ipython_kernel_config.py:

    c.IPKernelApp.outstream_class = "pybox_kernel.FastOutStream"
    c.IPKernelApp.kernel_class = "pybox_kernel.PyboxKernel"

Printing 10 MB as 101,011 ``sys.stdout.write`` calls of 99 bytes spent ~290 ms in
the kernel (ipykernel 7.4, IPython 9.18): ~150 ms in ``OutStream.write`` and
~140 ms in the wrapper IPython puts around it for every cell (see PyboxShell).
With both classes: ~60 ms.

FastOutStream.write: ipykernel keys its buffers by the parent header of the
current request and rebuilds that key, ``frozenset(parent.items())``, on every
call, and asks the OS for its pid. This class remembers the buffer of the last
parent header it wrote to and appends to it directly while it is still current:

* the parent header is the same dict object (ipykernel sets a new dict for each
  request, in ``set_parent``/``set_thread_parent``, and never mutates it), and
* the buffers dict is the same object (the IOPub thread's flush swaps in a fresh
  one under ``_buffer_lock``, so a cached buffer is never written after it was
  taken for sending).

Both checks and the append happen under ``_buffer_lock``, as in ipykernel, so
thread-safety with the IOPub thread's flush is unchanged. The rest is ipykernel's
own logic: the parent-header lookup (context variable, then the global fallback,
so ``print`` in threads goes where ipykernel sends it), the forked-child check and
its immediate flush, the periodic flush ``flush_interval`` after the first write
(output still streams while code runs), the flush at the end of each execution
(done by the kernel). A str subclass or non-str, an echo stream or a closed
stream go to ``OutStream.write`` itself.

One addition: a stream holding ``flush_size`` (1 MiB) is sent at once instead of
at its timer (``_flush_all``), so large output is serialized, forwarded by the
gateway and parsed by the client in pieces while the code still runs, not as
one 10 MB message after it ends. stdout and stderr are then flushed in the order
of their oldest pending write, which is the order their timers would have used.
(Stock ipykernel, for a cell shorter than ``flush_interval``, sends all stdout
before all stderr at the end of the cell; here, stderr written before 1 MiB of
stdout arrives first.)
"""

from __future__ import annotations

import itertools
import os
import threading
from contextlib import contextmanager

from ipykernel.iostream import OutStream
from ipykernel.ipkernel import IPythonKernel
from ipykernel.zmqshell import ZMQInteractiveShell
from traitlets import Type

# This process's pid, kept by an at-fork hook instead of an os.getpid() system call
# per write (~0.2 us). os.fork, os.forkpty and multiprocessing's fork start method
# all run the hook; a child that never runs Python (subprocess) never writes here.
_pid = os.getpid()


def _after_fork_in_child():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)

_streams: list[FastOutStream] = []  # stdout and stderr
_first_writes = itertools.count()  # orders the streams' first pending writes


class FastOutStream(OutStream):
    #: Bytes (characters) one stream may hold before it is sent without waiting for
    #: ``flush_interval``: large outputs then travel in pieces, the kernel, the
    #: gateway and the client working on different pieces at the same time, instead
    #: of as one message serialized, forwarded and parsed after the code ends.
    flush_size = 1 << 20
    #: Characters one stream may hold before the writer waits for them to be sent.
    backpressure_size = 4 << 20

    def __init__(self, *args, **kwargs):
        # Set before OutStream.__init__: it may start the fd-watching thread,
        # which calls write() as soon as anything reaches the redirected fd.
        self._fast_parent = None  # the parent-header dict _fast_buffer belongs to
        self._fast_buffers = None  # the _buffers dict _fast_buffer was taken from
        self._fast_buffer = None
        self._size_flush_pending = False
        self._first_write = 0  # when the oldest data not yet sent was written
        self._first_write_buffers = None  # in which _buffers dict
        super().__init__(*args, **kwargs)
        _streams.append(self)

    def write(self, string):  # type: ignore[override]
        if type(string) is not str or self.echo is not None or self.pub_thread is None:
            return super().write(string)  # TypeError, echo, closed stream: stock behaviour
        try:
            parent = self._parent_header.get()  # asyncio task / thread specific
        except LookupError:
            parent = self._parent_header_global  # as OutStream.parent_header does
        is_child = _pid != self._master_pid
        with self._buffer_lock:
            if parent is self._fast_parent and self._buffers is self._fast_buffers:
                buffer = self._fast_buffer
            else:
                buffers = self._buffers
                if buffers is not self._first_write_buffers:  # first write since a flush
                    self._first_write = next(_first_writes)
                    self._first_write_buffers = buffers
                buffer = buffers[frozenset(parent.items())]
                self._fast_parent = parent
                self._fast_buffers = buffers
                self._fast_buffer = buffer
            buffer.write(string)
            held = buffer.tell()
            full = held >= self.flush_size
        if is_child:
            # As OutStream.write: mp.Pool cannot be trusted to flush promptly.
            if not self._subprocess_flush_pending:
                self._subprocess_flush_pending = True
                self.pub_thread.schedule(self._flush)
            return len(string)
        if not self._flush_pending:
            self._schedule_flush()
        if full and not self._size_flush_pending:
            self._size_flush_pending = True
            self.pub_thread.schedule(self._flush_all)
        if held >= self.backpressure_size:
            self._wait_for_flush()
        return len(string)

    def _wait_for_flush(self):
        """Block the writer until the IOPub thread has sent what the streams hold.

        A loop printing faster than the IOPub thread sends would otherwise pile its
        output up into one huge message (50 MB seen), which every hop (kernel,
        gateway, client) then holds whole in memory."""
        thread = self.pub_thread.thread
        if thread is None or not thread.is_alive() or thread.ident == threading.get_ident():
            return
        done = threading.Event()
        self.pub_thread.schedule(self._flush_all)
        self.pub_thread.schedule(done.set)
        done.wait(self.flush_timeout)

    def _flush(self):
        self._size_flush_pending = False
        super()._flush()

    def _flush_all(self):
        """In the IOPub thread: send what stdout and stderr hold, the stream whose
        oldest pending data was written first going first -- the order in which
        their ``flush_interval`` timers (started by those first writes) would
        have sent them."""
        streams = [s for s in _streams if s.pub_thread is self.pub_thread]
        for stream in sorted(streams, key=lambda s: s._first_write):
            stream._flush()


class PyboxShell(ZMQInteractiveShell):
    """The kernel's shell without IPython 9's per-cell stdout/stderr "tee".

    For every cell, ``InteractiveShell.run_cell`` wraps ``sys.stdout.write`` and
    ``sys.stderr.write`` (``_tee``) to copy each written string into
    ``history_manager.outputs`` -- a class-level dict that is only read by the
    ``%notebook`` magic and is never trimmed: every byte a session prints stays in
    the kernel's memory until it exits, and each write pays a Python wrapper
    (~1.4 us; 101,011 writes: ~140 ms). pybox runs without IPython history
    (``HistoryManager.enabled = False``), so the copy is dropped. ``_tee`` is a
    private IPython method: on an IPython without it this override is never
    called and changes nothing.
    """

    @contextmanager
    def _tee(self, channel):
        yield


class PyboxKernel(IPythonKernel):
    """IPythonKernel with :class:`PyboxShell` (``shell_class`` is not configurable)."""

    shell_class = Type(PyboxShell)
