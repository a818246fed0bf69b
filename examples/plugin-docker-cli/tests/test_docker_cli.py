"""The backend written from scratch (the docker CLI, nothing of pybox's Docker
backend) gets every policy right by translating the launch plan: it passes the
contract kit, which checks network policies, read-only roots, limits, labels and
out-of-memory reporting, plus what it adds."""

import re

from pybox_docker_cli import DockerCliBackend

import pybox
from pybox.testing import BackendContract

IMAGE = pybox.DEFAULT_IMAGE


class TestDockerCliContract(BackendContract):
    backend = "docker-cli"
    image = IMAGE


def test_the_token_never_appears_on_the_command_line():
    plan_env = {"KG_AUTH_TOKEN": "secret-token-value", "A": "b"}
    from pybox.backend import LaunchPlan

    args = DockerCliBackend()._create_args(LaunchPlan(image=IMAGE, env=plan_env))
    assert not any(re.search("secret-token-value", arg) for arg in args)
    assert args[args.index("KG_AUTH_TOKEN") - 1] == "--env"
