"""User customization of the sandbox image's venv: what Python runs at start when the
user site is enabled (every process of the venv but the gateway, which runs with ``-I``;
Debian's sitecustomize.py, earlier on sys.path, would shadow a sitecustomize here).

The venv is root's, so ``pip install`` in a sandbox puts packages in the sandbox user's
site-packages (~/.local), which CPython puts after the venv's. Here it goes first, as
the venv itself was when code could write to it, so an installed upgrade wins over the
image's version; and it is made when missing (on a read-only root ~/.local is an empty
scratch mount), so a running kernel imports what it installs.
"""

import os
import site
import sys

SANDBOX_UID = 1000


def _user_site_first() -> None:
    user_site = site.getusersitepackages()
    if user_site not in sys.path:
        if os.getuid() != SANDBOX_UID:
            return
        try:
            os.makedirs(user_site, exist_ok=True)
        except OSError:
            return
        site.addsitedir(user_site)  # and its .pth files
    sys.path.remove(user_site)
    venv = [i for i, entry in enumerate(sys.path) if entry in site.getsitepackages()]
    sys.path.insert(venv[0] if venv else len(sys.path), user_site)


_user_site_first()
