"""Request and response shapes of the OpenAI-compatible API, one module per API family.

Only pydantic and the standard library are imported here, so the router, the runtime and
clients can share them without heavy imports.
"""
