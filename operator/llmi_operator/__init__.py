"""The llmi Kubernetes operator: LocalModel reconcile, model discovery and the per-node memory budget."""
