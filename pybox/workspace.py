"""Deprecated: the freeact layer moved to ``pybox.freeact``; this name works until
pybox 0.3."""

import warnings

from pybox.freeact import (  # noqa: F401 -- re-exported
    CodeExecutor,
    ExecutionEnvironment,
    ExecutionLog,
    ExecutorResult,
    Workspace,
    execution_environment,
    load_env_file,
    startup_code_for,
)

warnings.warn("pybox.workspace is deprecated: import from pybox.freeact", DeprecationWarning, stacklevel=2)
