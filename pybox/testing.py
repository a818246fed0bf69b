"""The backend contract kit: one pytest suite every pybox backend must pass.

A backend's distribution proves itself with three lines (pytest collects the
inherited tests)::

    from pybox.testing import BackendContract

    class TestMyBackend(BackendContract):
        backend = "mybackend"          # the name the plugin registers
        image = "pybox:latest"         # a sandbox image the engine has (pybox build)

Every first-party backend runs it too (``tests/integration/test_contract.py``). It
needs the engine running and the image built; it starts a few containers and
removes them all.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest

import pybox
from pybox.backend import LABEL, LIMITS, NETWORK_POLICY, PIDS_LIMIT, READ_ONLY, Backend, ContainerSpec
from pybox.errors import BackendError, ImageNotFound, PyboxError, UnsupportedOperation
from pybox.image_contract import IMAGE_PROTOCOL, PROTOCOL_LABEL, TOKEN_ENV
from pybox.launch import prepare_launch
from pybox.ownership import SESSION, owner_labels
from pybox.plugins import get_plugins
from pybox.snapshot import SNAPSHOT_LABEL

#: Code that tries a TCP connection to the container's default gateway (the engine's
#: host) on port 9 and prints the errno name: ECONNREFUSED where the network is open
#: (nothing listens there), EPERM or EAGAIN (timed out) where a policy drops it.
GATEWAY_PROBE = """
import errno, socket, struct
with open('/proc/net/route') as routes:
    gateway = next(socket.inet_ntoa(struct.pack('<L', int(f[2], 16))) for f in (l.split() for l in routes)
                   if f[1] == '00000000')
