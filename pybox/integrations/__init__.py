"""Adapters that plug pybox into agent frameworks, one module per framework.

Each is an optional extra and imported on its own; pybox core never imports them, and
they use only the public names of ``pybox``:

- :mod:`pybox.integrations.smolagents`: ``PyboxExecutor`` for smolagents' ``CodeAgent``
  (``pip install 'pybox[smolagents]'``).
- :mod:`pybox.integrations.deepagents`: ``PyboxSandbox``, a sandbox backend for
  LangChain deep agents (``pip install 'pybox[deepagents]'``).
"""
