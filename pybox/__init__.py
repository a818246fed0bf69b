"""pybox: run Python code in a stateful IPython kernel inside a container, from
plain blocking Python.

    import pybox
    with pybox.Sandbox() as sb:
        print(sb.run("print('Hello, world!')").text)
"""

__version__ = "0.1.0"

from pybox.backend import Backend, ContainerSpec, ContainerState, Endpoint, Limits
from pybox.errors import (
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    ChannelError,
    ExecutionError,
    ExecutionTimeout,
    ImageNotFound,
    InvalidArgument,
    KernelDied,
    KernelError,
    PyboxError,
    SandboxClosed,
    StartupTimeout,
    UnsafeArchive,
    UnsupportedOperation,
)
from pybox.execution import Execution
from pybox.hookspecs import hookimpl
from pybox.kernel import Kernel
from pybox.outputs import DisplayData, ErrorOutput, ExecuteResult, Output, Result, Stderr, Stdout
from pybox.sandbox import DEFAULT_IMAGE, Sandbox
from pybox.workspace import CodeExecutor, ExecutionEnvironment, ExecutionLog, Workspace, execution_environment

__all__ = [
    "DEFAULT_IMAGE",
    "Backend",
    "BackendError",
    "BackendNotFound",
    "BackendUnavailable",
    "ChannelError",
    "CodeExecutor",
    "ContainerSpec",
    "ContainerState",
    "DisplayData",
    "Endpoint",
    "ErrorOutput",
    "ExecuteResult",
    "ExecutionEnvironment",
    "ExecutionLog",
    "Execution",
    "ExecutionError",
    "ExecutionTimeout",
    "ImageNotFound",
    "InvalidArgument",
    "Kernel",
    "KernelDied",
    "KernelError",
    "Limits",
    "Output",
    "PyboxError",
    "Result",
    "Sandbox",
    "SandboxClosed",
    "StartupTimeout",
    "Stderr",
    "Stdout",
    "UnsafeArchive",
    "UnsupportedOperation",
    "Workspace",
    "execution_environment",
    "hookimpl",
]
