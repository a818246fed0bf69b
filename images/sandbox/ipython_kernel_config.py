# IPython kernel settings of the pybox sandbox image.
c = get_config()  # noqa: F821

# No history database: kernels start faster and no sqlite file is written to $HOME.
c.HistoryManager.enabled = False
