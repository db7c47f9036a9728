"""llmi's model server: one model per process, the engines that run it, and its HTTP API.

The only part of llmi that imports torch and transformers.
"""
