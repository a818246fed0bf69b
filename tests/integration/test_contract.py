"""The backend contract kit (pybox.testing), run against the backend under test."""

from pybox.testing import BackendContract

from .conftest import BACKEND, IMAGE


class TestContract(BackendContract):
    backend = BACKEND
    image = IMAGE