probe = socket.socket()
probe.settimeout(3)
print(errno.errorcode.get(probe.connect_ex((gateway, 9)), 'connected'))
"""

#: Code printing a cgroup file's value, v1 path or v2 path (format with v1=, v2=).
READ_CGROUP = """
import os
v1, v2 = '/sys/fs/cgroup/{v1}', '/sys/fs/cgroup/{v2}'
print(open(v1 if os.path.exists(v1) else v2).read().strip())
"""


class BackendContract:
    """Inherit in a class named ``Test...`` and set ``backend`` (and ``image``)."""

    backend: ClassVar[str] = ""
    image: ClassVar[str] = pybox.DEFAULT_IMAGE
    #: Seconds a started sandbox may take to answer its first run.
    startup_timeout: ClassVar[float] = 60.0

    @classmethod
    def _network(cls) -> str:
        """The network of the general tests' sandboxes: the default policy (what users
        get), or "open" on a backend that cannot enforce policies (and refuses them)."""
        return "default" if NETWORK_POLICY in get_plugins().backend(cls.backend).features else "open"

    # -- fixtures (static: a class-scoped fixture must not be an instance method) --------

    @pytest.fixture(scope="class")
    @staticmethod
    def sandbox(request: pytest.FixtureRequest) -> Iterator[pybox.Sandbox]:
        """One sandbox shared by a contract class's tests."""
        cls = request.cls
        with pybox.Sandbox(image=cls.image, backend=cls.backend, startup_timeout=cls.startup_timeout,
                           network=cls._network()) as sb:
            yield sb

    @pytest.fixture
    @staticmethod
    def engine(request: pytest.FixtureRequest) -> Iterator[Backend]:
        """A Backend instance of the class's backend, closed afterwards."""
        instance = get_plugins().backend(request.cls.backend)()
        yield instance
        instance.close()

    # -- registration --------------------------------------------------------------

    def test_backend_is_registered_through_the_plugin_system(self) -> None:
        assert self.backend, "set `backend` to the name your plugin registers"
        info = get_plugins().backends()[self.backend]
        assert issubclass(info.cls, Backend)
        assert info.cls.name == self.backend

    def test_engine_answers_a_ping(self, engine: Backend) -> None:
        engine.ping()

    def test_image_exists(self, engine: Backend) -> None:
        assert engine.image_exists(self.image), f"build {self.image} first (pybox build --backend {self.backend})"
        assert not engine.image_exists("pybox-contract-no-such-image:0")

    def test_image_labels_carry_the_image_protocol(self, engine: Backend) -> None:
        try:
            labels = engine.image_labels(self.image)
        except UnsupportedOperation:
            pytest.skip("the backend does not read image labels: sandboxes skip the image protocol check")
        assert labels is not None, f"image_labels({self.image!r}) must read the labels of an existing image"
        assert labels.get(PROTOCOL_LABEL) == str(IMAGE_PROTOCOL), f"rebuild {self.image} (pybox build)"
        assert engine.image_labels("pybox-contract-no-such-image:0") is None, "a missing image: None"

    # -- the sandbox through this backend -------------------------------------------

    def test_run_keeps_state(self, sandbox: pybox.Sandbox) -> None:
        assert sandbox.run("print('contract')").text == "contract"
        sandbox.run("kept = 7")
        assert sandbox.run("kept * 6").text == "42"

    def test_streaming_is_incremental(self, sandbox: pybox.Sandbox) -> None:
        arrivals = []
        for chunk in sandbox.submit("import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)"
                                    ).stream(timeout=30):
            arrivals.append(time.monotonic())
            assert chunk
        assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.6

    def test_plot_comes_back_as_image(self, sandbox: pybox.Sandbox) -> None:
        result = sandbox.run("import matplotlib.pyplot as plt\nplt.plot([1, 2], [2, 1])\nplt.show()")
        assert len(result.images) == 1 and result.images[0].size[0] > 100

    def test_timeout_interrupts_and_keeps_state(self, sandbox: pybox.Sandbox) -> None:
        sandbox.run("survivor = 'yes'")
        with pytest.raises(pybox.ExecutionTimeout) as info:
            sandbox.run("import time\ntime.sleep(60)", timeout=1)
        assert info.value.interrupted and not info.value.restarted
        assert sandbox.run("print(survivor)").text == "yes"

    def test_kernel_death_is_seen_quickly(self, sandbox: pybox.Sandbox) -> None:
        with sandbox.kernel() as kernel:
            started = time.monotonic()
            with pytest.raises(pybox.KernelDied):
                kernel.run("import os\nos._exit(1)", timeout=60)
            assert time.monotonic() - started < 5
            assert kernel.run("print('again')", timeout=60).text == "again"

    def test_upload_and_download(self, sandbox: pybox.Sandbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "data.txt").write_text("through the archive API")
        sandbox.upload(tmp_path / "in", "contract/in")
        assert sandbox.run("print(open('contract/in/data.txt').read())").text == "through the archive API"
        sandbox.run("open('contract/out.txt', 'w').write('back')")
        sandbox.download("contract/out.txt", tmp_path / "out.txt")
        assert (tmp_path / "out.txt").read_text() == "back"

    def test_container_carries_labels_and_is_listed(self, sandbox: pybox.Sandbox, engine: Backend) -> None:
        assert sandbox.id in engine.list_containers({LABEL: "1", f"{LABEL}.session": SESSION})
        assert sandbox.id not in engine.list_containers({f"{LABEL}.session": "no-such-session"})
        labels = engine.container_labels(sandbox.id)
        assert labels is not None, "container_labels must read the labels back (pybox cleanup needs them)"
        ours = {k: v for k, v in labels.items() if k.startswith(LABEL)}
        assert ours.pop(f"{LABEL}.created", "").isdigit(), "the creation label must be on the container"
        assert ours == owner_labels(), "every owner label must be on the container, unchanged"

    # -- what the launch plan asks for is enforced ---------------------------------------
    # A backend that declares a feature (Backend.features) and ignores the plan's fields
    # for it fails here; one that does not declare it must refuse the option.

    def _refuses_or_starts(self, feature: str, **options: object) -> pybox.Sandbox | None:
        cls = get_plugins().backend(self.backend)
        options.setdefault("network", self._network())
        sandbox = pybox.Sandbox(image=self.image, backend=self.backend, startup_timeout=self.startup_timeout,
                                **options)  # type: ignore[arg-type]
        if feature not in cls.features:
            with pytest.raises(UnsupportedOperation):
                sandbox.start()
            return None
        return sandbox.start()

    def test_network_none_blocks_traffic_out(self) -> None:
        sandbox = self._refuses_or_starts(NETWORK_POLICY, network="none")
        if sandbox is None:
            return
        with sandbox:
            blocked = sandbox.run(GATEWAY_PROBE).text
            bounding = sandbox.run("print([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0])")
            uid = sandbox.run("import os; print(os.getuid())").text
        with pybox.Sandbox(image=self.image, backend=self.backend, startup_timeout=self.startup_timeout,
                           network="open") as open_sb:
            answered = open_sb.run(GATEWAY_PROBE).text
        assert blocked in ("EPERM", "EAGAIN") and blocked != answered, \
            f"network='none' let a connection to the engine's gateway through ({blocked}; open: {answered})"
        assert bounding.text.split()[-1] == "0000000000000000", "the policy's init must drop every capability"
        assert uid == "1000", "code must run as the sandbox user after the policy is applied"

    def test_default_network_keeps_code_off_the_engines_host(self) -> None:
        sandbox = self._refuses_or_starts(NETWORK_POLICY, network="default")
        if sandbox is None:
            return
        with sandbox:
            blocked = sandbox.run(GATEWAY_PROBE).text
            bounding = sandbox.run("print([l for l in open('/proc/self/status') if l.startswith('CapBnd')][0])")
        assert blocked in ("EPERM", "EAGAIN"), \
            f"the default network policy let a connection to the engine's gateway through ({blocked})"
        assert bounding.text.split()[-1] == "0000000000000000", "the policy's init must drop every capability"

    def test_read_only_root_filesystem(self) -> None:
        sandbox = self._refuses_or_starts(READ_ONLY, read_only=True)
        if sandbox is None:
            return
        with sandbox:
            result = sandbox.run("open('/etc/pybox-contract', 'w')", check=False)
            assert result.error is not None and "Read-only file system" in result.error.evalue
            sandbox.run("open('/app/ok', 'w').write('ok'); open('/tmp/ok', 'w').write('ok')")
            assert sandbox.run("print(open('/app/ok').read() + open('/tmp/ok').read())").text == "okok"

    def test_limits_are_applied(self) -> None:
        sandbox = self._refuses_or_starts(LIMITS, limits=pybox.Limits(memory="300m", pids=None, cpus=0.5))
        if sandbox is None:
            return
        with sandbox:
            memory = sandbox.run(READ_CGROUP.format(v1="memory/memory.limit_in_bytes", v2="memory.max")).text
            assert int(memory) == 300 << 20

    def test_process_limit_is_applied(self) -> None:
        sandbox = self._refuses_or_starts(PIDS_LIMIT, limits=pybox.Limits(memory=None, pids=123))
        if sandbox is None:
            return
        with sandbox:
            assert sandbox.run(READ_CGROUP.format(v1="pids/pids.max", v2="pids.max")).text == "123"

    def test_out_of_memory_is_reported_as_such(self) -> None:
        sandbox = self._refuses_or_starts(LIMITS, limits=pybox.Limits(memory="200m"))
        if sandbox is None:
            return
        with sandbox:
            with pytest.raises(pybox.KernelDied) as info:
                sandbox.run("hog = bytearray(1 << 30)\nhog[::4096] = b'x' * len(hog[::4096])", timeout=60)
            assert "OOM" in info.value.reason, info.value.reason
            assert sandbox.run("print('after')", timeout=60).text == "after"

    def test_running_container_is_reported_running(self, sandbox: pybox.Sandbox, engine: Backend) -> None:
        assert sandbox.id is not None
        state = engine.inspect(sandbox.id)
        assert state.running and not state.oom_killed
        assert isinstance(engine.logs(sandbox.id, tail=5), str)

    # -- lifecycle through the Backend API -------------------------------------------

    def test_start_stop_remove_is_idempotent(self, engine: Backend) -> None:
        spec = ContainerSpec(image=self.image, env={TOKEN_ENV: "contract"},
                             labels={LABEL: "1", f"{LABEL}.contract": "1"})
        plan = prepare_launch(spec, engine, get_plugins().adjust_launch_plan)
        container = engine.start(plan)
        try:
            endpoint = engine.endpoint(container, plan)
            assert 0 < endpoint.port < 65536 and endpoint.host
            assert engine.inspect(container).running
        finally:
            engine.remove(container)
        engine.remove(container)  # twice is fine
        assert engine.inspect(container).status == "removed"
        assert container not in engine.list_containers({f"{LABEL}.contract": "1"})

    def test_sandbox_stop_removes_the_container(self, engine: Backend) -> None:
        sandbox = pybox.Sandbox(image=self.image, backend=self.backend, network=self._network()).start()
        container = sandbox.id
        assert container is not None
        sandbox.close()
        sandbox.close()
        assert engine.inspect(container).status == "removed"

    def test_concurrent_sandboxes_are_independent(self) -> None:
        results: dict[int, str] = {}

        def work(n: int) -> None:
            with pybox.Sandbox(image=self.image, backend=self.backend, network=self._network()) as sb:
                results[n] = sb.run(f"print({n} * 2)").text

        threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == {1: "2", 2: "4"}

    # -- snapshots (optional: Backend.commit) -------------------------------------------

    def test_snapshot_keeps_the_files_and_nothing_of_the_container(self, engine: Backend) -> None:
        if type(engine).commit is Backend.commit:
            pytest.skip("the backend does not implement snapshots (Backend.commit): Sandbox.snapshot refuses")
        tag = f"pybox-contract-snapshot:{uuid.uuid4().hex[:12]}"
        try:
            with pybox.Sandbox(image=self.image, backend=self.backend, network=self._network(),
                               env={"PYBOX_CONTRACT_SECRET": "not-in-the-image"}) as sandbox:
                sandbox.run("open('/app/contract-snapshot', 'w').write('kept'); in_memory = 1")
                try:
                    assert sandbox.snapshot(tag), "commit returns the new image's id"
                except UnsupportedOperation as exc:  # a plugin made every sandbox read-only
                    pytest.skip(f"snapshots refused here: {exc}")
                assert sandbox.run("print(in_memory)").text == "1", "the sandbox runs on after a snapshot"
            try:
                labels = engine.image_labels(tag)
            except UnsupportedOperation:
                labels = None
            if labels is not None:
                assert labels.get(SNAPSHOT_LABEL) == self.image, "commit must add the labels it is given"
                assert labels.get(PROTOCOL_LABEL) == str(IMAGE_PROTOCOL), "the base image's labels are kept"
                assert not labels.get(LABEL), "the container's owner labels must not be in the image"
            with pybox.Sandbox(image=tag, backend=self.backend, network=self._network()) as sandbox:
                out = sandbox.run("import os\nprint(open('/app/contract-snapshot').read(), "
                                  "bool(os.environ.get('PYBOX_CONTRACT_SECRET')), 'in_memory' in globals())").text
            assert out == "kept False False", "files kept; not the container's env, not the kernel's memory"
        finally:
            engine.remove_image(tag)

    # -- errors ------------------------------------------------------------------------

    def test_missing_image_raises_image_not_found(self) -> None:
        with pytest.raises(ImageNotFound) as info:
            pybox.Sandbox(image="pybox-contract-no-such-image:0", backend=self.backend, network=self._network()).start()
        assert "pybox-contract-no-such-image:0" in str(info.value)
        assert info.value.__cause__ is not None, "chain the SDK's error: raise ... from exc"

    def test_engine_errors_are_pybox_errors_with_the_sdk_error_chained(self, sandbox: pybox.Sandbox,
                                                                        engine: Backend) -> None:
        assert sandbox.id is not None
        with pytest.raises(BackendError) as info:
            list(engine.get_archive(sandbox.id, "/app/contract-no-such-file"))
        assert info.value.__cause__ is not None
        assert not isinstance(info.value.__cause__, PyboxError)
