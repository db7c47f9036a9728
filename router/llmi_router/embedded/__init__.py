"""The embedded control plane (`llmi serve`): runtimes as local processes under one budget."""
