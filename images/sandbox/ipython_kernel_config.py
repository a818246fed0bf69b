# IPython kernel settings of the pybox sandbox image.
c = get_config()  # noqa: F821

# No history database: kernels start faster and no sqlite file is written to $HOME.
c.HistoryManager.enabled = False

# stdout/stderr and shell from pybox_kernel.py (installed next to ipykernel): for
# 10 MB printed as 101,011 lines, the kernel's write loop goes from ~290 ms to
# ~60 ms and large output is sent in 1 MiB pieces while the code still runs.
# Without them IPython also keeps a copy of everything a session prints.
#
# Only for the Python kernel: other kernels built on IPKernelApp (bash_kernel, and those
# `pybox build --kernel` adds) load this profile too, and this setting would turn them
# into IPython kernels. They pass their own kernel_class to the app, created before this
# file is read; the python3 kernelspec's app keeps the default.
from ipykernel.kernelapp import IPKernelApp  # noqa: E402

_app = IPKernelApp.instance() if IPKernelApp.initialized() else None
_kernel = _app.kernel_class if _app is not None else None
if _kernel is None or f"{_kernel.__module__}.{_kernel.__qualname__}" == "ipykernel.ipkernel.IPythonKernel":
    c.IPKernelApp.outstream_class = "pybox_kernel.FastOutStream"
    c.IPKernelApp.kernel_class = "pybox_kernel.PyboxKernel"
