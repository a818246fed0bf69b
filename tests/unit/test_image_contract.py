"""The names the client and the sandbox image share are defined once in
pybox.image_contract; here every one of them is looked up in the image's files, so a
change on one side without the other fails."""

from __future__ import annotations

import re
from pathlib import Path

from pybox import image_contract as contract

SANDBOX = Path(__file__).resolve().parents[2] / "images" / "sandbox"


def read(name: str) -> str:
    return (SANDBOX / name).read_text(encoding="utf-8")


def test_the_images_directory_is_found_in_a_checkout_and_is_package_data():
    found = contract.images_dir() / "sandbox"  # this checkout's, or the installed package's copy
    for name in ("Dockerfile", "pybox-init", "pybox_boot.py", "requirements.txt"):
        assert (found / name).read_bytes() == (SANDBOX / name).read_bytes()
    pyproject = (SANDBOX.parents[1] / "pyproject.toml").read_text()
    assert '"pybox.images" = "images"' in pyproject and "pybox_images" not in pyproject


def test_gateway_port_workdir_and_command():
    dockerfile = read("Dockerfile")
    assert re.search(rf"^EXPOSE {contract.GATEWAY_PORT}$", dockerfile, re.M)
    assert f"c.KernelGatewayApp.port = {contract.GATEWAY_PORT}" in read("pybox_gateway_config.py")
    assert re.search(rf"^WORKDIR {contract.WORKDIR}$", dockerfile, re.M)
    assert f'CMD ["{contract.INIT}"]' in dockerfile
    assert f"set -- {contract.GATEWAY_COMMAND}" in read("pybox-init")
    assert f"install -m 0755 /tmp/pybox-boot/pybox-gateway {contract.GATEWAY_COMMAND}" in dockerfile


def test_the_sandbox_user_and_the_gateway_user():
    dockerfile = read("Dockerfile")
    assert f"useradd --create-home --uid {contract.SANDBOX_UID} --shell /bin/bash {contract.SANDBOX_USER}" \
        in dockerfile
    assert contract.SANDBOX_GID == contract.SANDBOX_UID  # useradd's user-private group
    assert f"useradd --system --uid {contract.GATEWAY_UID} --gid {contract.GATEWAY_UID} --no-create-home " \
        f"--home-dir {contract.GATEWAY_HOME} --shell /usr/sbin/nologin {contract.GATEWAY_USER}" in dockerfile
    home = f"install -d -o {contract.GATEWAY_UID} -g {contract.SANDBOX_GID} -m 3710 {contract.GATEWAY_HOME}"
    assert home in dockerfile
    init = read("pybox-init")
    assert f"sandbox_uid={contract.SANDBOX_UID}\nsandbox_gid={contract.SANDBOX_GID}\n" in init
    assert f"gateway_uid={contract.GATEWAY_UID}\ngateway_gid={contract.GATEWAY_UID}\n" in init
    assert f"gateway_home={contract.GATEWAY_HOME}\n" in init
    assert f"USER={contract.GATEWAY_USER}" in init
    boot = read("pybox_boot.py")
    assert f"GATEWAY_UID = {contract.GATEWAY_UID}\n" in boot
    assert f'"--reuid={contract.SANDBOX_UID}", "--regid={contract.SANDBOX_GID}"' in boot
    assert f'"HOME={contract.SANDBOX_HOME}", "USER={contract.SANDBOX_USER}"' in boot
    assert f'"IPYTHONDIR={contract.SANDBOX_HOME}/.ipython"' in boot
    assert f"SANDBOX_UID = {contract.SANDBOX_UID}\n" in read("usercustomize.py")


def test_the_init_checks_for_the_capabilities_the_plan_grants():
    init = read("pybox-init")
    bits = {"CHOWN": 0, "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8}
    mask = sum(1 << bits[cap] for cap in contract.INIT_CAPS)
    assert f"(0x$cap_eff & {mask:#x}) != {mask:#x}" in init
    assert set(contract.INIT_CAPS) == set(bits)
    assert "gateway_caps=-all,+setuid,+setgid,+setpcap,+kill\n" in init
    assert contract.NETWORK_POLICY_CAPS == ("NET_ADMIN",)


def test_token_variable():
    assert f'os.environ.pop("{contract.TOKEN_ENV}", "")' in read("pybox_boot.py")
    assert "token = pybox_boot.token" in read("pybox_gateway_config.py")


def test_prespawn_variable():
    assert f'"{contract.PRESPAWN_ENV}"' in read("pybox_boot.py")


def test_network_init_path_and_variable():
    assert f"COPY pybox-init {contract.INIT}" in read("Dockerfile")
    assert "${" + contract.NETWORK_ENV + ":-}" in read("pybox-init")
    assert contract.network_policy_value("none") == "none"
    assert contract.network_policy_value(("1.2.3.4", "a.b")) == "allow:1.2.3.4,a.b"
    assert contract.network_policy_value("default") == "default"
    assert contract.network_policy_value("default", ("192.0.2.2", "2001:db8::1")) == "default:192.0.2.2,2001:db8::1"
    init = read("pybox-init")
    assert '"" | open) mode=open ;;' in init
    assert "none) mode=none ;;" in init and "allow:*)" in init and "default | default:*)" in init


def test_network_init_blocks_the_contracts_ranges_and_admits_the_gateway_port():
    import re

    init = read("pybox-init")
    assert f"gateway_port={contract.GATEWAY_PORT}" in init
    blocked4 = re.search(r"^blocked4=\(([^)]*)\)", init, re.M).group(1).split()
    blocked6 = re.search(r"^blocked6=\(([^)]*)\)", init, re.M).group(1).split()
    assert tuple(blocked4 + blocked6) == contract.DEFAULT_BLOCKED_NETWORKS


def test_death_reason_field():
    assert f'"{contract.DEATH_REASON_FIELD}"' in read("pybox_gateway_config.py")


def test_scratch_mounts_are_where_the_image_writes_at_run_time():
    paths = [path for path, _size, _owned in contract.SCRATCH_MOUNTS]
    assert "/tmp" in paths and contract.GATEWAY_HOME in paths
    owned = [path for path, _size, owned in contract.SCRATCH_MOUNTS if owned]
    for path in paths:
        in_home = path.startswith(contract.SANDBOX_HOME + "/") and path in owned
        assert path in ("/tmp", contract.GATEWAY_HOME) or in_home
    # the init gives them their owners, on engines that mount them root's
    assert "sandbox_scratch=(" + " ".join(owned) + ")\n" in read("pybox-init")


def test_the_image_is_labelled_with_its_protocol_and_pybox_version():
    dockerfile = read("Dockerfile")
    labels = dockerfile.split(f"ARG {contract.VERSION_BUILD_ARG}=", 1)[1]  # last: the cache above survives a release
    assert re.search(rf'^LABEL {re.escape(contract.PROTOCOL_LABEL)}="{contract.IMAGE_PROTOCOL}"', labels, re.M)
    assert f'{contract.VERSION_LABEL}="${{{contract.VERSION_BUILD_ARG}}}"' in labels
    assert "RUN" not in labels and "COPY" not in labels
    assert isinstance(contract.IMAGE_PROTOCOL, int) and contract.IMAGE_PROTOCOL >= 1
