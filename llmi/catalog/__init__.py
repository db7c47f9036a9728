"""Finding and understanding model folders, without importing torch."""
