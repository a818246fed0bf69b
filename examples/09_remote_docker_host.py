"""Remote DOCKER_HOST: the same code, the containers on another machine.

    export DOCKER_HOST=tcp://remote:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=~/.docker/remote
    pybox build --backend docker-remote      # once, builds the image on the remote engine
    PYBOX_BACKEND=docker-remote python examples/09_remote_docker_host.py

The kernel is reached at the remote's address; files move through the engine's archive
API (upload/download), never through host bind mounts.
"""

import tempfile
from pathlib import Path

import pybox

with pybox.Sandbox() as sb:  # PYBOX_BACKEND=docker-remote, or backend="docker-remote"
    print("kernel gateway at", f"{sb.host}:{sb.port}")
    print(sb.run("import socket; print('running on', socket.gethostname())").text)
    local = Path(tempfile.mkdtemp()) / "input.txt"
    local.write_text("sent over the archive API")
    sb.upload(local, "input.txt")
    sb.run("open('output.txt', 'w').write(open('input.txt').read().upper())")
    sb.download("output.txt", local.with_name("output.txt"))
    print(local.with_name("output.txt").read_text())
