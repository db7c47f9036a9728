"""llmi's front door: the OpenAI-compatible router and the embedded control plane.

Never imports torch: runtimes are separate processes.
"""
