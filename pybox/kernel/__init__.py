"""The kernel channel (websocket + reader thread), the gateway's REST API, the
Jupyter message format and executions: everything between pybox and an IPython
kernel."""

from pybox.kernel.kernel import DEFAULT_INTERRUPT_GRACE, DEFAULT_TIMEOUT, Kernel

__all__ = ["DEFAULT_INTERRUPT_GRACE", "DEFAULT_TIMEOUT", "Kernel"]
