"""The router's Kubernetes control plane (``llmi router --kubernetes``)."""
