"""HTTP routes of the runtime, one module per API family."""
