"""llmi: the shared package (settings, protocol, catalog, CLI).

It imports neither torch nor Kubernetes clients, so the control plane installs light.
"""

__version__ = "0.1.0"
