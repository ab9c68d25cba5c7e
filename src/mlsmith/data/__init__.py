"""Data kinds: reading tables, splitting, fitted preprocessing and fast in-memory batches."""
