# IPython kernel settings of the pybox sandbox image.
c = get_config()  # noqa: F821

# No history database: kernels start faster and no sqlite file is written to $HOME.
c.HistoryManager.enabled = False

# stdout/stderr and shell from pybox_kernel.py (installed next to ipykernel): for
# 10 MB printed as 101,011 lines, the kernel's write loop goes from ~290 ms to
# ~60 ms and large output is sent in 1 MiB pieces while the code still runs.
# Without them IPython also keeps a copy of everything a session prints.
c.IPKernelApp.outstream_class = "pybox_kernel.FastOutStream"
c.IPKernelApp.kernel_class = "pybox_kernel.PyboxKernel"
