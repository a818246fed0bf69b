"""pybox's Kubernetes backend: one pod per sandbox, on the cluster the kubeconfig names
(found as kubectl finds it: KUBECONFIG, ~/.kube/config, or the in-cluster service
account), registered through the ``pybox`` entry-point group exactly as a third party's
backend would be.

The official ``kubernetes`` client is imported only when the backend is used; without it
(``pip install 'pybox[kubernetes]'``) this backend is disabled and says so, the others load.
"""

from pybox import hookimpl
from pybox.plugins import require_module


@hookimpl
def pybox_register_backends(register):
    require_module("kubernetes", backend="kubernetes", extra="kubernetes")
    from pybox_kubernetes.backend import KubernetesBackend

    register(KubernetesBackend)
