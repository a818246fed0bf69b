"""The names the client and the sandbox image share are defined once in
pybox.image_contract; here every one of them is looked up in the image's files, so a
change on one side without the other fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pybox import image_contract as contract

SANDBOX = Path(__file__).resolve().parents[2] / "images" / "sandbox"


def read(name: str) -> str:
    return (SANDBOX / name).read_text(encoding="utf-8")


def test_the_images_directory_is_found_in_a_checkout_and_is_package_data():
    found = contract.images_dir() / "sandbox"  # this checkout's, or the installed package's copy
    for name in ("Dockerfile", "pybox-network-init", "pybox_boot.py", "requirements.txt"):
        assert (found / name).read_bytes() == (SANDBOX / name).read_bytes()
    pyproject = (SANDBOX.parents[1] / "pyproject.toml").read_text()
    assert '"pybox.images" = "images"' in pyproject and "pybox_images" not in pyproject


def test_gateway_port_workdir_and_command():
    dockerfile = read("Dockerfile")
    assert re.search(rf"^EXPOSE {contract.GATEWAY_PORT}$", dockerfile, re.M)
    assert f"c.KernelGatewayApp.port = {contract.GATEWAY_PORT}" in read("pybox_gateway_config.py")
    assert re.search(rf"^WORKDIR {contract.WORKDIR}$", dockerfile, re.M)
    assert f'CMD ["{contract.GATEWAY_COMMAND}"]' in dockerfile
    assert f"set -- {contract.GATEWAY_COMMAND}" in read("pybox-network-init")
    assert f"/opt/pybox/bin/{contract.GATEWAY_COMMAND}" in dockerfile


def test_the_sandbox_user():
    dockerfile = read("Dockerfile")
    assert f"useradd --create-home --uid {contract.SANDBOX_UID} --shell /bin/bash {contract.SANDBOX_USER}" \
        in dockerfile
    assert contract.SANDBOX_GID == contract.SANDBOX_UID  # useradd's user-private group
    init = read("pybox-network-init")
    assert f"--reuid={contract.SANDBOX_UID} --regid={contract.SANDBOX_GID}" in init
    assert f"HOME={contract.SANDBOX_HOME} USER={contract.SANDBOX_USER}" in init
    assert f"IPYTHONDIR={contract.SANDBOX_HOME}/.ipython" in dockerfile


@pytest.mark.parametrize("name", ["pybox_boot.py", "pybox_gateway_config.py"])
def test_token_variable(name):
    assert f'"{contract.TOKEN_ENV}"' in read(name)


def test_prespawn_variable():
    assert f'"{contract.PRESPAWN_ENV}"' in read("pybox_boot.py")


def test_network_init_path_and_variable():
    assert f"COPY pybox-network-init {contract.NETWORK_INIT}" in read("Dockerfile")
    assert "${" + contract.NETWORK_ENV + ":-}" in read("pybox-network-init")
    assert contract.network_policy_value("none") == "none"
    assert contract.network_policy_value(("1.2.3.4", "a.b")) == "allow:1.2.3.4,a.b"
    assert contract.network_policy_value("default") == "default"
    assert contract.network_policy_value("default", ("192.0.2.2", "2001:db8::1")) == "default:192.0.2.2,2001:db8::1"
    init = read("pybox-network-init")
    assert "none) mode=none ;;" in init and "allow:*)" in init and "default | default:*)" in init


def test_network_init_blocks_the_contracts_ranges_and_admits_the_gateway_port():
    import re

    init = read("pybox-network-init")
    assert f"gateway_port={contract.GATEWAY_PORT}" in init
    blocked4 = re.search(r"^blocked4=\(([^)]*)\)", init, re.M).group(1).split()
    blocked6 = re.search(r"^blocked6=\(([^)]*)\)", init, re.M).group(1).split()
    assert tuple(blocked4 + blocked6) == contract.DEFAULT_BLOCKED_NETWORKS


def test_death_reason_field():
    assert f'"{contract.DEATH_REASON_FIELD}"' in read("pybox_gateway_config.py")


def test_scratch_mounts_are_where_the_image_writes_at_run_time():
    paths = [path for path, _size, _owned in contract.SCRATCH_MOUNTS]
    assert "/tmp" in paths
    for path, _size, owned in contract.SCRATCH_MOUNTS:
        assert path == "/tmp" or (path.startswith(contract.SANDBOX_HOME + "/") and owned)


def test_the_image_is_labelled_with_its_protocol_and_pybox_version():
    dockerfile = read("Dockerfile")
    labels = dockerfile.split(f"ARG {contract.VERSION_BUILD_ARG}=", 1)[1]  # last: the cache above survives a release
    assert re.search(rf'^LABEL {re.escape(contract.PROTOCOL_LABEL)}="{contract.IMAGE_PROTOCOL}"', labels, re.M)
    assert f'{contract.VERSION_LABEL}="${{{contract.VERSION_BUILD_ARG}}}"' in labels
    assert "RUN" not in labels and "COPY" not in labels
    assert isinstance(contract.IMAGE_PROTOCOL, int) and contract.IMAGE_PROTOCOL >= 1
