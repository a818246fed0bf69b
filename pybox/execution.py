"""Kept for imports written against pybox 0.1: executions live in
``pybox.kernel.execution`` (``pybox.Execution`` is the public name)."""

from pybox.kernel.execution import Execution, ExecutionOwner, deadline_after

__all__ = ["Execution", "ExecutionOwner", "deadline_after"]
